//! The fixed rule: learning rate, momentum, fixed damping and the KL clip.
//!
//! $$ \Delta_l = (\hat F_l + \text{damping})^{-1} \nabla_l, \qquad
//!    v_l \leftarrow \mu v_l + \nu \Delta_l, \qquad \theta_l \leftarrow \theta_l - \eta v_l ,$$
//! where $\nabla_l$ includes the $\ell_2$ term and $\nu$ is the KL clip of
//! kfac-pytorch: with $q = \eta^2 \sum_l \langle \Delta_l, \nabla_l \rangle$ (twice the
//! predicted change of the KL divergence), $\nu = \min(1, \sqrt{\kappa / q})$.

use ndarray::{Array2, ArrayView2, Zip};

use super::config::FixedRule;
use super::guards::{finite, update_fits};
use super::quadratic::dot;
use super::{Refusal, StepContext};
use crate::error::Result;
use crate::linalg::LinAlg;
use crate::preconditioner::Preconditioner;
use crate::scalar::Real;

/// The fixed rule's update: the new velocity is written into `velocity`;
/// the caller applies $\theta \leftarrow \theta - \eta v$. Returns the KL-clip
/// factor, or the reason the step was refused.
pub(super) fn step<T: Real>(
    rule: &FixedRule,
    la: &dyn LinAlg<T>,
    pre: &Preconditioner<T>,
    velocity: &mut [Array2<T>],
    ctx: &StepContext<'_, '_, T>,
) -> Result<std::result::Result<Option<f64>, Refusal>> {
    let views: Vec<ArrayView2<'_, T>> = ctx.grads.iter().map(|g| g.view()).collect();
    let mut deltas = pre.precondition(la, &views)?;
    if !finite(&deltas) {
        return Ok(Err(Refusal("the preconditioned direction")));
    }
    let mut kl_scale = None;
    if let Some(kappa) = rule.kl_clip {
        let q = dot(&deltas, ctx.grads) * rule.lr * rule.lr;
        if !q.is_finite() {
            return Ok(Err(Refusal("the KL clip's ⟨Δ, ∇⟩")));
        }
        let nu = if q > 0.0 { (kappa / q).sqrt().min(1.0) } else { 1.0 };
        if nu < 1.0 {
            let nu_t = T::from_f64_lossy(nu);
            deltas.iter_mut().for_each(|d| d.mapv_inplace(|x| x * nu_t));
        }
        kl_scale = Some(nu);
    }
    if !update_fits(ctx.params, velocity, &deltas, rule.lr, rule.momentum) {
        return Ok(Err(Refusal("the updated weight")));
    }
    let mom = T::from_f64_lossy(rule.momentum);
    for (v, d) in velocity.iter_mut().zip(&deltas) {
        Zip::from(&mut *v).and(d).for_each(|v, &d| *v = mom * *v + d);
    }
    Ok(Ok(kl_scale))
}
