//! `kfac`: train an MLP with K-FAC, EKFAC, SGD or Adam, and compare them.
//!
//! `kfac train` with no arguments trains the deep MNIST autoencoder with
//! EKFAC on the embedded data and writes `out/train/metrics.json`,
//! `metrics.csv` and `loss.png`. `kfac compare` runs several optimizers on the
//! same task, seed and batches. `kfac <command> --help` lists the options.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kfac::comm::{Communicator, Reduction, SingleProcess};
use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::distributed::{DataParallel, launcher_ranks};
use kfac_nn::loss::FisherMode;
use kfac_nn::mlp::{Init, Parallelism};
use kfac_nn::optim::{
    AdaptiveConfig, BlockKind, CurvatureProducts, DampingKind, KfacConfig, KfacMethod, NonFinitePolicy,
    OptimizerConfig, OptimizerKind, PiRule, Sharing, Structure, UpdateRule,
};
use kfac_nn::report;
use kfac_nn::train::{self, DataSource, Metrics, RunOptions, Task, TaskKind, TrainConfig};
use kfac_nn::{Error, Result};

/// mimalloc keeps freed pages for reuse: the training loop allocates and
/// frees megabyte-sized activations every step, which with the system
/// allocator costs page faults (measured: the autoencoder's forward pass
/// 48 ms with glibc's malloc, 38 ms with mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "kfac", version, about = "K-FAC and EKFAC natural-gradient training of MLPs", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train one network and write metrics.json, metrics.csv and loss.png.
    #[command(allow_negative_numbers = true)]
    Train {
        #[command(flatten)]
        common: Common,
        /// The optimizer.
        #[arg(long, value_enum, default_value_t = Opt::Ekfac)]
        optimizer: Opt,
        /// Output directory.
        #[arg(long, default_value = "out/train")]
        out: PathBuf,
        /// Save a checkpoint (safetensors) to this file after the last step,
        /// and every --save-every steps. Writes are atomic.
        #[arg(long)]
        save: Option<PathBuf>,
        /// Save every N steps as well (with --save).
        #[arg(long, requires = "save")]
        save_every: Option<usize>,
        /// Continue from this checkpoint; the other options must be those of
        /// the run that saved it (--steps may be larger).
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Data-parallel training: cut every batch into this many fixed
        /// parts (K-FAC and EKFAC). Under `mpirun -np P` it must be a
        /// multiple of P, and defaults to P; each rank computes its parts.
        #[arg(long)]
        parts: Option<usize>,
        /// How the parts' sums are combined: one all-reduce (sum), or every
        /// part in its order (ordered: the same run, bit for bit, on any
        /// number of ranks that divides --parts).
        #[arg(long, value_enum, default_value_t = ReductionArg::Sum)]
        reduction: ReductionArg,
    },
    /// Train several optimizers on the same task, seed and batches; write a
    /// table (compare.json) and plots of loss against steps and seconds.
    #[command(allow_negative_numbers = true)]
    Compare {
        #[command(flatten)]
        common: Common,
        /// Comma-separated optimizers.
        #[arg(long, value_delimiter = ',', default_value = "sgd,adam,kfac,ekfac")]
        optimizers: Vec<Opt>,
        /// Output directory (one subdirectory per optimizer).
        #[arg(long, default_value = "out/compare")]
        out: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// The problem.
    #[arg(long, value_enum, default_value_t = TaskArg::Autoencoder)]
    task: TaskArg,
    /// Embedded data set (default: mnist5k for the autoencoder and the cnn, digits for the classifier).
    #[arg(long, value_enum)]
    dataset: Option<DatasetArg>,
    /// Directory with the full MNIST IDX files (train-images-idx3-ubyte[.gz], ...); overrides --dataset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training steps (default: 200 for the autoencoder and the cnn, 300 for the classifier).
    #[arg(long)]
    steps: Option<usize>,
    /// Examples per step (default: 1000 for the autoencoder, 256 for the classifier and the cnn).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate (default: the optimizer's, see the README).
    #[arg(long)]
    lr: Option<f64>,
    /// Momentum (SGD, K-FAC, EKFAC).
    #[arg(long)]
    momentum: Option<f64>,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    nesterov: bool,
    /// Tikhonov damping of the curvature (K-FAC, EKFAC).
    #[arg(long)]
    damping: Option<f64>,
    /// How the damping enters K-FAC: on the whole block, or factored (A and B separately, with the pi correction).
    #[arg(long, value_enum)]
    damping_kind: Option<DampingArg>,
    /// True Fisher (targets sampled from the model) or empirical Fisher (data targets).
    #[arg(long, value_enum, default_value_t = FisherArg::True)]
    fisher: FisherArg,
    /// Decay of the running curvature statistics.
    #[arg(long)]
    decay: Option<f64>,
    /// Update the curvature statistics every N steps.
    #[arg(long)]
    stats_period: Option<usize>,
    /// Recompute the eigenbases every N steps.
    #[arg(long)]
    refresh_period: Option<usize>,
    /// Update EKFAC's scalings every N steps.
    #[arg(long)]
    scalings_period: Option<usize>,
    /// KL clip (a number, or "none").
    #[arg(long)]
    kl_clip: Option<String>,
    /// Fraction of each batch used for the curvature statistics (tau).
    #[arg(long)]
    stats_fraction: Option<f64>,
    /// L2 coefficient.
    #[arg(long)]
    l2: Option<f64>,
    /// Seed of the split, the initialisation, the batches and the sampled targets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How the weights start, biases at zero (autoencoder and classifier;
    /// default: sparse): Martens' sparse initialisation (15 nonzero N(0, 1)
    /// weights per unit), or N(0, 1/fan_in) as kfac-jax's autoencoder
    /// example starts. The cnn task is always Glorot normal.
    #[arg(long, value_enum)]
    init: Option<InitArg>,
    /// Linear-algebra backend (default: faer when compiled in).
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Floating-point precision of the training.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// How the MLP's products are parallelised.
    #[arg(long, value_enum, default_value_t = ParArg::Products)]
    parallelism: ParArg,
    /// Evaluate the test loss every N steps.
    #[arg(long, default_value_t = 20)]
    eval_every: usize,
    /// K-FAC/EKFAC: Martens & Grosse's adaptive step size and momentum
    /// (quadratic model with exact Fisher-vector products) and
    /// Levenberg-Marquardt damping; --lr, --momentum, --damping and
    /// --kl-clip are then not used. SGD and Adam ignore it (so that
    /// `compare` can race them against adaptive K-FAC and EKFAC).
    #[arg(long)]
    adaptive: bool,
    /// Adaptive: the initial lambda of the quadratic model: "auto" for
    /// tr(F)/P, the mean eigenvalue of the Fisher on the first batch
    /// (scale-free), or a number (the paper's 150)
    #[arg(long, default_value = "auto", requires = "adaptive")]
    adaptive_lambda: String,
    /// Adaptive: omega, the per-step factor of the damping rules (kfac-jax's
    /// 0.9; the paper's is 0.95).
    #[arg(long, default_value_t = 0.9, requires = "adaptive")]
    adaptive_omega: f64,
    /// Adaptive: adjust lambda every T1 steps.
    #[arg(long, default_value_t = 5, requires = "adaptive")]
    adaptive_t1: usize,
    /// Adaptive: choose gamma (the preconditioner's damping is gamma^2) every T2 steps.
    #[arg(long, default_value_t = 20, requires = "adaptive")]
    adaptive_t2: usize,
    /// Adaptive: the initial gamma (default: sqrt(lambda + l2)).
    #[arg(long, requires = "adaptive")]
    adaptive_gamma: Option<f64>,
    /// Adaptive: undo any step that raises the batch objective (one more
    /// forward pass per step); "false" gives Martens & Grosse's rule, which
    /// never rejects (pair it with their --adaptive-lambda 150: from the
    /// automatic lambda it can diverge, see the README)
    #[arg(long, requires = "adaptive", default_value_t = true, action = clap::ArgAction::Set)]
    adaptive_reject: bool,
    /// Adaptive: how the quadratic forms u'Fv are computed: exact
    /// forward-mode products, or kfac-core's finite-difference fallback (two
    /// forward passes per direction), as a framework without forward mode
    /// would.
    #[arg(long, value_enum, default_value_t = ProductsArg::Exact, requires = "adaptive")]
    adaptive_products: ProductsArg,
    /// Adaptive: bounds of lambda, "MIN,MAX".
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_values_t = [1e-8, 1e8],
        requires = "adaptive"
    )]
    adaptive_bounds: Vec<f64>,
    /// K-FAC's block structure: block-diagonal, or Martens & Grosse's
    /// block-tridiagonal inverse (cross-layer factors; factored damping).
    /// `compare` applies it to K-FAC only.
    #[arg(long, value_enum, default_value_t = StructureArg::Diagonal)]
    structure: StructureArg,
    /// K-FAC/EKFAC on the cnn task: the convolutions' Kronecker factors
    /// over their output locations, K-FAC-expand (KFC) or K-FAC-reduce.
    #[arg(long, value_enum, default_value_t = SharingArg::Expand)]
    sharing: SharingArg,
    /// What a step does when a number is not finite: skip it (change
    /// nothing, report it) or stop with an error.
    #[arg(long, value_enum)]
    on_non_finite: Option<NonFiniteArg>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

