//! What the optimizer needs from the model: the only two things that need
//! the network itself rather than its layers' statistics.

use ndarray::Array2;

use crate::error::Error;
use crate::scalar::Real;

/// The model-dependent quantities of a step, on the step's batch.
///
/// [`KfacOptimizer::step`](super::KfacOptimizer::step) calls these only
/// with the adaptive rule: [`fisher_gram`](Self::fisher_gram) for the
/// quadratic model ($\alpha$, $\mu$, the greedy choice of $\gamma$) and
/// [`loss_at`](Self::loss_at) for the reduction ratio $\rho$ and the
/// rejection of steps. The fixed rule needs neither: pass [`NoCurvature`].
///
/// Directions are one matrix per layer in the $[W \mid b]$ layout of
/// [`crate::shape`]. Two ways to supply the quadratic forms:
/// - exact Jacobian-vector products (forward mode, the R-operator), as
///   kfac-nn does: $u_i^\top F u_j = \frac1N\sum_n (J_n u_i)^\top H_n (J_n u_j)$;
/// - [`FiniteDifferences`](super::FiniteDifferences), for frameworks without
///   forward mode: $J_n u$ from two extra forward passes per direction, with
///   the loss's output-space Fisher $H_n$ ([`Loss::hessian_vector`](crate::Loss::hessian_vector)).
pub trait CurvatureModel<T: Real> {
    /// The model's error type; the optimizer's own errors convert into it.
    type Error: From<Error>;

    /// The Gram matrix $G_{ij} = u_i^\top F u_j$ of the directions `dirs`
    /// under the Fisher (= generalised Gauss–Newton matrix) of the **mean**
    /// loss over the step's whole batch (the examples of the gradient, not
    /// only the statistics fraction), without the $\ell_2$ term. Symmetric,
    /// `dirs.len()` rows and columns.
    fn fisher_gram(&mut self, dirs: &[&[Array2<T>]]) -> Result<Vec<Vec<f64>>, Self::Error>;

    /// The mean loss over the step's batch (without the $\ell_2$ term) at
    /// $\theta + \delta$, where $\theta$ are the parameters of the step and
    /// `delta` one matrix per layer. The parameters themselves must not
    /// change: the optimizer decides whether the step is taken.
    fn loss_at(&mut self, delta: &[Array2<T>]) -> Result<f64, Self::Error>;
}

/// A model that supplies no curvature: for the fixed rule, which never asks.
/// With the adaptive rule the step fails with [`Error::NotReady`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCurvature;

impl<T: Real> CurvatureModel<T> for NoCurvature {
    type Error = Error;

    fn fisher_gram(&mut self, _dirs: &[&[Array2<T>]]) -> Result<Vec<Vec<f64>>, Error> {
        Err(not_supplied())
    }

    fn loss_at(&mut self, _delta: &[Array2<T>]) -> Result<f64, Error> {
        Err(not_supplied())
    }
}

fn not_supplied() -> Error {
    Error::NotReady { block: "optimizer".into(), what: "the adaptive rule needs a CurvatureModel, not NoCurvature" }
}
