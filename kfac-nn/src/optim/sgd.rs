//! Stochastic gradient descent with momentum (heavy ball or Nesterov).
//!
//! $$ v \leftarrow \mu v + \nabla, \qquad
//!    \theta \leftarrow \theta - \eta v \quad\text{or, Nesterov,}\quad
//!    \theta \leftarrow \theta - \eta(\nabla + \mu v), $$
//! with $\nabla$ the gradient of the mean batch loss plus $\ell_2\,\theta$.

use kfac::optim::StepReport;
use kfac::optim::guards::update_fits;
use kfac::{LinAlg, NonFinitePolicy};
use ndarray::{Array2, ArrayView2, Zip};

use std::ops::ControlFlow;

use super::{check_real, first_order_gradient, refuse};
use crate::backend::Scalar;
use crate::error::Result;
use crate::loss::Loss;
use crate::mlp::Mlp;

/// The knobs of SGD.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// The learning rate $\eta$.
    pub lr: f64,
    /// The momentum $\mu \in [0, 1)$.
    pub momentum: f64,
    /// Nesterov's momentum instead of the heavy ball.
    pub nesterov: bool,
    /// The $\ell_2$ coefficient, added to the gradient as $\ell_2\,\theta$.
    pub l2: f64,
    /// What a step does with non-finite numbers.
    #[serde(default)]
    pub on_non_finite: NonFinitePolicy,
}

impl Default for SgdConfig {
    /// $\eta = 3\cdot10^{-3}$, $\mu = 0.9$ (heavy ball), $\ell_2 = 10^{-5}$: the
    /// best of the grid on the reference autoencoder.
    fn default() -> Self {
        Self { lr: 3e-3, momentum: 0.9, nesterov: false, l2: 1e-5, on_non_finite: NonFinitePolicy::Skip }
    }
}

impl SgdConfig {
    /// Checks the ranges, in the precision `T` of the run.
    pub fn validate<T: Scalar>(&self) -> Result<()> {
        check_real::<T>("lr", self.lr, self.lr > 0.0, "must be positive")?;
        check_real::<T>("momentum", self.momentum, (0.0..1.0).contains(&self.momentum), "must lie in [0, 1)")?;
        ::kfac::optim::below_one::<T>("momentum", self.momentum)?;
        check_real::<T>("l2", self.l2, self.l2 >= 0.0, "must be non-negative")
    }
}

/// SGD's state: the velocity, per layer in the $[W \mid b]$ layout.
#[derive(Debug)]
pub(crate) struct Sgd<T> {
    pub config: SgdConfig,
    pub velocity: Vec<Array2<T>>,
    pub skipped_steps: usize,
}

impl<T: Scalar> Sgd<T> {
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
        let params: Vec<_> = mlp.layers.iter().map(|l| l.w.view()).collect();
        if !update_fits(&params, &self.velocity, &grads, self.config.lr, self.config.momentum) {
            return refuse(policy, &mut self.skipped_steps, value, "the updated weight");
        }
        let lr = T::from_f64_lossy(self.config.lr);
        let mom = T::from_f64_lossy(self.config.momentum);
        for ((layer, v), g) in mlp.layers.iter_mut().zip(self.velocity.iter_mut()).zip(&grads) {
            Zip::from(&mut *v).and(g).for_each(|v, &g| *v = mom * *v + g);
            if self.config.nesterov {
                Zip::from(&mut layer.w).and(g).and(&*v).for_each(|w, &g, &v| *w -= lr * (g + mom * v));
            } else {
                layer.w.scaled_add(-lr, v);
            }
        }
        Ok(StepReport::taken(value))
    }
}
