//! The configuration of [`KfacOptimizer`](super::KfacOptimizer): what the
//! curvature is, how the update is chosen, and the $\ell_2$ term. Each rule
//! keeps its own knobs; every field has a documented default and
//! [`KfacConfig::validate`] names the field it refuses.

use crate::blocks::{BlockKind, KfacMethod};
use crate::damping::{Damping, DampingKind, DampingSchedule, PiRule, Schedule};
use crate::error::{Error, Result};
use crate::loss::FisherMode;
use crate::preconditioner::{NonFinitePolicy, PreconditionerConfig, Structure};
use crate::scalar::Real;

/// What the curvature estimate is and when it is updated.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CurvatureConfig {
    /// The block of every layer: K-FAC (eigen or Cholesky path), EKFAC,
    /// diagonal or dense.
    pub block: BlockKind,
    /// How the damping enters: Tikhonov on the whole block, or factored
    /// with the $\pi$ correction (K-FAC only; see [`crate::damping`]).
    pub damping_kind: DampingKind,
    /// Decay $\varepsilon$ of the running statistics
    /// ([`MovingAverage`](crate::MovingAverage)).
    pub decay: f64,
    /// Update the factor statistics every this many steps.
    pub stats_period: usize,
    /// Rebuild the eigenbases or inverses every this many steps.
    pub refresh_period: usize,
    /// Update EKFAC's scalings every this many steps.
    pub scalings_period: usize,
    /// Block-diagonal, or Martens & Grosse's block-tridiagonal model
    /// (K-FAC with factored damping only).
    pub structure: Structure,
    /// Which targets the caller's statistics come from: sampled from the
    /// model (the true Fisher, the default) or the data's (the empirical
    /// Fisher; Kunstner et al., 2019). The optimizer does not compute the
    /// statistics: this tells the caller what to hand over.
    pub fisher: FisherMode,
    /// $\tau$: the fraction of each batch the caller uses for the
    /// statistics ([`statistics_rows`](Self::statistics_rows)).
    pub stats_fraction: f64,
}

impl CurvatureConfig {
    /// K-FAC with Cholesky inverses of factored-damped factors (two
    /// products per preconditioning instead of four): decay 0.95 on a
    /// quarter of each batch (true Fisher), statistics and scalings every
    /// step, inverses every 20 steps.
    pub fn kfac() -> Self {
        Self {
            block: BlockKind::Kfac(KfacMethod::Inverse),
            damping_kind: DampingKind::Factored(PiRule::Trace),
            decay: 0.95,
            stats_period: 1,
            refresh_period: 20,
            scalings_period: 1,
            structure: Structure::BlockDiagonal,
            fisher: FisherMode::True,
            stats_fraction: 0.25,
        }
    }

    /// K-FAC's eigen path with Tikhonov damping of the whole block (exact in
    /// the eigenbasis; four products per preconditioning), otherwise as
    /// [`kfac`](Self::kfac).
    pub fn kfac_eigen() -> Self {
        Self { block: BlockKind::Kfac(KfacMethod::Eigen), damping_kind: DampingKind::Tikhonov, ..Self::kfac() }
    }

    /// EKFAC with Tikhonov damping, otherwise as [`kfac`](Self::kfac).
    pub fn ekfac() -> Self {
        Self { block: BlockKind::Ekfac, damping_kind: DampingKind::Tikhonov, ..Self::kfac() }
    }

    /// The number of examples, of a batch of `n`, that feed the statistics:
    /// $\lceil \tau n \rceil$, at least 1 and at most $n$.
    pub fn statistics_rows(&self, n: usize) -> usize {
        ((self.stats_fraction * n as f64).ceil() as usize).clamp(1, n.max(1))
    }

    /// The damping of kind [`damping_kind`](Self::damping_kind) with
    /// $\lambda$ = `lambda`.
    pub fn damping(&self, lambda: f64) -> Damping {
        match self.damping_kind {
            DampingKind::Tikhonov => Damping::Tikhonov { lambda },
            DampingKind::Factored(pi) => Damping::Factored { lambda, pi },
        }
    }

