//! The optimizer race: SGD with momentum, Adam, K-FAC and EKFAC (each with
//! the true and the empirical Fisher) on the reference MNIST autoencoder,
//! same seed, same initial weights, same batches, f32, the default backend
//! on all cores, with each optimizer's defaults (the best of the grids in the
//! README; nothing is tuned for the race).
//!
//! For each contestant `race.json` has the loss curve against steps and
//! seconds, the steps and seconds it takes to reach each target loss, and
//! its cost per step relative to SGD. Costs are **amortised**: total
//! training seconds over steps, so the eigendecompositions or inverses of
//! every `refresh_period`-th step are included; the median step time, which
//! leaves them out, is reported beside it.
//!
//! A target is reached at the first step where the trailing mean of the last
//! [`RaceConfig::window`] batch losses is at or below it (a single batch loss
//! is too noisy to compare). The targets are the smoothed losses SGD and Adam
//! have at the last step, and [`RaceConfig::fixed_targets`].

use std::path::Path;

use kfac_nn::optim::{AdaptiveConfig, OptimizerConfig, OptimizerKind, Structure, UpdateRule};
use kfac_nn::report;
use kfac_nn::train::{self, Metrics, StepRecord, Task, TaskKind, TrainConfig};
use kfac_nn::{Error, Result};

use crate::stats::median;

/// What the race runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RaceConfig {
    /// The problem (the autoencoder; the classifier makes a small race for tests).
    pub task: TaskKind,
    /// Steps per contestant.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Seed of the split, the initialisation, the batches and the sampled targets.
    pub seed: u64,
    /// Inverse (or eigenbasis) period of K-FAC and EKFAC.
    pub refresh_period: usize,
    /// Width of the trailing mean used to decide when a target is reached.
    pub window: usize,
    /// Target losses besides SGD's and Adam's final ones.
    pub fixed_targets: Vec<f64>,
    /// Whether K-FAC and EKFAC also run with the adaptive step size,
    /// momentum and damping of Martens & Grosse ([`AdaptiveConfig::default`], true Fisher).
    #[serde(default)]
    pub adaptive: bool,
}

impl RaceConfig {
    /// The full race: 200 steps of batch 1000, inverse period 20.
    pub fn full() -> Self {
        Self {
            task: TaskKind::Autoencoder,
            steps: 200,
            batch_size: 1000,
            seed: 0,
            refresh_period: 20,
            window: 10,
            fixed_targets: vec![200.0, 150.0, 100.0, 80.0],
            adaptive: true,
        }
    }

    /// The quick race of `cargo xtask bench --quick`: the same with 100
    /// steps and without the adaptive variants (whose steps cost 1.8 to 2.3 times their fixed variants'
    /// steps), so that it stays under 10 minutes.
    pub fn quick() -> Self {
        Self { steps: 100, adaptive: false, ..Self::full() }
    }
}

/// One optimizer in the race.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Contestant {
    /// Its name in the tables and plots.
    pub name: String,
    /// Its hyperparameters.
    pub optimizer: OptimizerConfig,
}

