//! Helpers shared by the kfac-bench integration tests.

use kfac_nn::train::StepRecord;

/// A loss curve with one step every `step_seconds` seconds.
pub fn curve(losses: &[f64], step_seconds: f64) -> Vec<StepRecord> {
    losses
        .iter()
        .enumerate()
        .map(|(i, &loss)| StepRecord {
            step: i + 1,
            loss,
            seconds: step_seconds * (i + 1) as f64,
            kl_scale: None,
            skipped: None,
            skipped_statistics: vec![],
            adaptive: None,
        })
        .collect()
}
