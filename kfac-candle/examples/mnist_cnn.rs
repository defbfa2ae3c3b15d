//! A candle CNN on the embedded MNIST-5k (kfac-nn's subset: 4,000 training
//! and 1,000 test images): conv 5×5 ×16, ReLU, max-pool 2, conv 5×5 ×32,
//! ReLU, max-pool 2, linear 512 → 10. Trained from the same initial
//! weights with candle's AdamW and with K-FAC and EKFAC (fixed and
//! adaptive) from kfac-candle; prints a table of test accuracy against
//! steps and seconds, the cost of a step against AdamW's, and where a
//! K-FAC step's time goes (candle, the adapter, kfac-core); writes
//! `mnist_cnn.json` and two plots of the test error.
//!
//! `cargo run --release -p kfac-candle --example mnist_cnn -- [--steps N]
//! [--batch B] [--eval-every E] [--out DIR] [--f64] [--only NAME]`
//!
//! The timings are only meaningful on a quiet machine.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Linear, Optimizer};
use kfac_candle::{Kfac, KfacConv2d, KfacLinear, PhaseTimes, Scalar, loss_tensor};
use kfac_core::optim::{AdaptiveConfig, FixedRule, KfacConfig, UpdateRule};
use kfac_core::{Loss, Rng};
use kfac_nn::data::{Batches, gather, mnist5k};
use ndarray::Array2;

type BoxError = Box<dyn std::error::Error>;

/// The options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Steps per run (300).
    pub steps: usize,
    /// Examples per batch (128).
    pub batch: usize,
    /// Evaluate on the test set every this many steps (25), and at the end.
    pub eval_every: usize,
    /// Where the JSON and the plots go (`target/kfac-candle`).
    pub out: PathBuf,
    /// Train in f64 instead of f32.
    pub f64: bool,
    /// Run only the optimizer of this name (and AdamW, the reference).
    pub only: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self { steps: 300, batch: 128, eval_every: 25, out: "target/kfac-candle".into(), f64: false, only: None }
    }
}

impl Options {
    /// Parses the command line (without the program name).
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag}: missing value"));
            let number = |v: &String| v.parse::<usize>().map_err(|_| format!("{flag}: not a number: {v}"));
            match flag.as_str() {
                "--steps" => o.steps = number(value()?)?,
                "--batch" => o.batch = number(value()?)?,
                "--eval-every" => o.eval_every = number(value()?)?,
                "--out" => o.out = value()?.into(),
                "--only" => o.only = Some(value()?.clone()),
                "--f64" => o.f64 = true,
                _ => return Err(format!("unknown argument {flag}")),
            }
        }
        if o.steps == 0 || o.batch == 0 || o.eval_every == 0 {
            return Err("--steps, --batch and --eval-every must be positive".into());
        }
        Ok(o)
    }
}

/// The network: three wrapped layers.
struct Cnn {
    c1: KfacConv2d,
    c2: KfacConv2d,
    fc: KfacLinear,
}

impl Module for Cnn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.c1.forward(x)?.relu()?.max_pool2d(2)?;
        let h = self.c2.forward(&h)?.relu()?.max_pool2d(2)?;
        self.fc.forward(&h.flatten_from(1)?)
    }
}

/// He-normal weights from a seeded generator (so every optimizer starts
/// from the same network), zero biases.
fn network<T: Scalar>(seed: u64, dev: &Device) -> Result<Cnn, BoxError> {
    let mut rng = Rng::new(seed);
    let mut var = |dims: &[usize], fan_in: usize| -> candle_core::Result<Var> {
        let sd = (2.0 / fan_in as f64).sqrt();
        let v: Vec<T> = (0..dims.iter().product()).map(|_| T::from_f64_lossy(sd * rng.normal())).collect();
        Var::from_vec(v, dims, dev)
    };
    let zeros = |n: usize| Var::zeros(n, T::CANDLE, dev);
    let conv =
        |w: Var, b: Var| KfacConv2d::new(Conv2d::new(w.into_inner(), Some(b.into_inner()), Conv2dConfig::default()));
    let c1 = conv(var(&[16, 1, 5, 5], 25)?, zeros(16)?)?;
    let c2 = conv(var(&[32, 16, 5, 5], 400)?, zeros(32)?)?;
    let fc = KfacLinear::new(Linear::new(var(&[10, 512], 512)?.into_inner(), Some(zeros(10)?.into_inner())))?;
    Ok(Cnn { c1, c2, fc })
}

/// The data as arrays: training and test images (N × 784) and one-hot labels.
struct Data<T> {
    train: (Array2<T>, Array2<T>),
    test: (Array2<T>, Array2<T>),
}

fn data<T: Scalar + From<f32>>() -> Result<Data<T>, BoxError> {
    let (train, test) = mnist5k()?.split(0.2, 0)?;
    let arrays = |d: &kfac_nn::data::Dataset| (d.images_as::<T>(), d.one_hot().mapv(<T as From<f32>>::from));
    Ok(Data { train: arrays(&train), test: arrays(&test) })
}