/// The contestants: SGD, Adam, and K-FAC and EKFAC with the true and the
/// empirical Fisher, block-tridiagonal K-FAC (true Fisher), each with the defaults of `kfac_nn` (the best of the
/// grids in the README) and the race's refresh period.
pub fn contestants(config: &RaceConfig) -> Vec<Contestant> {
    let mut out = vec![];
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adam, OptimizerKind::Kfac, OptimizerKind::Ekfac] {
        let mut o = OptimizerConfig::defaults(kind);
        let Some(k) = o.kfac_mut() else {
            out.push(Contestant { name: kind.name().into(), optimizer: o });
            continue;
        };
        k.curvature.refresh_period = config.refresh_period;
        let fixed = k.clone();
        let with = |edit: &dyn Fn(&mut kfac_nn::optim::KfacConfig)| {
            let mut k = fixed.clone();
            edit(&mut k);
            OptimizerConfig::Kfac(k)
        };
        out.push(Contestant { name: kind.name().into(), optimizer: with(&|_| {}) });
        if config.adaptive {
            let adaptive = with(&|k| k.rule = UpdateRule::Adaptive(AdaptiveConfig::default()));
            out.push(Contestant { name: format!("{}-adaptive", kind.name()), optimizer: adaptive });
        }
        if kind == OptimizerKind::Kfac {
            let tridiagonal = with(&|k| k.curvature.structure = Structure::Tridiagonal);
            out.push(Contestant { name: "kfac-tridiagonal".into(), optimizer: tridiagonal });
        }
        let empirical = with(&|k| k.curvature.fisher = kfac_nn::loss::FisherMode::Empirical);
        out.push(Contestant { name: format!("{}-empirical", kind.name()), optimizer: empirical });
    }
    out
}

/// When a contestant reached a target.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reach {
    /// The target loss.
    pub target: f64,
    /// The first step whose trailing mean loss is at or below it.
    pub step: Option<usize>,
    /// Training seconds at that step.
    pub seconds: Option<f64>,
}

/// One contestant's results.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Its hyperparameters.
    pub optimizer: OptimizerConfig,
    /// Loss on the whole training split after the last step.
    pub final_loss: f64,
    /// Test loss after the last step.
    pub final_test_loss: f64,
    /// Trailing mean of the last batch losses.
    pub smoothed_final_loss: f64,
    /// Training seconds in all.
    pub seconds: f64,
    /// Seconds per step, amortised: total over steps.
    pub mean_step_seconds: f64,
    /// Median seconds per step.
    pub median_step_seconds: f64,
    /// Amortised cost per step relative to SGD's.
    pub cost_vs_sgd: f64,
    /// Median step time relative to SGD's.
    pub median_cost_vs_sgd: f64,
    /// Steps and seconds to the targets.
    pub reach: Vec<Reach>,
    /// The curve: step, batch loss, training seconds.
    pub curve: Vec<StepRecord>,
}

/// The acceptance checks, evaluated on this race.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Checks {
    /// K-FAC's amortised cost per step over SGD's (target ≤ 2.0).
    pub kfac_cost: f64,
    /// EKFAC's (target ≤ 2.5).
    pub ekfac_cost: f64,
    /// Adam's smoothed loss at the last step.
    pub adam_final: f64,
    /// Adam's training seconds for the whole run.
    pub adam_seconds: f64,
    /// The seconds EKFAC takes to reach `adam_final`.
    pub ekfac_seconds_to_adam_final: Option<f64>,
    /// That over `adam_seconds` (target ≤ 0.5).
    pub ekfac_time_ratio: Option<f64>,
    /// `kfac_cost <= 2.0`.
    pub kfac_cost_met: bool,
    /// `ekfac_cost <= 2.5`.
    pub ekfac_cost_met: bool,
    /// `ekfac_time_ratio <= 0.5`.
    pub ekfac_time_met: bool,
}

/// The whole race.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Race {
    /// The configuration.
    pub config: RaceConfig,
    /// Threads of the rayon pool.
    pub threads: usize,
    /// The backend.
    pub backend: String,
    /// The contestants' results, SGD first.
    pub entries: Vec<Entry>,
    /// The acceptance checks.
    pub checks: Checks,
}

/// The trailing means of `window` batch losses.
pub fn smoothed(curve: &[StepRecord], window: usize) -> Vec<f64> {
    let w = window.max(1);
    let mut out = Vec::with_capacity(curve.len());
    let mut sum = 0.0;
    for (i, s) in curve.iter().enumerate() {
        sum += s.loss;
        if i >= w {
            sum -= curve[i - w].loss;
        }
        out.push(sum / (i + 1).min(w) as f64);
    }
    out
}

