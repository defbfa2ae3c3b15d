//! Quadratic forms of the Fisher for frameworks without forward mode:
//! Jacobian-vector products by central differences of the network's
//! outputs, and the loss's output-space Fisher.
//!
//! For the losses of [`Loss`] (softmax and sigmoid cross-entropy, squared
//! error) the Fisher of the mean loss is the generalised Gauss–Newton
//! matrix $F = \frac1N\sum_n J_n^\top H_n J_n$, with $J_n$ the Jacobian of
//! example $n$'s outputs $f_n(\theta)$ (the loss's input: logits) and $H_n$
//! the output-space Fisher ([`Loss::hessian_vector`]). So
//! $$ u^\top F v = \frac1N \sum_n (J_n u)^\top H_n (J_n v), \qquad
//!    J_n u \approx \frac{f_n(\theta + h u) - f_n(\theta - h u)}{2h} .$$
//!
//! # The step size and the error
//! The central difference errs by the truncation term
//! $\tfrac{h^2}{6} f'''[u, u, u]$ and by rounding, about
//! $\varepsilon\,|f| / h$ with $\varepsilon$ the machine epsilon of the
//! precision `T`. With $\|u\|$ the norm of the direction and $\|\theta\|$
//! that of the parameters (both over every layer),
//! $$ h = \varepsilon^{1/3}\,\frac{1 + \|\theta\|}{\|u\|}, $$
//! a relative move of $\varepsilon^{1/3}$ in parameter space (about
//! $4.9\cdot 10^{-3}$ in `f32`, $6.1\cdot 10^{-6}$ in `f64`), balances the two and
//! leaves a relative error of order $\varepsilon^{2/3}$ in $J u$ and in the
//! quadratic forms: about $2.4\cdot10^{-5}$ in `f32` and $3.7\cdot10^{-11}$ in
//! `f64`, times the network's third-derivative constants. The tests in
//! `kfac-nn/tests/curvature.rs` measure it against the exact R-operator
//! (the bounds they check are stated there). Each direction costs two
//! forward passes.

use ndarray::{Array2, ArrayView2};

use super::model::CurvatureModel;
use crate::error::Error;
use crate::loss::Loss;
use crate::scalar::Real;

/// What a model must supply for [`FiniteDifferences`]: forward passes at
/// shifted parameters, on the step's batch.
pub trait OutputModel<T: Real> {
    /// The model's error type; the optimizer's own errors convert into it.
    type Error: From<Error>;

    /// The network's outputs (the loss's input, one row per example) on the
    /// step's batch at $\theta + \delta$ (`delta` one matrix per layer, in the
    /// $[W \mid b]$ layout). The parameters must not change.
    fn outputs_at(&mut self, delta: &[Array2<T>]) -> Result<Array2<T>, Self::Error>;

    /// The mean loss on the step's batch (without the $\ell_2$ term) at
    /// $\theta + \delta$.
    fn loss_at(&mut self, delta: &[Array2<T>]) -> Result<f64, Self::Error>;
}

/// A [`CurvatureModel`] from forward passes alone; see the [module docs](self).
#[derive(Debug)]
pub struct FiniteDifferences<'m, T, M> {
    model: &'m mut M,
    loss: Loss,
    outputs: Array2<T>,
    theta_norm: f64,
}

impl<'m, T: Real, M: OutputModel<T>> FiniteDifferences<'m, T, M> {
    /// Quadratic forms of `model` under `loss`, whose outputs at the step's
    /// parameters `params` are `outputs` (the forward pass the gradient came
    /// from, reused for $H_n$).
    pub fn new(model: &'m mut M, loss: Loss, outputs: Array2<T>, params: &[ArrayView2<'_, T>]) -> Self {
        let theta_norm = params.iter().flat_map(|p| p.iter()).map(|x| x.to_f64_exact().powi(2)).sum::<f64>().sqrt();
        Self { model, loss, outputs, theta_norm }
    }

    /// The step $h = \varepsilon^{1/3}(1 + \|\theta\|)/\|u\|$ for the direction `u`
    /// (0 for a zero direction).
    pub fn step_size(&self, u: &[Array2<T>]) -> f64 {
        let norm = u.iter().flat_map(|p| p.iter()).map(|x| x.to_f64_exact().powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 { T::EPSILON.to_f64_exact().cbrt() * (1.0 + self.theta_norm) / norm } else { 0.0 }
    }

    /// $J u$ for every example: the central difference of the outputs along `u`.
    ///
    /// # Errors
    ///
    /// The model's errors; [`Error::ShapeMismatch`] when its outputs do not
    /// have the shape of those at $\theta$.
    pub fn jacobian_vector(&mut self, u: &[Array2<T>]) -> Result<Array2<T>, M::Error> {
        let h = self.step_size(u);
        if h == 0.0 {
            return Ok(Array2::zeros(self.outputs.dim()));
        }
        let ht = T::from_f64_lossy(h);
        let plus: Vec<Array2<T>> = u.iter().map(|d| d.mapv(|x| x * ht)).collect();
        let minus: Vec<Array2<T>> = plus.iter().map(|d| d.mapv(|x| -x)).collect();
        let f_plus = self.model.outputs_at(&plus)?;
        let f_minus = self.model.outputs_at(&minus)?;
        for f in [&f_plus, &f_minus] {
            if f.dim() != self.outputs.dim() {
                return Err(Error::ShapeMismatch {
                    block: "finite differences".into(),
                    what: "outputs at a shifted point",
                    expected: self.outputs.dim(),
                    found: f.dim(),
                }
                .into());
            }
        }
        let scale = T::from_f64_lossy(0.5 / h);
        Ok((f_plus - f_minus).mapv(|x| x * scale))
    }
}

impl<T: Real, M: OutputModel<T>> CurvatureModel<T> for FiniteDifferences<'_, T, M> {
    type Error = M::Error;

    /// $G_{ij} = \frac1N\sum_n (J_n u_i)^\top H_n (J_n u_j)$, summed in `f64`
    /// in a fixed order; symmetric by construction.
    fn fisher_gram(&mut self, dirs: &[&[Array2<T>]]) -> Result<Vec<Vec<f64>>, M::Error> {
        let n = self.outputs.nrows().max(1) as f64;
        let ju = dirs.iter().map(|d| self.jacobian_vector(d)).collect::<Result<Vec<_>, _>>()?;
        let hju = ju
            .iter()
            .map(|j| self.loss.hessian_vector(self.outputs.view(), j.view()))
            .collect::<crate::Result<Vec<_>>>()?;
        let k = dirs.len();
        let mut g = vec![vec![0.0; k]; k];
        for i in 0..k {
            for j in i..k {
                let v =
                    ju[i].iter().zip(hju[j].iter()).map(|(&a, &b)| a.to_f64_exact() * b.to_f64_exact()).sum::<f64>()
                        / n;
                g[i][j] = v;
                g[j][i] = v;
            }
        }
        Ok(g)
    }

    fn loss_at(&mut self, delta: &[Array2<T>]) -> Result<f64, M::Error> {
        self.model.loss_at(delta)
    }
}
