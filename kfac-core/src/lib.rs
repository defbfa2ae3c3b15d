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
//!   $\bar W$, `vec` stacks columns), for dense layers and for layers that
//!   share their weights over positions, convolutions and sequences
//!   ([`statistics`]: K-FAC-expand, K-FAC-reduce, KFC and [`conv::im2col`]);
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
//!   reports each layer's health ([`BlockHealth`]); with the `serde`
//!   feature every configuration, state and report is serialisable.
//!
//! Numbers are guarded: batches are checked before any statistic changes
//! (a non-finite one is skipped or refused, [`NonFinitePolicy`]), factors
//! are made exactly symmetric before a decomposition, negative eigenvalues
//! are clamped, and an `f32` decomposition that fails is redone in `f64`.
//!
//! [`ndarray`] is the only array type in the API; `f32` and `f64` both work.
//!
//! - [`optim`] runs the whole step for any framework: [`KfacOptimizer`]
//!   takes the layers' gradients and statistics and returns the update, by
//!   the fixed rule (learning rate, momentum, KL clip) or Martens & Grosse's
//!   adaptive rule, whose few model-dependent numbers come through the small
//!   trait [`CurvatureModel`] (exact Jacobian-vector products, or
//!   [`FiniteDifferences`] of forward passes for frameworks without forward
//!   mode); [`loss`] has the standard losses with their output-space Fisher
//!   and target sampling.
//!
//! # Example: a model written in plain ndarray, trained with the fixed and the adaptive rule
//! A two-layer tanh network fitting a smooth function, with its own forward
//! and backward passes and no forward mode. It hands its layers' inputs and
//! pre-activation gradients to a [`KfacOptimizer`] and adds the update it
//! returns. The curvature is the true Fisher: the statistics come from a
//! second backward pass with targets sampled from the model's predictive
//! distribution, here $\mathcal N(y, 1)$ ([`Loss::sampled_grad`]). (With the
//! data targets instead, the empirical Fisher shrinks with the residual and
//! the steps blow up near the optimum; Kunstner et al., 2019.) The adaptive
//! rule gets its quadratic forms from [`FiniteDifferences`], which needs only
//! the network's outputs at shifted weights ([`OutputModel`]); with its
//! defaults it ends lower than the fixed rule at equal steps.
//! ```
//! use kfac_core::optim::{AdaptiveConfig, CurvatureConfig, FiniteDifferences, FixedRule, KfacConfig};
//! use kfac_core::optim::{KfacOptimizer, NoCurvature, OutputModel, StepInput, UpdateRule};
//! use kfac_core::{BlockKind, Error, LayerBatch, LayerShape, Loss, Rng};
//! use kfac_linalg_faer::Faer;
//! use ndarray::{Array2, Axis, s};
//!
//! // Forward: z1 = x W1ᵀ + b1, h = tanh(z1), y = h W2ᵀ + b2, with W̄ = [W | b].
//! fn forward(x: &Array2<f64>, w: &[Array2<f64>]) -> (Array2<f64>, Array2<f64>) {
//!     let h = (x.dot(&w[0].slice(s![.., ..2]).t()) + &w[0].column(2)).mapv(f64::tanh);
//!     (h.clone(), h.dot(&w[1].slice(s![.., ..16]).t()) + &w[1].column(16))
//! }
//! // What the finite differences need: outputs and loss at W̄ + δ.
//! struct Net<'a> { x: &'a Array2<f64>, t: &'a Array2<f64>, w: &'a [Array2<f64>] }
//! impl OutputModel<f64> for Net<'_> {
//!     type Error = Error;
//!     fn outputs_at(&mut self, delta: &[Array2<f64>]) -> Result<Array2<f64>, Error> {
//!         let w: Vec<_> = self.w.iter().zip(delta).map(|(w, d)| w + d).collect();
//!         Ok(forward(self.x, &w).1)
//!     }
//!     fn loss_at(&mut self, delta: &[Array2<f64>]) -> Result<f64, Error> {
//!         Loss::SquaredError.value(self.outputs_at(delta)?.view(), self.t.view())
//!     }
//! }
//!
//! // 256 points in [-1, 1]^2 and the targets sin(2 x0) + x1 / 2.
//! let n = 256;
//! let x = Array2::from_shape_fn((n, 2), |(i, j)| ((i * (37 + 24 * j)) % 101) as f64 / 50.0 - 1.0);
//! let t = x.map_axis(Axis(1), |r| (2.0 * r[0]).sin() + 0.5 * r[1]).insert_axis(Axis(1));
//! let shapes = [LayerShape::new(2, 16), LayerShape::new(16, 1)];
//! let la = Faer::sequential();
//! let fixed = UpdateRule::Fixed(FixedRule { lr: 0.5, momentum: 0.0, damping: 0.1, kl_clip: None });
//! let adaptive = UpdateRule::Adaptive(AdaptiveConfig::default());
//! for block in [BlockKind::Kfac(kfac_core::KfacMethod::Eigen), BlockKind::Ekfac] {
//!     let mut last = vec![];
//!     for rule in [fixed.clone(), adaptive.clone()] {
//!         let curvature = CurvatureConfig { block, refresh_period: 5, stats_fraction: 1.0, ..CurvatureConfig::kfac_eigen() };
//!         let is_adaptive = matches!(rule, UpdateRule::Adaptive(_));
//!         let mut opt = KfacOptimizer::new(KfacConfig { curvature, rule, l2: 0.0, ..KfacConfig::default() }, &shapes)?;
//!         let mut w = vec![
//!             Array2::from_shape_fn((16, 3), |(i, j)| (1.7 * (3 * i + j) as f64).sin()),
//!             Array2::from_shape_fn((1, 17), |(_, j)| 0.3 * (1.3 * j as f64).cos()),
//!         ];
//!         let mut rng = Rng::new(42);
//!         for _ in 0..50 {
//!             let (h, y) = forward(&x, &w);
//!             // Per-example gradients of ℓ = ½ (y - t)² w.r.t. the pre-activations,
//!             // at the data's targets (the step) and at sampled ones (the curvature).
//!             let backward = |g2: &Array2<f64>| g2.dot(&w[1].slice(s![.., ..16])) * h.mapv(|v| 1.0 - v * v);
//!             let (g2, s2) = (&y - &t, Loss::SquaredError.sampled_grad(y.view(), &mut rng));
//!             let (g1, s1) = (backward(&g2), backward(&s2));
//!             let stats = [LayerBatch::new(x.view(), s1.view()), LayerBatch::new(h.view(), s2.view())];
//!             // Gradients of the mean loss, (1/N) Σ g āᵀ, joined as [W | b].
//!             let grads = vec![
//!                 shapes[0].join((g1.t().dot(&x) / n as f64).view(), Some(g1.mean_axis(Axis(0)).unwrap().view()))?,
//!                 shapes[1].join((g2.t().dot(&h) / n as f64).view(), Some(g2.mean_axis(Axis(0)).unwrap().view()))?,
//!             ];
//!             let loss = Loss::SquaredError.value(y.view(), t.view())?;
//!             let params: Vec<_> = w.iter().map(|a| a.view()).collect();
//!             let input = StepInput { params: &params, grads, loss, statistics: Some(&stats) };
//!             let update = if is_adaptive {
//!                 let mut net = Net { x: &x, t: &t, w: &w };
//!                 let mut fd = FiniteDifferences::new(&mut net, Loss::SquaredError, y.clone(), &params);
//!                 opt.step(&la, input, &mut fd)?.update()
//!             } else {
//!                 opt.step(&la, input, &mut NoCurvature)?.update()
//!             };
//!             for (w, u) in w.iter_mut().zip(update.into_iter().flatten()) {
//!                 *w += &u;
//!             }
//!         }
//!         last.push(Loss::SquaredError.value(forward(&x, &w).1.view(), t.view())?);
//!     }
//!     println!("{block:?}: loss after 50 steps, fixed {:.6}, adaptive {:.6}", last[0], last[1]);
//!     assert!(last[0] < 1e-3 && last[1] < 0.5 * last[0]);
//! }
//! # Ok::<(), kfac_core::Error>(())
//! ```
//!
//! [`Preconditioner`] alone (the blocks and their schedule, without an
//! update rule) is the lower level for callers that keep their own
//! optimizer.
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
pub mod comm;
pub mod damping;
pub mod error;
pub mod factors;
pub mod linalg;
pub mod loss;
#[cfg(feature = "serde")]
pub mod nonfinite;
pub mod optim;
pub mod preconditioner;
pub mod rng;
pub mod scalar;
pub mod shape;
pub mod state;
pub mod statistics;
pub mod tridiagonal;
pub mod vmath;

pub use average::MovingAverage;
pub use blocks::{BlockKind, CurvatureBlock, DenseBlock, DiagonalBlock, EkfacBlock, KfacBlock, KfacMethod};
pub use comm::{Communicator, Reduction, SingleProcess};
pub use damping::{Damping, DampingKind, DampingSchedule, PiRule, Schedule};
pub use error::{Error, LinAlgError, Result};
pub use factors::KroneckerFactors;
pub use linalg::{LinAlg, SymEig};
pub use loss::{FisherMode, Loss};
pub use optim::{
    AdaptiveConfig, CurvatureConfig, CurvatureModel, FiniteDifferences, FixedRule, KfacConfig, KfacOptimizer,
    KfacState, OutputModel, StepInput, StepReport, UpdateRule,
};
pub use preconditioner::{
    NonFinitePolicy, Preconditioner, PreconditionerConfig, PreconditionerState, Structure, UpdateReport,
};
pub use rng::Rng;
pub use scalar::Real;
pub use shape::{GradScale, LayerBatch, LayerShape};
pub use state::{BlockHealth, BlockState};
pub use statistics::{Normalization, Sharing, conv, conv::Conv2dGeometry};
pub use tridiagonal::TridiagonalKfac;
