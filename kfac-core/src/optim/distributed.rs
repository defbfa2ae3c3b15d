//! The data-parallel step: [`KfacOptimizer::step_distributed`].
//!
//! Every rank holds the same parameters and optimizer and calls
//! [`KfacOptimizer::step_distributed`] with what it computed on its parts
//! ([`Shard`]s) of the global batch. The step combines, through a
//! [`Reducer`] (see [`crate::comm`] for the two orders of summation):
//! - the loss and the gradient, as means weighted by the parts' examples,
//!   $\bar L = \sum_p \frac{n_p}{N} L_p$ and
//!   $\nabla = \sum_p \frac{n_p}{N} \nabla_p$;
//! - the factors' pending sums and counts, EKFAC's scalings, and each
//!   layer's refresh by its owner ([`Preconditioner::update_parts`](crate::Preconditioner::update_parts));
//! - for the adaptive rule, the quadratic forms $u_i^\top F v_j$ and the
//!   losses at $\theta + \delta$ ([`ReducedModel`]), weighted as the loss;
//! - $\operatorname{tr}(F)/P$ of the first statistics batch, weighted by the
//!   parts' statistics rows.
//!
//! So $\alpha$, $\mu$, $\rho$, $\lambda$ and $\gamma$, the preconditioner and
//! the update are the same on every rank. With one part in all the step is
//! [`KfacOptimizer::step`] itself, bit for bit.

use ndarray::{Array2, ArrayView2};

use super::model::CurvatureModel;
use super::quadratic::fisher_trace_per_parameter;
use super::{Curvature, KfacOptimizer, Step};
use crate::comm::Reducer;
use crate::error::{Error, Result};
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape};

/// What a rank computed on one part of the global batch.
#[derive(Debug)]
pub struct Shard<'a, T> {
    /// The gradients of the part's **mean** loss, one per layer (without
    /// the $\ell_2$ term).
    pub grads: Vec<Array2<T>>,
    /// The part's mean loss (without the $\ell_2$ term).
    pub loss: f64,
    /// The part's number of examples $n_p$ (the weight of its means).
    pub examples: usize,
    /// The part's statistics batches, one per layer, when
    /// [`KfacOptimizer::needs_statistics`].
    pub statistics: Option<&'a [LayerBatch<'a, T>]>,
}

/// The [`CurvatureModel`] of the global batch from one model per local
/// part: each quadratic form and loss is the mean over all parts of all
/// ranks, weighted by their examples ([`Reducer::mean`]).
#[derive(Debug)]
pub struct ReducedModel<'m, M> {
    models: &'m mut [M],
    reducer: &'m Reducer<'m>,
    counts: Vec<f64>,
}

impl<'m, M> ReducedModel<'m, M> {
    /// The models of this rank's parts, with the parts' examples.
    pub fn new(models: &'m mut [M], reducer: &'m Reducer<'m>, counts: Vec<f64>) -> Self {
        Self { models, reducer, counts }
    }

    fn check(&self) -> Result<()> {
        if self.models.len() == self.counts.len() {
            Ok(())
        } else {
            Err(Error::Communication { what: format!("{} models for {} parts", self.models.len(), self.counts.len()) })
        }
    }
}

