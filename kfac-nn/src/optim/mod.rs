//! Optimizers: SGD with momentum (heavy ball or Nesterov), Adam, and K-FAC /
//! EKFAC / block-tridiagonal K-FAC through kfac-core's optimizer.
//!
//! Every optimizer takes a whole step on a batch $(x, t)$: forward pass,
//! loss, backward pass, and the update. Each has its own configuration
//! ([`SgdConfig`], [`AdamConfig`], [`KfacConfig`]), with documented defaults
//! and a `validate` that names the field it refuses. K-FAC's step, from the
//! curvature statistics to the fixed or adaptive rule, is kfac-core's
//! ([`kfac_core::optim`](::kfac::KfacOptimizer)); this crate hands it the
//! layers' inputs and pre-activation gradients, on the first
//! $\lceil \tau N \rceil$ examples of each batch.
//!
//! # Safeguards
//! A step checks its loss, its gradient, and (K-FAC, EKFAC) its
//! preconditioned direction and KL-clip product. If any of them is not
//! finite, the step writes no weight, momentum or Adam moment (and when the
//! loss or the gradient is the culprit, no curvature statistic either: a
//! bad batch never reaches the factors) and, with
//! [`NonFinitePolicy::Skip`] (the default), says so in its [`StepReport`];
//! with [`NonFinitePolicy::Error`] it returns [`Error::NonFinite`].
//! Momentum updates are also refused when the new weights could overflow
//! (a bound checked before writing); Adam's step is at most a small
//! multiple of $\eta$ per weight by construction.

mod adam;
mod kfac;
mod model;
mod parallel;
mod sgd;

pub use self::adam::AdamConfig;
pub use self::model::CurvatureProducts;
pub use self::parallel::Part;
pub use self::sgd::SgdConfig;
pub use ::kfac::optim::{
    AdaptiveConfig, AdaptiveRecord, CurvatureConfig, FixedRule, KfacConfig, KfacState, StepReport, UpdateRule,
};
pub use ::kfac::{BlockKind, DampingKind, KfacMethod, NonFinitePolicy, PiRule, Sharing, Structure};

/// Why block-tridiagonal K-FAC refuses a network with convolutions.
///
/// Martens & Grosse's chain model couples consecutive layers through the
/// cross factors $\Psi_{l,l+1} = \mathbb E[\bar a_l \bar a_{l+1}^\top]$ and
/// $\mathbb E[g_l g_{l+1}^\top]$, estimated by pairing row $n$ of layer $l$
/// with row $n$ of layer $l+1$. A convolution has one row per example and
/// output location, $R_l = |T_l|$ of them, and its neighbours have other
/// numbers of positions (a pooling or a dense layer in between changes
/// $R$): there is no per-position pairing across layers of different $R$,
/// so $\Psi$ has no per-position form. kfac-core refuses such batches
/// (`InvalidConfig` on `positions > 1`); kfac-nn refuses the configuration
/// before the first step. Use the block-diagonal structure.
pub const TRIDIAGONAL_CONVOLUTIONS: &str = "block-tridiagonal K-FAC needs one row per example in every layer, and a \
     convolution has one per example and output location: its cross-layer factors have no per-position form across \
     layers with different numbers of positions; use --structure diagonal (block-diagonal K-FAC) with the cnn task";

/// Why SGD and Adam refuse data-parallel training.
pub const DATA_PARALLEL_OPTIMIZERS: &str =
    "data-parallel training (--parts, mpirun) is implemented for kfac and ekfac; run sgd and adam in one process";

use ::kfac::optim::StepReport as Report;
use ::kfac::{LinAlg, Preconditioner};
use ndarray::{Array2, ArrayView2};

use crate::backend::Scalar;
use crate::error::{Error, Result};
use crate::loss::Loss;
use crate::mlp::Mlp;
use crate::rng::Rng;

