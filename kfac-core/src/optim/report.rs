//! What a step reports.

/// What one [`KfacOptimizer::step`](super::KfacOptimizer::step) did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The batch loss before the update (as handed in, without the $\ell_2$ term).
    pub loss: f64,
    /// The KL-clip factor $\nu$ applied (the fixed rule with a clip).
    pub kl_scale: Option<f64>,
    /// Set when the step changed nothing because `what` was not finite
    /// ([`NonFinitePolicy::Skip`](crate::NonFinitePolicy::Skip)).
    pub skipped: Option<&'static str>,
    /// Layers whose curvature statistics were not updated at this step
    /// (their batch was not finite).
    pub skipped_statistics: Vec<usize>,
    /// Whether the preconditioner's caches were rebuilt at this step.
    pub refreshed: bool,
    /// The adaptive rule's numbers.
    pub adaptive: Option<AdaptiveRecord>,
}

impl StepReport {
    /// A step taken at batch loss `loss`, with nothing else to report.
    pub fn taken(loss: f64) -> Self {
        Self { loss, kl_scale: None, skipped: None, skipped_statistics: Vec::new(), refreshed: false, adaptive: None }
    }

    /// A step that changed nothing because `what` was not finite.
    pub fn skipped(loss: f64, what: &'static str, skipped_statistics: Vec<usize>, refreshed: bool) -> Self {
        Self { loss, kl_scale: None, skipped: Some(what), skipped_statistics, refreshed, adaptive: None }
    }
}

/// What the adaptive rule chose at a step.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AdaptiveRecord {
    /// $\lambda$ of the quadratic model used at this step.
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite"))]
    pub lambda: f64,
    /// $\gamma$: the preconditioner's damping is $\gamma^2$.
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite"))]
    pub gamma: f64,
    /// The coefficient of the preconditioned gradient.
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite"))]
    pub alpha: f64,
    /// The coefficient of the previous update.
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite"))]
    pub mu: f64,
    /// $M(\delta) - M(0)$.
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite"))]
    pub model_change: f64,
    /// The reduction ratio, on the steps where it is measured (every `t1`
    /// steps; every step with [`AdaptiveConfig::reject`](super::AdaptiveConfig::reject)).
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite::option"))]
    pub rho: Option<f64>,
    /// Whether the step was undone ([`AdaptiveConfig::reject`](super::AdaptiveConfig::reject)).
    #[cfg_attr(feature = "serde", serde(default))]
    pub rejected: bool,
}
