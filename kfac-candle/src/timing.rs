//! Per-phase timers of a step, to tell candle's work, the adapter's and
//! kfac-core's apart.

use std::time::{Duration, Instant};

/// The seconds a [`Kfac::step`](crate::Kfac::step) spent in each phase.
///
/// - candle: [`forward`](Self::forward), [`backward`](Self::backward),
///   [`fisher_backward`](Self::fisher_backward) and the adaptive rule's
///   [`model_forwards`](Self::model_forwards);
/// - the adapter: [`statistics`](Self::statistics) (reading the taps,
///   `im2col`), [`reads`](Self::reads) (outputs, targets, parameters and
///   gradients into the $[W \mid b]$ layout) and
///   [`write_back`](Self::write_back);
/// - kfac-core: [`core`](Self::core), the optimizer's step without the
///   model forwards it asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes {
    /// The forward pass (with the capture).
    pub forward: f64,
    /// The data loss's backward pass.
    pub backward: f64,
    /// The sampled (or the τ-fraction's) loss's backward pass; 0 when the
    /// statistics were not due or came from the data backward.
    pub fisher_backward: f64,
    /// Reading the taps into kfac-core's layer batches.
    pub statistics: f64,
    /// Reading outputs, targets, parameters and gradients.
    pub reads: f64,
    /// kfac-core's step, without `model_forwards`.
    pub core: f64,
    /// The forward passes at shifted parameters of the adaptive rule
    /// (writing the shifted parameters included).
    pub model_forwards: f64,
    /// Writing the update into the variables.
    pub write_back: f64,
}

impl PhaseTimes {
    /// The whole step.
    pub fn total(&self) -> f64 {
        self.candle() + self.adapter() + self.core
    }

    /// candle's share: forward and backward passes.
    pub fn candle(&self) -> f64 {
        self.forward + self.backward + self.fisher_backward + self.model_forwards
    }

    /// The adapter's share: the reads, the statistics and the write-back.
    pub fn adapter(&self) -> f64 {
        self.statistics + self.reads + self.write_back
    }

    /// The sum of two records, phase by phase.
    pub fn add(&self, o: &Self) -> Self {
        Self {
            forward: self.forward + o.forward,
            backward: self.backward + o.backward,
            fisher_backward: self.fisher_backward + o.fisher_backward,
            statistics: self.statistics + o.statistics,
            reads: self.reads + o.reads,
            core: self.core + o.core,
            model_forwards: self.model_forwards + o.model_forwards,
            write_back: self.write_back + o.write_back,
        }
    }
}

/// Runs `f` and adds its duration to `slot`.
pub(crate) fn timed<R>(slot: &mut f64, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let r = f();
    *slot += secs(start.elapsed());
    r
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