fn images<T: Scalar>(x: &Array2<T>, dev: &Device) -> candle_core::Result<Tensor> {
    let v: Vec<T> = x.iter().copied().collect();
    Tensor::from_vec(v, (x.nrows(), 1, 28, 28), dev)
}

fn matrix<T: Scalar>(x: &Array2<T>, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(x.iter().copied().collect::<Vec<T>>(), x.dim(), dev)
}

/// Test accuracy, in chunks of 500 images.
fn accuracy<T: Scalar>(model: &Cnn, test: &(Array2<T>, Array2<T>), dev: &Device) -> Result<f64, BoxError> {
    let mut hits = 0usize;
    for start in (0..test.0.nrows()).step_by(500) {
        let end = (start + 500).min(test.0.nrows());
        let x = images(&test.0.slice(ndarray::s![start..end, ..]).to_owned(), dev)?;
        let pred = model.forward(&x)?.argmax(1)?.to_vec1::<u32>()?;
        let truth = matrix(&test.1.slice(ndarray::s![start..end, ..]).to_owned(), dev)?.argmax(1)?.to_vec1::<u32>()?;
        hits += pred.iter().zip(&truth).filter(|(a, b)| a == b).count();
    }
    Ok(hits as f64 / test.0.nrows() as f64)
}

/// One evaluation point of a run.
#[derive(Debug, Clone, Copy)]
struct Point {
    step: usize,
    seconds: f64,
    accuracy: f64,
}

/// A finished run.
#[derive(Debug, Clone)]
struct Run {
    name: String,
    points: Vec<Point>,
    step_seconds: Vec<f64>,
    final_loss: f64,
    phases: Option<PhaseTimes>,
}

/// The K-FAC and EKFAC configurations: the fixed rule with the defaults
/// of a classifier (learning rate 0.1, momentum 0.9, damping 0.01, KL
/// clip 0.01), or the adaptive rule with kfac-core's defaults.
fn configs() -> Vec<(&'static str, KfacConfig)> {
    let fixed = FixedRule { lr: 0.1, momentum: 0.9, damping: 1e-2, kl_clip: Some(1e-2) };
    let with_fixed = |c: KfacConfig| KfacConfig { rule: UpdateRule::Fixed(fixed.clone()), ..c };
    vec![
        ("kfac", with_fixed(KfacConfig::kfac())),
        ("ekfac", with_fixed(KfacConfig::ekfac())),
        ("kfac-adaptive", KfacConfig::kfac().with_adaptive(AdaptiveConfig::default())),
        ("ekfac-adaptive", KfacConfig::ekfac().with_adaptive(AdaptiveConfig::default())),
    ]
}

/// Trains one model with `step` (AdamW or K-FAC) and evaluates it.
fn train<T: Scalar>(
    name: &str,
    o: &Options,
    d: &Data<T>,
    model: &Cnn,
    mut step: impl FnMut(&Tensor, &Tensor) -> Result<(f64, Option<PhaseTimes>), BoxError>,
) -> Result<Run, BoxError> {
    let dev = Device::Cpu;
    let mut batches = Batches::new(d.train.0.nrows(), o.batch, 1);
    let mut run =
        Run { name: name.into(), points: Vec::new(), step_seconds: Vec::new(), final_loss: f64::NAN, phases: None };
    let mut seconds = 0.0;
    for s in 1..=o.steps {
        let idx = batches.next_batch();
        let (x, t) = (images(&gather(&d.train.0, &idx), &dev)?, matrix(&gather(&d.train.1, &idx), &dev)?);
        let start = Instant::now();
        let (loss, phases) = step(&x, &t)?;
        let dt = start.elapsed().as_secs_f64();
        seconds += dt;
        run.step_seconds.push(dt);
        run.final_loss = loss;
        if let Some(p) = phases {
            run.phases = Some(run.phases.unwrap_or_default().add(&p));
        }
        if s % o.eval_every == 0 || s == o.steps {
            let accuracy = accuracy(model, &d.test, &dev)?;
            println!("{name:>15} step {s:4}: batch loss {loss:.4}, test accuracy {accuracy:.4} ({seconds:.1} s)");
            run.points.push(Point { step: s, seconds, accuracy });
        }
    }
    Ok(run)
}

fn adamw<T: Scalar>(o: &Options, d: &Data<T>) -> Result<Run, BoxError> {
    let model = network::<T>(0, &Device::Cpu)?;
    let vars = [&model.c1, &model.c2].into_iter().flat_map(|c| [c.weight().clone(), c.bias().unwrap().clone()]);
    let vars: Vec<Var> = vars.chain([model.fc.weight().clone(), model.fc.bias().unwrap().clone()]).collect();
    let mut opt = candle_nn::AdamW::new_lr(vars, 1e-3)?;
    train("adamw", o, d, &model, |x, t| {
        let loss = loss_tensor(Loss::SoftmaxCrossEntropy, &model.forward(x)?, t)?;
        opt.backward_step(&loss)?;
        Ok((loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?, None))
    })
}

