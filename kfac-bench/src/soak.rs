//! The soak: a long EKFAC run with almost no damping, to show what the
//! numerical safeguards do.
//!
//! 10,000 EKFAC steps on the 8×8 digits classifier (64-128-128-10, batch
//! 256, true Fisher, `f32`) with Tikhonov damping $\lambda = 10^{-8}$: the
//! damped curvature is nearly singular in the directions the data does not
//! excite, which is how peers' users report NaN weights. The soak passes
//! when every loss is finite and the final weights are finite (read back
//! from the checkpoint it saves); `soak.json` keeps the health report
//! (eigenvalue ranges, condition numbers, clamped eigenvalues, `f64`
//! retries, skipped updates) and the final accuracy.
//!
//! Finite is not the same as good: with so little damping the step is
//! dominated by directions the curvature estimate does not see, and this
//! run diverges (the loss grows by orders of magnitude and the tanh units
//! saturate, which the health report shows as factors with zero
//! eigenvalues). The safeguards keep every number finite; choosing the
//! damping is the job of adaptive damping, not of the safeguards.

use std::path::Path;

use kfac_core::BlockHealth;
use kfac_nn::checkpoint;
use kfac_nn::optim::{OptimizerConfig, OptimizerKind, UpdateRule};
use kfac_nn::train::{self, RunOptions, Task, TaskKind, TrainConfig};

/// What the soak runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SoakConfig {
    /// EKFAC steps (10,000).
    pub steps: usize,
    /// Tikhonov damping (1e-8).
    pub damping: f64,
    /// Examples per step (256).
    pub batch_size: usize,
    /// Seed (0).
    pub seed: u64,
}

impl Default for SoakConfig {
    fn default() -> Self {
        Self { steps: 10_000, damping: 1e-8, batch_size: 256, seed: 0 }
    }
}

/// What the soak found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SoakResult {
    /// The configuration.
    pub config: SoakConfig,
    /// The run's full configuration.
    pub train: TrainConfig,
    /// Steps whose batch loss was not finite.
    pub non_finite_losses: usize,
    /// Steps the optimizer skipped (changed nothing).
    pub skipped_steps: usize,
    /// Whether every final weight is finite.
    pub weights_finite: bool,
    /// Loss on the training split at the end.
    pub final_loss: f64,
    /// Test accuracy at the end.
    pub test_accuracy: f64,
    /// The batch loss of the first step.
    pub first_loss: f64,
    /// The largest batch loss after the first 100 steps.
    pub worst_loss_after_100: f64,
    /// Training seconds.
    pub seconds: f64,
    /// Each layer's health at the end.
    pub health: Vec<BlockHealth>,
}

impl SoakResult {
    /// The failed checks (empty when the soak passes): finite losses and
    /// finite weights.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.non_finite_losses > 0 {
            out.push(format!("{} non-finite batch losses", self.non_finite_losses));
        }
        if !self.weights_finite {
            out.push("non-finite weights".into());
        }
        if !self.final_loss.is_finite() {
            out.push(format!("final loss {}", self.final_loss));
        }
        out
    }
}

/// Runs the soak, saving its final checkpoint as `dir/soak.safetensors`.
pub fn run(config: &SoakConfig, dir: &Path) -> kfac_nn::Result<SoakResult> {
    let mut optimizer = OptimizerConfig::defaults(OptimizerKind::Ekfac);
    if let Some(UpdateRule::Fixed(f)) = optimizer.kfac_mut().map(|k| &mut k.rule) {
        f.damping = config.damping;
    }
    let mut train = TrainConfig::new(TaskKind::Classifier, optimizer);
    train.steps = config.steps;
    train.batch_size = config.batch_size;
    train.seed = config.seed;
    train.eval_every = (config.steps / 10).max(1);
    let task = Task::load(train.task, &train.data, train.seed)?;
    kfac_nn::report::ensure_dir(dir)?;
    let path = dir.join("soak.safetensors");
    let options = RunOptions { save: Some(path.clone()), ..Default::default() };
    let m = train::train_with::<f32>(&train, &task, &options, &mut |_| {})?;
    let ck = checkpoint::load::<f32>(&path)?;
    Ok(SoakResult {
        config: config.clone(),
        non_finite_losses: m.steps.iter().filter(|s| !s.loss.is_finite()).count(),
        skipped_steps: m.skipped_steps,
        weights_finite: ck.weights.iter().all(|w| w.iter().all(|x| x.is_finite())),
        final_loss: m.final_loss,
        test_accuracy: m.test.last().and_then(|t| t.accuracy).unwrap_or(f64::NAN),
        first_loss: m.steps.first().map_or(f64::NAN, |s| s.loss),
        worst_loss_after_100: m.steps.iter().skip(100).map(|s| s.loss).fold(f64::NAN, f64::max),
        seconds: m.seconds,
        health: m.health,
        train,
    })
}

/// A Markdown summary.
pub fn table(r: &SoakResult) -> String {
    let mut s = format!(
        "{} EKFAC steps, damping {:e}, batch {}, digits classifier, f32: final train loss {:.4}, test accuracy {:.1} %, \
         {} non-finite losses, {} skipped steps, weights finite: {}, {:.1} s.\n\n",
        r.config.steps,
        r.config.damping,
        r.config.batch_size,
        r.final_loss,
        100.0 * r.test_accuracy,
        r.non_finite_losses,
        r.skipped_steps,
        r.weights_finite,
        r.seconds
    );
    s.push_str("| layer | min eigenvalue | max eigenvalue | condition (damped) | refreshes | clamped eigenvalues | f64 retries | skipped updates |\n|---|---|---|---|---|---|---|---|\n");
    let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.3e}"));
    for h in &r.health {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            h.name,
            f(h.min_eigenvalue),
            f(h.max_eigenvalue),
            f(h.condition),
            h.refreshes,
            h.clamped_eigenvalues,
            h.f64_retries,
            h.skipped_updates
        ));
    }
    s
}

/// Writes `soak.json` and `soak.md` into `dir`.
pub fn write(dir: &Path, r: &SoakResult) -> kfac_nn::Result<()> {
    kfac_nn::report::ensure_dir(dir)?;
    kfac_nn::report::write_atomic(&dir.join("soak.json"), serde_json::to_string_pretty(r)?.as_bytes())?;
    kfac_nn::report::write_atomic(&dir.join("soak.md"), table(r).as_bytes())
}
