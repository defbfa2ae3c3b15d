//! The records of a run: one per step, one per test evaluation, and the
//! whole run's metrics (written as `metrics.json`).

use kfac::BlockHealth;
use kfac::optim::AdaptiveRecord;

use crate::config::TrainConfig;

/// One training step's record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    /// Step number, from 1.
    pub step: usize,
    /// The batch loss before the step's update (NaN or infinite when the
    /// step was skipped for it; written as in [`crate::nonfinite`]).
    #[serde(with = "crate::nonfinite")]
    pub loss: f64,
    /// Training seconds since the start (evaluation excluded).
    #[serde(with = "crate::nonfinite")]
    pub seconds: f64,
    /// The KL-clip factor applied to the step (K-FAC and EKFAC with clipping; 1 = not clipped).
    #[serde(skip_serializing_if = "Option::is_none", default, with = "crate::nonfinite::option")]
    pub kl_scale: Option<f64>,
    /// Set when the step changed nothing because this was not finite.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub skipped: Option<String>,
    /// Layers whose curvature statistics skipped this step's batch (not finite).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub skipped_statistics: Vec<usize>,
    /// λ, γ, α, μ, M(δ) and ρ of the adaptive machinery.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub adaptive: Option<AdaptiveRecord>,
}

/// A test evaluation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TestRecord {
    /// After this many steps.
    pub step: usize,
    /// Mean test loss.
    #[serde(with = "crate::nonfinite")]
    pub loss: f64,
    /// Test accuracy (classifier).
    #[serde(with = "crate::nonfinite::option")]
    pub accuracy: Option<f64>,
}

/// What a run produces (written as `metrics.json`; numbers that are not
/// finite are written as the strings `"NaN"`, `"inf"` and `"-inf"`, see
/// [`crate::nonfinite`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// The configuration.
    pub config: TrainConfig,
    /// Threads of the rayon pool the run used.
    pub threads: usize,
    /// Per step.
    pub steps: Vec<StepRecord>,
    /// At intervals.
    pub test: Vec<TestRecord>,
    /// The loss on the whole training split after the last step.
    #[serde(with = "crate::nonfinite")]
    pub final_loss: f64,
    /// The test loss after the last step.
    #[serde(with = "crate::nonfinite")]
    pub final_test_loss: f64,
    /// Training seconds in all.
    #[serde(with = "crate::nonfinite")]
    pub seconds: f64,
    /// Number of parameters.
    pub parameters: usize,
    /// Steps that changed nothing because a number was not finite.
    #[serde(default)]
    pub skipped_steps: usize,
    /// Each layer's curvature health at the end (K-FAC and EKFAC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<BlockHealth>,
    /// The step the run was resumed from, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<usize>,
}