/// When the trailing mean of `curve` first reaches `target`.
pub fn reach(curve: &[StepRecord], window: usize, target: f64) -> Reach {
    let hit = smoothed(curve, window).iter().position(|&l| l <= target);
    Reach { target, step: hit.map(|i| curve[i].step), seconds: hit.map(|i| curve[i].seconds) }
}

fn step_durations(curve: &[StepRecord]) -> Vec<f64> {
    let mut prev = 0.0;
    curve
        .iter()
        .map(|s| {
            let d = s.seconds - prev;
            prev = s.seconds;
            d
        })
        .collect()
}

/// Turns the runs into the race's entries and checks; `runs[0]` must be SGD.
pub fn assemble(config: &RaceConfig, runs: &[(Contestant, Metrics)]) -> Result<Race> {
    let find = |name: &str| runs.iter().find(|(c, _)| c.name == name).map(|(_, m)| m);
    let (sgd, adam) = match (find("sgd"), find("adam")) {
        (Some(s), Some(a)) => (s, a),
        _ => {
            return Err(Error::Config {
                what: "race",
                value: runs.iter().map(|(c, _)| c.name.as_str()).collect::<Vec<_>>().join(","),
                why: "needs an sgd and an adam run".into(),
            });
        }
    };
    let per_step = |m: &Metrics| m.seconds / m.steps.len().max(1) as f64;
    let median_step = |m: &Metrics| median(&step_durations(&m.steps));
    let last_smoothed = |m: &Metrics| smoothed(&m.steps, config.window).last().copied().unwrap_or(f64::NAN);
    let mut targets = vec![last_smoothed(sgd), last_smoothed(adam)];
    targets.extend(&config.fixed_targets);
    let entries: Vec<Entry> = runs
        .iter()
        .map(|(c, m)| Entry {
            name: c.name.clone(),
            optimizer: c.optimizer.clone(),
            final_loss: m.final_loss,
            final_test_loss: m.final_test_loss,
            smoothed_final_loss: last_smoothed(m),
            seconds: m.seconds,
            mean_step_seconds: per_step(m),
            median_step_seconds: median_step(m),
            cost_vs_sgd: per_step(m) / per_step(sgd),
            median_cost_vs_sgd: median_step(m) / median_step(sgd),
            reach: targets.iter().map(|&t| reach(&m.steps, config.window, t)).collect(),
            curve: m.steps.clone(),
        })
        .collect();
    let get = |name: &str| entries.iter().find(|e| e.name == name);
    let cost = |name: &str| get(name).map_or(f64::NAN, |e| e.cost_vs_sgd);
    let adam_final = last_smoothed(adam);
    let ekfac_seconds = get("ekfac").and_then(|e| reach(&e.curve, config.window, adam_final).seconds);
    let ratio = ekfac_seconds.map(|s| s / adam.seconds);
    let checks = Checks {
        kfac_cost: cost("kfac"),
        ekfac_cost: cost("ekfac"),
        adam_final,
        adam_seconds: adam.seconds,
        ekfac_seconds_to_adam_final: ekfac_seconds,
        ekfac_time_ratio: ratio,
        kfac_cost_met: cost("kfac") <= 2.0,
        ekfac_cost_met: cost("ekfac") <= 2.5,
        ekfac_time_met: ratio.is_some_and(|r| r <= 0.5),
    };
    Ok(Race {
        config: config.clone(),
        threads: rayon::current_num_threads(),
        backend: sgd.config.backend.name().into(),
        entries,
        checks,
    })
}

/// Runs every contestant on the race's task; `progress` hears about each finished run.
pub fn run(config: &RaceConfig, progress: &mut dyn FnMut(&str, &Metrics)) -> Result<Race> {
    let base = TrainConfig::new(config.task, OptimizerConfig::defaults(OptimizerKind::Sgd));
    let task = Task::load(config.task, &base.data, config.seed)?;
    let mut runs = vec![];
    for c in contestants(config) {
        let mut tc = TrainConfig::new(config.task, c.optimizer.clone());
        tc.steps = config.steps;
        tc.batch_size = config.batch_size;
        tc.seed = config.seed;
        tc.eval_every = config.steps;
        let m = train::train::<f32>(&tc, &task, &mut |_| {})?;
        progress(&c.name, &m);
        runs.push((c, m));
    }
    assemble(config, &runs)
}