    /// The [`PreconditionerConfig`] of these settings with the constant
    /// damping $\lambda$ = `lambda`.
    pub fn preconditioner(&self, lambda: f64, on_non_finite: NonFinitePolicy) -> PreconditionerConfig {
        PreconditionerConfig {
            block: self.block,
            damping: DampingSchedule { kind: self.damping_kind, lambda: Schedule::Constant(lambda) },
            decay: Schedule::Constant(self.decay),
            stats_period: self.stats_period,
            refresh_period: self.refresh_period,
            scalings_period: self.scalings_period,
            on_non_finite,
            structure: self.structure,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.decay) {
            return bad("decay", self.decay, "must lie in [0, 1]");
        }
        if !(self.stats_fraction > 0.0 && self.stats_fraction <= 1.0) {
            return bad("stats_fraction", self.stats_fraction, "must lie in (0, 1]");
        }
        match (self.block, self.damping_kind) {
            (BlockKind::Kfac(KfacMethod::Inverse), DampingKind::Tikhonov)
                if self.structure == Structure::BlockDiagonal =>
            {
                return Err(Error::InvalidConfig {
                    what: "damping_kind",
                    value: "tikhonov with K-FAC's Cholesky path".into(),
                    why: "Tikhonov damping of the whole block needs the eigenbases: use KfacMethod::Eigen or factored \
                          damping",
                });
            }
            (BlockKind::Ekfac | BlockKind::Diagonal | BlockKind::Dense, DampingKind::Factored(_)) => {
                return Err(Error::InvalidConfig {
                    what: "damping_kind",
                    value: format!("factored with {:?} blocks", self.block),
                    why: "only K-FAC's blocks are Kronecker products that factored damping can damp: use tikhonov",
                });
            }
            _ => {}
        }
        self.preconditioner(0.0, NonFinitePolicy::Skip).validate()
    }
}

/// The fixed rule: $\Delta = (\hat F + \text{damping})^{-1}\nabla h$, the KL clip
/// $\nu = \min(1, \sqrt{\kappa / (\eta^2 \langle \Delta, \nabla h \rangle)})$ of
/// kfac-pytorch, momentum $v \leftarrow \mu v + \nu\Delta$ and
/// $\theta \leftarrow \theta - \eta v$.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FixedRule {
    /// The learning rate $\eta$.
    pub lr: f64,
    /// The momentum $\mu \in [0, 1)$.
    pub momentum: f64,
    /// The damping $\lambda$ of the curvature blocks.
    pub damping: f64,
    /// The KL clip $\kappa$ (`None`: no clipping).
    pub kl_clip: Option<f64>,
}

impl Default for FixedRule {
    /// $\eta = 0.3$, $\mu = 0.9$, $\lambda = 1$, $\kappa = 1$: the best of the
    /// grids on the reference MNIST autoencoder (the KL clip binds there at
    /// every step, so $\kappa$ and $\lambda$ are the knobs that matter).
    fn default() -> Self {
        Self { lr: 0.3, momentum: 0.9, damping: 1.0, kl_clip: Some(1.0) }
    }
}

/// The knobs of the adaptive machinery (Martens & Grosse, 2015, §6–7); see
/// [`adaptive`](super::adaptive) for the rule.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AdaptiveConfig {
    /// The initial $\lambda$: `None` (the default) for the mean eigenvalue
    /// of the Fisher on the first statistics batch,
    /// $\lambda_0 = \operatorname{tr}(F)/P$ ([`fisher_trace_per_parameter`](super::fisher_trace_per_parameter)),
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
    #[cfg_attr(feature = "serde", serde(default = "paper_lambda"))]
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
    /// [`levenberg_marquardt`](super::levenberg_marquardt) every `t1` steps,
    /// so a run in which no step raises the objective is the paper's run
    /// exactly. Without rejection a classifier whose loss nears zero can
    /// blow up, and a run from the default automatic $\lambda_0$ can
    /// diverge at its first steps (`docs/guide/`). A configuration saved
    /// before this field existed reads as `false`, the behaviour of those
    /// versions.
    #[cfg_attr(feature = "serde", serde(default))]
    pub reject: bool,
}

