//! The whole K-FAC / EKFAC optimizer, for any framework.
//!
//! [`KfacOptimizer`] runs a natural-gradient step on what the caller hands
//! over: the layers' parameters and gradients in the $[W \mid b]$ layout of
//! [`crate::shape`], the batch loss, and (when
//! [`needs_statistics`](KfacOptimizer::needs_statistics)) the layers'
//! statistics batches. It updates the curvature (statistics, refresh,
//! scalings), preconditions the gradient, and chooses the update by one of
//! two rules ([`UpdateRule`]):
//! - the fixed rule ([`fixed`]): learning rate, momentum, fixed damping,
//!   KL clip and $\ell_2$;
//! - the adaptive rule ([`adaptive`]): $\alpha$ and $\mu$ from the
//!   quadratic model, $\rho$ and the Levenberg–Marquardt rule for $\lambda$
//!   every $T_1$ steps, the greedy $\gamma$ every $T_2$ steps, rejected steps.
//!
//! The adaptive rule needs two things only the model can give, asked
//! through the small trait [`CurvatureModel`]: the quadratic forms
//! $u^\top F v$ of a few directions on the batch and the loss at
//! $\theta + \delta$. A framework with forward-mode differentiation supplies
//! exact Jacobian-vector products; one without (candle, burn) wraps its
//! forward pass in [`FiniteDifferences`].
//!
//! # The step, in order
//! 1. A non-finite loss or gradient (with the $\ell_2$ term $\eta\theta$
//!    added) refuses the step before any statistic changes.
//! 2. The statistics are folded in, and the caches refreshed, on the
//!    [`Preconditioner`]'s schedule. With the adaptive rule and
//!    $\lambda_0 = \operatorname{tr}(F)/P$, the first statistics batch sets
//!    $\lambda_0$ ([`fisher_trace_per_parameter`]).
//! 3. The rule computes the update; a non-finite direction, or an update
//!    that could overflow the parameters, refuses the step.
//!
//! A refused step writes nothing (no momentum, no update) and is reported
//! in the [`StepReport`] under [`NonFinitePolicy::Skip`], or is an
//! [`Error::NonFinite`] under [`NonFinitePolicy::Error`].
//!
//! # Conventions
//! The loss is the mean over the batch; the gradients are those of that
//! mean (the $\ell_2$ term is added here, not by the caller); the
//! statistics batches hold per-example pre-activation gradients, or say
//! [`GradScale::MeanLoss`](crate::GradScale::MeanLoss). The optimizer never
//! writes the parameters: [`Step::apply`] adds the update, which the caller
//! may also read ([`Step::update`]).
//!
//! # Example
//! ```
//! use kfac_core::optim::{KfacConfig, KfacOptimizer, NoCurvature, StepInput};
//! use kfac_core::{LayerBatch, LayerShape};
//! use kfac_linalg_faer::Faer;
//! use ndarray::Array2;
//!
//! let la = Faer::sequential();
//! let shape = LayerShape::new(3, 2);
//! let mut opt = KfacOptimizer::<f64>::new(KfacConfig::kfac(), &[shape])?;
//! let mut w = Array2::from_shape_fn(shape.param_dims(), |(i, j)| 0.1 * (i + j) as f64);
//! let x = Array2::from_shape_fn((16, 3), |(i, j)| ((i * 3 + j) as f64).sin());
//! let g = Array2::from_shape_fn((16, 2), |(i, j)| ((i + 5 * j) as f64).cos());
//! let stats = [LayerBatch::new(x.view(), g.view())];
//! let grad = Array2::from_elem(shape.param_dims(), 0.01);
//! let input = StepInput { params: &[w.view()], grads: vec![grad], loss: 1.0, statistics: Some(&stats) };
//! let step = opt.step(&la, input, &mut NoCurvature)?;
//! assert!(step.report().skipped.is_none());
//! step.apply([w.view_mut()]);
//! # Ok::<(), kfac_core::Error>(())
//! ```

pub mod adaptive;
mod config;
pub mod distributed;
pub mod finite_differences;
pub mod fixed;
pub mod guards;
mod model;
mod quadratic;
mod report;
mod state;

pub use config::{AdaptiveConfig, CurvatureConfig, FixedRule, KfacConfig, UpdateRule, below_one, representable};
pub use distributed::{ReducedModel, Shard};
pub use finite_differences::{FiniteDifferences, OutputModel};
pub use model::{CurvatureModel, NoCurvature};
pub use quadratic::{ModelStep, dot, fisher_trace_per_parameter, levenberg_marquardt, quadratic_step, reduction_ratio};
pub use report::{AdaptiveRecord, StepReport};
pub use state::{AdaptiveState, KfacState};

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::error::{Error, Result};
use crate::linalg::LinAlg;
use crate::preconditioner::{NonFinitePolicy, Preconditioner};
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape};
use crate::state::BlockHealth;
use guards::finite;

