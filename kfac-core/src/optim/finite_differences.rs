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
//! $\varepsilon \max|f| / h$ in each output, with $\varepsilon$ the machine
//! epsilon of the precision `T`. Both are best measured in the outputs: with
//! $d(h) = \max_{n,k} |f_{nk}(\theta + h u) - f_{nk}(\theta - h u)| / 2$ the
//! largest change of an output, the relative rounding error is about
//! $\varepsilon \max|f| / d$ and the relative truncation error grows like
//! $(d / \max|f|)^2$. They balance at
//! $$ d(h) \approx \tau = \varepsilon^{1/3} (1 + \max|f|) , $$
//! a change of $\varepsilon^{1/3}$ in the outputs ($4.9\cdot 10^{-3}$ in
//! `f32`, $6.1\cdot 10^{-6}$ in `f64`), which leaves a relative error of
//! order $\varepsilon^{2/3}$ times the network's third-derivative
//! constants. A rule in parameter space cannot see those constants: a
//! relative move $\varepsilon^{1/3}(1 + \|\theta\|)/\|u\|$ errs by 99.7 %
//! on the first step of the deep autoencoder in `f32` (and 4.4 % in `f64`),
//! where the gradient points along the network's stiffest directions
//! (`the_step_size_follows_the_outputs` in `kfac-nn/tests/curvature.rs`).
//!
//! So the step is searched: starting from the last accepted move
//! $h\|u\|$ (or from $\varepsilon^{1/3}(1 + \|\theta\|)$ at the first
//! direction), $h$ is rescaled by $\tau / d(h)$ until $d(h)$ lies within a
//! factor [`STEP_TOLERANCE`] of $\tau$, at most [`MAX_STEP_SEARCH`] times.
//! Every trial costs two forward passes; the directions of a step usually
//! share their scale, so after the first one each costs two. Keep the
//! model's [`FiniteDifferences::last_move`] and hand it to the next step's
//! [`FiniteDifferences::with_move`] to start there.

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
    target: f64,
    last_move: Option<f64>,
}

/// The accepted band of the largest output change $d(h)$: within this
/// factor of its target $\tau$ (see the [module docs](self)).
pub const STEP_TOLERANCE: f64 = 3.0;

/// The most trials of the step search per direction; the last one is used
/// whatever its $d(h)$.
pub const MAX_STEP_SEARCH: usize = 8;

impl<'m, T: Real, M: OutputModel<T>> FiniteDifferences<'m, T, M> {
    /// Quadratic forms of `model` under `loss`, whose outputs at the step's
    /// parameters `params` are `outputs` (the forward pass the gradient came
    /// from, reused for $H_n$).
    pub fn new(model: &'m mut M, loss: Loss, outputs: Array2<T>, params: &[ArrayView2<'_, T>]) -> Self {
        let theta_norm = params.iter().flat_map(|p| p.iter()).map(|x| x.to_f64_exact().powi(2)).sum::<f64>().sqrt();
        let f_max = outputs.iter().fold(0.0f64, |m, x| m.max(x.to_f64_exact().abs()));
        let target = T::EPSILON.to_f64_exact().cbrt() * (1.0 + f_max);
        Self { model, loss, outputs, theta_norm, target, last_move: None }
    }

    /// The same, with the step search starting from the move $h\|u\|$ of an
    /// earlier step ([`last_move`](Self::last_move)); ignored unless positive
    /// and finite.
    pub fn with_move(self, step_move: f64) -> Self {
        let last_move = (step_move.is_finite() && step_move > 0.0).then_some(step_move);
        Self { last_move, ..self }
    }

    /// The move $h\|u\|$ in parameter space of the last accepted step, if any.
    pub fn last_move(&self) -> Option<f64> {
        self.last_move
    }

    /// The first trial step for the direction `u`: the last accepted move, or
    /// $\varepsilon^{1/3}(1 + \|\theta\|)$, over $\|u\|$ (0 for a zero
    /// direction).
    pub fn step_size(&self, u: &[Array2<T>]) -> f64 {
        let norm = norm(u);
        let start = self.last_move.unwrap_or_else(|| T::EPSILON.to_f64_exact().cbrt() * (1.0 + self.theta_norm));
        if norm > 0.0 { start / norm } else { 0.0 }
    }

    /// $J u$ for every example: the central difference of the outputs along
    /// `u`, with the step searched as the [module docs](self) say (a
    /// direction that changes no output at its trial step gives 0).
    ///
    /// # Errors
    ///
    /// The model's errors; [`Error::ShapeMismatch`] when its outputs do not
    /// have the shape of those at $\theta$.
    pub fn jacobian_vector(&mut self, u: &[Array2<T>]) -> Result<Array2<T>, M::Error> {
        let mut h = self.step_size(u);
        if h == 0.0 {
            return Ok(Array2::zeros(self.outputs.dim()));
        }
        let norm = norm(u);
        let mut diff = self.central_difference(u, h)?;
        for _ in 1..MAX_STEP_SEARCH {
            let d = diff.iter().fold(0.0f64, |m, x| m.max(x.to_f64_exact().abs())) / 2.0;
            let ratio = self.target / d;
            if !ratio.is_finite() || (1.0 / STEP_TOLERANCE..=STEP_TOLERANCE).contains(&ratio) {
                break;
            }
            h *= ratio;
            diff = self.central_difference(u, h)?;
        }
        self.last_move = Some(h * norm);
        let scale = T::from_f64_lossy(0.5 / h);
        Ok(diff.mapv(|x| x * scale))
    }

    /// $f(\theta + h u) - f(\theta - h u)$, checked against the outputs' shape.
    fn central_difference(&mut self, u: &[Array2<T>], h: f64) -> Result<Array2<T>, M::Error> {
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
        Ok(f_plus - f_minus)
    }
}

/// $\|u\|$ over every layer.
fn norm<T: Real>(u: &[Array2<T>]) -> f64 {
    u.iter().flat_map(|p| p.iter()).map(|x| x.to_f64_exact().powi(2)).sum::<f64>().sqrt()
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