fn kfac<T: Scalar>(name: &str, config: KfacConfig, o: &Options, d: &Data<T>) -> Result<Run, BoxError> {
    let model = network::<T>(0, &Device::Cpu)?;
    let layers = vec![(&model.c1).into(), (&model.c2).into(), (&model.fc).into()];
    let mut opt = Kfac::<T>::new(config, layers, Loss::SoftmaxCrossEntropy, 0)?;
    train(name, o, d, &model, |x, t| {
        let outcome = opt.step(x, t, |x| model.forward(x))?;
        Ok((outcome.report.loss, Some(outcome.times)))
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// The first evaluation at which `run` reaches `target` accuracy.
fn reached(run: &Run, target: f64) -> Option<Point> {
    run.points.iter().copied().find(|p| p.accuracy >= target)
}

fn table(runs: &[Run]) -> String {
    let adam = &runs[0];
    let target = adam.points.last().map_or(1.0, |p| p.accuracy);
    let adam_step = median(&adam.step_seconds);
    let mut s = format!(
        "| optimizer | final test accuracy | steps to AdamW's {target:.4} | seconds to it | median step (s) | step / AdamW's |\n|---|---|---|---|---|---|\n"
    );
    for r in runs {
        let fin = r.points.last().map_or(f64::NAN, |p| p.accuracy);
        let (steps, secs) = reached(r, target)
            .map_or(("not reached".into(), "-".into()), |p| (p.step.to_string(), format!("{:.1}", p.seconds)));
        let m = median(&r.step_seconds);
        s += &format!("| {} | {fin:.4} | {steps} | {secs} | {m:.4} | {:.2} |\n", r.name, m / adam_step);
    }
    s += "\n| optimizer | forward | backward | Fisher backward | statistics | reads | kfac-core | model forwards | write-back | adapter share |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for r in runs {
        if let Some(p) = r.phases {
            let n = r.step_seconds.len() as f64;
            let ms = |x: f64| format!("{:.2}", 1e3 * x / n);
            s += &format!(
                "| {} (ms per step) | {} | {} | {} | {} | {} | {} | {} | {} | {:.1}% |\n",
                r.name,
                ms(p.forward),
                ms(p.backward),
                ms(p.fisher_backward),
                ms(p.statistics),
                ms(p.reads),
                ms(p.core),
                ms(p.model_forwards),
                ms(p.write_back),
                100.0 * p.adapter() / p.total()
            );
        }
    }
    s
}

fn json(runs: &[Run], o: &Options) -> serde_json::Value {
    let run = |r: &Run| {
        let points: Vec<_> = r
            .points
            .iter()
            .map(|p| serde_json::json!({"step": p.step, "seconds": p.seconds, "test_accuracy": p.accuracy}))
            .collect();
        let phases = r.phases.map(|p| {
            serde_json::json!({
                "forward": p.forward, "backward": p.backward, "fisher_backward": p.fisher_backward,
                "statistics": p.statistics, "reads": p.reads, "core": p.core, "model_forwards": p.model_forwards,
                "write_back": p.write_back, "adapter_share": p.adapter() / p.total(),
            })
        });
        serde_json::json!({"name": r.name, "points": points, "median_step_seconds": median(&r.step_seconds),
            "final_batch_loss": r.final_loss, "phase_seconds_total": phases})
    };
    serde_json::json!({"steps": o.steps, "batch": o.batch, "precision": if o.f64 {"f64"} else {"f32"},
        "runs": runs.iter().map(run).collect::<Vec<_>>()})
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn outputs(runs: &[Run], o: &Options) -> Result<(), BoxError> {
    std::fs::create_dir_all(&o.out)?;
    write_atomic(&o.out.join("mnist_cnn.json"), serde_json::to_string_pretty(&json(runs, o))?.as_bytes())?;
    kfac_nn::report::register_font();
    for (file, label, x) in [("mnist_cnn_steps.png", "step", 0), ("mnist_cnn_seconds.png", "seconds", 1)] {
        let series: Vec<(String, Vec<(f64, f64)>)> = runs
            .iter()
            .map(|r| {
                let pts = r
                    .points
                    .iter()
                    .map(|p| (if x == 0 { p.step as f64 } else { p.seconds }, (1.0 - p.accuracy).max(1e-4)));
                (r.name.clone(), pts.collect())
            })
            .collect();
        kfac_nn::report::plot(&o.out.join(file), "candle CNN on MNIST-5k: test error", label, &series)?;
    }
    Ok(())
}

fn all<T: Scalar + From<f32>>(o: &Options) -> Result<Vec<Run>, BoxError> {
    let d = data::<T>()?;
    let mut runs = vec![adamw(o, &d)?];
    for (name, config) in configs() {
        if o.only.as_deref().is_none_or(|only| only == name) {
            runs.push(kfac(name, config, o, &d)?);
        }
    }
    Ok(runs)
}

/// Runs everything; returns the table.
pub fn run(o: &Options) -> Result<String, BoxError> {
    let runs = if o.f64 { all::<f64>(o)? } else { all::<f32>(o)? };
    let t = table(&runs);
    println!("\n{t}");
    outputs(&runs, o)?;
    println!("wrote {}", o.out.join("mnist_cnn.json").display());
    Ok(t)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mnist_cnn: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mnist_cnn: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