/// The race as a Markdown table.
pub fn table(race: &Race) -> String {
    let targets: Vec<f64> =
        race.entries.first().map(|e| e.reach.iter().map(|r| r.target).collect()).unwrap_or_default();
    let mut t = String::from(
        "| optimizer | final train loss | final test loss | s/step (amortised) | cost vs SGD | median cost vs SGD |",
    );
    for (i, x) in targets.iter().enumerate() {
        let what = match i {
            0 => format!("SGD's final {x:.1}"),
            1 => format!("Adam's final {x:.1}"),
            _ => format!("{x}"),
        };
        t.push_str(&format!(" steps / s to {what} |"));
    }
    t.push('\n');
    t.push_str(&"|---".repeat(6 + targets.len()));
    t.push_str("|\n");
    for e in &race.entries {
        t.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.4} | {:.2} | {:.2} |",
            e.name, e.final_loss, e.final_test_loss, e.mean_step_seconds, e.cost_vs_sgd, e.median_cost_vs_sgd
        ));
        for r in &e.reach {
            match (r.step, r.seconds) {
                (Some(st), Some(se)) => t.push_str(&format!(" {st} / {se:.1} |")),
                _ => t.push_str(" – |"),
            }
        }
        t.push('\n');
    }
    t
}

/// Writes `race.json`, `race.md`, `race_steps.png` and `race_seconds.png` into `dir`.
pub fn write(dir: &Path, race: &Race) -> Result<()> {
    report::ensure_dir(dir)?;
    report::write_atomic(&dir.join("race.json"), serde_json::to_string_pretty(race)?.as_bytes())?;
    let c = &race.checks;
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let md = format!(
        "{}\n{} steps of batch {}, seed {}, refresh period {}, {} threads, {} backend.\n\n\
         - K-FAC cost per step vs SGD: {:.2} (target ≤ 2.0: {})\n\
         - EKFAC cost per step vs SGD: {:.2} (target ≤ 2.5: {})\n\
         - EKFAC reaches Adam's final smoothed loss {:.2} in {} against Adam's {:.1} s: ratio {} (target ≤ 0.5: {})\n",
        table(race),
        race.config.steps,
        race.config.batch_size,
        race.config.seed,
        race.config.refresh_period,
        race.threads,
        race.backend,
        c.kfac_cost,
        verdict(c.kfac_cost_met),
        c.ekfac_cost,
        verdict(c.ekfac_cost_met),
        c.adam_final,
        c.ekfac_seconds_to_adam_final.map_or("never".into(), |s| format!("{s:.1} s")),
        c.adam_seconds,
        c.ekfac_time_ratio.map_or("–".into(), |r| format!("{r:.2}")),
        verdict(c.ekfac_time_met),
    );
    report::write_atomic(&dir.join("race.md"), md.as_bytes())?;
    let series = |x: &dyn Fn(&StepRecord) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        race.entries.iter().map(|e| (e.name.clone(), e.curve.iter().map(|s| (x(s), s.loss)).collect())).collect()
    };
    let task = match race.config.task {
        TaskKind::Autoencoder => "MNIST autoencoder",
        TaskKind::Classifier => "digits classifier",
        TaskKind::Cnn => "MNIST CNN",
    };
    let title = format!("{task}, batch {}: batch loss", race.config.batch_size);
    report::plot(&dir.join("race_steps.png"), &title, "step", &series(&|s| s.step as f64))?;
    report::plot(&dir.join("race_seconds.png"), &title, "training seconds", &series(&|s| s.seconds))
}
