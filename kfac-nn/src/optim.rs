//! Optimizers: SGD with momentum (heavy ball or Nesterov), Adam, and K-FAC /
//! EKFAC built on `kfac_core`.
//!
//! Every optimizer takes a whole step on a batch, $(x, t)$: forward pass,
//! loss, backward pass, and the update. K-FAC and EKFAC also feed their
//! curvature statistics: with [`FisherMode::True`] (the default) from one
//! extra backward pass on targets sampled from the model, with
//! [`FisherMode::Empirical`] from the data gradient's own backward pass. The
//! statistics use the first $\lceil \tau N \rceil$ examples of the batch
//! ([`OptimizerConfig::stats_fraction`], Martens & Grosse's $\tau$), which is how
//! the extra pass stays cheap.
//!
//! The K-FAC update of layer $l$ is
//! $$ \Delta_l = (\hat F_l + \lambda I)^{-1} \nabla_l, \qquad
//!    v_l \leftarrow \mu v_l + \nu \Delta_l, \qquad \bar W_l \leftarrow \bar W_l - \eta v_l ,$$
//! where $\nabla_l$ includes the $\ell_2$ term and $\nu$ is the KL clip of
//! kfac-pytorch: with $q = \eta^2 \sum_l \langle \Delta_l, \nabla_l \rangle$ (twice the
//! predicted change of the KL divergence), $\nu = \min(1, \sqrt{\kappa / q})$.
//!
//! # Safeguards
//! A step checks its loss, its gradient, and (K-FAC, EKFAC) its
//! preconditioned direction and KL-clip product. If any of them is not
//! finite, the step writes no weight, momentum or Adam moment (and when the
//! loss or the gradient is the culprit, no curvature statistic either: a
//! bad batch never reaches the factors) and, with [`OnNonFinite::Skip`] (the default),
//! says so in its [`StepReport`]; with [`OnNonFinite::Error`] it returns
//! [`Error::NonFinite`]. The curvature statistics follow the same policy per
//! layer (`kfac_core::NonFinitePolicy`). Momentum updates are also refused
//! when the new weights could overflow (a bound checked before writing);
//! Adam computes its new weights and moments and checks that all are
//! finite before it writes any. So the optimizer never writes a non-finite
//! weight. Every knob is checked in the precision it is used in
//! ([`Optimizer::new`]): a learning rate that is finite in `f64` but
//! infinite, or zero, in `f32` is refused.

use kfac::{
    BlockKind, Damping, DampingSchedule, KfacMethod, LayerBatch, LinAlg, NonFinitePolicy, Preconditioner,
    PreconditionerConfig, PreconditionerState, Schedule, Structure,
};
use ndarray::{Array2, ArrayView2, Zip, s};
use rayon::prelude::*;

use crate::backend::Scalar;
#[cfg(doc)]
use crate::curvature::fisher_gram;
use crate::curvature::{ModelStep, fisher_trace_per_parameter, levenberg_marquardt, quadratic_step, reduction_ratio};
use crate::error::{Error, Result};
use crate::loss::{FisherMode, Loss};
use crate::mlp::{Forward, GradRecorder, Mlp, NoHook};
use crate::rng::Rng;

/// Which optimizer.
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

/// What a step does when its loss, gradients, curvature statistics or
/// preconditioned directions are not finite (a bad batch, an overflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// Write no weight, momentum or Adam moment (and no curvature statistic
    /// from a batch whose loss or gradient is not finite), count the skip,
    /// report it in the step's record, go on.
    #[default]
    Skip,
    /// Stop with [`Error::NonFinite`].
    Error,
}

impl From<OnNonFinite> for NonFinitePolicy {
    fn from(p: OnNonFinite) -> Self {
        match p {
            OnNonFinite::Skip => NonFinitePolicy::Skip,
            OnNonFinite::Error => NonFinitePolicy::Error,
        }
    }
}

/// How the damping enters K-FAC (see `kfac_core::damping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DampingChoice {
    /// $(\hat F + \lambda I)^{-1}$ (the only choice for EKFAC).
    Tikhonov,
    /// $(A + \pi\sqrt\lambda I)^{-1} \otimes (B + \sqrt\lambda/\pi\, I)^{-1}$ (Martens & Grosse, §6.3).
    Factored,
}

/// Which curvature blocks K-FAC keeps (see `kfac_core::Structure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockStructure {
    /// One block per layer: every covariance between layers is dropped.
    #[default]
    Diagonal,
    /// Martens & Grosse's chain model: a block-tridiagonal inverse Fisher,
    /// with cross factors between consecutive layers (`kfac_core::TridiagonalKfac`).
    /// K-FAC with factored damping only.
    Tridiagonal,
}

/// The hyperparameters of an optimizer. [`OptimizerConfig::defaults`] gives
/// the documented defaults of each kind.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimizerConfig {
    /// Which optimizer.
    pub kind: OptimizerKind,
    /// Learning rate $\eta$.
    pub lr: f64,
    /// Momentum $\mu$ (SGD, K-FAC, EKFAC); Adam uses `beta1` instead.
    pub momentum: f64,
    /// Nesterov momentum (SGD only).
    pub nesterov: bool,
    /// $\ell_2$ coefficient, added to the gradient as $\ell_2 \bar W$ (all parameters).
    pub l2: f64,
    /// Adam's $\beta_1$.
    pub beta1: f64,
    /// Adam's $\beta_2$.
    pub beta2: f64,
    /// Adam's $\epsilon$.
    pub eps: f64,
    /// Damping $\lambda$ of the curvature blocks.
    pub damping: f64,
    /// How $\lambda$ enters: Tikhonov on the whole block, or factored with
    /// the $\pi$ correction (K-FAC only).
    pub damping_kind: DampingChoice,
    /// Decay of the running curvature statistics.
    pub decay: f64,
    /// Update the factor statistics every this many steps.
    pub stats_period: usize,
    /// Recompute eigenbases every this many steps.
    pub refresh_period: usize,
    /// Update EKFAC's scalings every this many steps.
    pub scalings_period: usize,
    /// KL clip $\kappa$ (none: no clipping).
    pub kl_clip: Option<f64>,
    /// True or empirical Fisher.
    pub fisher: FisherMode,
    /// $\tau$: the fraction of each batch used for the curvature statistics.
    pub stats_fraction: f64,
    /// What a step does with non-finite numbers (default: skip and report).
    #[serde(default)]
    pub on_non_finite: OnNonFinite,
    /// Martens & Grosse's adaptive step size, momentum and damping (K-FAC
    /// and EKFAC); `None`: the fixed `lr`, `momentum`, `damping` and KL clip.
    #[serde(default)]
    pub adaptive: Option<AdaptiveConfig>,
    /// K-FAC's block structure: block-diagonal or block-tridiagonal.
    #[serde(default)]
    pub structure: BlockStructure,
}