// The serde default of `AdaptiveConfig::lambda`.
#[allow(clippy::unnecessary_wraps, dead_code)]
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
        Self { lambda: Some(150.0), omega: 19.0 / 20.0, reject: false, ..Self::default() }
    }

    /// $\omega_1 = \omega^{t_1}$, the factor of the Levenberg–Marquardt rule.
    pub fn omega1(&self) -> f64 {
        power(self.omega, self.t1)
    }

    /// $\omega_2 = \sqrt\omega^{\,t_2}$, the spacing of the candidates for $\gamma$.
    pub fn omega2(&self) -> f64 {
        power(self.omega.sqrt(), self.t2)
    }

    fn validate(&self) -> Result<()> {
        if let Some(l) = self.lambda.filter(|l| !(l.is_finite() && *l >= 0.0)) {
            return bad("adaptive.lambda", l, "must be non-negative");
        }
        if !(self.omega > 0.0 && self.omega < 1.0) {
            return bad("adaptive.omega", self.omega, "must lie in (0, 1)");
        }
        for (what, t, base) in [("adaptive.t1", self.t1, self.omega), ("adaptive.t2", self.t2, self.omega.sqrt())] {
            if t == 0 {
                return bad(what, 0.0, "must be at least 1");
            }
            // λ is divided by ω^{t1}: the power must not underflow to 0.
            if !(i32::try_from(t).is_ok() && power(base, t) > 0.0) {
                return bad(what, t as f64, "too long a period: omega^t underflows to 0");
            }
        }
        if !(0.0 <= self.lambda_min && self.lambda_min <= self.lambda_max && self.lambda_max.is_finite()) {
            return bad("adaptive.lambda_min", self.lambda_min, "needs 0 <= lambda_min <= lambda_max < inf");
        }
        if let Some(g) = self.gamma.filter(|g| !(g.is_finite() && *g > 0.0)) {
            return bad("adaptive.gamma", g, "must be positive");
        }
        Ok(())
    }
}

/// How the optimizer turns the preconditioned gradient into an update.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum UpdateRule {
    /// Learning rate, momentum, fixed damping and KL clip.
    Fixed(FixedRule),
    /// Martens & Grosse's adaptive step size, momentum and damping.
    Adaptive(AdaptiveConfig),
}

/// The whole configuration of a [`KfacOptimizer`](super::KfacOptimizer).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KfacConfig {
    /// The curvature estimate.
    pub curvature: CurvatureConfig,
    /// The update rule.
    pub rule: UpdateRule,
    /// The $\ell_2$ coefficient $\eta$: $\eta\,\theta$ is added to the gradient
    /// (every parameter, biases included), and $\tfrac\eta2\|\theta\|^2$ to the
    /// objective $h$ of the adaptive rule.
    pub l2: f64,
    /// What a step does with non-finite numbers (a batch, a gradient, a
    /// direction, an overflow): skip it and report it (the default), or
    /// stop with an error.
    pub on_non_finite: NonFinitePolicy,
}

impl KfacConfig {
    /// K-FAC ([`CurvatureConfig::kfac`]) with the fixed rule's defaults and
    /// $\ell_2 = 10^{-5}$.
    pub fn kfac() -> Self {
        Self {
            curvature: CurvatureConfig::kfac(),
            rule: UpdateRule::Fixed(FixedRule::default()),
            l2: 1e-5,
            on_non_finite: NonFinitePolicy::Skip,
        }
    }

    /// EKFAC ([`CurvatureConfig::ekfac`]) with the fixed rule's defaults and
    /// $\ell_2 = 10^{-5}$.
    pub fn ekfac() -> Self {
        Self { curvature: CurvatureConfig::ekfac(), ..Self::kfac() }
    }

