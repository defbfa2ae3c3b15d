//! The same network in candle (through kfac-candle) and in kfac-nn: same
//! weights, same batch, same sampled targets (one seeded generator each,
//! drawn in the same order). After each of two steps the factors $A$ and
//! $B$, EKFAC's scalings $S$ and eigenvalues, the update the optimizer
//! wrote, and the preconditioned gradient of a fixed direction agree:
//! to $10^{-12}$ relative in f64, and within the f32 rounding bound below
//! in f32; for every loss, both Fishers, K-FAC and EKFAC.

mod common;

use common::*;
use kfac_candle::Kfac;
use kfac_core::optim::KfacConfig;
use kfac_core::{FisherMode, Loss, Real, Rng};
use kfac_nn::mlp::{Activation, Init, Mlp};
use kfac_nn::optim::{Optimizer, OptimizerConfig};

/// With τ = 1/4, 16 statistics rows: more than the largest factor's side
/// (8), so that no eigenvalue of a factor is degenerate (EKFAC's basis is
/// then unique up to signs, and the scalings comparable).
const N: usize = 64;
const SIZES: [usize; 4] = [6, 5, 7, 4];
const SEED: u64 = 11;

/// The tolerance of a comparison of two computations of the same number in
/// the precision `T`, whose sums run over at most `N` examples or the
/// widest layer, through the network's `depth` products, amplified by
/// `kappa` (1 for the factors; a bound on the damped block's condition
/// number for the preconditioned gradient). In f64 the issue's $10^{-12}$
/// (the bound itself is about $10^{-14}\kappa$ here).
fn tolerance<T: Real>(kappa: f64) -> f64 {
    let widest = *SIZES.iter().max().unwrap();
    let bound = 4.0 * (N + SIZES.len() * widest) as f64 * T::EPSILON.to_f64_exact() * kappa;
    if T::NAME == "f64" { 1e-12_f64.max(bound) } else { bound }
}

/// $1 + \operatorname{tr} A\,\operatorname{tr} B/\lambda$ over the layers (the
/// largest): bounds the condition number of the damped block, whichever
/// way the damping $\lambda$ is split between the factors.
fn kappa<T: Real>(state: &kfac_core::preconditioner::PreconditionerState<T>, lambda: f64) -> f64 {
    let trace = |m: &ndarray::ArrayD<T>| (0..m.shape()[0]).map(|i| m[[i, i]].to_f64_exact()).sum::<f64>();
    state.blocks.iter().map(|b| 1.0 + trace(&b.tensors["A"]) * trace(&b.tensors["B"]) / lambda).fold(1.0, f64::max)
}

fn run<T: Both>(loss: Loss, fisher: FisherMode, mut config: KfacConfig) {
    config.curvature.fisher = fisher;
    let mut mlp = Mlp::<T>::new(&SIZES, Activation::Relu, Activation::Identity, Init::Glorot, 5, &[]).unwrap();
    nonzero_biases(&mut mlp);
    let (x, t) = batch::<T>(N, SIZES[0], SIZES[3], loss, 1);
    let la = T::backend(kfac_nn::backend::Backend::default(), true).unwrap();
    let candle = CandleMlp::from_mlp(&mlp);
    let mut nn = Optimizer::new(OptimizerConfig::Kfac(config.clone()), &mlp).unwrap();
    let mut kc = Kfac::<T>::new(config.clone(), candle.kfac_layers(), loss, SEED).unwrap();
    let mut rng = Rng::new(SEED);
    let (xt, tt) = (tensor(&x), tensor(&t));
    let case = format!("{} {loss:?} {fisher:?} {:?}", T::NAME, config.curvature.block);
    for step in 0..2 {
        let before = candle.params::<T>();
        nn.step(&*la, &mut mlp, x.view(), t.view(), loss, &mut rng).unwrap();
        kc.step(&xt, &tt, |x| candle.forward(x)).unwrap();
        let sn = nn.preconditioner().unwrap().state();
        let sc = kc.core().preconditioner().state();
        let ekfac = sn.blocks[0].tensors.contains_key("S");
        let names: &[&str] = if ekfac { &["A", "B", "S", "sa", "sb"] } else { &["A", "B"] };
        let tol = tolerance::<T>(1.0);
        for (l, (a, b)) in sc.blocks.iter().zip(&sn.blocks).enumerate() {
            let (e, name) = compare_states(a, b, names);
            assert!(e <= tol, "{case} step {step} layer {l} {name}: relative error {e:e} > {tol:e}");
        }
        let lambda = match &config.rule {
            kfac_core::optim::UpdateRule::Fixed(f) => f.damping,
            kfac_core::optim::UpdateRule::Adaptive(_) => 1.0,
        };
        let tol = tolerance::<T>(kappa(&sn, lambda));
        let after = candle.params::<T>();
        for (l, ((c0, c1), n1)) in before.iter().zip(&after).zip(&mlp.layers).enumerate() {
            let (dc, dn) = (c1 - c0, &n1.w - c0);
            let e = rel(dc.view(), dn.view());
            assert!(e <= tol, "{case} step {step} layer {l} update: relative error {e:e} > {tol:e}");
        }
        let dims: Vec<_> = mlp.layers.iter().map(|l| l.w.dim()).collect();
        let g = directions::<T>(&dims, 0.3);
        let pc = kc.core().preconditioner().precondition(&*la, &views(&g)).unwrap();
        let pn = nn.preconditioner().unwrap().precondition(&*la, &views(&g)).unwrap();
        for (l, (a, b)) in pc.iter().zip(&pn).enumerate() {
            let e = rel(a.view(), b.view());
            assert!(e <= tol, "{case} step {step} layer {l} preconditioned: relative error {e:e} > {tol:e}");
        }
    }
}

fn all<T: Both>() {
    for loss in [Loss::SoftmaxCrossEntropy, Loss::SigmoidCrossEntropy, Loss::SquaredError] {
        for fisher in [FisherMode::True, FisherMode::Empirical] {
            for config in [KfacConfig::kfac(), KfacConfig::ekfac()] {
                run::<T>(loss, fisher, config);
            }
        }
    }
}

#[test]
fn same_numbers_as_kfac_nn_f64() {
    all::<f64>();
}

#[test]
fn same_numbers_as_kfac_nn_f32() {
    all::<f32>();
}

/// τ = 1 with the empirical Fisher reuses the data backward pass (no
/// second one): the numbers are still kfac-nn's.
#[test]
fn empirical_fisher_on_the_whole_batch() {
    let mut config = KfacConfig::ekfac();
    config.curvature.stats_fraction = 1.0;
    run::<f64>(Loss::SoftmaxCrossEntropy, FisherMode::Empirical, config);
}