/// The knobs of the adaptive machinery (Martens & Grosse, 2015, §6–7).
///
/// Every step minimises the quadratic model
/// $M(\delta) = \tfrac12\delta^\top(F + (\lambda+\eta)I)\delta + \nabla h^\top\delta$
/// over $\delta = \alpha\Delta + \mu\delta_0$ (Δ the preconditioned gradient,
/// δ₀ the previous update; [`quadratic_step`]),
/// with exact curvature products ([`fisher_gram`]) on the whole batch (the
/// statistics fraction only concerns the Kronecker factors).
/// Every `t1` steps the reduction ratio $\rho$ adjusts $\lambda$ by
/// $\omega_1 = \omega^{t_1}$ ([`levenberg_marquardt`]).
/// The preconditioner's damping is $\gamma^2$ (for factored damping the
/// factors get $\pi\gamma$ and $\gamma/\pi$), kept separate from $\lambda$; every
/// `t2` steps $\gamma$ is chosen greedily among $\{\omega_2\gamma, \gamma, \gamma/\omega_2\}$,
/// $\omega_2 = \sqrt{\omega}^{\,t_2}$, as the one whose step has the lowest $M$.
/// By default a step that raises the batch objective is undone
/// ([`reject`](Self::reject), our addition to the paper).
/// The learning rate, momentum and KL clip of the configuration are not used.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdaptiveConfig {
    /// The initial $\lambda$: `None` (the default) for the mean eigenvalue
    /// of the Fisher on the first statistics batch,
    /// $\lambda_0 = \operatorname{tr}(F)/P$ ([`fisher_trace_per_parameter`]),
    /// or a number (the paper's 150).
    ///
    /// A number is in the units of the loss: the curvature, and with it
    /// the $\lambda$ that suits it, scale with the loss (a mean over the 784
    /// pixels instead of a sum would divide $F$ by 784).
    /// $\operatorname{tr}(F)/P$ scales as $F$ does. Multiplying the loss by
    /// $c$ multiplies $F$, $\nabla h$, $\lambda_0$ and $\gamma_0^2$ by $c$
    /// (when $\eta = 0$), so the preconditioned direction, $\alpha$, $\mu$
    /// and $\rho$ do not change until $\lambda$ meets its bounds.
    ///
    /// The default was chosen with $\omega$ by a study on problems other
    /// than the race (`docs/results/bench/adaptive-defaults/`): in its 18
    /// cells (problem, optimizer, seed), with either $\omega$,
    /// $\operatorname{tr}(F)/P$ beat 150 every time. It leans on
    /// [`reject`](Self::reject): a start that is too low is the costly
    /// error without it (a step that raises the loss is taken anyway, and
    /// the rule raises $\lambda$ by only $\omega^{-t_1}$ per `t1` steps), and
    /// adaptive EKFAC diverged that way on the digits classifier
    /// ($\lambda_0 \approx 0.012$). Saved configurations store $\lambda_0$
    /// and read as written; one without the field reads as 150.
    ///
    /// [`fisher_trace_per_parameter`]: crate::curvature::fisher_trace_per_parameter
    #[serde(default = "paper_lambda")]
    pub lambda: Option<f64>,
    /// $\omega$, the per-step factor: 9/10 by default, as in kfac-jax
    /// (`damping_adaptation_decay`); 19/20 in the paper.
    pub omega: f64,
    /// Adjust $\lambda$ every `t1` steps (5).
    pub t1: usize,
    /// Choose $\gamma$ every `t2` steps (20).
    pub t2: usize,
    /// Lower bound of $\lambda$.
    pub lambda_min: f64,
    /// Upper bound of $\lambda$.
    pub lambda_max: f64,
    /// The initial $\gamma$; `None`: $\sqrt{\lambda_0 + \eta}$, as in the paper.
    pub gamma: Option<f64>,
    /// Reject steps that raise the objective (on by default; our addition
    /// to the paper, whose rule never rejects). $h(\theta + \delta)$ is then
    /// measured on the batch at every step (one more forward pass); a step
    /// with $h(\theta + \delta) > h(\theta)$ is undone, the previous update
    /// is forgotten (the next step has no momentum term) and $\lambda$ is
    /// divided by $\omega^{t_1}$ at once, as the Levenberg–Marquardt rule
    /// would at its next check. $\lambda$ still follows
    /// [`levenberg_marquardt`] every `t1` steps, so a run in which no step
    /// raises the objective is the paper's run exactly. Without rejection a
    /// classifier whose loss nears zero can blow up, and a run from the
    /// default automatic $\lambda_0$ can diverge at its first steps
    /// (README). A
    /// configuration saved before this field existed reads as `false`, the
    /// behaviour of those versions.
    #[serde(default)]
    pub reject: bool,
}

// The serde default of `AdaptiveConfig::lambda`.
#[allow(clippy::unnecessary_wraps)]
fn paper_lambda() -> Option<f64> {
    Some(150.0)
}

impl Default for AdaptiveConfig {
    /// $\lambda_0 = \operatorname{tr}(F)/P$, $\omega = 9/10$, $T_1 = 5$,
    /// $T_2 = 20$, $\gamma_0 = \sqrt{\lambda_0 + \eta}$;
    /// $\lambda \in [10^{-8}, 10^{8}]$; rejected steps ([`reject`](Self::reject)).
    ///
    /// $\lambda_0$ and $\omega$ won a study on problems other than the race
    /// (the digits autoencoder and two classifiers, K-FAC and EKFAC, three
    /// seeds) against the paper's values and the two mixtures, by the mean
    /// rank of the area under the training curve
    /// (`cargo run --release -p kfac-bench -- adaptive-defaults`; the
    /// protocol was written down before the runs). [`AdaptiveConfig::paper`]
    /// gives the paper's values.
    fn default() -> Self {
        Self { lambda: None, omega: 0.9, t1: 5, t2: 20, lambda_min: 1e-8, lambda_max: 1e8, gamma: None, reject: true }
    }
}

