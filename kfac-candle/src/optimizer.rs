//! [`Kfac`]: kfac-core's [`KfacOptimizer`] driving a candle model.

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use kfac_core::optim::guards::finite;
use kfac_core::optim::{FiniteDifferences, KfacConfig, KfacOptimizer, NoCurvature, StepInput, StepReport};
use kfac_core::{FisherMode, LayerBatch, Loss, Rng};
use ndarray::{Array2, ArrayView2, s};

use crate::capture::Tap;
use crate::error::{Error, Result};
use crate::host::{to_array2, to_tensor};
use crate::layer::{KfacLayer, StatsData};
use crate::loss::loss_tensor;
use crate::model::CandleModel;
use crate::scalar::Scalar;
use crate::timing::{PhaseTimes, timed};

/// What [`Kfac::step`] did: kfac-core's report and the time of each phase.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// kfac-core's report (loss, KL scale, the adaptive rule's numbers,
    /// skipped steps).
    pub report: StepReport,
    /// Seconds per phase.
    pub times: PhaseTimes,
    /// Whether the layer statistics were read without a copy (dense
    /// layers on contiguous CPU tensors); `None` when no statistics were
    /// read at this step.
    pub zero_copy_statistics: Option<bool>,
}

/// K-FAC or EKFAC, fixed or adaptive, on the [`KfacLayer`]s of a candle
/// model; see the [crate docs](crate).
#[derive(Debug)]
pub struct Kfac<T: Scalar> {
    core: KfacOptimizer<T>,
    layers: Vec<KfacLayer>,
    loss: Loss,
    rng: Rng,
}

/// Per-layer matrices in the $[W \mid b]$ layout.
type Layers<T> = Vec<Array2<T>>;

/// kfac-core's report, the new parameters (if the step changes them), and
/// the seconds of the model's forward passes.
type CoreOutcome<T> = (StepReport, Option<Layers<T>>, f64);

/// What a step reads from candle before kfac-core's step.
struct Reads<T> {
    out: Array2<T>,
    targets: Array2<T>,
    value: f64,
}

