//! What defines a training run: the task, the data and the configuration.

use std::path::PathBuf;

use crate::backend::Backend;
use crate::distributed::DataParallel;
use crate::mlp::{Init, Parallelism};
use crate::optim::{CurvatureProducts, OptimizerConfig, Sharing};

/// The problems `kfac train` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// The deep MNIST autoencoder 784-1000-500-250-30-250-500-1000-784 of
    /// Hinton & Salakhutdinov (2006), the benchmark of Martens (2010),
    /// Martens & Grosse (2015) and George et al. (2018): tanh units, a linear
    /// 30-unit code, sigmoid output with the Bernoulli cross-entropy summed
    /// over pixels.
    Autoencoder,
    /// A softmax classifier (MNIST: 784-512-256-10; 8×8 digits: 64-128-128-10; tanh).
    Classifier,
    /// A small convolutional softmax classifier, relu units
    /// ([`crate::train::Task::load`]). MNIST (28×28): conv 5×5 ×16, max
    /// pool 2, conv 5×5 ×32, max pool 2, dense 10 (512 inputs); 8×8
    /// digits: conv 3×3 ×8 (padding 1), max pool 2, conv 3×3 ×16
    /// (padding 1), max pool 2, dense 10 (64 inputs).
    Cnn,
}

/// Where the examples come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The 5,000-example MNIST subset embedded in the binary, split by the
    /// seed into 4,000 training and 1,000 test examples.
    Mnist5k,
    /// The 1,797 8×8 digits embedded in the binary, split 80/20 by the seed.
    Digits,
    /// The full MNIST IDX files in a directory (60,000 + 10,000).
    MnistDir(PathBuf),
}

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// The problem.
    pub task: TaskKind,
    /// The examples.
    pub data: DataSource,
    /// The optimizer and its hyperparameters.
    pub optimizer: OptimizerConfig,
    /// Number of steps.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Seed of the split, the initialisation, the batch order and the sampled targets.
    pub seed: u64,
    /// How the dense tasks' weights start (biases start at zero). `None`:
    /// the task's own, Martens' sparse initialisation for the autoencoder
    /// and the classifier, Glorot normal for the CNN (which takes no other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
    /// The linear-algebra backend.
    pub backend: Backend,
    /// How the MLP's products are parallelised.
    pub parallelism: Parallelism,
    /// Evaluate the test loss every this many steps (and after the last).
    pub eval_every: usize,
    /// `"f32"` or `"f64"` (informational: the run's type parameter decides).
    pub precision: String,
    /// How the adaptive rule's quadratic forms are computed: exact
    /// forward-mode products (the default) or kfac-core's finite-difference
    /// fallback. Not used by the other rules.
    #[serde(default)]
    pub curvature_products: CurvatureProducts,
    /// K-FAC and EKFAC: how a convolution's Kronecker factors treat its
    /// output locations: K-FAC-expand (KFC, the default) or K-FAC-reduce.
    /// Not used by the dense layers or the other optimizers.
    #[serde(default)]
    pub sharing: Sharing,
    /// Data-parallel training: the fixed parts of every batch and how
    /// their sums are combined ([`crate::distributed`]). `None`: the
    /// whole batch in one process, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_parallel: Option<DataParallel>,
}

impl TrainConfig {
    /// The defaults for `task`: 200 steps of batch 1000 on the embedded
    /// MNIST subset for the autoencoder, 300 steps of batch 256 on the 8×8
    /// digits for the classifier, 200 steps of batch 256 on the embedded
    /// MNIST subset for the CNN; seed 0, the default backend, a test
    /// evaluation every 20 steps, `f32`.
    pub fn new(task: TaskKind, optimizer: OptimizerConfig) -> Self {
        let (data, steps, batch_size) = match task {
            TaskKind::Autoencoder => (DataSource::Mnist5k, 200, 1000),
            TaskKind::Classifier => (DataSource::Digits, 300, 256),
            TaskKind::Cnn => (DataSource::Mnist5k, 200, 256),
        };
        Self {
            task,
            data,
            optimizer,
            steps,
            batch_size,
            seed: 0,
            init: None,
            backend: Backend::default(),
            parallelism: Parallelism::default(),
            eval_every: 20,
            precision: "f32".into(),
            curvature_products: CurvatureProducts::default(),
            sharing: Sharing::default(),
            data_parallel: None,
        }
    }
}