impl AdaptiveConfig {
    /// Martens & Grosse's rule and values: $\lambda_0 = 150$,
    /// $\omega = 19/20$, $T_1 = 5$, $T_2 = 20$, $\gamma_0 = \sqrt{\lambda_0 + \eta}$,
    /// no rejected steps ($\rho$ only every $T_1$ steps).
    pub fn paper() -> Self {
        Self { lambda: paper_lambda(), omega: 19.0 / 20.0, reject: false, ..Self::default() }
    }
}

impl OptimizerConfig {
    /// The defaults of `kind`: the best of the grids in the README on the
    /// reference autoencoder (batch 1000, 200 steps, seed 0). SGD: lr 3e-3,
    /// momentum 0.9. Adam: lr 3e-3. K-FAC: factored damping λ = 1, KL clip 1.
    /// EKFAC: Tikhonov damping λ = 1, KL clip 1. All: ℓ2 1e-5, statistics
    /// decay 0.95 on a quarter of each batch (true Fisher), eigenbases every
    /// 20 steps, EKFAC scalings every step, momentum 0.9.
    pub fn defaults(kind: OptimizerKind) -> Self {
        let base = Self {
            kind,
            lr: 0.0,
            momentum: 0.9,
            nesterov: false,
            l2: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            damping: 1e-1,
            damping_kind: DampingChoice::Tikhonov,
            decay: 0.95,
            stats_period: 1,
            refresh_period: 20,
            scalings_period: 1,
            kl_clip: Some(1e-2),
            fisher: FisherMode::True,
            stats_fraction: 0.25,
            on_non_finite: OnNonFinite::Skip,
            adaptive: None,
            structure: BlockStructure::Diagonal,
        };
        match kind {
            OptimizerKind::Sgd => Self { lr: 3e-3, ..base },
            OptimizerKind::Adam => Self { lr: 3e-3, ..base },
            // The KL clip binds on the autoencoder, which makes the step
            // sqrt(κ / ⟨Δ, ∇⟩) Δ whatever the learning rate: κ and λ are the
            // knobs that matter (grid in the README).
            OptimizerKind::Kfac => {
                Self { lr: 0.3, damping: 1.0, damping_kind: DampingChoice::Factored, kl_clip: Some(1.0), ..base }
            }
            OptimizerKind::Ekfac => Self { lr: 0.3, damping: 1.0, kl_clip: Some(1.0), ..base },
        }
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, value: f64, why: &str| {
            Err(Error::Config { what, value: value.to_string(), why: why.to_string() })
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr, "must be positive");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", self.momentum, "must lie in [0, 1)");
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return bad("l2", self.l2, "must be non-negative");
        }
        if !(self.damping.is_finite() && self.damping >= 0.0) {
            return bad("damping", self.damping, "must be non-negative");
        }
        if self.kind == OptimizerKind::Ekfac && self.damping_kind == DampingChoice::Factored {
            return Err(Error::Config {
                what: "damping_kind",
                value: "factored".into(),
                why: "EKFAC's scalings are not a Kronecker product: use tikhonov".into(),
            });
        }
        if self.structure == BlockStructure::Tridiagonal
            && (self.kind != OptimizerKind::Kfac || self.damping_kind != DampingChoice::Factored)
        {
            return Err(Error::Config {
                what: "structure",
                value: format!("tridiagonal with {} and {:?} damping", self.kind.name(), self.damping_kind),
                why: "the block-tridiagonal model is built from K-FAC's factors and damps them (Martens & Grosse, \
                      section 6.3): use K-FAC with factored damping"
                    .into(),
            });
        }
        if !(0.0..=1.0).contains(&self.decay) {
            return bad("decay", self.decay, "must lie in [0, 1]");
        }
        if !(self.stats_fraction > 0.0 && self.stats_fraction <= 1.0) {
            return bad("stats_fraction", self.stats_fraction, "must lie in (0, 1]");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1/beta2", self.beta1.max(self.beta2), "must lie in [0, 1)");
        }
        if let Some(k) = self.kl_clip.filter(|k| !(k.is_finite() && *k > 0.0)) {
            return bad("kl_clip", k, "must be positive");
        }
        if let Some(a) = &self.adaptive {
            if !self.kind.is_curvature() {
                return Err(Error::Config {
                    what: "adaptive",
                    value: self.kind.name().into(),
                    why: "the adaptive step needs K-FAC or EKFAC".into(),
                });
            }
            if let Some(l) = a.lambda.filter(|l| !(l.is_finite() && *l >= 0.0)) {
                return bad("adaptive.lambda", l, "must be non-negative");
            }
            if !(a.omega > 0.0 && a.omega < 1.0) {
                return bad("adaptive.omega", a.omega, "must lie in (0, 1)");
            }
            if a.t1 == 0 || a.t2 == 0 {
                return bad("adaptive.t1/t2", 0.0, "must be at least 1");
            }
            // ω^{t1} and √ω^{t2} are taken with `powi`, whose exponent is an
            // i32, and must not underflow to 0 (λ is divided by ω^{t1}).
            for t in [a.t1, a.t2] {
                let fits = i32::try_from(t).is_ok_and(|k| a.omega.powi(k) > 0.0 && a.omega.sqrt().powi(k) > 0.0);
                if !fits {
                    return Err(Error::Config {
                        what: "adaptive.t1/t2",
                        value: t.to_string(),
                        why: format!(
                            "at most {} and small enough that omega^t does not underflow to 0 (omega = {})",
                            i32::MAX,
                            a.omega
                        ),
                    });
                }
            }
            if !(0.0 <= a.lambda_min && a.lambda_min <= a.lambda_max && a.lambda_max.is_finite()) {
                return bad("adaptive.lambda_min", a.lambda_min, "needs 0 <= lambda_min <= lambda_max < inf");
            }
            if let Some(g) = a.gamma.filter(|g| !(g.is_finite() && *g > 0.0)) {
                return bad("adaptive.gamma", g, "must be positive");
            }
        }
        for (what, p) in [
            ("stats_period", self.stats_period),
            ("refresh_period", self.refresh_period),
            ("scalings_period", self.scalings_period),
        ] {
            if p == 0 {
                return bad(what, 0.0, "must be at least 1");
            }
        }
        Ok(())
    }
}

