//! The candle model as kfac-core's [`OutputModel`]: forward passes at
//! $\theta + \delta$, for the adaptive rule's finite-difference quadratic
//! forms ([`FiniteDifferences`](kfac_core::optim::FiniteDifferences)) and its
//! loss at the proposed step. candle has no forward mode, so this is the
//! fallback kfac-core documents, two forward passes per direction.

use std::time::Instant;

use candle_core::Tensor;
use kfac_core::Loss;
use kfac_core::optim::OutputModel;
use ndarray::{Array2, ArrayView2};

use crate::error::{Error, Result};
use crate::host::to_array2;
use crate::layer::KfacLayer;
use crate::scalar::Scalar;

/// The model on one step's batch.
pub(crate) struct CandleModel<'a, T, F> {
    pub layers: &'a [KfacLayer],
    /// $\theta$, in the $[W \mid b]$ layout, restored after every pass.
    pub theta: &'a [Array2<T>],
    pub forward: &'a mut F,
    pub x: &'a Tensor,
    pub t: ArrayView2<'a, T>,
    pub loss: Loss,
    /// Seconds spent here, for [`PhaseTimes::model_forwards`](crate::PhaseTimes::model_forwards).
    pub seconds: f64,
}

impl<T: Scalar, F: FnMut(&Tensor) -> candle_core::Result<Tensor>> CandleModel<'_, T, F> {
    /// The outputs at $\theta + \delta$; the variables hold $\theta$ again afterwards,
    /// whatever happened.
    fn shifted_outputs(&mut self, delta: &[Array2<T>]) -> Result<Array2<T>> {
        if delta.len() != self.layers.len() {
            return Err(Error::Layer {
                layer: delta.len(),
                why: format!("a direction of {} layers for {}", delta.len(), self.layers.len()),
            });
        }
        let mut shifted = || -> Result<Array2<T>> {
            for ((layer, theta), d) in self.layers.iter().zip(self.theta).zip(delta) {
                layer.write((theta + d).view())?;
            }
            let logits = (self.forward)(self.x)?;
            to_array2(&logits)
        };
        let out = shifted();
        let restored = self.layers.iter().zip(self.theta).try_for_each(|(l, theta)| l.write(theta.view()));
        let out = out?;
        restored?;
        Ok(out)
    }
}

impl<T: Scalar, F: FnMut(&Tensor) -> candle_core::Result<Tensor>> OutputModel<T> for CandleModel<'_, T, F> {
    type Error = Error;

    fn outputs_at(&mut self, delta: &[Array2<T>]) -> Result<Array2<T>> {
        let start = Instant::now();
        let out = self.shifted_outputs(delta);
        self.seconds += start.elapsed().as_secs_f64();
        out
    }

    fn loss_at(&mut self, delta: &[Array2<T>]) -> Result<f64> {
        let out = self.outputs_at(delta)?;
        Ok(self.loss.value(out.view(), self.t)?)
    }
}
