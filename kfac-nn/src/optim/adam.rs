//! Adam (Kingma & Ba, 2015).
//!
//! $$ m \leftarrow \beta_1 m + (1-\beta_1)\nabla,\quad v \leftarrow \beta_2 v + (1-\beta_2)\nabla^{\odot 2},\quad
//!    \theta \leftarrow \theta - \eta\,\frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}, $$
//! with $\nabla$ the gradient of the mean batch loss plus $\ell_2\,\theta$.
//! The new weights and moments are computed and checked to be finite before
//! any is written (and the counter $t$ advances only then), so a refused
//! step changes nothing.

use kfac::optim::StepReport;
use kfac::{LinAlg, NonFinitePolicy};
use ndarray::{Array2, ArrayView2, Zip};

use std::ops::ControlFlow;

use super::{check_real, first_order_gradient, refuse};
use crate::backend::Scalar;
use crate::error::Result;
use crate::loss::Loss;
use crate::mlp::Mlp;

/// The knobs of Adam.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// The learning rate $\eta$.
    pub lr: f64,
    /// $\beta_1 \in [0, 1)$.
    pub beta1: f64,
    /// $\beta_2 \in [0, 1)$.
    pub beta2: f64,
    /// $\epsilon > 0$.
    pub eps: f64,
    /// The $\ell_2$ coefficient, added to the gradient as $\ell_2\,\theta$.
    pub l2: f64,
    /// What a step does with non-finite numbers.
    #[serde(default)]
    pub on_non_finite: NonFinitePolicy,
}

impl Default for AdamConfig {
    /// $\eta = 3\cdot10^{-3}$ (the best of the grid on the reference
    /// autoencoder), $\beta = (0.9, 0.999)$, $\epsilon = 10^{-8}$, $\ell_2 = 10^{-5}$.
    fn default() -> Self {
        Self { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, l2: 1e-5, on_non_finite: NonFinitePolicy::Skip }
    }
}

impl AdamConfig {
    /// Checks the ranges, in the precision `T` of the run.
    pub fn validate<T: Scalar>(&self) -> Result<()> {
        check_real::<T>("lr", self.lr, self.lr > 0.0, "must be positive")?;
        check_real::<T>("beta1", self.beta1, (0.0..1.0).contains(&self.beta1), "must lie in [0, 1)")?;
        check_real::<T>("beta2", self.beta2, (0.0..1.0).contains(&self.beta2), "must lie in [0, 1)")?;
        check_real::<T>("eps", self.eps, self.eps > 0.0, "must be positive")?;
        ::kfac::optim::below_one::<T>("beta1", self.beta1)?;
        ::kfac::optim::below_one::<T>("beta2", self.beta2)?;
        check_real::<T>("l2", self.l2, self.l2 >= 0.0, "must be non-negative")
    }
}

/// Adam's state: the moments per layer and the step counter.
#[derive(Debug)]
pub(crate) struct Adam<T> {
    pub config: AdamConfig,
    pub m: Vec<Array2<T>>,
    pub v: Vec<Array2<T>>,
    pub t: i32,
    pub skipped_steps: usize,
}

impl<T: Scalar> Adam<T> {
    pub fn step(
        &mut self,
        la: &dyn LinAlg<T>,
        mlp: &mut Mlp<T>,
        x: ArrayView2<'_, T>,
        t: ArrayView2<'_, T>,
        loss: Loss,
    ) -> Result<StepReport> {
        let policy = self.config.on_non_finite;
        let (value, grads) =
            match first_order_gradient(la, mlp, x, t, loss, self.config.l2, policy, &mut self.skipped_steps)? {
                ControlFlow::Continue(checked) => checked,
                ControlFlow::Break(report) => return Ok(report),
            };
        let Some(next) = self.t.checked_add(1) else {
            return refuse(policy, &mut self.skipped_steps, value, "Adam's step counter");
        };
        let cfg = &self.config;
        let (b1, b2) = (T::from_f64_lossy(cfg.beta1), T::from_f64_lossy(cfg.beta2));
        let c1 = T::one() - b1.powi(next);
        let c2 = T::one() - b2.powi(next);
        let (lr, eps) = (T::from_f64_lossy(cfg.lr), T::from_f64_lossy(cfg.eps));
        let update = |w: T, m: T, v: T, g: T| {
            let m = b1 * m + (T::one() - b1) * g;
            let v = b2 * v + (T::one() - b2) * g * g;
            (w - lr * (m / c1) / ((v / c2).sqrt() + eps), m, v)
        };
        // The same arithmetic twice: first to check that every new weight
        // and moment is finite, then to write them.
        let fits = mlp.layers.iter().zip(&self.m).zip(&self.v).zip(&grads).all(|(((layer, m), v), g)| {
            Zip::from(&layer.w).and(m).and(v).and(g).all(|&w, &m, &v, &g| {
                let (w, m, v) = update(w, m, v, g);
                w.is_finite() && m.is_finite() && v.is_finite()
            })
        });
        if !fits {
            return refuse(policy, &mut self.skipped_steps, value, "Adam's updated weight or moment");
        }
        self.t = next;
        for (((layer, m), v), g) in mlp.layers.iter_mut().zip(self.m.iter_mut()).zip(self.v.iter_mut()).zip(&grads) {
            Zip::from(&mut layer.w).and(&mut *m).and(&mut *v).and(g).for_each(|w, m, v, &g| {
                (*w, *m, *v) = update(*w, *m, *v, g);
            });
        }
        Ok(StepReport::taken(value))
    }
}