/// What a step reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The batch loss before the update (without the $\ell_2$ term).
    pub loss: f64,
    /// The KL-clip factor $\nu$ applied (K-FAC and EKFAC with clipping).
    pub kl_scale: Option<f64>,
    /// Set when the step changed nothing because `what` was not finite
    /// ([`OnNonFinite::Skip`]).
    pub skipped: Option<&'static str>,
    /// Layers whose curvature statistics were not updated at this step
    /// (their batch was not finite).
    pub skipped_statistics: Vec<usize>,
    /// The adaptive machinery's numbers (with [`OptimizerConfig::adaptive`]).
    pub adaptive: Option<AdaptiveRecord>,
}

/// What the adaptive machinery chose at a step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdaptiveRecord {
    /// $\lambda$ of the quadratic model used at this step.
    #[serde(with = "crate::nonfinite")]
    pub lambda: f64,
    /// $\gamma$, the preconditioner's damping is $\gamma^2$.
    #[serde(with = "crate::nonfinite")]
    pub gamma: f64,
    /// The coefficient of the preconditioned gradient.
    #[serde(with = "crate::nonfinite")]
    pub alpha: f64,
    /// The coefficient of the previous update.
    #[serde(with = "crate::nonfinite")]
    pub mu: f64,
    /// $M(\delta) - M(0)$.
    #[serde(with = "crate::nonfinite")]
    pub model_change: f64,
    /// The reduction ratio, on the steps where it is measured (every `t1`
    /// steps; every step with [`AdaptiveConfig::reject`]).
    #[serde(with = "crate::nonfinite::option")]
    pub rho: Option<f64>,
    /// Whether the step was undone ([`AdaptiveConfig::reject`]).
    #[serde(default)]
    pub rejected: bool,
}

fn damping_schedule(kind: DampingChoice, lambda: f64) -> DampingSchedule {
    match kind {
        DampingChoice::Tikhonov => DampingSchedule::tikhonov(lambda),
        DampingChoice::Factored => DampingSchedule::factored(lambda),
    }
}

/// The state of an [`Optimizer`] (checkpoints): momentum or Adam's moments,
/// counters, and the preconditioner's state.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState<T> {
    /// Which optimizer.
    pub kind: OptimizerKind,
    /// Per-layer arrays: `velocity` (SGD, K-FAC, EKFAC) or `m` and `v` (Adam).
    pub buffers: Vec<(String, Vec<Array2<T>>)>,
    /// Adam's step counter.
    pub adam_step: i32,
    /// Steps skipped for non-finite numbers.
    pub skipped_steps: usize,
    /// The curvature state (K-FAC, EKFAC).
    pub preconditioner: Option<PreconditionerState<T>>,
    /// The adaptive machinery's $(\lambda, \gamma, \text{steps})$.
    pub adaptive: Option<(f64, f64, usize)>,
}

/// The adaptive machinery's state.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Adaptive {
    lambda: f64,
    gamma: f64,
    steps: usize,
}

#[derive(Debug)]
enum State<T: Scalar> {
    Sgd {
        velocity: Vec<Array2<T>>,
    },
    Adam {
        m: Vec<Array2<T>>,
        v: Vec<Array2<T>>,
        t: i32,
    },
    Kfac {
        pre: Box<Preconditioner<T>>,
        velocity: Vec<Array2<T>>,
        adaptive: Option<Adaptive>,
        /// The weights before an adaptive step, kept so that a rejected step
        /// can be undone exactly; reused from step to step (empty until the
        /// first step with [`AdaptiveConfig::reject`]).
        saved: Vec<Array2<T>>,
    },
}

/// An optimizer with its state.
#[derive(Debug)]
pub struct Optimizer<T: Scalar> {
    config: OptimizerConfig,
    state: State<T>,
    skipped_steps: usize,
}

impl<T: Scalar> Optimizer<T> {
    /// A fresh optimizer for `mlp`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a configuration that
    /// [`validate`](OptimizerConfig::validate) refuses, or whose knobs do
    /// not survive the conversion to `T` (see [`check_precision`]).
    pub fn new(config: OptimizerConfig, mlp: &Mlp<T>) -> Result<Self> {
        config.validate()?;
        check_precision::<T>(&config)?;
        let zeros = || mlp.layers.iter().map(|l| Array2::zeros(l.w.dim())).collect::<Vec<_>>();
        let state = match config.kind {
            OptimizerKind::Sgd => State::Sgd { velocity: zeros() },
            OptimizerKind::Adam => State::Adam { m: zeros(), v: zeros(), t: 0 },
            OptimizerKind::Kfac | OptimizerKind::Ekfac => {
                // Factored damping keeps the damped block a Kronecker product of
                // two SPD matrices, so K-FAC inverts them by Cholesky: no
                // eigendecomposition, and two products per precondition
                // instead of four. Tikhonov damping needs the eigenbases.
                let block = match (config.kind, config.damping_kind) {
                    (OptimizerKind::Kfac, _) if config.structure == BlockStructure::Tridiagonal => {
                        BlockKind::Kfac(KfacMethod::Inverse)
                    }
                    (OptimizerKind::Kfac, DampingChoice::Factored) => BlockKind::Kfac(KfacMethod::Inverse),
                    (OptimizerKind::Kfac, DampingChoice::Tikhonov) => BlockKind::Kfac(KfacMethod::Eigen),
                    _ => BlockKind::Ekfac,
                };
                // With λ₀ = tr(F)/P (`lambda: None`) these are placeholders,
                // replaced at the first step before the first refresh.
                let adaptive = config.adaptive.as_ref().map(|a| {
                    let lambda = a.lambda.unwrap_or(1.0);
                    Adaptive { lambda, gamma: a.gamma.unwrap_or_else(|| (lambda + config.l2).sqrt()), steps: 0 }
                });
                let pc = PreconditionerConfig {
                    block,
                    damping: damping_schedule(
                        config.damping_kind,
                        adaptive.map_or(config.damping, |a| a.gamma * a.gamma),
                    ),
                    decay: Schedule::Constant(config.decay),
                    stats_period: config.stats_period,
                    refresh_period: config.refresh_period,
                    scalings_period: config.scalings_period,
                    on_non_finite: config.on_non_finite.into(),
                    structure: match config.structure {
                        BlockStructure::Diagonal => Structure::BlockDiagonal,
                        BlockStructure::Tridiagonal => Structure::Tridiagonal,
                    },
                };
                State::Kfac {
                    pre: Box::new(Preconditioner::new(pc, &mlp.shapes())?),
                    velocity: zeros(),
                    adaptive,
                    saved: Vec::new(),
                }
            }
        };
        Ok(Self { config, state, skipped_steps: 0 })
    }

