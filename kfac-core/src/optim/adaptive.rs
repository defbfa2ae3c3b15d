//! Martens & Grosse's adaptive step size, momentum and damping (2015, §6–7),
//! with rejected steps (our addition).
//!
//! Every step minimises the quadratic model
//! $M(\delta) = \tfrac12\delta^\top(F + (\lambda+\eta)I)\delta + \nabla h^\top\delta$
//! over $\delta = \alpha\Delta + \mu\delta_0$ (Δ the preconditioned gradient,
//! δ₀ the previous update; [`quadratic_step`]), with the quadratic forms of
//! the Fisher of the whole batch from a [`CurvatureModel`]. Every `t1` steps
//! the reduction ratio $\rho$ adjusts $\lambda$ by $\omega_1 = \omega^{t_1}$
//! ([`levenberg_marquardt`]). The preconditioner's damping is $\gamma^2$ (for
//! factored damping the factors get $\pi\gamma$ and $\gamma/\pi$), kept separate
//! from $\lambda$; every `t2` steps $\gamma$ is chosen greedily among
//! $\{\omega_2\gamma, \gamma, \gamma/\omega_2\}$, $\omega_2 = \sqrt{\omega}^{\,t_2}$, as
//! the one whose step has the lowest $M$. With
//! [`reject`](AdaptiveConfig::reject) a step that raises the batch
//! objective $h$ is undone, the momentum forgotten and $\lambda$ raised by
//! $\omega_1^{-1}$ at once.

use ndarray::{Array2, ArrayView2};

use super::config::{AdaptiveConfig, CurvatureConfig};
use super::guards::{finite, half_l2, update_fits};
use super::model::CurvatureModel;
use super::quadratic::{ModelStep, levenberg_marquardt, quadratic_step, reduction_ratio};
use super::report::AdaptiveRecord;
use super::state::AdaptiveState;
use super::{Refusal, StepContext};
use crate::damping::DampingSchedule;
use crate::linalg::LinAlg;
use crate::preconditioner::Preconditioner;
use crate::scalar::Real;

/// What the adaptive step did: the record, and whether the update in the
/// velocity is to be applied (`false`: rejected, nothing to apply).
pub(super) struct Outcome {
    pub record: AdaptiveRecord,
    pub accepted: bool,
}

/// The parts of the optimizer the adaptive step changes.
pub(super) struct Parts<'p, T: Real> {
    pub pre: &'p mut Preconditioner<T>,
    pub velocity: &'p mut Vec<Array2<T>>,
    pub state: &'p mut AdaptiveState,
}

/// One adaptive step: chooses $\gamma$ (every `t2` steps), $\alpha$ and $\mu$,
/// writes the update into the velocity, measures $\rho$ and applies the
/// Levenberg–Marquardt rule and the rejection.
pub(super) fn step<T: Real, M: CurvatureModel<T>>(
    cfg: &AdaptiveConfig,
    curvature: &CurvatureConfig,
    la: &dyn LinAlg<T>,
    parts: Parts<'_, T>,
    ctx: &StepContext<'_, '_, T>,
    model: &mut M,
) -> Result<std::result::Result<Outcome, Refusal>, M::Error> {
    let Parts { pre, velocity, state } = parts;
    let prev = (state.steps > 0).then_some(&velocity[..]);
    let Some((gamma, delta, m)) = best_step(cfg, curvature, la, pre, state, prev, ctx, model)? else {
        return Ok(Err(Refusal("the quadratic model's step")));
    };
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
    if !finite(&step) || !update_fits(ctx.params, velocity, &step, 1.0, 0.0) {
        return Ok(Err(Refusal("the updated weight")));
    }
    let rho_due = (state.steps + 1).is_multiple_of(cfg.t1);
    let measure = rho_due || cfg.reject;
    let lambda_used = state.lambda;
    let mut rho = None;
    let mut accepted = true;
    if measure {
        let h_before = ctx.loss + half_l2(ctx.l2, ctx.params, None);
        let h_after = model.loss_at(&step)? + half_l2(ctx.l2, ctx.params, Some(&step));
        let r = reduction_ratio(h_before, h_after, m.model_change);
        let omega1 = cfg.omega1();
        if rho_due {
            state.lambda = levenberg_marquardt(state.lambda, r, omega1, cfg.lambda_min, cfg.lambda_max);
        }
        // A rise (or a non-finite value) undoes the step.
        if cfg.reject && (h_after.is_nan() || h_after > h_before) {
            if !rho_due {
                state.lambda = (state.lambda / omega1).clamp(cfg.lambda_min, cfg.lambda_max);
            }
            accepted = false;
        }
        rho = Some(r);
    }
    if accepted {
        *velocity = step;
    } else {
        velocity.iter_mut().for_each(|v| v.fill(T::zero()));
    }
    state.gamma = gamma;
    state.steps += 1;
    let record = AdaptiveRecord {
        lambda: lambda_used,
        gamma,
        alpha: m.alpha,
        mu: m.mu,
        model_change: m.model_change,
        rho,
        rejected: !accepted,
    };
    Ok(Ok(Outcome { record, accepted }))
}

/// The candidates for $\gamma$ at this step, their preconditioned directions
/// and model steps; the one with the lowest $M(\delta)$ (or `None` when no
/// candidate gives a finite step). The preconditioner is left with the
/// chosen damping.
#[allow(clippy::type_complexity)]
fn best_step<T: Real, M: CurvatureModel<T>>(
    cfg: &AdaptiveConfig,
    curvature: &CurvatureConfig,
    la: &dyn LinAlg<T>,
    pre: &mut Preconditioner<T>,
    state: &AdaptiveState,
    prev: Option<&[Array2<T>]>,
    ctx: &StepContext<'_, '_, T>,
    model: &mut M,
) -> Result<Option<(f64, Vec<Array2<T>>, ModelStep)>, M::Error> {
    let views: Vec<ArrayView2<'_, T>> = ctx.grads.iter().map(|g| g.view()).collect();
    let candidates = if state.steps > 0 && state.steps.is_multiple_of(cfg.t2) {
        let w2 = cfg.omega2();
        vec![state.gamma * w2, state.gamma, state.gamma / w2]
    } else {
        vec![state.gamma]
    };
    let mut best: Option<(f64, Vec<Array2<T>>, ModelStep)> = None;
    for &g in &candidates {
        if candidates.len() > 1 {
            pre.apply_damping(la, curvature.damping(g * g))?;
        }
        let mut d = pre.precondition(la, &views)?;
        d.iter_mut().for_each(|a| a.mapv_inplace(|x| -x));
        if !finite(&d) {
            continue;
        }
        // The model's failures are errors; a candidate whose model has no
        // positive curvature is passed over.
        let gram = match prev {
            Some(p) => model.fisher_gram(&[d.as_slice(), p])?,
            None => model.fisher_gram(&[d.as_slice()])?,
        };
        let Ok(m) = quadratic_step(&gram, ctx.grads, &d, prev, state.lambda, ctx.l2) else { continue };
        if m.alpha.is_finite() && m.mu.is_finite() && best.as_ref().is_none_or(|b| m.model_change < b.2.model_change) {
            best = Some((g, d, m));
        }
    }
    if let (Some((gamma, _, _)), true) = (&best, candidates.len() > 1) {
        let schedule = DampingSchedule { kind: curvature.damping_kind, lambda: (gamma * gamma).into() };
        pre.set_damping_schedule(schedule);
        pre.apply_damping(la, curvature.damping(gamma * gamma))?;
    }
    Ok(best)
}