macro_rules! value_enum {
    ($name:ident { $($variant:ident => $target:expr),* $(,)? } -> $t:ty) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
        enum $name { $($variant),* }
        impl From<$name> for $t {
            fn from(v: $name) -> $t {
                match v { $($name::$variant => $target),* }
            }
        }
    };
}

value_enum!(Opt { Sgd => OptimizerKind::Sgd, Adam => OptimizerKind::Adam, Kfac => OptimizerKind::Kfac, Ekfac => OptimizerKind::Ekfac } -> OptimizerKind);
value_enum!(TaskArg { Autoencoder => TaskKind::Autoencoder, Classifier => TaskKind::Classifier, Cnn => TaskKind::Cnn } -> TaskKind);
value_enum!(InitArg { Sparse => Init::Sparse { nonzero: 15 }, Gaussian => Init::Gaussian } -> Init);
value_enum!(SharingArg { Expand => Sharing::Expand, Reduce => Sharing::Reduce } -> Sharing);
value_enum!(FisherArg { True => FisherMode::True, Empirical => FisherMode::Empirical } -> FisherMode);
value_enum!(BackendArg { Faer => Backend::Faer, Nalgebra => Backend::Nalgebra } -> Backend);
value_enum!(DampingArg { Tikhonov => DampingKind::Tikhonov, Factored => DampingKind::Factored(PiRule::Trace) } -> DampingKind);
value_enum!(ParArg { Products => Parallelism::Products, Shards => Parallelism::Shards } -> Parallelism);
value_enum!(NonFiniteArg { Skip => NonFinitePolicy::Skip, Error => NonFinitePolicy::Error } -> NonFinitePolicy);
value_enum!(StructureArg { Diagonal => Structure::BlockDiagonal, Tridiagonal => Structure::Tridiagonal } -> Structure);
value_enum!(ReductionArg { Sum => Reduction::Sum, Ordered => Reduction::Ordered } -> Reduction);
value_enum!(ProductsArg { Exact => CurvatureProducts::Exact, FiniteDifferences => CurvatureProducts::FiniteDifferences } -> CurvatureProducts);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DatasetArg {
    Mnist5k,
    Digits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Precision {
    F32,
    F64,
}

impl Common {
    /// The optimizer's configuration: its defaults, with the options given.
    fn optimizer(&self, kind: OptimizerKind) -> Result<OptimizerConfig> {
        let mut o = OptimizerConfig::defaults(kind);
        match &mut o {
            OptimizerConfig::Sgd(c) => {
                set(&mut c.lr, self.lr);
                set(&mut c.momentum, self.momentum);
                c.nesterov = self.nesterov;
                set(&mut c.l2, self.l2);
                set(&mut c.on_non_finite, self.on_non_finite.map(Into::into));
            }
            OptimizerConfig::Adam(c) => {
                set(&mut c.lr, self.lr);
                set(&mut c.l2, self.l2);
                set(&mut c.on_non_finite, self.on_non_finite.map(Into::into));
            }
            OptimizerConfig::Kfac(c) => self.kfac(kind, c)?,
        }
        Ok(o)
    }

    /// K-FAC's and EKFAC's knobs. K-FAC uses Cholesky inverses with
    /// factored damping and the eigen path with Tikhonov damping.
    fn kfac(&self, kind: OptimizerKind, c: &mut KfacConfig) -> Result<()> {
        let curv = &mut c.curvature;
        set(&mut curv.damping_kind, self.damping_kind.map(Into::into));
        if kind == OptimizerKind::Kfac {
            curv.structure = self.structure.into();
            curv.block = match (curv.damping_kind, curv.structure) {
                (DampingKind::Tikhonov, Structure::BlockDiagonal) => BlockKind::Kfac(KfacMethod::Eigen),
                _ => BlockKind::Kfac(KfacMethod::Inverse),
            };
        }
        curv.fisher = self.fisher.into();
        set(&mut curv.decay, self.decay);
        set(&mut curv.stats_period, self.stats_period);
        set(&mut curv.refresh_period, self.refresh_period);
        set(&mut curv.scalings_period, self.scalings_period);
        set(&mut curv.stats_fraction, self.stats_fraction);
        set(&mut c.l2, self.l2);
        set(&mut c.on_non_finite, self.on_non_finite.map(Into::into));
        if let UpdateRule::Fixed(f) = &mut c.rule {
            set(&mut f.lr, self.lr);
            set(&mut f.momentum, self.momentum);
            set(&mut f.damping, self.damping);
            if let Some(v) = &self.kl_clip {
                f.kl_clip = match v.as_str() {
                    "none" | "off" => None,
                    s => Some(s.parse::<f64>().map_err(|_| Error::Config {
                        what: "kl-clip",
                        value: s.into(),
                        why: "a positive number or \"none\"".into(),
                    })?),
                };
            }
        }
        if self.adaptive {
            c.rule = UpdateRule::Adaptive(self.adaptive_config()?);
        }
        Ok(())
    }

    fn adaptive_config(&self) -> Result<AdaptiveConfig> {
        let lambda = match self.adaptive_lambda.as_str() {
            "auto" => None,
            v => Some(v.parse::<f64>().map_err(|_| Error::Config {
                what: "adaptive-lambda",
                value: v.into(),
                why: "a non-negative number or \"auto\"".into(),
            })?),
        };
        let &[lambda_min, lambda_max] = self.adaptive_bounds.as_slice() else {
            return Err(Error::Config {
                what: "adaptive-bounds",
                value: format!("{:?}", self.adaptive_bounds),
                why: "two numbers, MIN,MAX".into(),
            });
        };
        Ok(AdaptiveConfig {
            reject: self.adaptive_reject,
            lambda,
            omega: self.adaptive_omega,
            t1: self.adaptive_t1,
            t2: self.adaptive_t2,
            lambda_min,
            lambda_max,
            gamma: self.adaptive_gamma,
        })
    }

    fn config(&self, kind: OptimizerKind) -> Result<TrainConfig> {
        let o = self.optimizer(kind)?;
        match self.precision {
            Precision::F32 => o.validate::<f32>()?,
            Precision::F64 => o.validate::<f64>()?,
        }
        let task: TaskKind = self.task.into();
        let mut c = TrainConfig::new(task, o);
        if let Some(d) = self.dataset {
            c.data = match d {
                DatasetArg::Mnist5k => DataSource::Mnist5k,
                DatasetArg::Digits => DataSource::Digits,
            };
        }
        if let Some(dir) = &self.data {
            c.data = DataSource::MnistDir(dir.clone());
        }
        set(&mut c.steps, self.steps);
        set(&mut c.batch_size, self.batch_size);
        if c.steps == 0 || c.batch_size == 0 || self.eval_every == 0 {
            return Err(Error::Config {
                what: "steps / batch-size / eval-every",
                value: format!("{} / {} / {}", c.steps, c.batch_size, self.eval_every),
                why: "must be positive".into(),
            });
        }
        c.seed = self.seed;
        // `--init sparse` on a dense task is the default, stored as none, so
        // that a run resumes with or without the flag.
        let dense = !matches!(self.task, TaskArg::Cnn);
        c.init = self.init.map(Init::from).filter(|&i| !(dense && i == Init::default()));
        c.backend = self.backend.map_or_else(Backend::default, Into::into);
        c.parallelism = self.parallelism.into();
        c.eval_every = self.eval_every;
        c.curvature_products = self.adaptive_products.into();
        c.sharing = self.sharing.into();
        c.precision = match self.precision {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        }
        .into();
        Ok(c)
    }
}

/// `*field = v` when the option was given.
fn set<V>(field: &mut V, option: Option<V>) {
    if let Some(v) = option {
        *field = v;
    }
}

/// `println!` that ignores a closed standard output (e.g. `kfac ... | head`)
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed standard error (e.g.
/// `kfac ... 2>&1 | head -n 1`) instead of panicking.
macro_rules! warn {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn run_one<T: Scalar>(
    config: &TrainConfig,
    task: &Task,
    options: &RunOptions,
    comm: &dyn Communicator,
    quiet: bool,
    label: &str,
) -> Result<Option<Metrics>> {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(config.steps as u64) };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    let metrics = train::train_on::<T>(config, task, options, comm, &mut |rec| {
        bar.set_position(rec.step as u64);
        bar.set_message(format!("loss {:.4}", rec.loss));
        if let Some(what) = &rec.skipped {
            bar.suspend(|| warn!("warning: step {} skipped: {what} is not finite", rec.step));
        }
    });
    bar.finish_and_clear();
    metrics
}

fn dispatch(
    config: &TrainConfig,
    task: &Task,
    options: &RunOptions,
    comm: &dyn Communicator,
    quiet: bool,
    label: &str,
) -> Result<Option<Metrics>> {
    if config.precision == "f64" {
        run_one::<f64>(config, task, options, comm, quiet, label)
    } else {
        run_one::<f32>(config, task, options, comm, quiet, label)
    }
}

fn summary(m: &Metrics) -> String {
    let acc = m
        .test
        .last()
        .and_then(|t| t.accuracy)
        .map(|a| format!(", test accuracy {:.2}%", 100.0 * a))
        .unwrap_or_default();
    format!(
        "{:>6}: final train loss {:.4}, test loss {:.4}{acc}, {} steps in {:.1} s ({:.2} steps/s)",
        m.config.optimizer.name(),
        m.final_loss,
        m.final_test_loss,
        m.steps.len(),
        m.seconds,
        m.steps.len() as f64 / m.seconds.max(1e-9)
    )
}

fn run(cli: Cli) -> Result<()> {
    let common = match &cli.command {
        Command::Train { common, .. } | Command::Compare { common, .. } => common.clone(),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = common.threads.unwrap_or(cores);
    if threads == 0 {
        return Err(Error::Config { what: "threads", value: "0".into(), why: "must be at least 1".into() });
    }
    if threads > MAX_THREADS_PER_CORE * cores {
        return Err(Error::Config {
            what: "threads",
            value: threads.to_string(),
            why: format!(
                "at most {} ({MAX_THREADS_PER_CORE} per core, {cores} cores available): more threads than \
                 cores only slow the run down",
                MAX_THREADS_PER_CORE * cores
            ),
        });
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| Error::Config {
        what: "threads",
        value: threads.to_string(),
        why: e.to_string(),
    })?;
    pool.install(|| {
        let ranks = Ranks::start()?;
        let result = command(cli.command, ranks.comm());
        match result {
            Err(e) if ranks.comm().size() > 1 => ranks.fail(&e),
            r => r,
        }
    })
}

/// Runs `command` as rank `comm.rank()` of `comm.size()`.
fn command(command: Command, comm: &dyn Communicator) -> Result<()> {
    let root = comm.rank() == 0;
    match command {
        Command::Train { common, optimizer, out, save, save_every, resume, parts, reduction } => {
            if common.structure == StructureArg::Tridiagonal && optimizer != Opt::Kfac {
                return Err(Error::Config {
                    what: "structure",
                    value: "tridiagonal".into(),
                    why: format!(
                        "the block-tridiagonal model is a K-FAC structure; use --optimizer kfac, not {}",
                        optimizer.into_kind().name()
                    ),
                });
            }
            let mut config = common.config(optimizer.into())?;
            if parts.is_some() || comm.size() > 1 {
                config.data_parallel = Some(DataParallel::new(parts.unwrap_or(comm.size()), reduction.into()));
            }
            if root {
                check_train_outputs(&config, &out, save.as_deref())?;
            }
            let task = Task::load(config.task, &config.data, config.seed)?;
            let start = Instant::now();
            let options = RunOptions { save, save_every, resume };
            let quiet = common.quiet || !root;
            let Some(metrics) = dispatch(&config, &task, &options, comm, quiet, optimizer.into_kind().name())? else {
                return Ok(());
            };
            if metrics.skipped_steps > 0 {
                warn!("warning: {} steps were skipped (non-finite numbers); see metrics.json", metrics.skipped_steps);
            }
            report::write_run(&out, &metrics)?;
            say!("{}", summary(&metrics));
            say!(
                "wrote {} (metrics.json, metrics.csv, loss.png) in {:.1} s",
                out.display(),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Compare { common, optimizers, out } => {
            if comm.size() > 1 {
                return Err(Error::Config {
                    what: "compare",
                    value: format!("{} ranks", comm.size()),
                    why: "`kfac compare` runs in one process; train data-parallel with `kfac train`".into(),
                });
            }
            if optimizers.is_empty() {
                return Err(Error::Config {
                    what: "optimizers",
                    value: String::new(),
                    why: "name at least one".into(),
                });
            }
            let first = common.config(optimizers[0].into())?;
            report::check_output_dir(&out, &report::COMPARISON_FILES)?;
            for opt in &optimizers {
                report::check_output_dir(&out.join(opt.into_kind().name()), &report::RUN_FILES)?;
            }
            let task = Task::load(first.task, &first.data, first.seed)?;
            let mut runs = Vec::new();
            for opt in &optimizers {
                let config = common.config((*opt).into())?;
                let metrics =
                    dispatch(&config, &task, &RunOptions::default(), comm, common.quiet, opt.into_kind().name())?
                        .ok_or_else(|| Error::Config {
                            what: "compare",
                            value: "rank".into(),
                            why: "one process is rank 0".into(),
                        })?;
                report::write_run(&out.join(opt.into_kind().name()), &metrics)?;
                say!("{}", summary(&metrics));
                runs.push(metrics);
            }
            let table = report::write_comparison(&out, &runs)?;
            say!("\n{table}");
            say!(
                "wrote {} (compare.json, compare_steps.png, compare_seconds.png, one folder per optimizer)",
                out.display()
            );
            Ok(())
        }
    }
}

/// The processes of the run: this one alone, or the ranks of an MPI job.
enum Ranks {
    One(SingleProcess),
    #[cfg(feature = "mpi")]
    Mpi(kfac_mpi::MpiCommunicator),
}

impl Ranks {
    /// MPI when an MPI launcher started this process (and this `kfac` was
    /// built with it), one process otherwise.
    fn start() -> Result<Self> {
        let Some(launched) = launcher_ranks() else { return Ok(Self::One(SingleProcess)) };
        #[cfg(feature = "mpi")]
        {
            let _ = launched;
            let comm = kfac_mpi::MpiCommunicator::new().map_err(|e| Error::Config {
                what: "mpi",
                value: "MPI_Init_thread".into(),
                why: e.to_string(),
            })?;
            Ok(Self::Mpi(comm))
        }
        #[cfg(not(feature = "mpi"))]
        if launched > 1 {
            Err(Error::Config {
                what: "mpirun",
                value: format!("{launched} ranks"),
                why: "this kfac was built without MPI, so every rank would train alone and write the same files; \
                      build it with `cargo build --release -p kfac-nn --features mpi`"
                    .into(),
            })
        } else {
            Ok(Self::One(SingleProcess))
        }
    }

    fn comm(&self) -> &dyn Communicator {
        match self {
            Self::One(c) => c,
            #[cfg(feature = "mpi")]
            Self::Mpi(c) => c,
        }
    }

    /// Ends every rank of the job after an error on this one: returning
    /// would leave the others waiting in their next collective.
    fn fail(&self, e: &Error) -> Result<()> {
        warn!("rank {}: {}", self.comm().rank(), error_line(e));
        report::remove_temporaries();
        match self {
            #[cfg(feature = "mpi")]
            Self::Mpi(c) => c.abort(1),
            Self::One(_) => Ok(()),
        }
    }
}

/// The most worker threads per available core (`--threads`).
const MAX_THREADS_PER_CORE: usize = 4;

/// Checks every output of `kfac train` before the first step: the output
/// directory can receive its files, the checkpoint's directory exists and
/// can receive it, and the checkpoint is neither one of the run's own
/// outputs nor one of its data files.
fn check_train_outputs(config: &TrainConfig, out: &std::path::Path, save: Option<&std::path::Path>) -> Result<()> {
    report::check_output_dir(out, &report::RUN_FILES)?;
    let Some(save) = save else { return Ok(()) };
    report::check_output_file(save)?;
    let mut taken: Vec<PathBuf> = report::RUN_FILES.iter().map(|f| out.join(f)).collect();
    if let DataSource::MnistDir(dir) = &config.data {
        for base in
            ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
        {
            taken.push(dir.join(base));
            taken.push(dir.join(format!("{base}.gz")));
        }
    }
    let target = report::resolved(save);
    if let Some(clash) = taken.iter().find(|p| target.is_some() && report::resolved(p) == target) {
        return Err(Error::Config {
            what: "save",
            value: save.display().to_string(),
            why: format!("it is {}, which the run reads or writes itself", clash.display()),
        });
    }
    Ok(())
}

impl Opt {
    fn into_kind(self) -> OptimizerKind {
        self.into()
    }
}

/// The exit code after SIGINT or SIGTERM (128 + SIGINT's number, as shells
/// report it).
const INTERRUPTED: i32 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGINT and SIGTERM: remove the temporary file of a write in
    // progress (the file it replaces stays as it was), then exit.
    let _ = ctrlc::set_handler(|| {
        report::remove_temporaries();
        warn!("error: interrupted (SIGINT or SIGTERM); every output is either complete or as it was");
        std::process::exit(INTERRUPTED);
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            warn!("{}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line: the message, and any cause it does not already say.
fn error_line(e: &Error) -> String {
    let mut line = format!("error: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let cause = s.to_string();
        if !line.contains(&cause) {
            line.push_str(&format!(": {cause}"));
        }
        source = s.source();
    }
    line.replace('\n', " ")
}
