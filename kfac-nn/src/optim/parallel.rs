//! K-FAC and EKFAC's data-parallel step for the MLP: what one rank computes
//! on its parts of the global batch, handed to kfac-core's
//! [`KfacOptimizer::step_distributed`](kfac::KfacOptimizer::step_distributed)
//! (see [`crate::distributed`]).

use kfac::comm::Reducer;
use kfac::optim::{FiniteDifferences, NoCurvature, Shard, Step, StepReport};
use kfac::{LayerBatch, LinAlg};
use ndarray::{Array2, ArrayView2};

use super::kfac::{Kfac, refused};
use super::model::{CurvatureProducts, MlpModel};
use crate::backend::Scalar;
use crate::error::{Error, Result};
use crate::loss::Loss;
use crate::mlp::{Forward, GradRecorder, Mlp, NoHook};
use crate::rng::Rng;

/// One part of a data-parallel step's global batch: its inputs, targets,
/// and the generator of its sampled targets.
#[derive(Debug)]
pub struct Part<'a, T> {
    /// The part's inputs, one row per example.
    pub x: ArrayView2<'a, T>,
    /// The part's targets.
    pub t: ArrayView2<'a, T>,
    /// The generator of the part's sampled targets (true Fisher).
    pub rng: Rng,
}

/// What the forward and backward passes of one part produced.
struct Computed<T: Scalar> {
    fwd: Forward<T>,
    loss: f64,
    recorder: GradRecorder<T>,
}

impl<T: Scalar> Kfac<T> {
    /// One data-parallel step on this rank's `parts` (as many as
    /// `reducer.local_parts()`). Every part's loss and gradient are
    /// computed whatever their values: a non-finite one makes the global
    /// mean non-finite, and kfac-core refuses the step on every rank alike.
    pub fn step_parts(
        &mut self,
        la: &dyn LinAlg<T>,
        mlp: &mut Mlp<T>,
        parts: &mut [Part<'_, T>],
        loss: Loss,
        reducer: &Reducer<'_>,
    ) -> Result<StepReport> {
        let (computed, grads): (Vec<_>, Vec<_>) =
            parts.iter_mut().map(|p| self.compute(la, mlp, p, loss)).collect::<Result<Vec<_>>>()?.into_iter().unzip();
        let batches: Vec<Vec<LayerBatch<'_, T>>> = computed
            .iter()
            .zip(&*parts)
            .map(|(c, p)| self.statistics_batches(mlp, &c.fwd, &c.recorder, p.x.nrows()))
            .collect();
        let shards: Vec<Shard<'_, T>> = computed
            .iter()
            .zip(grads)
            .zip(&batches)
            .zip(&*parts)
            .map(|(((c, grads), b), p)| Shard {
                grads,
                loss: c.loss,
                examples: p.x.nrows(),
                statistics: (!b.is_empty()).then_some(&b[..]),
            })
            .collect();
        let params: Vec<ArrayView2<'_, T>> = mlp.layers.iter().map(|l| l.w.view()).collect();
        self.part_scratch.resize_with(parts.len(), || None);
        let mut models: Vec<MlpModel<'_, T>> = computed
            .iter()
            .zip(&*parts)
            .zip(self.part_scratch.iter_mut())
            .map(|((c, p), scratch)| MlpModel { la, mlp, fwd: &c.fwd, x: p.x, t: p.t, loss, scratch })
            .collect();
        let core = &mut self.core;
        let step: Step<'_, T> = match (core.config().adaptive().is_some(), self.products) {
            (false, _) => {
                core.step_distributed(la, reducer, &params, shards, &mut [] as &mut [NoCurvature]).map_err(Error::from)
            }
            (true, CurvatureProducts::Exact) => core.step_distributed(la, reducer, &params, shards, &mut models),
            (true, CurvatureProducts::FiniteDifferences) => {
                let mut fds: Vec<_> = models
                    .iter_mut()
                    .zip(&computed)
                    .map(|(m, c)| FiniteDifferences::new(m, loss, c.fwd.output().to_owned(), &params))
                    .collect();
                core.step_distributed(la, reducer, &params, shards, &mut fds)
            }
        }
        .map_err(refused)?;
        drop(models);
        drop(params);
        step.apply(mlp.layers.iter_mut().map(|l| l.w.view_mut()));
        Ok(step.into_report())
    }

    /// A part's forward pass, loss, gradient and (when due) statistics gradients.
    fn compute(
        &self,
        la: &dyn LinAlg<T>,
        mlp: &Mlp<T>,
        part: &mut Part<'_, T>,
        loss: Loss,
    ) -> Result<(Computed<T>, Vec<Array2<T>>)> {
        let fwd = mlp.forward(la, part.x, &mut NoHook)?;
        let (value, g_out) = loss.value_and_grad(fwd.output(), part.t)?;
        let (grads, recorder) = self.gradients(la, mlp, &fwd, g_out, loss, &mut part.rng)?;
        Ok((Computed { fwd, loss: value, recorder }, grads))
    }
}