/// The optimizers the command offers, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Stochastic gradient descent with momentum.
    Sgd,
    /// Adam (Kingma & Ba, 2015).
    Adam,
    /// K-FAC (Martens & Grosse, 2015): Cholesky inverses of the factors with
    /// factored damping (the default), eigenbases with Tikhonov damping.
    Kfac,
    /// EKFAC (George et al., 2018).
    Ekfac,
}

impl OptimizerKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::Adam => "adam",
            Self::Kfac => "kfac",
            Self::Ekfac => "ekfac",
        }
    }

    /// Whether the optimizer uses curvature statistics.
    pub fn is_curvature(self) -> bool {
        matches!(self, Self::Kfac | Self::Ekfac)
    }
}

/// An optimizer and its knobs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// SGD with momentum.
    Sgd(SgdConfig),
    /// Adam.
    Adam(AdamConfig),
    /// K-FAC, EKFAC or block-tridiagonal K-FAC (by the curvature's block
    /// and structure), with the fixed or the adaptive rule.
    Kfac(KfacConfig),
}

impl OptimizerConfig {
    /// The defaults of `kind`: the best of the grids on the reference
    /// autoencoder (batch 1000, 200 steps, seed 0). SGD: lr 3e-3, momentum
    /// 0.9. Adam: lr 3e-3. K-FAC: factored damping λ = 1, KL clip 1, Cholesky
    /// inverses. EKFAC: Tikhonov damping λ = 1, KL clip 1. All: ℓ2 1e-5;
    /// K-FAC and EKFAC: lr 0.3, momentum 0.9, statistics decay 0.95 on a
    /// quarter of each batch (true Fisher), inverses or eigenbases every 20
    /// steps, EKFAC scalings every step.
    pub fn defaults(kind: OptimizerKind) -> Self {
        match kind {
            OptimizerKind::Sgd => Self::Sgd(SgdConfig::default()),
            OptimizerKind::Adam => Self::Adam(AdamConfig::default()),
            OptimizerKind::Kfac => Self::Kfac(KfacConfig::kfac()),
            OptimizerKind::Ekfac => Self::Kfac(KfacConfig::ekfac()),
        }
    }

    /// The optimizer's name: `sgd`, `adam`, `kfac` (K-FAC blocks, either
    /// structure), `ekfac`, `diagonal` or `dense` (by the curvature block).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sgd(_) => "sgd",
            Self::Adam(_) => "adam",
            Self::Kfac(k) => match k.curvature.block {
                BlockKind::Kfac(_) => "kfac",
                BlockKind::Ekfac => "ekfac",
                BlockKind::Diagonal => "diagonal",
                BlockKind::Dense => "dense",
            },
        }
    }

    /// The K-FAC configuration, for K-FAC and EKFAC.
    pub fn kfac(&self) -> Option<&KfacConfig> {
        match self {
            Self::Kfac(k) => Some(k),
            _ => None,
        }
    }

    /// The K-FAC configuration, mutable.
    pub fn kfac_mut(&mut self) -> Option<&mut KfacConfig> {
        match self {
            Self::Kfac(k) => Some(k),
            _ => None,
        }
    }

    /// The same configuration with `policy` for non-finite numbers.
    pub fn with_on_non_finite(mut self, policy: NonFinitePolicy) -> Self {
        match &mut self {
            Self::Sgd(c) => c.on_non_finite = policy,
            Self::Adam(c) => c.on_non_finite = policy,
            Self::Kfac(c) => c.on_non_finite = policy,
        }
        self
    }

    /// The learning rate, for the rules that have one (not the adaptive rule).
    pub fn lr(&self) -> Option<f64> {
        match self {
            Self::Sgd(c) => Some(c.lr),
            Self::Adam(c) => Some(c.lr),
            Self::Kfac(k) => match &k.rule {
                UpdateRule::Fixed(f) => Some(f.lr),
                UpdateRule::Adaptive(_) => None,
            },
        }
    }

    /// The $\ell_2$ coefficient.
    pub fn l2(&self) -> f64 {
        match self {
            Self::Sgd(c) => c.l2,
            Self::Adam(c) => c.l2,
            Self::Kfac(c) => c.l2,
        }
    }

    /// Checks every knob, in the precision `T` of the run.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] (SGD, Adam) or [`Error::Core`] (K-FAC) naming the field.
    pub fn validate<T: Scalar>(&self) -> Result<()> {
        match self {
            Self::Sgd(c) => c.validate::<T>(),
            Self::Adam(c) => c.validate::<T>(),
            Self::Kfac(c) => c.validate::<T>().map_err(Error::from),
        }
    }
}

