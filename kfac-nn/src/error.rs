//! The error type of `kfac-nn`.

use std::path::PathBuf;

/// What can go wrong in `kfac-nn`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An IDX file is malformed.
    #[error("{path}: not a valid IDX file: {reason}")]
    Idx {
        /// The file (or `<embedded ...>` for the built-in data).
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// A data set is inconsistent (image and label counts differ, a label out of range...).
    #[error("data set {name}: {reason}")]
    Data {
        /// The data set.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An array has the wrong shape.
    #[error("{what}: shape {found:?}, expected {expected:?}")]
    Shape {
        /// What the array is.
        what: &'static str,
        /// The expected shape.
        expected: (usize, usize),
        /// The shape found.
        found: (usize, usize),
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {what} = {value} ({why})")]
    Config {
        /// The parameter.
        what: &'static str,
        /// Its value.
        value: String,
        /// The allowed range.
        why: String,
    },
    /// A step met a non-finite number (with [`NonFinitePolicy::Error`](crate::optim::NonFinitePolicy::Error)).
    #[error(
        "step {step}: {what} is not finite (a NaN or an infinity in the batch, or an overflow); nothing was changed"
    )]
    NonFinite {
        /// The step (from 1; 0 when unknown).
        step: usize,
        /// What was not finite.
        what: &'static str,
    },
    /// A checkpoint that cannot be used.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The curvature library reported an error.
    #[error(transparent)]
    Core(#[from] kfac::Error),
    /// Encoding or decoding JSON failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Drawing a plot failed.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Shorthand for `Result<T, kfac_nn::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
