//! A small rayon-parallel MLP trained with K-FAC and EKFAC, and the `kfac`
//! command.
//!
//! - [`mlp`]: dense layers ($\bar W = [W \mid b]$), tanh/relu/sigmoid/identity,
//!   batched forward and backward passes parallel over the rayon pool, and
//!   the [`Hook`](mlp::Hook) trait through which a layer hands out its inputs
//!   $\bar a$ and pre-activation gradients $g$.
//! - [`loss`]: softmax, sigmoid and squared-error losses as predictive
//!   distributions that can sample targets, for the true Fisher.
//! - [`optim`]: SGD (momentum, Nesterov), Adam, K-FAC and EKFAC (on
//!   `kfac_core`), with KL clipping.
//! - [`data`]: the IDX reader, the embedded MNIST subset and 8×8 digits.
//! - [`train`]: tasks (the deep MNIST autoencoder, a classifier), the
//!   training loop and its [`Metrics`](train::Metrics); [`report`] writes them.
//!
//! # Example
//! Train a classifier on the embedded 8×8 digits with EKFAC for a few steps.
//! ```
//! use kfac_nn::optim::{OptimizerConfig, OptimizerKind};
//! use kfac_nn::train::{self, Task, TaskKind, TrainConfig};
//!
//! let mut config = TrainConfig::new(TaskKind::Classifier, OptimizerConfig::defaults(OptimizerKind::Ekfac));
//! config.steps = 30;
//! config.batch_size = 128;
//! let task = Task::load(config.task, &config.data, config.seed)?;
//! let metrics = train::train::<f32>(&config, &task, &mut |_| {})?;
//! let first = metrics.steps[0].loss;
//! println!("loss {first:.3} -> {:.3}, test accuracy {:?}", metrics.final_loss, metrics.test.last().unwrap().accuracy);
//! assert!(metrics.final_loss < 0.5 * first);
//! # Ok::<(), kfac_nn::Error>(())
//! ```

pub mod backend;
pub mod checkpoint;
pub mod curvature;
pub mod data;
pub mod error;
pub mod loss;
pub mod mlp;
pub mod nonfinite;
pub mod optim;
pub mod report;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