/// What the caller hands over for one step.
#[derive(Debug)]
pub struct StepInput<'a, T> {
    /// The parameters $\theta$ of every layer, in the $[W \mid b]$ layout.
    pub params: &'a [ArrayView2<'a, T>],
    /// The gradients of the mean batch loss, one per layer (without the
    /// $\ell_2$ term, which the step adds).
    pub grads: Vec<Array2<T>>,
    /// The mean batch loss at $\theta$ (without the $\ell_2$ term).
    pub loss: f64,
    /// The layers' statistics batches, needed when
    /// [`KfacOptimizer::needs_statistics`] says so (else ignored).
    pub statistics: Option<&'a [LayerBatch<'a, T>]>,
}

/// A step's outcome: the report, and the update to add to the parameters.
#[derive(Debug)]
pub struct Step<'o, T> {
    report: StepReport,
    update: Option<(T, &'o [Array2<T>])>,
}

impl<T: Real> Step<'_, T> {
    /// What the step did.
    pub fn report(&self) -> &StepReport {
        &self.report
    }

    /// The report, dropping the update.
    pub fn into_report(self) -> StepReport {
        self.report
    }

    /// The update $\delta$ as $(s, d)$ with $\delta_l = s\,d_l$: $s = -\eta$ and
    /// $d$ the velocity for the fixed rule, $s = 1$ and $d = \delta$ for the
    /// adaptive one; `None` when the step changes nothing (refused or
    /// rejected).
    pub fn scaled_direction(&self) -> Option<(T, &[Array2<T>])> {
        self.update
    }

    /// The update $\delta$ as new arrays (`None`: nothing to apply).
    pub fn update(&self) -> Option<Vec<Array2<T>>> {
        self.update.map(|(s, d)| d.iter().map(|x| x.mapv(|v| s * v)).collect())
    }

    /// $\theta \leftarrow \theta + \delta$ for the layers' parameters, in
    /// layer order (nothing when the step changes nothing). Each entry is
    /// computed as $\theta + s\,d$ in the parameters' precision.
    pub fn apply<'p>(&self, params: impl IntoIterator<Item = ArrayViewMut2<'p, T>>) {
        if let Some((s, d)) = self.update {
            for (mut p, d) in params.into_iter().zip(d) {
                p.scaled_add(s, d);
            }
        }
    }
}

