//! Tasks, the training loop and its metrics.
//!
//! A run is fully determined by its [`TrainConfig`] (seed included) and the
//! number of threads: same inputs, same losses, bit for bit. The `seconds`
//! of the metrics count training only: the clock is paused while the test
//! loss is evaluated.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kfac::comm::{Communicator, SingleProcess, check_agreement};
use ndarray::Array2;

use crate::backend::Scalar;
use crate::checkpoint::{self, RunState};
use crate::data::{self, Batches, Dataset};
use crate::distributed::Parallel;
use crate::error::{Error, Result};
use crate::layers::{ConvSpec, Pool2d};
use crate::loss::Loss;
use crate::mlp::{Activation, Init, Mlp, NoHook, Parallelism};
use crate::optim::Optimizer;
use crate::rng::Rng;

pub use crate::config::{DataSource, TaskKind, TrainConfig};
pub use crate::records::{Metrics, StepRecord, TestRecord};

/// A task ready to train: data, network shape and loss.
#[derive(Debug, Clone)]
pub struct Task {
    /// Training examples.
    pub train: Dataset,
    /// Test examples.
    pub test: Dataset,
    /// The layer widths, input first.
    pub sizes: Vec<usize>,
    /// `(layer, activation)` overrides of the hidden activation.
    pub overrides: Vec<(usize, Activation)>,
    /// The loss.
    pub loss: Loss,
    /// Whether the targets are the inputs.
    pub autoencoder: bool,
    /// The convolutions before the dense layers (empty: an MLP). The
    /// images enter as $(1, H, W)$ and `sizes` are then the dense widths
    /// after them, input first (the convolutions' flattened output).
    pub convs: Vec<ConvSpec>,
    /// The activation of the hidden layers (tanh for the MLPs, relu for the CNN).
    pub hidden: Activation,
}

impl Task {
    /// Loads the data and lays out the network for `kind`.
    pub fn load(kind: TaskKind, source: &DataSource, seed: u64) -> Result<Self> {
        let (train, test) = match source {
            DataSource::Mnist5k => data::mnist5k()?.split(0.2, seed)?,
            DataSource::Digits => data::digits8x8()?.split(0.2, seed)?,
            DataSource::MnistDir(dir) => data::mnist_dir(dir)?,
        };
        let d = train.dim();
        let mlp = |sizes, overrides, loss, autoencoder, train, test| Self {
            sizes,
            overrides,
            loss,
            autoencoder,
            train,
            test,
            convs: vec![],
            hidden: Activation::Tanh,
        };
        Ok(match kind {
            TaskKind::Autoencoder => mlp(
                vec![d, 1000, 500, 250, 30, 250, 500, 1000, d],
                vec![(3, Activation::Identity)],
                Loss::SigmoidCrossEntropy,
                true,
                train,
                test,
            ),
            TaskKind::Classifier => {
                let sizes = if d <= 64 { vec![d, 128, 128, train.classes] } else { vec![d, 512, 256, train.classes] };
                mlp(sizes, vec![], Loss::SoftmaxCrossEntropy, false, train, test)
            }
            TaskKind::Cnn => Self::cnn(train, test)?,
        })
    }

    /// The CNN task: two convolutions with relu and 2×2 max pooling, then
    /// a dense softmax layer. 28×28 images: conv 5×5 ×16 (24×24), pool
    /// (12×12), conv 5×5 ×32 (8×8), pool (4×4), dense 512 → classes. Images
    /// of at most 16×16 (the 8×8 digits): 3×3 kernels with padding 1, 8 and
    /// 16 channels, so 8×8 → 4×4 → 2×2, dense 64 → classes.
    fn cnn(train: Dataset, test: Dataset) -> Result<Self> {
        let pool = Some(Pool2d::max(2));
        let convs = if train.rows.max(train.cols) <= 16 {
            vec![
                ConvSpec { padding: 1, ..ConvSpec::new(8, 3, pool) },
                ConvSpec { padding: 1, ..ConvSpec::new(16, 3, pool) },
            ]
        } else {
            vec![ConvSpec::new(16, 5, pool), ConvSpec::new(32, 5, pool)]
        };
        let probe = Mlp::<f32>::cnn((1, train.rows, train.cols), &convs, &[train.classes], Activation::Relu, 0)?;
        let flat = probe.layers[convs.len()].d_in();
        Ok(Self {
            sizes: vec![flat, train.classes],
            overrides: vec![],
            loss: Loss::SoftmaxCrossEntropy,
            autoencoder: false,
            train,
            test,
            convs,
            hidden: Activation::Relu,
        })
    }

