//! The error type of `kfac-candle`.

/// What can go wrong in `kfac-candle`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// candle refused an operation (a shape, a dtype, a device).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// kfac-core refused the step or its inputs.
    #[error(transparent)]
    Core(#[from] kfac_core::Error),
    /// A layer cannot be handed to K-FAC as it is.
    #[error("layer {layer}: {why}")]
    Layer {
        /// The layer's index in the optimizer (or 0 when it is built).
        layer: usize,
        /// What is wrong, in words.
        why: String,
    },
    /// A gradient the step needs is missing from candle's `GradStore`.
    #[error("layer {layer}: no gradient for its {what} (is it used by the forward pass, and is capture on?)")]
    MissingGradient {
        /// The layer's index in the optimizer.
        layer: usize,
        /// `"weight"`, `"bias"` or `"pre-activation"`.
        what: &'static str,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
