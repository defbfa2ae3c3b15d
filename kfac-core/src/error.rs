//! Error types.
//!
//! [`LinAlgError`] is what a [`LinAlg`](crate::LinAlg) backend reports;
//! [`Error`] is what the blocks, factors and the preconditioner report, and
//! names the block that failed.

/// A failure of a linear-algebra backend.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LinAlgError {
    /// The operands of an operation do not fit together.
    #[error("shape mismatch in {op}: {detail}")]
    ShapeMismatch {
        /// The operation (`"gemm"`, `"eigh"`, ...).
        op: &'static str,
        /// Both shapes, spelled out.
        detail: String,
    },
    /// A matrix that must be square is not.
    #[error("{op} needs a square matrix, got {rows} x {cols}")]
    NotSquare {
        /// The operation.
        op: &'static str,
        /// Rows of the operand.
        rows: usize,
        /// Columns of the operand.
        cols: usize,
    },
    /// A Cholesky factorisation met a non-positive pivot.
    #[error("matrix is not positive definite (non-positive pivot at index {index})")]
    NotPositiveDefinite {
        /// The index of the first failing pivot.
        index: usize,
    },
    /// An iterative decomposition did not converge.
    #[error("{op} did not converge")]
    NoConvergence {
        /// The operation.
        op: &'static str,
    },
    /// An operand holds NaN or an infinity.
    #[error("{op}: input contains a non-finite value")]
    NonFinite {
        /// The operation.
        op: &'static str,
    },
}

/// The error type of `kfac-core`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An array handed to a block or factor has the wrong shape.
    #[error("{block}: {what} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The block (or factor) that received it.
        block: String,
        /// What the array is (`"inputs"`, `"gradient"`, ...).
        what: &'static str,
        /// The shape that was expected; `usize::MAX` stands for "any".
        expected: (usize, usize),
        /// The shape that was received.
        found: (usize, usize),
    },
    /// A batch has no examples.
    #[error("{block}: empty batch ({what} has no rows)")]
    EmptyBatch {
        /// The block that received it.
        block: String,
        /// Which array was empty.
        what: &'static str,
    },
    /// An input holds NaN or an infinity.
    #[error("{block}: {what} contains a non-finite value")]
    NonFinite {
        /// The block that received it.
        block: String,
        /// Which array or statistic.
        what: &'static str,
    },
    /// A decomposition of a block's factor failed.
    #[error("{block}: decomposition of {what} failed: {source}")]
    Decomposition {
        /// The block.
        block: String,
        /// Which matrix (`"A"`, `"B"`, ...).
        what: &'static str,
        /// The backend's error.
        #[source]
        source: LinAlgError,
    },
    /// The block was asked to precondition or multiply before its cache was built.
    #[error("{block}: {what} (call `update_statistics` and `refresh` first)")]
    NotReady {
        /// The block.
        block: String,
        /// What is missing.
        what: &'static str,
    },
    /// A damping kind the block does not support.
    #[error("{block}: damping {damping} is not supported by this block ({why})")]
    UnsupportedDamping {
        /// The block.
        block: String,
        /// The damping asked for.
        damping: String,
        /// Why it is not supported.
        why: &'static str,
    },
    /// The damped curvature is singular (a zero eigenvalue and zero damping).
    #[error("{block}: the damped curvature is singular ({what}); use a positive damping")]
    Singular {
        /// The block.
        block: String,
        /// What is singular.
        what: &'static str,
    },
    /// A hyperparameter or configuration value is out of range.
    #[error("invalid configuration: {what} = {value} ({why})")]
    InvalidConfig {
        /// The parameter.
        what: &'static str,
        /// Its value, printed.
        value: String,
        /// The allowed range.
        why: &'static str,
    },
    /// The block is too large for the requested dense representation.
    #[error("{block}: dense matrix of size {dim} x {dim} exceeds the limit {limit}")]
    TooLarge {
        /// The block.
        block: String,
        /// Side of the dense matrix.
        dim: usize,
        /// The limit on the side.
        limit: usize,
    },
    /// A saved state (checkpoint) that does not fit the block or is damaged.
    #[error("{block}: invalid saved state: {why}")]
    InvalidState {
        /// The block (or `preconditioner`).
        block: String,
        /// What is wrong.
        why: String,
    },
    /// A data-parallel step could not combine the ranks' values: a failed
    /// transfer, ranks that disagree, or an error on another rank
    /// ([`crate::comm`]).
    #[error("communication: {what}")]
    Communication {
        /// What failed.
        what: String,
    },
    /// A backend operation failed outside a decomposition.
    #[error("{block}: {source}")]
    LinAlg {
        /// The block.
        block: String,
        /// The backend's error.
        #[source]
        source: LinAlgError,
    },
}

/// Shorthand for `Result<T, kfac_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