/// The state of an [`Optimizer`] (checkpoints).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[serde(bound(serialize = "T: serde::Serialize", deserialize = "T: serde::Deserialize<'de>"))]
pub enum OptimizerState<T> {
    /// SGD's velocity per layer, and its skipped steps.
    Sgd {
        /// The velocity $v$.
        velocity: Vec<Array2<T>>,
        /// Steps skipped for non-finite numbers.
        skipped_steps: usize,
    },
    /// Adam's moments per layer and its step counter.
    Adam {
        /// The first moments $m$.
        m: Vec<Array2<T>>,
        /// The second moments $v$.
        v: Vec<Array2<T>>,
        /// The step counter $t$.
        t: i32,
        /// Steps skipped for non-finite numbers.
        skipped_steps: usize,
    },
    /// kfac-core's optimizer state.
    Kfac(KfacState<T>),
}

#[derive(Debug)]
enum State<T: Scalar> {
    Sgd(sgd::Sgd<T>),
    Adam(adam::Adam<T>),
    Kfac(Box<self::kfac::Kfac<T>>),
}

/// An optimizer with its state.
#[derive(Debug)]
pub struct Optimizer<T: Scalar> {
    config: OptimizerConfig,
    state: State<T>,
}

impl<T: Scalar> Optimizer<T> {
    /// A fresh optimizer for `mlp`; K-FAC's adaptive rule computes its
    /// quadratic forms exactly.
    pub fn new(config: OptimizerConfig, mlp: &Mlp<T>) -> Result<Self> {
        Self::with_products(config, mlp, CurvatureProducts::Exact)
    }

    /// A fresh optimizer for `mlp`, the adaptive rule's quadratic forms
    /// computed as `products` says.
    pub fn with_products(config: OptimizerConfig, mlp: &Mlp<T>, products: CurvatureProducts) -> Result<Self> {
        config.validate::<T>()?;
        let zeros = || mlp.layers.iter().map(|l| Array2::zeros(l.w.dim())).collect::<Vec<_>>();
        let state = match &config {
            OptimizerConfig::Sgd(c) => State::Sgd(sgd::Sgd { config: c.clone(), velocity: zeros(), skipped_steps: 0 }),
            OptimizerConfig::Adam(c) => {
                State::Adam(adam::Adam { config: c.clone(), m: zeros(), v: zeros(), t: 0, skipped_steps: 0 })
            }
            OptimizerConfig::Kfac(c) => State::Kfac(Box::new(self::kfac::Kfac::new(c.clone(), mlp, products)?)),
        };
        Ok(Self { config, state })
    }

