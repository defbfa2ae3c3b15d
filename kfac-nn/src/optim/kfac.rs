//! K-FAC and EKFAC for the MLP: a client of kfac-core's
//! [`KfacOptimizer`](kfac::KfacOptimizer).
//!
//! Per step it computes what the core optimizer needs: the forward pass,
//! the loss, the data gradient, and, when the statistics are due, the
//! layers' inputs and pre-activation gradients on the first
//! $\lceil \tau N \rceil$ examples of the batch: with
//! [`FisherMode::True`] from one extra backward pass on targets sampled from
//! the model, with [`FisherMode::Empirical`] from the data gradient's own
//! backward pass. The adaptive rule's quadratic forms come from forward-mode
//! products or kfac-core's finite differences ([`CurvatureProducts`]).

use kfac::optim::guards::finite;
use kfac::optim::{FiniteDifferences, KfacConfig, KfacOptimizer, NoCurvature, Step, StepInput, StepReport};
use kfac::{LayerBatch, LinAlg, Sharing, Structure};
use ndarray::{Array2, ArrayView2, s};

use super::model::{CurvatureProducts, MlpModel};
use crate::backend::Scalar;
use crate::error::{Error, Result};
use crate::loss::{FisherMode, Loss};
use crate::mlp::{Forward, GradRecorder, Mlp, NoHook};
use crate::rng::Rng;

/// The client's state: the core optimizer, the scratch network of the
/// adaptive rule, and how convolutions share their weights.
#[derive(Debug)]
pub(crate) struct Kfac<T: Scalar> {
    pub core: KfacOptimizer<T>,
    pub products: CurvatureProducts,
    pub scratch: Option<Mlp<T>>,
    /// The scratch networks of a data-parallel step's parts, one per part.
    pub part_scratch: Vec<Option<Mlp<T>>>,
    pub sharing: Sharing,
}

/// A core error that says a step was refused becomes kfac-nn's
/// [`Error::NonFinite`] (the training loop fills in the step).
pub(super) fn refused(e: Error) -> Error {
    match e {
        Error::Core(kfac::Error::NonFinite { block, what }) if block == "optimizer" => {
            Error::NonFinite { step: 0, what }
        }
        e => e,
    }
}

impl<T: Scalar> Kfac<T> {
    /// # Errors
    ///
    /// [`Error::Config`] for the block-tridiagonal structure on a network
    /// with convolutions ([`super::TRIDIAGONAL_CONVOLUTIONS`]); the core's
    /// configuration errors.
    pub fn new(config: KfacConfig, mlp: &Mlp<T>, products: CurvatureProducts) -> Result<Self> {
        if config.curvature.structure == Structure::Tridiagonal && mlp.has_convolutions() {
            return Err(Error::Config {
                what: "structure",
                value: "tridiagonal".into(),
                why: super::TRIDIAGONAL_CONVOLUTIONS.into(),
            });
        }
        let core = KfacOptimizer::new(config, &mlp.shapes())?;
        Ok(Self { core, products, scratch: None, part_scratch: Vec::new(), sharing: Sharing::default() })
    }