    /// Steps skipped so far because a number was not finite.
    pub fn skipped_steps(&self) -> usize {
        self.skipped_steps
    }

    /// The complete state, to save in a checkpoint.
    pub fn state(&self) -> OptimizerState<T> {
        let (buffers, adam_step, preconditioner) = match &self.state {
            State::Sgd { velocity } => (vec![("velocity".to_string(), velocity.clone())], 0, None),
            State::Adam { m, v, t } => (vec![("m".to_string(), m.clone()), ("v".to_string(), v.clone())], *t, None),
            State::Kfac { pre, velocity, .. } => {
                (vec![("velocity".to_string(), velocity.clone())], 0, Some(pre.state()))
            }
        };
        let adaptive = match &self.state {
            State::Kfac { adaptive: Some(a), .. } => Some((a.lambda, a.gamma, a.steps)),
            _ => None,
        };
        OptimizerState {
            kind: self.config.kind,
            buffers,
            adam_step,
            skipped_steps: self.skipped_steps,
            preconditioner,
            adaptive,
        }
    }

    /// Continues from a saved state, which must come from an optimizer of
    /// the same kind for the same network. Everything is checked before
    /// anything changes.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming what does not fit; [`Error::Core`] for a
    /// preconditioner state that does not fit.
    pub fn restore(&mut self, state: &OptimizerState<T>) -> Result<()> {
        let bad = |reason: String| Error::Checkpoint { path: "optimizer state".into(), reason };
        if state.kind != self.config.kind {
            return Err(bad(format!(
                "it is the state of {}, this run uses {}",
                state.kind.name(),
                self.config.kind.name()
            )));
        }
        let current = self.state();
        if state.buffers.len() != current.buffers.len() {
            return Err(bad(format!("{} buffers, expected {}", state.buffers.len(), current.buffers.len())));
        }
        for ((name, arrays), (want, like)) in state.buffers.iter().zip(&current.buffers) {
            if name != want || arrays.len() != like.len() {
                return Err(bad(format!(
                    "buffer `{name}` ({} layers), expected `{want}` ({} layers)",
                    arrays.len(),
                    like.len()
                )));
            }
            for (l, (a, b)) in arrays.iter().zip(like).enumerate() {
                if a.dim() != b.dim() {
                    return Err(bad(format!("`{name}` of layer {l} has shape {:?}, expected {:?}", a.dim(), b.dim())));
                }
                if !a.iter().all(|x| x.is_finite()) {
                    return Err(bad(format!("`{name}` of layer {l} holds a non-finite value")));
                }
            }
        }
        if state.adam_step < 0 {
            return Err(bad(format!("Adam's step counter is {}", state.adam_step)));
        }
        if current.adaptive.is_some() != state.adaptive.is_some() {
            return Err(bad("the adaptive state does not match the configuration's `adaptive`".into()));
        }
        if let Some((lambda, gamma, _)) = state.adaptive
            && !(lambda.is_finite() && lambda >= 0.0 && gamma.is_finite() && gamma > 0.0)
        {
            return Err(bad(format!("adaptive lambda = {lambda}, gamma = {gamma}")));
        }
        let take = |i: usize| state.buffers[i].1.clone();
        match (&mut self.state, &state.preconditioner) {
            (State::Sgd { velocity }, None) => *velocity = take(0),
            (State::Adam { m, v, t }, None) => {
                *m = take(0);
                *v = take(1);
                *t = state.adam_step;
            }
            (State::Kfac { pre, velocity, adaptive, .. }, Some(ps)) => {
                pre.restore(ps)?;
                *velocity = take(0);
                if let (Some(a), Some((lambda, gamma, steps))) = (adaptive.as_mut(), state.adaptive) {
                    *a = Adaptive { lambda, gamma, steps };
                    pre.set_damping_schedule(damping_schedule(self.config.damping_kind, gamma * gamma));
                }
            }
            _ => return Err(bad("a curvature state for an optimizer without one, or none for one with".into())),
        }
        self.skipped_steps = state.skipped_steps;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The curvature preconditioner (K-FAC and EKFAC).
    pub fn preconditioner(&self) -> Option<&Preconditioner<T>> {
        match &self.state {
            State::Kfac { pre, .. } => Some(pre),
            _ => None,
        }
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
    ) -> Result<StepReport> {
        let fwd = mlp.forward(la, x, &mut NoHook)?;
        let out = fwd.output();
        let value = loss.value(out, t)?;
        if !value.is_finite() {
            return self.refuse("the loss", value, Vec::new());
        }
        let g_out = loss.grad(out, t)?;
        let cfg = &self.config;
        let n_stats = ((cfg.stats_fraction * x.nrows() as f64).ceil() as usize).clamp(1, x.nrows());
        let l2 = T::from_f64_lossy(cfg.l2);
        let lr = T::from_f64_lossy(cfg.lr);
        let mom = T::from_f64_lossy(cfg.momentum);
        let add_l2 = |grads: &mut Vec<Array2<T>>, mlp: &Mlp<T>| {
            if cfg.l2 > 0.0 {
                for (g, layer) in grads.iter_mut().zip(&mlp.layers) {
                    g.scaled_add(l2, &layer.w);
                }
            }
        };
        let mut kl_scale = None;
        let mut skipped_statistics = Vec::new();
        let mut adaptive_record = None;
        let finite = |arrays: &[Array2<T>]| arrays.iter().all(all_finite);
        match &mut self.state {
            State::Sgd { velocity } => {
                let mut grads = mlp.backward(la, &fwd, g_out.view(), true, &mut NoHook)?;
                add_l2(&mut grads, mlp);
                if !finite(&grads) {
                    return self.refuse("the gradient", value, skipped_statistics);
                }
                if !Self::update_fits(mlp, velocity, &grads, cfg.lr, cfg.momentum) {
                    return self.refuse("the updated weight", value, skipped_statistics);
                }
                for ((layer, v), g) in mlp.layers.iter_mut().zip(velocity.iter_mut()).zip(&grads) {
                    Zip::from(&mut *v).and(g).for_each(|v, &g| *v = mom * *v + g);
                    if cfg.nesterov {
                        Zip::from(&mut layer.w).and(g).and(&*v).for_each(|w, &g, &v| *w -= lr * (g + mom * v));
                    } else {
                        layer.w.scaled_add(-lr, v);
                    }
                }
            }
            State::Adam { m, v, t: step } => {
                let mut grads = mlp.backward(la, &fwd, g_out.view(), true, &mut NoHook)?;
                add_l2(&mut grads, mlp);
                if !finite(&grads) {
                    return self.refuse("the gradient", value, skipped_statistics);
                }
                let Some(next) = step.checked_add(1) else {
                    return self.refuse("Adam's step counter", value, skipped_statistics);
                };
                let (b1, b2) = (T::from_f64_lossy(cfg.beta1), T::from_f64_lossy(cfg.beta2));
                let c1 = T::one() - b1.powi(next);
                let c2 = T::one() - b2.powi(next);
                let eps = T::from_f64_lossy(cfg.eps);
                let update = |w: T, m: T, v: T, g: T| {
                    let m = b1 * m + (T::one() - b1) * g;
                    let v = b2 * v + (T::one() - b2) * g * g;
                    (w - lr * (m / c1) / ((v / c2).sqrt() + eps), m, v)
                };
                // The same arithmetic twice: first to check that every new
                // weight and moment is finite, then to write them.
                let fits = mlp.layers.iter().zip(m.iter()).zip(v.iter()).zip(&grads).all(|(((layer, m), v), g)| {
                    Zip::from(&layer.w).and(m).and(v).and(g).all(|&w, &m, &v, &g| {
                        let (w, m, v) = update(w, m, v, g);
                        w.is_finite() && m.is_finite() && v.is_finite()
                    })
                });
                if !fits {
                    return self.refuse("Adam's updated weight or moment", value, skipped_statistics);
                }
                *step = next;
                for (((layer, m), v), g) in mlp.layers.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(&grads) {
                    Zip::from(&mut layer.w).and(&mut *m).and(&mut *v).and(g).for_each(|w, m, v, &g| {
                        (*w, *m, *v) = update(*w, *m, *v, g);
                    });
                }
            }
            State::Kfac { pre, velocity, adaptive, saved } => {
                let needs_stats = pre.needs_statistics();
                let mut recorder = GradRecorder::default();
                let mut grads = if needs_stats && cfg.fisher == FisherMode::Empirical && n_stats == x.nrows() {
                    mlp.backward(la, &fwd, g_out.view(), true, &mut recorder)?
                } else {
                    mlp.backward(la, &fwd, g_out.view(), true, &mut NoHook)?
                };
                add_l2(&mut grads, mlp);
                if !finite(&grads) {
                    return self.refuse("the gradient", value, skipped_statistics);
                }
                if needs_stats {
                    if recorder.grads.is_empty() {
                        let g_stats = match cfg.fisher {
                            FisherMode::True => loss.sampled_grad(out.slice(s![..n_stats, ..]), rng),
                            FisherMode::Empirical => g_out.slice(s![..n_stats, ..]).to_owned(),
                        };
                        mlp.backward(la, &fwd, g_stats.view(), false, &mut recorder)?;
                    }
                    if let (Some(ad), Some(acfg)) = (adaptive.as_mut(), cfg.adaptive.as_ref())
                        && ad.steps == 0
                        && acfg.lambda.is_none()
                    {
                        Self::initial_damping(pre, ad, acfg, cfg, &fwd, &recorder, n_stats)?;
                    }
                    let batches = recorder
                        .grads
                        .iter()
                        .enumerate()
                        .filter_map(|(l, g)| {
                            g.as_ref().map(|g| LayerBatch::new(fwd.acts[l].slice(s![..n_stats, ..]), g.view()))
                        })
                        .collect::<Vec<_>>();
                    skipped_statistics = pre.update(la, Some(&batches))?.skipped;
                } else {
                    skipped_statistics = pre.update(la, None)?.skipped;
                }
                let views: Vec<_> = grads.iter().map(|g| g.view()).collect();
                if let (Some(ad), Some(acfg)) = (adaptive.as_mut(), cfg.adaptive.as_ref()) {
                    // The quadratic model's curvature is the Fisher of the
                    // whole batch, the examples of the gradient and of ρ.
                    let negated = |d: Vec<Array2<T>>| -> Vec<Array2<T>> {
                        d.into_iter()
                            .map(|mut a| {
                                a.mapv_inplace(|x| -x);
                                a
                            })
                            .collect()
                    };
                    let prev = (ad.steps > 0).then_some(&velocity[..]);
                    let kind = cfg.damping_kind;
                    let damping_of = |g: f64| match kind {
                        DampingChoice::Tikhonov => Damping::tikhonov(g * g),
                        DampingChoice::Factored => Damping::factored(g * g),
                    };
                    let candidates = if ad.steps > 0 && ad.steps.is_multiple_of(acfg.t2) {
                        let w2 = acfg.omega.sqrt().powi(acfg.t2 as i32);
                        vec![ad.gamma * w2, ad.gamma, ad.gamma / w2]
                    } else {
                        vec![ad.gamma]
                    };
                    let mut best: Option<(f64, Vec<Array2<T>>, ModelStep)> = None;
                    for &g in &candidates {
                        if candidates.len() > 1 {
                            pre.apply_damping(la, damping_of(g))?;
                        }
                        let d = negated(pre.precondition(la, &views)?);
                        if !finite(&d) {
                            continue;
                        }
                        let Ok(m) = quadratic_step(la, mlp, &fwd, loss, &grads, &d, prev, ad.lambda, cfg.l2) else {
                            continue;
                        };
                        if m.alpha.is_finite()
                            && m.mu.is_finite()
                            && best.as_ref().is_none_or(|b| m.model_change < b.2.model_change)
                        {
                            best = Some((g, d, m));
                        }
                    }
                    let Some((gamma, delta, m)) = best else {
                        return self.refuse("the quadratic model's step", value, skipped_statistics);
                    };
                    if candidates.len() > 1 {
                        pre.set_damping_schedule(damping_schedule(kind, gamma * gamma));
                        pre.apply_damping(la, damping_of(gamma))?;
                    }
                    let (a_t, m_t) = (T::from_f64_lossy(m.alpha), T::from_f64_lossy(m.mu));
                    let step: Vec<Array2<T>> = delta
                        .iter()
                        .zip(velocity.iter())
                        .map(|(d, v)| {
                            let mut n = d.mapv(|x| x * a_t);
                            if prev.is_some() {
                                n.scaled_add(m_t, v);
                            }
                            n
                        })
                        .collect();
                    if !finite(&step) || !Self::update_fits(mlp, velocity, &step, 1.0, 0.0) {
                        return self.refuse("the updated weight", value, skipped_statistics);
                    }
                    let half_l2_norm = |mlp: &Mlp<T>| {
                        0.5 * cfg.l2
                            * mlp
                                .layers
                                .iter()
                                .map(|l| l.w.iter().map(|x| x.to_f64_exact().powi(2)).sum::<f64>())
                                .sum::<f64>()
                    };
                    let rho_due = (ad.steps + 1).is_multiple_of(acfg.t1);
                    let measure = rho_due || acfg.reject;
                    let h_before = if measure { value + half_l2_norm(mlp) } else { f64::NAN };
                    if acfg.reject {
                        if saved.len() == mlp.layers.len() {
                            saved.iter_mut().zip(&mlp.layers).for_each(|(s, l)| s.assign(&l.w));
                        } else {
                            *saved = mlp.layers.iter().map(|l| l.w.clone()).collect();
                        }
                    }
                    for ((layer, v), d) in mlp.layers.iter_mut().zip(velocity.iter_mut()).zip(step) {
                        layer.w += &d;
                        *v = d;
                    }
                    let lambda_used = ad.lambda;
                    let omega1 = acfg.omega.powi(acfg.t1 as i32);
                    let mut rho = None;
                    let mut rejected = false;
                    if measure {
                        let after = mlp.forward(la, x, &mut NoHook)?;
                        let h_after = loss.value(after.output(), t)? + half_l2_norm(mlp);
                        let r = reduction_ratio(h_before, h_after, m.model_change);
                        if rho_due {
                            ad.lambda = levenberg_marquardt(ad.lambda, r, omega1, acfg.lambda_min, acfg.lambda_max);
                        }
                        // A rise (or a non-finite value) undoes the step.
                        if acfg.reject && (h_after.is_nan() || h_after > h_before) {
                            for ((layer, v), w) in mlp.layers.iter_mut().zip(velocity.iter_mut()).zip(saved.iter()) {
                                layer.w.assign(w);
                                v.fill(T::zero());
                            }
                            if !rho_due {
                                ad.lambda = (ad.lambda / omega1).clamp(acfg.lambda_min, acfg.lambda_max);
                            }
                            rejected = true;
                        }
                        rho = Some(r);
                    }
                    ad.gamma = gamma;
                    ad.steps += 1;
                    adaptive_record = Some(AdaptiveRecord {
                        lambda: lambda_used,
                        gamma,
                        alpha: m.alpha,
                        mu: m.mu,
                        model_change: m.model_change,
                        rho,
                        rejected,
                    });
                } else {
                    let mut deltas = pre.precondition(la, &views)?;
                    if !finite(&deltas) {
                        return self.refuse("the preconditioned direction", value, skipped_statistics);
                    }
                    if let Some(kappa) = cfg.kl_clip {
                        let q: f64 = deltas
                            .iter()
                            .zip(&grads)
                            .map(|(d, g)| {
                                d.iter().zip(g).map(|(&a, &b)| a.to_f64_exact() * b.to_f64_exact()).sum::<f64>()
                            })
                            .sum::<f64>()
                            * cfg.lr
                            * cfg.lr;
                        if !q.is_finite() {
                            return self.refuse("the KL clip's ⟨Δ, ∇⟩", value, skipped_statistics);
                        }
                        let nu = if q > 0.0 { (kappa / q).sqrt().min(1.0) } else { 1.0 };
                        if nu < 1.0 {
                            let nu_t = T::from_f64_lossy(nu);
                            deltas.iter_mut().for_each(|d| d.mapv_inplace(|x| x * nu_t));
                        }
                        kl_scale = Some(nu);
                    }
                    if !Self::update_fits(mlp, velocity, &deltas, cfg.lr, cfg.momentum) {
                        return self.refuse("the updated weight", value, skipped_statistics);
                    }
                    for ((layer, v), d) in mlp.layers.iter_mut().zip(velocity.iter_mut()).zip(&deltas) {
                        Zip::from(&mut *v).and(d).for_each(|v, &d| *v = mom * *v + d);
                        layer.w.scaled_add(-lr, v);
                    }
                }
            }
        }
        Ok(StepReport { loss: value, kl_scale, skipped: None, skipped_statistics, adaptive: adaptive_record })
    }

    /// Sets $\lambda_0 = \operatorname{tr}(F)/P$ (within the bounds) from the
    /// first statistics batch, and $\gamma_0 = \sqrt{\lambda_0 + \eta}$ with the
    /// preconditioner's damping $\gamma_0^2$ unless $\gamma_0$ is configured.
    /// A batch whose trace is not finite leaves them for the next step (its
    /// statistics are skipped too).
    fn initial_damping(
        pre: &mut Preconditioner<T>,
        ad: &mut Adaptive,
        acfg: &AdaptiveConfig,
        cfg: &OptimizerConfig,
        fwd: &Forward<T>,
        recorder: &GradRecorder<T>,
        n_stats: usize,
    ) -> Result<()> {
        let mut inputs = Vec::with_capacity(recorder.grads.len());
        let mut grads = Vec::with_capacity(recorder.grads.len());
        for (l, g) in recorder.grads.iter().enumerate() {
            let Some(g) = g else { return Ok(()) };
            inputs.push(fwd.acts[l].slice(s![..n_stats, ..]));
            grads.push(g.view());
        }
        let trace = fisher_trace_per_parameter(&inputs, &grads)?;
        if !trace.is_finite() {
            return Ok(());
        }
        ad.lambda = trace.clamp(acfg.lambda_min, acfg.lambda_max);
        if acfg.gamma.is_none() {
            let gamma = (ad.lambda + cfg.l2).sqrt();
            if gamma <= 0.0 {
                return Err(Error::Config {
                    what: "adaptive.lambda",
                    value: "tr(F)/P = 0".into(),
                    why: "the first batch's Fisher is zero and l2 = 0, so there is no initial damping: \
                          set the initial lambda or gamma"
                        .into(),
                });
            }
            ad.gamma = gamma;
            pre.set_damping_schedule(damping_schedule(cfg.damping_kind, gamma * gamma));
        }
        Ok(())
    }

    /// Whether $\bar W - \eta(\mu v + d)$ (and Nesterov's look-ahead) stays
    /// within the floating-point range for every layer, by the bound
    /// $\max|\bar W| + \eta(1+\mu)(\mu \max|v| + \max|d|)$, checked before
    /// anything is written.
    fn update_fits(mlp: &Mlp<T>, velocity: &[Array2<T>], directions: &[Array2<T>], lr: f64, mom: f64) -> bool {
        let limit = T::max_value().to_f64_exact();
        mlp.layers
            .iter()
            .zip(velocity)
            .zip(directions)
            .all(|((layer, v), d)| max_abs(&layer.w) + lr * (1.0 + mom) * (mom * max_abs(v) + max_abs(d)) < limit)
    }

    /// A step that changes nothing because `what` is not finite: counted and
    /// reported ([`OnNonFinite::Skip`]) or an error.
    fn refuse(&mut self, what: &'static str, loss: f64, skipped_statistics: Vec<usize>) -> Result<StepReport> {
        match self.config.on_non_finite {
            OnNonFinite::Skip => {
                self.skipped_steps += 1;
                Ok(StepReport { loss, kl_scale: None, skipped: Some(what), skipped_statistics, adaptive: None })
            }
            OnNonFinite::Error => Err(Error::NonFinite { step: 0, what }),
        }
    }
}

/// Checks the knobs that are used in the training's precision `T` in that
/// precision: $\eta$ must stay finite and non-zero, $\mu$, $\beta_1$ and
/// $\beta_2$ below 1, $\ell_2$, the damping and $\gamma_0^2$ finite, and
/// non-zero if they were; $\epsilon$ finite. (In `f32`, `--lr 3.5e38` is
/// infinite and `--lr 1e-46` is zero: the first destroyed the weights at
/// step 1, the second trained nothing, silently.)
///
/// # Errors
///
/// [`Error::Config`] naming the knob, its value and the precision.
pub fn check_precision<T: Scalar>(cfg: &OptimizerConfig) -> Result<()> {
    let name = if std::mem::size_of::<T>() == 4 { "f32" } else { "f64" };
    let as_t = |x: f64| T::from_f64_lossy(x).to_f64_exact();
    let bad = |what: &'static str, value: f64, why: &str| {
        Err(Error::Config { what, value: value.to_string(), why: format!("{why} in {name}, the run's precision") })
    };
    let lr = as_t(cfg.lr);
    if !(lr.is_finite() && lr > 0.0) {
        return bad("lr", cfg.lr, &format!("must be positive and finite; it is {lr}"));
    }
    for (what, x) in [("momentum", cfg.momentum), ("beta1", cfg.beta1), ("beta2", cfg.beta2)] {
        if as_t(x) >= 1.0 {
            return bad(what, x, "must be below 1; it rounds to 1");
        }
    }
    let gamma2 = cfg.adaptive.as_ref().and_then(|a| a.gamma).map(|g| g * g);
    for (what, x) in
        [("l2", Some(cfg.l2)), ("damping", Some(cfg.damping)), ("eps", Some(cfg.eps)), ("adaptive.gamma^2", gamma2)]
    {
        let Some(x) = x else { continue };
        let t = as_t(x);
        if !t.is_finite() || (x != 0.0 && t == 0.0) {
            return bad(what, x, &format!("must be finite, and non-zero if it is; it is {t}"));
        }
    }
    Ok(())
}

const SCAN_CHUNK: usize = 1 << 16;

/// Whether every entry is finite: a parallel scan over contiguous chunks
/// (the answer does not depend on the order or the thread count).
fn all_finite<T: Scalar>(a: &Array2<T>) -> bool {
    match a.as_slice_memory_order() {
        Some(s) => s.par_chunks(SCAN_CHUNK).all(|c| c.iter().all(|x| x.is_finite())),
        None => a.iter().all(|x| x.is_finite()),
    }
}

/// The largest $|a_{ij}|$ (the entries are finite), by the same scan.
fn max_abs<T: Scalar>(a: &Array2<T>) -> f64 {
    let chunk_max = |c: &[T]| c.iter().fold(0.0f64, |m, &x| m.max(x.to_f64_exact().abs()));
    match a.as_slice_memory_order() {
        Some(s) => s.par_chunks(SCAN_CHUNK).map(chunk_max).reduce(|| 0.0, f64::max),
        None => a.iter().fold(0.0f64, |m, &x| m.max(x.to_f64_exact().abs())),
    }
}