    /// The SHA-256 of the data, in hex: both sets' pixels (as `f32`),
    /// labels, image sizes and number of classes. A checkpoint stores it,
    /// and a resume refuses data whose fingerprint differs.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for set in [&self.train, &self.test] {
            for n in [set.len(), set.rows, set.cols, set.classes] {
                h.update((n as u64).to_le_bytes());
            }
            for chunk in set.images.as_slice_memory_order().unwrap_or(&[]).chunks(1 << 16) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
                h.update(&bytes);
            }
            h.update(&set.labels);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The network of this task, initialised from `seed` by `init` (`None`:
    /// the task's own, [`Init::default`] for a dense network). A CNN is
    /// always Glorot normal ([`Mlp::cnn`]) and refuses any other `init`.
    pub fn network<T: Scalar>(&self, seed: u64, init: Option<Init>) -> Result<Mlp<T>> {
        if self.convs.is_empty() {
            let init = init.unwrap_or_default();
            return Mlp::new(&self.sizes, self.hidden, Activation::Identity, init, seed, &self.overrides);
        }
        if let Some(init) = init {
            return Err(Error::Config {
                what: "init",
                value: format!("{init:?}").to_lowercase(),
                why: "the cnn task's layers are always Glorot normal; --init applies to the dense tasks".into(),
            });
        }
        let input = (1, self.train.rows, self.train.cols);
        Mlp::cnn(input, &self.convs, &self.sizes[1..], self.hidden, seed)
    }

    /// Inputs and targets of examples `idx` of `set`.
    pub fn batch<T: Scalar>(&self, set: &Dataset, idx: &[usize]) -> (Array2<T>, Array2<T>) {
        let x: Array2<T> = data::gather(&set.images, idx).mapv(|v| T::from_f64_lossy(f64::from(v)));
        let t = if self.autoencoder {
            x.clone()
        } else {
            let oh = set.one_hot();
            data::gather(&oh, idx).mapv(|v| T::from_f64_lossy(f64::from(v)))
        };
        (x, t)
    }

    /// The mean loss (and accuracy for a classifier) of `mlp` on all of `set`,
    /// in chunks of 1000 examples.
    pub fn evaluate<T: Scalar>(
        &self,
        la: &dyn kfac::LinAlg<T>,
        mlp: &Mlp<T>,
        set: &Dataset,
    ) -> Result<(f64, Option<f64>)> {
        let n = set.len();
        let (mut total, mut hits) = (0.0, 0.0);
        let idx: Vec<usize> = (0..n).collect();
        for chunk in idx.chunks(1000) {
            let (x, t) = self.batch::<T>(set, chunk);
            let fwd = mlp.forward(la, x.view(), &mut NoHook)?;
            total += self.loss.value(fwd.output(), t.view())? * chunk.len() as f64;
            hits += Loss::accuracy(fwd.output(), t.view()) * chunk.len() as f64;
        }
        let n = n.max(1) as f64;
        Ok((total / n, (!self.autoencoder).then_some(hits / n)))
    }
}

/// Checkpointing of a run (`kfac train --save/--resume`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Save a checkpoint here every `save_every` steps and after the last.
    pub save: Option<PathBuf>,
    /// The period of the saves (`None`: only after the last step).
    pub save_every: Option<usize>,
    /// Continue from this checkpoint.
    pub resume: Option<PathBuf>,
}

/// Trains `task` as `config` says; `progress` sees each step.
pub fn train<T: Scalar>(config: &TrainConfig, task: &Task, progress: &mut dyn FnMut(&StepRecord)) -> Result<Metrics> {
    train_with::<T>(config, task, &RunOptions::default(), progress)
}

/// The fields of two configurations that differ, ignoring the number of steps.
fn config_differences(saved: &TrainConfig, asked: &TrainConfig) -> Result<Vec<String>> {
    let a = serde_json::to_value(TrainConfig { steps: 0, ..saved.clone() })?;
    let b = serde_json::to_value(TrainConfig { steps: 0, ..asked.clone() })?;
    let mut out = Vec::new();
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&name, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => out.push(format!("{prefix}: saved {a}, asked {b}")),
            _ => {}
        }
    }
    walk("", &a, &b, &mut out);
    Ok(out)
}

/// The state of the data order of a run of `config` on `n` examples after
/// `step` steps (the seed decides it).
fn data_order_after(n: usize, config: &TrainConfig, step: usize) -> crate::data::BatchState {
    let mut b = Batches::new(n, config.batch_size, config.seed ^ 0xBA7C);
    for _ in 0..step {
        b.next_batch();
    }
    b.state()
}