    /// The same configuration with the adaptive rule `adaptive`.
    pub fn with_adaptive(self, adaptive: AdaptiveConfig) -> Self {
        Self { rule: UpdateRule::Adaptive(adaptive), ..self }
    }

    /// The adaptive rule's knobs, if that is the rule.
    pub fn adaptive(&self) -> Option<&AdaptiveConfig> {
        match &self.rule {
            UpdateRule::Adaptive(a) => Some(a),
            UpdateRule::Fixed(_) => None,
        }
    }

    /// Checks every knob, in `f64` and in the precision `T` the optimizer
    /// will use (a learning rate, damping or $\ell_2$ that overflows `T` or
    /// rounds to zero in it is refused).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate<T: Real>(&self) -> Result<()> {
        self.curvature.validate()?;
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return bad("l2", self.l2, "must be non-negative");
        }
        representable::<T>("l2", self.l2)?;
        match &self.rule {
            UpdateRule::Fixed(f) => {
                if !(f.lr.is_finite() && f.lr > 0.0) {
                    return bad("lr", f.lr, "must be positive");
                }
                if !(0.0..1.0).contains(&f.momentum) {
                    return bad("momentum", f.momentum, "must lie in [0, 1)");
                }
                if !(f.damping.is_finite() && f.damping >= 0.0) {
                    return bad("damping", f.damping, "must be non-negative");
                }
                if let Some(k) = f.kl_clip.filter(|k| !(k.is_finite() && *k > 0.0)) {
                    return bad("kl_clip", k, "must be positive");
                }
                representable::<T>("lr", f.lr)?;
                representable::<T>("momentum", f.momentum)?;
                below_one::<T>("momentum", f.momentum)?;
                representable::<T>("damping", f.damping)?;
            }
            UpdateRule::Adaptive(a) => {
                a.validate()?;
                if let Some(g) = a.gamma {
                    representable::<T>("adaptive.gamma^2", g * g)?;
                }
            }
        }
        Ok(())
    }
}

impl Default for KfacConfig {
    /// [`KfacConfig::ekfac`].
    fn default() -> Self {
        Self::ekfac()
    }
}

/// Refuses a `value` below 1 in `f64` that rounds to 1 in the precision `T`
/// (a momentum of 0.999999999 is 1 in `f32`).
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming `what`.
pub fn below_one<T: Real>(what: &'static str, value: f64) -> Result<()> {
    if T::from_f64_lossy(value) >= T::one() {
        return Err(Error::InvalidConfig {
            what,
            value: format!("{value} in {}", T::NAME),
            why: "rounds to 1 in the run's precision: it must stay below 1",
        });
    }
    Ok(())
}

/// $x^n$ by repeated multiplication (`powi`) where the exponent fits an
/// `i32`, else through `powf` (so a huge period gives 0, never a wrapped
/// exponent).
fn power(x: f64, n: usize) -> f64 {
    i32::try_from(n).map_or_else(|_| x.powf(n as f64), |n| x.powi(n))
}

fn bad(what: &'static str, value: f64, why: &'static str) -> Result<()> {
    Err(Error::InvalidConfig { what, value: value.to_string(), why })
}

/// Refuses a `value` that is not a finite number of the precision `T`, or
/// that is positive in `f64` but rounds to zero in `T`: a knob checked in
/// `f64` and applied in `f32` must mean the same in both.
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming `what`.
pub fn representable<T: Real>(what: &'static str, value: f64) -> Result<()> {
    let t = T::from_f64_lossy(value);
    let why = if !t.is_finite() {
        "overflows the run's precision"
    } else if value != 0.0 && t == T::zero() {
        "rounds to zero in the run's precision"
    } else {
        return Ok(());
    };
    Err(Error::InvalidConfig { what, value: format!("{value} in {}", T::NAME), why })
}