    pub fn step(
        &mut self,
        la: &dyn LinAlg<T>,
        mlp: &mut Mlp<T>,
        x: ArrayView2<'_, T>,
        t: ArrayView2<'_, T>,
        loss: Loss,
        rng: &mut Rng,
    ) -> Result<StepReport> {
        let fwd = mlp.forward(la, x, &mut NoHook)?;
        let (value, g_out) = loss.value_and_grad(fwd.output(), t)?;
        if !value.is_finite() {
            return self.core.skip(value, "the loss").map_err(|e| refused(e.into()));
        }
        let (grads, recorder) = self.gradients(la, mlp, &fwd, g_out, loss, rng)?;
        let batches = self.statistics_batches(mlp, &fwd, &recorder, x.nrows());
        let params: Vec<ArrayView2<'_, T>> = mlp.layers.iter().map(|l| l.w.view()).collect();
        let statistics = (!batches.is_empty()).then_some(&batches[..]);
        let input = StepInput { params: &params, grads, loss: value, statistics };
        let mut model = MlpModel { la, mlp, fwd: &fwd, x, t, loss, scratch: &mut self.scratch };
        let step: Step<'_, T> = match (self.core.config().adaptive().is_some(), self.products) {
            (false, _) => self.core.step(la, input, &mut NoCurvature).map_err(Error::from),
            (true, CurvatureProducts::Exact) => self.core.step(la, input, &mut model),
            (true, CurvatureProducts::FiniteDifferences) => {
                let outputs = fwd.output().to_owned();
                let mut fd = FiniteDifferences::new(&mut model, loss, outputs, &params);
                self.core.step(la, input, &mut fd)
            }
        }
        .map_err(refused)?;
        drop(params);
        step.apply(mlp.layers.iter_mut().map(|l| l.w.view_mut()));
        Ok(step.into_report())
    }

    /// The layers' statistics batches of a batch of `rows` examples: their
    /// inputs (a convolution's patches, $R = |T|$ rows per example) and the
    /// recorded pre-activation gradients, on the first
    /// $\lceil \tau\,\text{rows} \rceil$ examples. Empty when the recorder is.
    pub(super) fn statistics_batches<'a>(
        &self,
        mlp: &Mlp<T>,
        fwd: &'a Forward<T>,
        recorder: &'a GradRecorder<T>,
        rows: usize,
    ) -> Vec<LayerBatch<'a, T>> {
        let n_stats = self.core.config().curvature.statistics_rows(rows);
        let mut batches: Vec<LayerBatch<'a, T>> = Vec::with_capacity(recorder.grads.len());
        for (l, g) in recorder.grads.iter().enumerate() {
            let Some(g) = g else { continue };
            batches.push(match mlp.layers[l].positions() {
                1 => LayerBatch::new(fwd.acts[l].slice(s![..n_stats, ..]), g.view()),
                // A convolution: its patches and location gradients, R = |T|.
                r => LayerBatch::shared(fwd.statistics_input(l).slice_move(s![..n_stats * r, ..]), g.view(), r)
                    .with_sharing(self.sharing),
            });
        }
        batches
    }

    /// The data gradient, and the layers' statistics gradients when the
    /// statistics are due (an empty recorder otherwise). A non-finite
    /// gradient is refused by the core before it reads any statistic, so the
    /// sampling pass (which draws from `rng`) is not run for it.
    pub(super) fn gradients(
        &self,
        la: &dyn LinAlg<T>,
        mlp: &Mlp<T>,
        fwd: &Forward<T>,
        g_out: Array2<T>,
        loss: Loss,
        rng: &mut Rng,
    ) -> Result<(Vec<Array2<T>>, GradRecorder<T>)> {
        let out = fwd.output();
        let curvature = &self.core.config().curvature;
        let n = out.nrows();
        let n_stats = curvature.statistics_rows(n);
        let needs = self.core.needs_statistics();
        let mut recorder = GradRecorder::default();
        let grads = if needs && curvature.fisher == FisherMode::Empirical && n_stats == n {
            mlp.backward(la, fwd, g_out.view(), true, &mut recorder)?
        } else {
            mlp.backward(la, fwd, g_out.view(), true, &mut NoHook)?
        };
        if !needs || !finite(&grads) {
            return Ok((grads, GradRecorder::default()));
        }
        if recorder.grads.is_empty() {
            let g_stats = match curvature.fisher {
                FisherMode::True => loss.sampled_grad(out.slice(s![..n_stats, ..]), rng),
                FisherMode::Empirical => g_out.slice(s![..n_stats, ..]).to_owned(),
            };
            mlp.backward(la, fwd, g_stats.view(), false, &mut recorder)?;
        }
        Ok((grads, recorder))
    }
}
