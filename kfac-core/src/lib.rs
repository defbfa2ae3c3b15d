//! Kronecker-factored approximate curvature (K-FAC, EKFAC), independent of any
//! neural-network framework and of any linear-algebra library.
//!
//! Natural-gradient descent preconditions the gradient with the Fisher matrix
//! $F$. For a dense layer with input $a$ and pre-activation gradient $g$,
//! K-FAC (Martens & Grosse, 2015) approximates the layer's block of $F$ by
//! $$ F_\ell \approx A \otimes B, \qquad A = E[\bar a \bar a^\top],\quad B = E[g g^\top] ,$$
//! drops the blocks between layers, and applies $(A \otimes B + \text{damping})^{-1}$
//! through the identity $(C \otimes D)\operatorname{vec}(X) = \operatorname{vec}(D X C^\top)$,
//! never forming a Kronecker product. EKFAC (George et al., 2018) keeps the
//! eigenbasis $U_A \otimes U_B$ but re-estimates the diagonal in it from
//! per-example gradients, the Frobenius-optimal choice in that basis.
//!
//! Any framework that can hand over, per layer, the batch of inputs and of
//! pre-activation gradients can use this crate:
//! - [`LayerBatch`] carries them (conventions in [`shape`]: the loss is a
//!   mean over the batch, $g_n$ is per-example, the bias is the last column of
//!   $\bar W$, `vec` stacks columns);
//! - a [`CurvatureBlock`] ([`KfacBlock`], [`EkfacBlock`], [`DiagonalBlock`],
//!   [`DenseBlock`]) keeps one layer's statistics and preconditions its gradient;
//! - [`Preconditioner`] runs the blocks of a stack of layers on K-FAC's
//!   schedule (statistics, refresh and scalings periods; [`damping`]);
//! - [`TridiagonalKfac`] ([`Structure::Tridiagonal`] in a [`Preconditioner`])
//!   keeps the covariances between consecutive layers as well: Martens &
//!   Grosse's block-tridiagonal model of the inverse Fisher, applied with
//!   factor-sized products only;
//! - the dense linear algebra comes from a [`LinAlg`] backend:
//!   `kfac-linalg-faer` (fast, multithreaded) or `kfac-linalg-nalgebra`.
//!   The `kfac` crate picks one by cargo feature;
//! - [`state`] saves and restores all of it exactly (checkpoints) and
//!   reports each layer's health ([`BlockHealth`]).
//!
//! Numbers are guarded: batches are checked before any statistic changes
//! (a non-finite one is skipped or refused, [`NonFinitePolicy`]), factors
//! are made exactly symmetric before a decomposition, negative eigenvalues
//! are clamped, and an `f32` decomposition that fails is redone in `f64`.
//!
//! [`ndarray`] is the only array type in the API; `f32` and `f64` both work.
//!
//! # Example: a model written in plain ndarray, trained with K-FAC and EKFAC
//! A two-layer tanh network fitting a smooth function, with its own forward
//! and backward passes. It hands its layers' inputs and pre-activation
//! gradients to a [`Preconditioner`] and steps along the preconditioned
//! gradient. The curvature is the true Fisher: the statistics come from a
//! second backward pass with targets sampled from the model's predictive
//! distribution, here $\mathcal N(y, 1)$, so the sampled output gradient
//! $y - \tilde t$ is standard normal noise. (With the data targets instead, the
//! empirical Fisher shrinks with the residual and the steps blow up near the
//! optimum; Kunstner et al., 2019.)
//! ```
//! use kfac_core::{BlockKind, DampingSchedule, KfacMethod, LayerBatch, LayerShape, Preconditioner, PreconditionerConfig};
//! use kfac_linalg_faer::Faer;
//! use ndarray::{Array2, Axis, s};
//!
//! // 256 points in [-1, 1]^2 and the targets sin(2 x0) + x1 / 2.
//! let n = 256;
//! let x = Array2::from_shape_fn((n, 2), |(i, j)| ((i * (37 + 24 * j)) % 101) as f64 / 50.0 - 1.0);
//! let t = x.map_axis(Axis(1), |r| (2.0 * r[0]).sin() + 0.5 * r[1]).insert_axis(Axis(1));
//! let shapes = [LayerShape::new(2, 16), LayerShape::new(16, 1)];
//!
//! // Forward: z1 = x W1ᵀ + b1, h = tanh(z1), y = h W2ᵀ + b2, with W̄ = [W | b].
//! let forward = |w1: &Array2<f64>, w2: &Array2<f64>| {
//!     let h = (x.dot(&w1.slice(s![.., ..2]).t()) + &w1.column(2)).mapv(f64::tanh);
//!     let y = h.dot(&w2.slice(s![.., ..16]).t()) + &w2.column(16);
//!     (h, y)
//! };
//! let loss = |y: &Array2<f64>| 0.5 * (y - &t).mapv(|e| e * e).sum() / n as f64;
//!
//! // Standard normal noise: Box–Muller on a linear congruential generator.
//! let mut state = 42u64;
//! let mut uniform = move || {
//!     state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
//!     ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
//! };
//! let mut normal = move || (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
//!
//! let la = Faer::sequential();
//! for block in [BlockKind::Kfac(KfacMethod::Eigen), BlockKind::Ekfac] {
//!     let mut w1 = Array2::from_shape_fn((16, 3), |(i, j)| (1.7 * (3 * i + j) as f64).sin());
//!     let mut w2 = Array2::from_shape_fn((1, 17), |(_, j)| 0.3 * (1.3 * j as f64).cos());
//!     let damping = DampingSchedule::tikhonov(0.1);
//!     let config = PreconditionerConfig { block, damping, refresh_period: 5, ..Default::default() };
//!     let mut kfac = Preconditioner::new(config, &shapes)?;
//!     let first = loss(&forward(&w1, &w2).1);
//!     for _ in 0..50 {
//!         let (h, y) = forward(&w1, &w2);
//!         // Per-example gradients of ℓ = ½ (y - t)² w.r.t. the pre-activations.
//!         let backward = |g2: &Array2<f64>| g2.dot(&w2.slice(s![.., ..16])) * h.mapv(|v| 1.0 - v * v);
//!         let g2 = &y - &t;
//!         let g1 = backward(&g2);
//!         // The same with sampled targets t̃ = y + ε feeds the curvature.
//!         let s2 = Array2::from_shape_simple_fn((n, 1), || -normal());
//!         let s1 = backward(&s2);
//!         kfac.update(&la, Some(&[LayerBatch::new(x.view(), s1.view()), LayerBatch::new(h.view(), s2.view())]))?;
//!         // Gradients of the mean loss: (1/N) Σ g ā ᵀ, joined as [W | b].
//!         let grad1 = shapes[0].join((g1.t().dot(&x) / n as f64).view(), Some(g1.mean_axis(Axis(0)).unwrap().view()))?;
//!         let grad2 = shapes[1].join((g2.t().dot(&h) / n as f64).view(), Some(g2.mean_axis(Axis(0)).unwrap().view()))?;
//!         let steps = kfac.precondition(&la, &[grad1.view(), grad2.view()])?;
//!         w1.scaled_add(-0.5, &steps[0]);
//!         w2.scaled_add(-0.5, &steps[1]);
//!     }
//!     let last = loss(&forward(&w1, &w2).1);
//!     println!("{block:?}: loss {first:.4} -> {last:.5}");
//!     assert!(last < 0.01 * first);
//! }
//! # Ok::<(), kfac_core::Error>(())
//! ```
//!
//! # References
//! - J. Martens, R. Grosse. *Optimizing Neural Networks with Kronecker-factored
//!   Approximate Curvature.* ICML 2015.
//! - T. George, C. Laurent, X. Bouthillier, N. Ballas, P. Vincent. *Fast
//!   Approximate Natural Gradient Descent in a Kronecker-factored Eigenbasis.*
//!   NeurIPS 2018.
//! - F. Kunstner, L. Balles, P. Hennig. *Limitations of the Empirical Fisher
//!   Approximation for Natural Gradient Descent.* NeurIPS 2019.

// This crate's README, compiled and run as a doctest so that its example
// cannot rot. Only doctests see this item.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod average;
pub mod blocks;
pub mod damping;
pub mod error;
pub mod factors;
pub mod linalg;
pub mod preconditioner;
pub mod scalar;
pub mod shape;
pub mod state;
pub mod tridiagonal;

pub use average::MovingAverage;
pub use blocks::{BlockKind, CurvatureBlock, DenseBlock, DiagonalBlock, EkfacBlock, KfacBlock, KfacMethod};
pub use damping::{Damping, DampingKind, DampingSchedule, PiRule, Schedule};
pub use error::{Error, LinAlgError, Result};
pub use factors::KroneckerFactors;
pub use linalg::{LinAlg, SymEig};
pub use preconditioner::{
    NonFinitePolicy, Preconditioner, PreconditionerConfig, PreconditionerState, Structure, UpdateReport,
};
pub use scalar::Real;
pub use shape::{GradScale, LayerBatch, LayerShape};
pub use state::{BlockHealth, BlockState};
pub use tridiagonal::TridiagonalKfac;