    /// The same optimizer with `sharing` for the convolutions' Kronecker
    /// factors (K-FAC and EKFAC; the others have no factors): KFC, i.e.
    /// K-FAC-expand over the output locations (the default), or
    /// K-FAC-reduce ([`Sharing`]). Dense layers are not affected.
    pub fn with_sharing(mut self, sharing: Sharing) -> Self {
        if let State::Kfac(k) = &mut self.state {
            k.sharing = sharing;
        }
        self
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Steps skipped so far because a number was not finite.
    pub fn skipped_steps(&self) -> usize {
        match &self.state {
            State::Sgd(s) => s.skipped_steps,
            State::Adam(a) => a.skipped_steps,
            State::Kfac(k) => k.core.skipped_steps(),
        }
    }

    /// The curvature preconditioner (K-FAC and EKFAC).
    pub fn preconditioner(&self) -> Option<&Preconditioner<T>> {
        match &self.state {
            State::Kfac(k) => Some(k.core.preconditioner()),
            _ => None,
        }
    }

    /// Each layer's curvature health (K-FAC and EKFAC; empty otherwise).
    pub fn health(&self) -> Vec<::kfac::BlockHealth> {
        self.preconditioner().map(|p| p.health()).unwrap_or_default()
    }

    /// One step on the batch $(x, t)$.
    pub fn step(
        &mut self,
        la: &dyn LinAlg<T>,
        mlp: &mut Mlp<T>,
        x: ArrayView2<'_, T>,
        t: ArrayView2<'_, T>,
        loss: Loss,
        rng: &mut Rng,
    ) -> Result<Report> {
        match &mut self.state {
            State::Sgd(s) => s.step(la, mlp, x, t, loss),
            State::Adam(a) => a.step(la, mlp, x, t, loss),
            State::Kfac(k) => k.step(la, mlp, x, t, loss, rng),
        }
    }

    /// One data-parallel step on this rank's `parts` of the global batch
    /// (see [`crate::distributed`]); K-FAC and EKFAC only.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for SGD and Adam; those of [`step`](Self::step);
    /// [`Error::Core`] from the transport.
    pub fn step_parts(
        &mut self,
        la: &dyn LinAlg<T>,
        mlp: &mut Mlp<T>,
        parts: &mut [Part<'_, T>],
        loss: Loss,
        reducer: &::kfac::comm::Reducer<'_>,
    ) -> Result<Report> {
        match &mut self.state {
            State::Kfac(k) => k.step_parts(la, mlp, parts, loss, reducer),
            _ => Err(Error::Config {
                what: "optimizer",
                value: self.config.name().into(),
                why: DATA_PARALLEL_OPTIMIZERS.into(),
            }),
        }
    }

    /// The complete state, to save in a checkpoint.
    pub fn state(&self) -> OptimizerState<T> {
        match &self.state {
            State::Sgd(s) => OptimizerState::Sgd { velocity: s.velocity.clone(), skipped_steps: s.skipped_steps },
            State::Adam(a) => {
                OptimizerState::Adam { m: a.m.clone(), v: a.v.clone(), t: a.t, skipped_steps: a.skipped_steps }
            }
            State::Kfac(k) => OptimizerState::Kfac(k.core.state()),
        }
    }

    /// Continues from a saved state, which must come from an optimizer of
    /// the same kind for the same network. Everything is checked before
    /// anything changes.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming what does not fit; [`Error::Core`] for a
    /// curvature state that does not fit.
    pub fn restore(&mut self, state: &OptimizerState<T>) -> Result<()> {
        let bad = |reason: String| Error::Checkpoint { path: "optimizer state".into(), reason };
        match (&mut self.state, state) {
            (State::Sgd(s), OptimizerState::Sgd { velocity, skipped_steps }) => {
                check_buffers("velocity", velocity, &s.velocity)?;
                s.velocity = velocity.clone();
                s.skipped_steps = *skipped_steps;
            }
            (State::Adam(a), OptimizerState::Adam { m, v, t, skipped_steps }) => {
                check_buffers("m", m, &a.m)?;
                check_buffers("v", v, &a.v)?;
                if *t < 0 {
                    return Err(bad(format!("Adam's step counter is {t}")));
                }
                (a.m, a.v, a.t, a.skipped_steps) = (m.clone(), v.clone(), *t, *skipped_steps);
            }
            (State::Kfac(k), OptimizerState::Kfac(s)) => k.core.restore(s)?,
            (_, s) => {
                let saved = match s {
                    OptimizerState::Sgd { .. } => "sgd",
                    OptimizerState::Adam { .. } => "adam",
                    OptimizerState::Kfac(_) => "kfac or ekfac",
                };
                return Err(bad(format!("it is the state of {saved}, this run uses {}", self.config.name())));
            }
        }
        Ok(())
    }
}

/// Checks saved per-layer buffers against the current ones: count, shapes,
/// finiteness.
fn check_buffers<T: Scalar>(name: &str, saved: &[Array2<T>], like: &[Array2<T>]) -> Result<()> {
    let bad = |reason: String| Error::Checkpoint { path: "optimizer state".into(), reason };
    if saved.len() != like.len() {
        return Err(bad(format!("buffer `{name}` has {} layers, expected {}", saved.len(), like.len())));
    }
    for (l, (a, b)) in saved.iter().zip(like).enumerate() {
        if a.dim() != b.dim() {
            return Err(bad(format!("`{name}` of layer {l} has shape {:?}, expected {:?}", a.dim(), b.dim())));
        }
        if !a.iter().all(|x| x.is_finite()) {
            return Err(bad(format!("`{name}` of layer {l} holds a non-finite value")));
        }
    }
    Ok(())
}

/// Adds $\ell_2\,\theta$ to the gradients (in the precision of the run).
fn add_l2<T: Scalar>(grads: &mut [Array2<T>], mlp: &Mlp<T>, l2: f64) {
    if l2 > 0.0 {
        let l2 = T::from_f64_lossy(l2);
        for (g, layer) in grads.iter_mut().zip(&mlp.layers) {
            g.scaled_add(l2, &layer.w);
        }
    }
}

/// A first-order step's start: the checked loss and gradient, or the
/// report of the refused step.
type FirstOrder<T> = std::ops::ControlFlow<Report, (f64, Vec<Array2<T>>)>;

/// What a first-order step starts from: the batch loss and the gradient of
/// the loss plus the $\ell_2$ term, both checked to be finite. `Break` holds
/// the report of a refused step ([`refuse`]) when one of them is not.
#[allow(clippy::too_many_arguments)]
fn first_order_gradient<T: Scalar>(
    la: &dyn LinAlg<T>,
    mlp: &Mlp<T>,
    x: ArrayView2<'_, T>,
    t: ArrayView2<'_, T>,
    loss: Loss,
    l2: f64,
    policy: NonFinitePolicy,
    skipped: &mut usize,
) -> Result<FirstOrder<T>> {
    use std::ops::ControlFlow::{Break, Continue};
    let fwd = mlp.forward(la, x, &mut crate::mlp::NoHook)?;
    let (value, g_out) = loss.value_and_grad(fwd.output(), t)?;
    if !value.is_finite() {
        return refuse(policy, skipped, value, "the loss").map(Break);
    }
    let mut grads = mlp.backward(la, &fwd, g_out.view(), true, &mut crate::mlp::NoHook)?;
    add_l2(&mut grads, mlp, l2);
    if !::kfac::optim::guards::finite(&grads) {
        return refuse(policy, skipped, value, "the gradient").map(Break);
    }
    Ok(Continue((value, grads)))
}

/// A step that changes nothing because `what` is not finite: counted and
/// reported ([`NonFinitePolicy::Skip`]) or an error.
fn refuse(policy: NonFinitePolicy, skipped: &mut usize, loss: f64, what: &'static str) -> Result<Report> {
    match policy {
        NonFinitePolicy::Skip => {
            *skipped += 1;
            Ok(Report::skipped(loss, what, Vec::new(), false))
        }
        NonFinitePolicy::Error => Err(Error::NonFinite { step: 0, what }),
    }
}

/// Checks a knob: `ok` in `f64`, and a finite, nonzero (when positive)
/// number in the precision `T` it will be used in.
fn check_real<T: Scalar>(what: &'static str, value: f64, ok: bool, why: &str) -> Result<()> {
    if !(ok && value.is_finite()) {
        return Err(Error::Config { what, value: value.to_string(), why: why.to_string() });
    }
    ::kfac::optim::representable::<T>(what, value).map_err(Error::from)
}
