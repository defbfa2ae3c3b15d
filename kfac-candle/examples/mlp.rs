//! The smallest use of kfac-candle: a candle MLP (64 → 32 → 4, tanh)
//! trained by K-FAC on a synthetic classification problem (labels from a
//! fixed random teacher), next to the same model trained by candle's
//! AdamW.
//!
//! `cargo run --release -p kfac-candle --example mlp [-- --steps N]`

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use kfac_candle::{Kfac, KfacLinear, loss_tensor};
use kfac_core::optim::KfacConfig;
use kfac_core::{Loss, Rng};

const N: usize = 512;
const D_IN: usize = 64;
const CLASSES: usize = 4;

/// A batch of `N` Gaussian inputs labelled by a random linear teacher, as
/// candle tensors: the inputs and the one-hot targets.
fn data(dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let mut rng = Rng::new(0);
    let x: Vec<f32> = (0..N * D_IN).map(|_| rng.normal() as f32).collect();
    let teacher: Vec<f32> = (0..D_IN * CLASSES).map(|_| rng.normal() as f32).collect();
    let x = Tensor::from_vec(x, (N, D_IN), dev)?;
    let teacher = Tensor::from_vec(teacher, (D_IN, CLASSES), dev)?;
    let labels = x.matmul(&teacher)?.argmax(1)?;
    let t = candle_nn::encoding::one_hot(labels, CLASSES, 1f32, 0f32)?;
    Ok((x, t))
}

/// The model: two wrapped `Linear` layers.
struct Mlp {
    l1: KfacLinear,
    l2: KfacLinear,
}

impl Mlp {
    fn new(vb: VarBuilder<'_>) -> kfac_candle::Result<Self> {
        let l1 = KfacLinear::new(candle_nn::linear(D_IN, 32, vb.pp("l1"))?)?;
        let l2 = KfacLinear::new(candle_nn::linear(32, CLASSES, vb.pp("l2"))?)?;
        Ok(Self { l1, l2 })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.l2.forward(&self.l1.forward(x)?.tanh()?)
    }
}

/// Trains for `steps` steps with K-FAC and with AdamW; returns the final
/// losses (K-FAC, AdamW).
pub fn run(steps: usize) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let (x, t) = data(&dev)?;
    let loss = Loss::SoftmaxCrossEntropy;

    // K-FAC.
    let varmap = VarMap::new();
    let model = Mlp::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let layers = vec![(&model.l1).into(), (&model.l2).into()];
    let mut kfac = Kfac::<f32>::new(KfacConfig::kfac(), layers, loss, 0)?;
    for step in 0..steps {
        let outcome = kfac.step(&x, &t, |x| model.forward(x))?;
        if step % 10 == 0 || step + 1 == steps {
            println!("K-FAC step {step:3}: loss {:.4}", outcome.report.loss);
        }
    }
    let kfac_loss = loss_tensor(loss, &model.forward(&x)?, &t)?.to_scalar::<f32>()?;

    // candle's AdamW on a fresh model (the loss is the same function).
    let varmap = VarMap::new();
    let model = Mlp::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let mut adam = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-2)?;
    for _ in 0..steps {
        adam.backward_step(&loss_tensor(loss, &model.forward(&x)?, &t)?)?;
    }
    let adam_loss = loss_tensor(loss, &model.forward(&x)?, &t)?.to_scalar::<f32>()?;
    println!("after {steps} steps: K-FAC loss {kfac_loss:.4}, AdamW loss {adam_loss:.4}");
    Ok((f64::from(kfac_loss), f64::from(adam_loss)))
}

/// `--steps N` (default 50).
fn steps(args: &[String]) -> Result<usize, String> {
    match args {
        [] => Ok(50),
        [flag, n] if flag == "--steps" => n.parse().map_err(|_| format!("--steps: not a number: {n}")),
        _ => Err(format!("usage: mlp [--steps N]; got {args:?}")),
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps = match steps(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mlp: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(steps) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mlp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