/// Trains `task` as `config` says, with checkpoints as `options` says;
/// `progress` sees each step.
///
/// A run resumed from a checkpoint saved after step $k$ produces the same
/// losses, bit for bit, as the uninterrupted run (same configuration and
/// thread count): the checkpoint holds the weights, the optimizer's whole
/// state, the data order and the generator of the sampled targets.
///
/// # Errors
///
/// Configuration errors; [`Error::Checkpoint`] for a checkpoint that cannot
/// be read, is damaged, or belongs to another configuration or network;
/// [`Error::NonFinite`] with [`NonFinitePolicy::Error`](crate::optim::NonFinitePolicy::Error).
pub fn train_with<T: Scalar>(
    config: &TrainConfig,
    task: &Task,
    options: &RunOptions,
    progress: &mut dyn FnMut(&StepRecord),
) -> Result<Metrics> {
    let metrics = train_on::<T>(config, task, options, &SingleProcess, progress)?;
    metrics.ok_or_else(|| Error::Config {
        what: "rank",
        value: "0".into(),
        why: "one process is rank 0 and returns its metrics".into(),
    })
}

/// Trains `task` as `config` says on every rank of `comm` (see
/// [`crate::distributed`]), with checkpoints as `options` says; `progress`
/// sees each step on every rank. Every rank calls it alike; rank 0 alone
/// evaluates, writes the checkpoints and returns the metrics (`None` on
/// the other ranks). On one process ([`SingleProcess`]) it is
/// [`train_with`].
///
/// # Errors
///
/// Those of [`train_with`]; [`Error::Config`] for more than one rank
/// without [`TrainConfig::data_parallel`], and for parts that do not fit
/// the batch or the ranks; [`Error::Core`] when the ranks' configurations
/// or data differ (naming the first rank that differs), or from the
/// transport. An error on one rank does not stop the others: end the job.
pub fn train_on<T: Scalar>(
    config: &TrainConfig,
    task: &Task,
    options: &RunOptions,
    comm: &dyn Communicator,
    progress: &mut dyn FnMut(&StepRecord),
) -> Result<Option<Metrics>> {
    let parallel = parallel_setup(config, task, comm)?;
    let root = comm.rank() == 0;
    if config.batch_size == 0 || config.eval_every == 0 || options.save_every == Some(0) {
        return Err(Error::Config {
            what: "batch_size / eval_every / save_every",
            value: format!("{} / {} / {:?}", config.batch_size, config.eval_every, options.save_every),
            why: "must be positive".into(),
        });
    }
    if let Some(path) = options.save.as_ref().filter(|_| root) {
        crate::report::check_output_file(path)?;
    }
    let la = T::backend(config.backend, config.parallelism == Parallelism::Products)?;
    let la = &*la;
    let mut mlp = task.network::<T>(config.seed, config.init)?;
    mlp.parallelism = config.parallelism;
    let mut opt = Optimizer::with_products(config.optimizer.clone(), &mlp, config.curvature_products)?
        .with_sharing(config.sharing);
    let mut batches = Batches::new(task.train.len(), config.batch_size, config.seed ^ 0xBA7C);
    let mut rng = Rng::stream(config.seed, 0x005A_3F1E);
    // Not one record per step ahead: `steps` may be huge.
    let mut steps = Vec::with_capacity(config.steps.min(1 << 12));
    let mut test = Vec::new();
    let mut elapsed = 0.0;
    let mut first = 1;
    let layers: Vec<(usize, usize)> = mlp.layers.iter().map(|l| (l.d_in(), l.d_out())).collect();
    let fingerprint =
        if options.save.is_some() || options.resume.is_some() { task.fingerprint() } else { String::new() };
    if let Some(path) = &options.resume {
        let bad = |reason: String| Error::Checkpoint { path: path.clone(), reason };
        let ck = checkpoint::load::<T>(path)?;
        let diff = config_differences(&ck.run.config, config)?;
        if !diff.is_empty() {
            return Err(bad(format!("it was saved by a run with another configuration: {}", diff.join("; "))));
        }
        if ck.run.layers != layers {
            return Err(bad(format!("its network has layers {:?}, this one {:?}", ck.run.layers, layers)));
        }
        if ck.run.step > config.steps || ck.run.steps.len() != ck.run.step {
            return Err(bad(format!(
                "it was saved after step {} ({} records); this run has {} steps",
                ck.run.step,
                ck.run.steps.len(),
                config.steps
            )));
        }
        if ck.run.data != fingerprint {
            return Err(bad(format!(
                "it was saved with other data (SHA-256 {}..., this data {}...): the data files were changed or \
                 replaced; resume with the data it was saved with",
                ck.run.data.get(..12).unwrap_or(&ck.run.data),
                &fingerprint[..12]
            )));
        }
        if ck.run.batches.n != task.train.len() || ck.run.batches.batch_size != config.batch_size {
            return Err(bad("its data order is for another training set or batch size".into()));
        }
        if data_order_after(task.train.len(), config, ck.run.step) != ck.run.batches {
            return Err(bad(format!("its data order is not the one of step {} of this run", ck.run.step)));
        }
        let restored = Batches::from_state(ck.run.batches)?;
        opt.restore(&ck.optimizer).map_err(|e| bad(e.to_string()))?;
        for (layer, w) in mlp.layers.iter_mut().zip(ck.weights) {
            layer.w = w;
        }
        batches = restored;
        rng = Rng::from_state(ck.run.rng);
        elapsed = ck.run.seconds;
        steps = ck.run.steps;
        // An evaluation the saving run made only because it ended there is
        // not one this run makes, unless this run ends there too.
        test = ck.run.test.into_iter().filter(|t| t.step % config.eval_every == 0 || t.step == config.steps).collect();
        first = ck.run.step + 1;
    }
    let save = |path: &Path,
                step: usize,
                mlp: &Mlp<T>,
                opt: &Optimizer<T>,
                batches: &Batches,
                rng: &Rng,
                elapsed,
                steps: &[StepRecord],
                test: &[TestRecord]| {
        let run = RunState {
            config: config.clone(),
            step,
            seconds: elapsed,
            batches: batches.state(),
            rng: rng.state(),
            steps: steps.to_vec(),
            test: test.to_vec(),
            layers: layers.clone(),
            optimizer: opt.state(),
            data: fingerprint.clone(),
        };
        checkpoint::save(path, &run, mlp)
    };
    for step in first..=config.steps {
        let idx = batches.next_batch();
        let start = Instant::now();
        let report = match &parallel {
            None => {
                let (x, t) = task.batch::<T>(&task.train, &idx);
                opt.step(la, &mut mlp, x.view(), t.view(), task.loss, &mut rng)
            }
            Some(p) => p.step(la, &mut opt, &mut mlp, task, &idx, step),
        }
        .map_err(|e| match e {
            Error::NonFinite { what, .. } => Error::NonFinite { step, what },
            e => e,
        })?;
        elapsed += start.elapsed().as_secs_f64();
        let rec = StepRecord {
            step,
            loss: report.loss,
            seconds: elapsed,
            kl_scale: report.kl_scale,
            skipped: report.skipped.map(str::to_string),
            skipped_statistics: report.skipped_statistics,
            adaptive: report.adaptive,
        };
        progress(&rec);
        steps.push(rec);
        if root && (step % config.eval_every == 0 || step == config.steps) {
            let (loss, accuracy) = task.evaluate(la, &mlp, &task.test)?;
            test.push(TestRecord { step, loss, accuracy });
        }
        if let Some(path) = options.save.as_ref().filter(|_| root)
            && (options.save_every.is_some_and(|k| step % k == 0) || step == config.steps)
        {
            save(path, step, &mlp, &opt, &batches, &rng, elapsed, &steps, &test)?;
        }
    }
    if !root {
        return Ok(None);
    }
    let (final_loss, _) = task.evaluate(la, &mlp, &task.train)?;
    let final_test_loss = test.last().map_or(f64::NAN, |t| t.loss);
    Ok(Some(Metrics {
        config: config.clone(),
        threads: rayon::current_num_threads(),
        steps,
        test,
        final_loss,
        final_test_loss,
        seconds: elapsed,
        parameters: mlp.num_params(),
        skipped_steps: opt.skipped_steps(),
        health: opt.health(),
        resumed_from: options.resume.as_ref().map(|_| first - 1),
    }))
}

/// The data-parallel part of a run on `comm`: `None` for one process
/// without [`TrainConfig::data_parallel`]. Checks that every rank has the
/// same configuration and data before the first collective of a step.
fn parallel_setup<'c>(config: &TrainConfig, task: &Task, comm: &'c dyn Communicator) -> Result<Option<Parallel<'c>>> {
    let Some(dp) = config.data_parallel else {
        if comm.size() > 1 {
            return Err(Error::Config {
                what: "data_parallel",
                value: "none".into(),
                why: format!("{} ranks need data-parallel parts of their batches (`kfac train --parts`)", comm.size()),
            });
        }
        return Ok(None);
    };
    let parallel = Parallel::new(dp, comm, config.batch_size, config.seed)?;
    check_agreement(comm, "configuration", &serde_json::to_vec(config)?)?;
    check_agreement(comm, "data", task.fingerprint().as_bytes())?;
    Ok(Some(parallel))
}
