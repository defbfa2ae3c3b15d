//! The kfac benchmarks and studies: `cargo xtask bench [--quick]` runs them
//! all and puts the results in `target/kfac-bench/`.
//!
//! - Criterion benchmarks (`cargo bench -p kfac-bench`), grouped as
//!   `op/backend` with the size as the parameter: `benches/linalg.rs` (the
//!   backends and the blocks), `benches/mlp.rs` (forward+backward),
//!   `benches/optim.rs` (one step of each optimizer).
//!   [`criterion_summary`] gathers their medians into one table.
//! - [`race`]: the optimizer race on the MNIST autoencoder.
//! - [`fidelity`]: the exact Fisher blocks against K-FAC and EKFAC.
//! - [`defaults`]: the study that chose the adaptive machinery's defaults
//!   on problems other than the race.
//! - [`soak`]: 10,000 EKFAC steps with damping $10^{-8}$, and the health
//!   report of the numerical safeguards.
//! - [`empirical_fisher`]: Kunstner et al.'s figures on the empirical
//!   Fisher's limits, reproduced with `kfac_core`'s blocks.
//!
//! The `kfac-bench` binary runs the studies:
//! `cargo run --release -p kfac-bench -- race|fidelity|soak|adaptive-defaults|empirical-fisher|summary`.

use kfac_core::{LayerBatch, LayerShape, Real};
use ndarray::Array2;

pub mod criterion_summary;
pub mod defaults;
pub mod empirical_fisher;
pub mod fidelity;
pub mod race;
pub mod soak;

/// Small statistics helpers.
pub mod stats {
    /// The median of `xs` (the mean of the two middle values for an even
    /// count); NaN for an empty slice.
    pub fn median(xs: &[f64]) -> f64 {
        if xs.is_empty() {
            return f64::NAN;
        }
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
    }
}

/// A deterministic pseudo-random matrix with entries in [-1, 1).
pub fn matrix<T: Real>(rows: usize, cols: usize, seed: u64) -> Array2<T> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    Array2::from_shape_fn((rows, cols), |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        T::from_f64_lossy(((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0)
    })
}

/// A symmetric positive definite matrix $X^\top X / n + I$ of side `n`, the shape of a Kronecker factor.
pub fn spd<T: Real>(n: usize, seed: u64) -> Array2<T> {
    let x = matrix::<T>(2 * n, n, seed);
    let mut a = x.t().dot(&x) / T::from_usize(2 * n).unwrap();
    a.diag_mut().mapv_inplace(|v| v + T::one());
    a
}

/// A batch for a layer: inputs `n x shape.d_in` and gradients `n x shape.d_out`.
pub fn batch_data<T: Real>(shape: LayerShape, n: usize, seed: u64) -> (Array2<T>, Array2<T>) {
    (matrix(n, shape.d_in, seed), matrix(n, shape.d_out, seed + 1))
}

/// Views `batch_data` as a [`LayerBatch`].
pub fn batch<'a, T: Real>(data: &'a (Array2<T>, Array2<T>)) -> LayerBatch<'a, T> {
    LayerBatch::new(data.0.view(), data.1.view())
}