/// Where a step's statistics come from: the caller's batches, or the parts
/// of a data-parallel step with their reducer.
pub(crate) enum Curvature<'s, 'a, T> {
    Local(Option<&'s [LayerBatch<'a, T>]>),
    Parts(Option<&'s [&'s [LayerBatch<'a, T>]]>, &'s crate::comm::Reducer<'s>),
}

/// Why a rule refused a step (the quantity that was not finite).
pub(crate) struct Refusal(pub &'static str);

/// The numbers a rule reads.
pub(crate) struct StepContext<'s, 'a, T> {
    pub params: &'s [ArrayView2<'a, T>],
    pub grads: &'s [Array2<T>],
    pub loss: f64,
    pub l2: f64,
}

/// K-FAC, EKFAC or block-tridiagonal K-FAC as a whole optimizer; see the
/// [module docs](self).
#[derive(Debug)]
pub struct KfacOptimizer<T: Real> {
    config: KfacConfig,
    shapes: Vec<LayerShape>,
    pre: Preconditioner<T>,
    velocity: Vec<Array2<T>>,
    adaptive: Option<AdaptiveState>,
    skipped_steps: usize,
}

impl<T: Real> KfacOptimizer<T> {
    /// An optimizer for layers of the given shapes, with the blocks of
    /// `config.curvature`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the field ([`KfacConfig::validate`]).
    pub fn new(config: KfacConfig, shapes: &[LayerShape]) -> Result<Self> {
        config.validate::<T>()?;
        let adaptive = Self::initial_adaptive(&config);
        let lambda = match (&config.rule, adaptive) {
            (UpdateRule::Fixed(f), _) => f.damping,
            (UpdateRule::Adaptive(_), Some(a)) => a.gamma * a.gamma,
            (UpdateRule::Adaptive(_), None) => 0.0,
        };
        let pre = Preconditioner::new(config.curvature.preconditioner(lambda, config.on_non_finite), shapes)?;
        Ok(Self::from_parts(config, shapes, pre, adaptive))
    }

    /// An optimizer around a preconditioner built by the caller (e.g. a
    /// different block kind per layer, or damping and decay schedules);
    /// `config.curvature` then only says how damping is chosen and what
    /// statistics to hand over. The preconditioner's damping is replaced by
    /// the rule's.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the field, or when `shapes` does not
    /// have one entry per layer of `pre`.
    pub fn with_preconditioner(config: KfacConfig, shapes: &[LayerShape], mut pre: Preconditioner<T>) -> Result<Self> {
        config.validate::<T>()?;
        if shapes.len() != pre.num_layers() {
            return Err(Error::InvalidConfig {
                what: "shapes",
                value: format!("{} shapes for {} layers", shapes.len(), pre.num_layers()),
                why: "one shape per layer of the preconditioner",
            });
        }
        let adaptive = Self::initial_adaptive(&config);
        let lambda = match (&config.rule, adaptive) {
            (UpdateRule::Fixed(f), _) => f.damping,
            (_, Some(a)) => a.gamma * a.gamma,
            _ => 0.0,
        };
        let kind = config.curvature.damping_kind;
        pre.set_damping_schedule(crate::DampingSchedule { kind, lambda: lambda.into() });
        Ok(Self::from_parts(config, shapes, pre, adaptive))
    }

    fn from_parts(config: KfacConfig, shapes: &[LayerShape], pre: Preconditioner<T>, a: Option<AdaptiveState>) -> Self {
        let velocity = shapes.iter().map(|s| Array2::zeros(s.param_dims())).collect();
        Self { config, shapes: shapes.to_vec(), pre, velocity, adaptive: a, skipped_steps: 0 }
    }

    /// With $\lambda_0 = \operatorname{tr}(F)/P$ (`lambda: None`) these are
    /// placeholders, replaced at the first statistics step before the first
    /// refresh.
    fn initial_adaptive(config: &KfacConfig) -> Option<AdaptiveState> {
        config.adaptive().map(|a| {
            let lambda = a.lambda.unwrap_or(1.0);
            AdaptiveState { lambda, gamma: a.gamma.unwrap_or_else(|| (lambda + config.l2).sqrt()), steps: 0 }
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KfacConfig {
        &self.config
    }

    /// The layers' shapes.
    pub fn shapes(&self) -> &[LayerShape] {
        &self.shapes
    }

    /// The curvature blocks.
    pub fn preconditioner(&self) -> &Preconditioner<T> {
        &self.pre
    }

    /// The adaptive rule's $(\lambda, \gamma, \text{steps})$.
    pub fn adaptive_state(&self) -> Option<AdaptiveState> {
        self.adaptive
    }

    /// Steps skipped so far because a number was not finite.
    pub fn skipped_steps(&self) -> usize {
        self.skipped_steps
    }

    /// Each layer's health report ([`Preconditioner::health`]).
    pub fn health(&self) -> Vec<BlockHealth> {
        self.pre.health()
    }

    /// Whether the next step reads statistics batches (the caller may skip
    /// computing them, e.g. the true Fisher's extra backward pass, when not).
    pub fn needs_statistics(&self) -> bool {
        self.pre.needs_statistics()
    }

    /// Records a step the caller could not compute because `what` is not
    /// finite (e.g. its loss): nothing changes; the skip is counted and
    /// reported ([`NonFinitePolicy::Skip`]) or is an error.
    ///
    /// # Errors
    ///
    /// [`Error::NonFinite`] under [`NonFinitePolicy::Error`].
    pub fn skip(&mut self, loss: f64, what: &'static str) -> Result<StepReport> {
        self.refuse(loss, what, Vec::new(), false).map(Step::into_report)
    }

    fn refuse(&mut self, loss: f64, what: &'static str, skipped: Vec<usize>, refreshed: bool) -> Result<Step<'_, T>> {
        match self.config.on_non_finite {
            NonFinitePolicy::Skip => {
                self.skipped_steps += 1;
                Ok(Step { report: StepReport::skipped(loss, what, skipped, refreshed), update: None })
            }
            NonFinitePolicy::Error => Err(Error::NonFinite { block: "optimizer".into(), what }),
        }
    }

    fn check_layers(&self, params: &[ArrayView2<'_, T>], grads: &[Array2<T>]) -> Result<()> {
        let n = self.shapes.len();
        for (what, found) in [("parameters (one per layer)", params.len()), ("gradients (one per layer)", grads.len())]
        {
            if found != n {
                return Err(Error::ShapeMismatch {
                    block: "optimizer".into(),
                    what,
                    expected: (n, 1),
                    found: (found, 1),
                });
            }
        }
        for ((s, p), g) in self.shapes.iter().zip(params).zip(grads) {
            for (what, dim) in [("parameters", p.dim()), ("gradient", g.dim())] {
                if dim != s.param_dims() {
                    let block = "optimizer".into();
                    return Err(Error::ShapeMismatch { block, what, expected: s.param_dims(), found: dim });
                }
            }
        }
        Ok(())
    }

    /// One step; see the [module docs](self). `model` is asked for
    /// quadratic forms and losses only by the adaptive rule (pass
    /// [`NoCurvature`] with the fixed rule).
    ///
    /// # Errors
    ///
    /// Shape errors; [`Error::NotReady`] when statistics are due and
    /// `input.statistics` is `None`; [`Error::NonFinite`] under
    /// [`NonFinitePolicy::Error`]; decomposition failures; the model's errors.
    pub fn step<M: CurvatureModel<T>>(
        &mut self,
        la: &dyn LinAlg<T>,
        input: StepInput<'_, T>,
        model: &mut M,
    ) -> std::result::Result<Step<'_, T>, M::Error> {
        let StepInput { params, grads, loss, statistics } = input;
        self.run(la, params, grads, loss, Curvature::Local(statistics), model)
    }

    /// The step on the global batch's loss and gradient (combined over the
    /// ranks for a data-parallel step), with the statistics of `curvature`.
    fn run<M: CurvatureModel<T>>(
        &mut self,
        la: &dyn LinAlg<T>,
        params: &[ArrayView2<'_, T>],
        mut grads: Vec<Array2<T>>,
        loss: f64,
        curvature: Curvature<'_, '_, T>,
        model: &mut M,
    ) -> std::result::Result<Step<'_, T>, M::Error> {
        self.check_layers(params, &grads)?;
        if !loss.is_finite() {
            return Ok(self.refuse(loss, "the loss", Vec::new(), false)?);
        }
        if self.config.l2 > 0.0 {
            let l2 = T::from_f64_lossy(self.config.l2);
            grads.iter_mut().zip(params).for_each(|(g, p)| g.scaled_add(l2, p));
        }
        if !finite(&grads) {
            return Ok(self.refuse(loss, "the gradient", Vec::new(), false)?);
        }
        let (skipped, refreshed) = self.update_curvature(la, curvature)?;
        let ctx = StepContext { params, grads: &grads, loss, l2: self.config.l2 };
        let (kl_scale, adaptive, accepted) = match &self.config.rule {
            UpdateRule::Fixed(rule) => match fixed::step(rule, la, &self.pre, &mut self.velocity, &ctx)? {
                Ok(kl) => (kl, None, true),
                Err(Refusal(what)) => return Ok(self.refuse(loss, what, skipped, refreshed)?),
            },
            UpdateRule::Adaptive(cfg) => {
                let Some(state) = self.adaptive.as_mut() else {
                    return Err(Error::NotReady { block: "optimizer".into(), what: "no adaptive state" }.into());
                };
                let parts = adaptive::Parts { pre: &mut self.pre, velocity: &mut self.velocity, state };
                match adaptive::step(cfg, &self.config.curvature, la, parts, &ctx, model)? {
                    Ok(o) => (None, Some(o.record), o.accepted),
                    Err(Refusal(what)) => return Ok(self.refuse(loss, what, skipped, refreshed)?),
                }
            }
        };
        let scale = match &self.config.rule {
            UpdateRule::Fixed(rule) => -T::from_f64_lossy(rule.lr),
            UpdateRule::Adaptive(_) => T::one(),
        };
        let report = StepReport { loss, kl_scale, skipped: None, skipped_statistics: skipped, refreshed, adaptive };
        Ok(Step { report, update: accepted.then_some((scale, &self.velocity[..])) })
    }

    /// The curvature part of a step: the initial $\lambda_0$ of the adaptive
    /// rule, then the preconditioner's update. Returns the layers whose
    /// statistics were skipped and whether the caches were rebuilt.
    fn update_curvature(&mut self, la: &dyn LinAlg<T>, curvature: Curvature<'_, '_, T>) -> Result<(Vec<usize>, bool)> {
        if !self.pre.needs_statistics() {
            let r = match curvature {
                Curvature::Local(_) => self.pre.update(la, None)?,
                Curvature::Parts(_, reducer) => self.pre.update_parts(la, None, reducer)?,
            };
            return Ok((r.skipped, r.refreshed));
        }
        let missing =
            || Error::NotReady { block: "optimizer".into(), what: "this step updates statistics: batches are needed" };
        let r = match curvature {
            Curvature::Local(statistics) => {
                let batches = statistics.ok_or_else(missing)?;
                self.initial_damping(|shapes| fisher_trace_per_parameter(shapes, batches))?;
                self.pre.update(la, Some(batches))?
            }
            Curvature::Parts(parts, reducer) => {
                let parts = parts.ok_or_else(missing)?;
                self.initial_damping(|shapes| distributed::fisher_trace(shapes, parts, reducer))?;
                self.pre.update_parts(la, Some(parts), reducer)?
            }
        };
        Ok((r.skipped, r.refreshed))
    }

    /// Sets $\lambda_0 = \operatorname{tr}(F)/P$ (within the bounds) from the
    /// first statistics batch, and $\gamma_0 = \sqrt{\lambda_0 + \eta}$ with the
    /// preconditioner's damping $\gamma_0^2$ unless $\gamma_0$ is configured.
    /// A batch whose trace is not finite leaves them for the next step (its
    /// statistics are skipped too).
    fn initial_damping(&mut self, trace: impl FnOnce(&[LayerShape]) -> Result<f64>) -> Result<()> {
        let (Some(cfg), Some(state)) = (self.config.adaptive(), self.adaptive.as_mut()) else { return Ok(()) };
        if state.steps > 0 || cfg.lambda.is_some() {
            return Ok(());
        }
        let trace = trace(&self.shapes)?;
        if !trace.is_finite() {
            return Ok(());
        }
        state.lambda = trace.clamp(cfg.lambda_min, cfg.lambda_max);
        if cfg.gamma.is_none() {
            let gamma = (state.lambda + self.config.l2).sqrt();
            if gamma <= 0.0 {
                return Err(Error::InvalidConfig {
                    what: "adaptive.lambda",
                    value: "tr(F)/P = 0".into(),
                    why: "the first batch's Fisher is zero and l2 = 0, so there is no initial damping: set the \
                          initial lambda or gamma",
                });
            }
            state.gamma = gamma;
            let kind = self.config.curvature.damping_kind;
            self.pre.set_damping_schedule(crate::DampingSchedule { kind, lambda: (gamma * gamma).into() });
        }
        Ok(())
    }

    /// The complete state, to save in a checkpoint.
    pub fn state(&self) -> KfacState<T> {
        KfacState {
            version: KfacState::<T>::VERSION,
            velocity: self.velocity.clone(),
            adaptive: self.adaptive,
            skipped_steps: self.skipped_steps,
            preconditioner: self.pre.state(),
        }
    }

    /// Continues from a saved state of an optimizer with the same
    /// configuration and layers. Everything is checked before anything
    /// changes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] naming what does not fit.
    pub fn restore(&mut self, state: &KfacState<T>) -> Result<()> {
        let bad = |why: String| Error::InvalidState { block: "optimizer".into(), why };
        if state.version != KfacState::<T>::VERSION {
            return Err(bad(format!(
                "the state's layout is version {}, this library reads version {}",
                state.version,
                KfacState::<T>::VERSION
            )));
        }
        if state.velocity.len() != self.shapes.len() {
            return Err(bad(format!("{} velocities for {} layers", state.velocity.len(), self.shapes.len())));
        }
        for (l, (v, s)) in state.velocity.iter().zip(&self.shapes).enumerate() {
            if v.dim() != s.param_dims() {
                return Err(bad(format!(
                    "the velocity of layer {l} has shape {:?}, expected {:?}",
                    v.dim(),
                    s.param_dims()
                )));
            }
            if !v.iter().all(|x| x.is_finite()) {
                return Err(bad(format!("the velocity of layer {l} holds a non-finite value")));
            }
        }
        match (state.adaptive, self.config.adaptive()) {
            (None, None) => {}
            (Some(a), Some(_)) => {
                if !(a.lambda.is_finite() && a.lambda >= 0.0 && a.gamma.is_finite() && a.gamma > 0.0) {
                    return Err(bad(format!("adaptive lambda = {}, gamma = {}", a.lambda, a.gamma)));
                }
            }
            _ => return Err(bad("the adaptive state does not match the configuration's rule".into())),
        }
        self.pre.restore(&state.preconditioner)?;
        self.velocity = state.velocity.clone();
        self.adaptive = state.adaptive;
        self.skipped_steps = state.skipped_steps;
        if let Some(a) = self.adaptive {
            let kind = self.config.curvature.damping_kind;
            self.pre.set_damping_schedule(crate::DampingSchedule { kind, lambda: (a.gamma * a.gamma).into() });
        }
        Ok(())
    }
}