impl<T: Scalar> Kfac<T> {
    /// An optimizer for `layers` (in the order of the model, any order
    /// works), trained on the loss `loss` (which the model's outputs feed,
    /// [`loss_tensor`]), drawing the true Fisher's targets from a generator
    /// seeded with `seed`.
    ///
    /// # Errors
    ///
    /// kfac-core's [`Error::Core`] for an invalid configuration;
    /// [`Error::Layer`] for no layers or a layer given twice.
    pub fn new(config: KfacConfig, layers: Vec<KfacLayer>, loss: Loss, seed: u64) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::Layer { layer: 0, why: "no layers to precondition".into() });
        }
        for (i, l) in layers.iter().enumerate() {
            if layers[..i].iter().any(|m| m.vars().0.id() == l.vars().0.id()) {
                return Err(Error::Layer { layer: i, why: "the layer is given twice".into() });
            }
        }
        let shapes: Vec<_> = layers.iter().map(KfacLayer::shape).collect();
        let core = KfacOptimizer::new(config, &shapes)?;
        Ok(Self { core, layers, loss, rng: Rng::new(seed) })
    }

    /// kfac-core's optimizer (its preconditioner, state, health).
    pub fn core(&self) -> &KfacOptimizer<T> {
        &self.core
    }

    /// The layers, in the optimizer's order.
    pub fn layers(&self) -> &[KfacLayer] {
        &self.layers
    }

    /// The variables of every layer (weights, then biases where present, layer by layer).
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|l| {
                let (w, b) = l.vars();
                std::iter::once(w.clone()).chain(b.cloned())
            })
            .collect()
    }

    /// The seeded generator of the true Fisher's targets.
    pub fn rng(&self) -> &Rng {
        &self.rng
    }

    /// One step on the batch `(x, t)`: `forward` maps `x` to the outputs
    /// (logits, $N \times K$) that the loss takes, `t` holds the targets
    /// (one-hot for the softmax, $N \times K$). The update is written into the
    /// layers' variables. `forward` must run the model's wrapped layers; it
    /// is called once, and again at shifted parameters by the adaptive rule.
    ///
    /// # Errors
    ///
    /// candle's errors from `forward` or a backward pass; kfac-core's;
    /// [`Error::MissingGradient`] when a layer is not on the loss's graph.
    pub fn step<F>(&mut self, x: &Tensor, t: &Tensor, mut forward: F) -> Result<StepOutcome>
    where
        F: FnMut(&Tensor) -> candle_core::Result<Tensor>,
    {
        let mut times = PhaseTimes::default();
        let needs = self.core.needs_statistics();
        let logits = timed(&mut times.forward, || self.capture_forward(x, needs, &mut forward))?;
        let taps = self.taps(needs)?;
        let reads = timed(&mut times.reads, || self.read_outputs(&logits, t))?;
        if !reads.value.is_finite() {
            let report = self.core.skip(reads.value, "the loss")?;
            return Ok(StepOutcome { report, times, zero_copy_statistics: None });
        }
        let data = timed(&mut times.backward, || loss_tensor(self.loss, &logits, t)?.backward())?;
        let (grads, theta) = timed(&mut times.reads, || self.params_and_grads(&data))?;
        let stats_store = match taps {
            Some(_) if finite(&grads) => {
                Some(timed(&mut times.fisher_backward, || self.statistics_store(&logits, t, &reads, data))?)
            }
            _ => None,
        };
        let n_stats = self.core.config().curvature.statistics_rows(reads.out.nrows());
        let stats = match (&taps, &stats_store) {
            (Some(taps), Some(store)) => Some(timed(&mut times.statistics, || self.statistics(taps, store, n_stats))?),
            _ => None,
        };
        let zero_copy_statistics = stats.as_ref().map(|s| s.iter().all(StatsData::borrowed));
        let batches = match &stats {
            Some(s) => {
                Some(timed(&mut times.statistics, || s.iter().map(StatsData::batch).collect::<Result<Vec<_>>>())?)
            }
            None => None,
        };
        let params: Vec<ArrayView2<'_, T>> = theta.iter().map(|a| a.view()).collect();
        let start = Instant::now();
        let (report, new_theta, model_seconds) =
            self.core_step(x, &reads, grads, &theta, &params, batches.as_deref(), &mut forward)?;
        times.core = start.elapsed().as_secs_f64() - model_seconds;
        times.model_forwards = model_seconds;
        if let Some(new_theta) = new_theta {
            timed(&mut times.write_back, || self.write(&new_theta))?;
        }
        Ok(StepOutcome { report, times, zero_copy_statistics })
    }

    /// The forward pass, with the capture on when the statistics are due.
    fn capture_forward<F>(&self, x: &Tensor, needs: bool, forward: &mut F) -> Result<Tensor>
    where
        F: FnMut(&Tensor) -> candle_core::Result<Tensor>,
    {
        self.layers.iter().for_each(|l| l.capture().set(needs));
        let out = forward(x);
        self.layers.iter().for_each(|l| l.capture().set(false));
        Ok(out?)
    }

    /// The taps of the last forward pass (when the statistics are due).
    fn taps(&self, needs: bool) -> Result<Option<Vec<Tap>>> {
        if !needs {
            return Ok(None);
        }
        let taps = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| l.capture().take().ok_or(Error::MissingGradient { layer: i, what: "pre-activation" }));
        Ok(Some(taps.collect::<Result<Vec<_>>>()?))
    }

    fn read_outputs(&self, logits: &Tensor, t: &Tensor) -> Result<Reads<T>> {
        let out = to_array2::<T>(logits)?;
        let targets = to_array2::<T>(t)?;
        let value = self.loss.value(out.view(), targets.view())?;
        Ok(Reads { out, targets, value })
    }

    fn params_and_grads(&self, data: &GradStore) -> Result<(Layers<T>, Layers<T>)> {
        let grads = self.layers.iter().enumerate().map(|(i, l)| l.grads::<T>(i, data)).collect::<Result<Vec<_>>>()?;
        let theta = self.layers.iter().map(KfacLayer::params::<T>).collect::<Result<Vec<_>>>()?;
        Ok((grads, theta))
    }

    /// The gradient store whose pre-activation gradients feed the
    /// statistics: a backward pass of the mean loss over the first
    /// $\lceil\tau N\rceil$ examples at targets sampled from the model (true
    /// Fisher), or at the data targets (empirical; the data pass itself when
    /// $\tau = 1$).
    fn statistics_store(
        &mut self,
        logits: &Tensor,
        t: &Tensor,
        reads: &Reads<T>,
        data: GradStore,
    ) -> Result<GradStore> {
        let n = reads.out.nrows();
        let n_stats = self.core.config().curvature.statistics_rows(n);
        let head = logits.narrow(0, 0, n_stats)?;
        let store = match self.core.config().curvature.fisher {
            FisherMode::True => {
                let sampled = self.loss.sample(reads.out.slice(s![..n_stats, ..]), &mut self.rng);
                let targets = to_tensor(sampled.view(), &[n_stats, sampled.ncols()], logits.device())?;
                loss_tensor(self.loss, &head, &targets)?.backward()?
            }
            FisherMode::Empirical if n_stats == n => data,
            FisherMode::Empirical => loss_tensor(self.loss, &head, &t.narrow(0, 0, n_stats)?)?.backward()?,
        };
        Ok(store)
    }

    fn statistics<'t>(&self, taps: &'t [Tap], store: &'t GradStore, n_stats: usize) -> Result<Vec<StatsData<'t, T>>> {
        self.layers
            .iter()
            .zip(taps)
            .enumerate()
            .map(|(i, (l, tap))| {
                let g = store
                    .get(tap.eps.as_tensor())
                    .ok_or(Error::MissingGradient { layer: i, what: "pre-activation" })?;
                l.statistics(tap, g, n_stats).map_err(|e| in_layer(e, i))
            })
            .collect()
    }

    /// kfac-core's step; returns its report, the new parameters when the
    /// step changes them, and the seconds of the model's forward passes.
    fn core_step<'a, F>(
        &mut self,
        x: &Tensor,
        reads: &Reads<T>,
        grads: Vec<Array2<T>>,
        theta: &[Array2<T>],
        params: &'a [ArrayView2<'a, T>],
        batches: Option<&'a [LayerBatch<'a, T>]>,
        forward: &mut F,
    ) -> Result<CoreOutcome<T>>
    where
        F: FnMut(&Tensor) -> candle_core::Result<Tensor>,
    {
        let input = StepInput { params, grads, loss: reads.value, statistics: batches };
        let la = T::linalg();
        let Self { core, layers, loss, .. } = self;
        let mut model = CandleModel { layers, theta, forward, x, t: reads.targets.view(), loss: *loss, seconds: 0.0 };
        let step = if core.config().adaptive().is_some() {
            let mut fd = FiniteDifferences::new(&mut model, *loss, reads.out.clone(), params);
            core.step(&*la, input, &mut fd)?
        } else {
            core.step(&*la, input, &mut NoCurvature)?
        };
        let new_theta = step.scaled_direction().map(|_| {
            let mut next = theta.to_vec();
            step.apply(next.iter_mut().map(|a| a.view_mut()));
            next
        });
        let report = step.into_report();
        Ok((report, new_theta, model.seconds))
    }

    fn write(&self, theta: &[Array2<T>]) -> Result<()> {
        self.layers
            .iter()
            .zip(theta)
            .enumerate()
            .try_for_each(|(i, (l, w))| l.write(w.view()).map_err(|e| in_layer(e, i)))
    }
}

/// Names layer `i` in a layer error raised without its index.
fn in_layer(e: Error, i: usize) -> Error {
    match e {
        Error::Layer { why, .. } => Error::Layer { layer: i, why },
        Error::MissingGradient { what, .. } => Error::MissingGradient { layer: i, what },
        e => e,
    }
}
