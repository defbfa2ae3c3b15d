//! The optimizer's complete state, for checkpoints.

use ndarray::Array2;

use crate::preconditioner::PreconditionerState;

/// The adaptive rule's running numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AdaptiveState {
    /// $\lambda$, the quadratic model's damping.
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite"))]
    pub lambda: f64,
    /// $\gamma$: the preconditioner's damping is $\gamma^2$.
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite"))]
    pub gamma: f64,
    /// Adaptive steps taken (rejected ones included).
    pub steps: usize,
}

/// Everything a [`KfacOptimizer`](super::KfacOptimizer) needs to continue
/// exactly where it stopped: the previous update (momentum), the adaptive
/// rule's numbers, the counters and the preconditioner's whole state.
///
/// With the `serde` feature it is serialisable as a whole (arrays through
/// ndarray's serde support). A container that stores arrays apart (such as
/// kfac-nn's safetensors checkpoints) can take them out with
/// [`std::mem::take`] on `velocity` and on each block's `tensors`, store the
/// rest as it is, and put them back before
/// [`restore`](super::KfacOptimizer::restore), which checks everything.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KfacState<T> {
    /// The version of this layout, [`KfacState::VERSION`]; a state of
    /// another version is refused.
    pub version: u32,
    /// The previous update $\delta_0$ (adaptive rule) or the velocity $v$
    /// (fixed rule), per layer in the $[W \mid b]$ layout.
    pub velocity: Vec<Array2<T>>,
    /// The adaptive rule's $(\lambda, \gamma, \text{steps})$.
    pub adaptive: Option<AdaptiveState>,
    /// Steps skipped for non-finite numbers.
    pub skipped_steps: usize,
    /// The curvature blocks.
    pub preconditioner: PreconditionerState<T>,
}

impl<T> KfacState<T> {
    /// The version of the state's layout written by this library.
    pub const VERSION: u32 = 1;
}
