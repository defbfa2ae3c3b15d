//! A small rayon-parallel MLP trained with K-FAC and EKFAC, and the `kfac`
//! command.
//!
//! - [`mlp`]: dense layers ($\bar W = [W \mid b]$), tanh/relu/sigmoid/identity,
//!   batched forward and backward passes parallel over the rayon pool, and
//!   the [`Hook`](mlp::Hook) trait through which a layer hands out its inputs
//!   $\bar a$ and pre-activation gradients $g$; with [`layers`], also
//!   convolutions (im2col, KFC's patches and location gradients) and
//!   pooling, stacked by [`Mlp::cnn`](mlp::Mlp::cnn).
//! - [`loss`]: softmax, sigmoid and squared-error losses as predictive
//!   distributions that can sample targets, for the true Fisher (kfac-core's).
//! - [`optim`]: SGD (momentum, Nesterov), Adam, and K-FAC and EKFAC through
//!   kfac-core's optimizer, fixed or adaptive.
//! - [`data`]: the IDX reader, the embedded MNIST subset and 8×8 digits.
//! - [`config`]: what defines a run; [`train`]: tasks (the deep MNIST
//!   autoencoder, a classifier, a CNN) and the training loop; [`records`]: its
//!   [`Metrics`](records::Metrics); [`report`] writes them and
//!   [`checkpoint`] saves and resumes runs, through [`fs`]'s atomic writes.
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

// This crate's README, compiled and run as a doctest so that its example
// cannot rot. Only doctests see this item.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod curvature;
pub mod data;
pub mod distributed;
mod elementwise;
pub mod error;
pub mod fs;
pub mod layers;
pub mod mlp;
pub mod optim;
pub mod records;
pub mod report;
pub mod train;

/// The losses (kfac-core's [`kfac::loss`], re-exported).
pub mod loss {
    pub use kfac::loss::*;
}

/// JSON for numbers that may not be finite (kfac-core's
/// [`kfac::nonfinite`], re-exported): the records write NaN and infinities
/// as the strings `"NaN"`, `"inf"`, `"-inf"`.
pub mod nonfinite {
    pub use kfac::nonfinite::*;
}

/// The seeded generator (kfac-core's [`kfac::rng`], re-exported).
pub mod rng {
    pub use kfac::rng::*;
}

pub use error::{Error, Result};