impl<T: Real, M: CurvatureModel<T>> CurvatureModel<T> for ReducedModel<'_, M> {
    type Error = M::Error;

    fn fisher_gram(&mut self, dirs: &[&[Array2<T>]]) -> std::result::Result<Vec<Vec<f64>>, M::Error> {
        self.check()?;
        let k = dirs.len();
        let parts = self
            .models
            .iter_mut()
            .map(|m| m.fisher_gram(dirs).map(|g| g.concat()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if parts.iter().any(|g| g.len() != k * k) {
            return Err(Error::Communication { what: "a Gram matrix of the wrong size".into() }.into());
        }
        let flat = self.reducer.mean(parts, &self.counts)?;
        Ok(flat.chunks(k.max(1)).map(<[f64]>::to_vec).collect())
    }

    fn loss_at(&mut self, delta: &[Array2<T>]) -> std::result::Result<f64, M::Error> {
        self.check()?;
        let parts =
            self.models.iter_mut().map(|m| m.loss_at(delta).map(|l| vec![l])).collect::<std::result::Result<_, _>>()?;
        Ok(self.reducer.mean(parts, &self.counts)?[0])
    }
}

/// $\operatorname{tr}(F)/P$ of the global statistics batch: each part's
/// ([`fisher_trace_per_parameter`]) weighted by its examples.
pub(super) fn fisher_trace<T: Real>(
    shapes: &[LayerShape],
    parts: &[&[LayerBatch<'_, T>]],
    reducer: &Reducer<'_>,
) -> Result<f64> {
    let traces =
        parts.iter().map(|b| fisher_trace_per_parameter(shapes, b).map(|t| vec![t])).collect::<Result<Vec<_>>>()?;
    let rows: Vec<f64> = parts.iter().map(|b| b.first().map_or(0.0, |b| b.len() as f64)).collect();
    Ok(reducer.mean(traces, &rows)?[0])
}

/// The layers' matrices one after the other (row-major each).
fn pack<T: Real>(layers: &[Array2<T>]) -> Vec<T> {
    let mut flat = Vec::with_capacity(layers.iter().map(Array2::len).sum());
    for a in layers {
        match a.as_slice() {
            Some(s) => flat.extend_from_slice(s),
            None => flat.extend(a.iter().copied()),
        }
    }
    flat
}

/// The inverse of [`pack`] for layers of the given shapes.
fn unpack<T: Real>(flat: &[T], shapes: &[LayerShape]) -> Vec<Array2<T>> {
    let mut at = 0;
    shapes
        .iter()
        .map(|s| {
            let (r, c) = s.param_dims();
            let a = Array2::from_shape_vec((r, c), flat[at..at + r * c].to_vec()).expect("sizes of the packed layers");
            at += r * c;
            a
        })
        .collect()
}

impl<T: Real> KfacOptimizer<T> {
    /// One data-parallel step; see the [module docs](self). Every rank
    /// calls it with the same `params` and `reducer.local_parts()` shards,
    /// and, for the adaptive rule, one model per shard (`models` is not
    /// read by the fixed rule and may be empty). The returned update is the
    /// same on every rank.
    ///
    /// # Errors
    ///
    /// Those of [`step`](Self::step); [`Error::Communication`] from the
    /// transport or when the shards do not match the reducer.
    pub fn step_distributed<M: CurvatureModel<T>>(
        &mut self,
        la: &dyn LinAlg<T>,
        reducer: &Reducer<'_>,
        params: &[ArrayView2<'_, T>],
        shards: Vec<Shard<'_, T>>,
        models: &mut [M],
    ) -> std::result::Result<Step<'_, T>, M::Error> {
        if shards.len() != reducer.local_parts() {
            let what = format!("{} shards for a reducer of {} parts", shards.len(), reducer.local_parts());
            return Err(Error::Communication { what }.into());
        }
        for s in &shards {
            self.check_layers(params, &s.grads)?;
        }
        let counts: Vec<f64> = shards.iter().map(|s| s.examples as f64).collect();
        let losses = shards.iter().map(|s| vec![s.loss]).collect();
        let loss = reducer.mean(losses, &counts)?[0];
        let statistics: Option<Vec<&[LayerBatch<'_, T>]>> = shards.iter().map(|s| s.statistics).collect();
        let packed = shards.iter().map(|s| pack(&s.grads)).collect();
        let grads = unpack(&reducer.mean(packed, &counts)?, &self.shapes);
        let mut model = ReducedModel::new(models, reducer, counts);
        let curvature = Curvature::Parts(statistics.as_deref(), reducer);
        self.run(la, params, grads, loss, curvature, &mut model)
    }
}
