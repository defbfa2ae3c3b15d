//! The study that chooses the adaptive machinery's defaults on problems
//! other than the race (`docs/results/bench/adaptive-defaults/protocol.md`,
//! written before any run).
//!
//! Candidates are pairs $(\omega, \lambda_0)$: the per-step factor of the
//! Levenberg–Marquardt rule and the initial damping (`None`: the scale-free
//! $\operatorname{tr}(F)/P$). Every candidate trains adaptive K-FAC and
//! EKFAC on each problem with each seed. A run's score is the mean of its
//! batch losses over all steps (the area under its training curve); a failed
//! or non-finite run (a non-finite batch or final loss) scores $+\infty$. In
//! each cell (problem, optimizer, seed) the candidates are ranked by score,
//! ties sharing the mean rank; the candidate with the lowest mean rank
//! wins, and an exact tie goes to the earliest of the tied candidates (in
//! the protocol the first is the paper's values, with rejected steps).

use std::path::Path;

use kfac_nn::optim::{AdaptiveConfig, OptimizerConfig, OptimizerKind, UpdateRule};
use kfac_nn::report;
use kfac_nn::train::{self, DataSource, StepRecord, Task, TaskKind, TrainConfig};
use kfac_nn::{Error, Result};

/// One problem of the study: `kfac train`'s defaults for `task` on `data`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Its name in the tables.
    pub name: String,
    /// The task.
    pub task: TaskKind,
    /// The data set.
    pub data: DataSource,
    /// Steps (`None`: the task's default).
    pub steps: Option<usize>,
}

/// One candidate set of defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// Its name in the tables.
    pub name: String,
    /// $\omega$, the per-step factor of the damping rules.
    pub omega: f64,
    /// $\lambda_0$; `None`: $\operatorname{tr}(F)/P$ of the first batch.
    pub lambda: Option<f64>,
}

impl Candidate {
    /// The adaptive configuration of the protocol: this candidate's
    /// $\omega$ and $\lambda_0$, $T_1 = 5$, $T_2 = 20$,
    /// $\gamma_0 = \sqrt{\lambda_0 + \eta}$, $\lambda \in [10^{-8}, 10^8]$ and
    /// rejected steps, spelled out so that the study does not move with
    /// the defaults it chose.
    pub fn adaptive(&self) -> AdaptiveConfig {
        AdaptiveConfig {
            lambda: self.lambda,
            omega: self.omega,
            t1: 5,
            t2: 20,
            lambda_min: 1e-8,
            lambda_max: 1e8,
            gamma: None,
            reject: true,
        }
    }
}

/// What the study runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DefaultsConfig {
    /// The problems.
    pub problems: Vec<Problem>,
    /// The optimizers (K-FAC and EKFAC).
    pub optimizers: Vec<OptimizerKind>,
    /// The seeds.
    pub seeds: Vec<u64>,
    /// The candidates; the first is the tie's winner.
    pub candidates: Vec<Candidate>,
}

impl DefaultsConfig {
    /// The protocol's study: the digits autoencoder and the digits and
    /// MNIST-5k classifiers, K-FAC and EKFAC, seeds 1–3, and
    /// $\omega \in \{19/20, 9/10\}$ × $\lambda_0 \in \{150, \text{auto}\}$.
    pub fn protocol() -> Self {
        let problem = |name: &str, task, data| Problem { name: name.into(), task, data, steps: None };
        let candidate = |name: &str, omega, lambda| Candidate { name: name.into(), omega, lambda };
        Self {
            problems: vec![
                problem("digits autoencoder", TaskKind::Autoencoder, DataSource::Digits),
                problem("digits classifier", TaskKind::Classifier, DataSource::Digits),
                problem("mnist5k classifier", TaskKind::Classifier, DataSource::Mnist5k),
            ],
            optimizers: vec![OptimizerKind::Kfac, OptimizerKind::Ekfac],
            seeds: vec![1, 2, 3],
            candidates: vec![
                candidate("paper: omega 19/20, lambda0 150", 19.0 / 20.0, Some(150.0)),
                candidate("omega 19/20, lambda0 auto", 19.0 / 20.0, None),
                candidate("kfac-jax omega 9/10, lambda0 150", 0.9, Some(150.0)),
                candidate("omega 9/10, lambda0 auto", 0.9, None),
            ],
        }
    }
}

/// One training run of the study.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Run {
    /// The problem's name.
    pub problem: String,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// The seed.
    pub seed: u64,
    /// The candidate's name.
    pub candidate: String,
    /// The mean batch loss over the steps ([`score`]).
    pub score: f64,
    /// The loss on the whole training split after the last step (NaN if the run failed).
    pub final_loss: f64,
    /// Steps the rejection undid.
    pub rejected: usize,
    /// Training seconds.
    pub seconds: f64,
    /// Why the run failed, if it did.
    pub error: Option<String>,
}

/// A candidate's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standing {
    /// The candidate.
    pub candidate: Candidate,
    /// Its mean rank over the cells (1 = best).
    pub mean_rank: f64,
    /// Cells in which it had the lowest score (alone or tied).
    pub firsts: usize,
    /// Its runs that failed or had a non-finite loss.
    pub failures: usize,
}

/// The study's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Study {
    /// What ran.
    pub config: DefaultsConfig,
    /// Threads of the rayon pool.
    pub threads: usize,
    /// Every run.
    pub runs: Vec<Run>,
    /// The candidates in the configuration's order.
    pub standings: Vec<Standing>,
    /// The index of the winning candidate.
    pub winner: usize,
}

/// The score of a run: the mean of its batch losses, $+\infty$ when there
/// are none or one is not finite.
pub fn score(steps: &[StepRecord]) -> f64 {
    if steps.is_empty() || steps.iter().any(|s| !s.loss.is_finite()) {
        return f64::INFINITY;
    }
    steps.iter().map(|s| s.loss).sum::<f64>() / steps.len() as f64
}

/// Ranks (1 = lowest) of `scores`; equal scores share the mean of their
/// ranks. NaN is treated as $+\infty$.
pub fn ranks(scores: &[f64]) -> Vec<f64> {
    let key = |x: f64| if x.is_nan() { f64::INFINITY } else { x };
    scores
        .iter()
        .map(|&s| {
            let below = scores.iter().filter(|&&o| key(o) < key(s)).count();
            let equal = scores.iter().filter(|&&o| key(o) == key(s)).count();
            below as f64 + (equal as f64 + 1.0) / 2.0
        })
        .collect()
}

/// The standings and the winner of `runs` (every cell must have a run of
/// every candidate).
pub fn decide(config: &DefaultsConfig, runs: Vec<Run>, threads: usize) -> Result<Study> {
    let nc = config.candidates.len();
    if nc == 0 {
        return Err(Error::Config { what: "adaptive-defaults", value: "0".into(), why: "no candidates".into() });
    }
    let mut rank_sum = vec![0.0; nc];
    let mut firsts = vec![0; nc];
    let mut cells = 0usize;
    for p in &config.problems {
        for &o in &config.optimizers {
            for &seed in &config.seeds {
                let scores = config
                    .candidates
                    .iter()
                    .map(|c| {
                        runs.iter()
                            .find(|r| {
                                r.problem == p.name && r.optimizer == o && r.seed == seed && r.candidate == c.name
                            })
                            .map(|r| r.score)
                            .ok_or_else(|| Error::Config {
                                what: "adaptive-defaults",
                                value: format!("{} / {} / seed {seed} / {}", p.name, o.name(), c.name),
                                why: "this run is missing".into(),
                            })
                    })
                    .collect::<Result<Vec<f64>>>()?;
                let r = ranks(&scores);
                let key = |x: f64| if x.is_nan() { f64::INFINITY } else { x };
                let best = scores.iter().copied().map(key).fold(f64::INFINITY, f64::min);
                for (i, &ri) in r.iter().enumerate() {
                    rank_sum[i] += ri;
                    if key(scores[i]) == best {
                        firsts[i] += 1;
                    }
                }
                cells += 1;
            }
        }
    }
    let cells = cells.max(1) as f64;
    let standings: Vec<Standing> = config
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| Standing {
            candidate: c.clone(),
            mean_rank: rank_sum[i] / cells,
            firsts: firsts[i],
            failures: runs.iter().filter(|r| r.candidate == c.name && !r.score.is_finite()).count(),
        })
        .collect();
    // The first of the lowest mean ranks: an exact tie goes to the earlier candidate.
    let winner = (0..nc).fold(0, |best, i| if standings[i].mean_rank < standings[best].mean_rank { i } else { best });
    Ok(Study { config: config.clone(), threads, runs, standings, winner })
}

/// Runs the study; `progress` hears about each finished run.
pub fn run(config: &DefaultsConfig, progress: &mut dyn FnMut(&Run)) -> Result<Study> {
    let mut runs = vec![];
    for p in &config.problems {
        for &seed in &config.seeds {
            let task = Task::load(p.task, &p.data, seed)?;
            for &o in &config.optimizers {
                for c in &config.candidates {
                    let mut optimizer = OptimizerConfig::defaults(o);
                    if let Some(k) = optimizer.kfac_mut() {
                        k.rule = UpdateRule::Adaptive(c.adaptive());
                    }
                    let mut tc = TrainConfig::new(p.task, optimizer);
                    tc.data = p.data.clone();
                    tc.seed = seed;
                    if let Some(s) = p.steps {
                        tc.steps = s;
                    }
                    tc.eval_every = tc.steps;
                    let r = match train::train::<f32>(&tc, &task, &mut |_| {}) {
                        Ok(m) => Run {
                            problem: p.name.clone(),
                            optimizer: o,
                            seed,
                            candidate: c.name.clone(),
                            score: if m.final_loss.is_finite() { score(&m.steps) } else { f64::INFINITY },
                            final_loss: m.final_loss,
                            rejected: m
                                .steps
                                .iter()
                                .filter(|s| s.adaptive.as_ref().is_some_and(|a| a.rejected))
                                .count(),
                            seconds: m.seconds,
                            error: None,
                        },
                        Err(e) => Run {
                            problem: p.name.clone(),
                            optimizer: o,
                            seed,
                            candidate: c.name.clone(),
                            score: f64::INFINITY,
                            final_loss: f64::NAN,
                            rejected: 0,
                            seconds: 0.0,
                            error: Some(e.to_string()),
                        },
                    };
                    progress(&r);
                    runs.push(r);
                }
            }
        }
    }
    decide(config, runs, rayon::current_num_threads())
}

/// The standings and the per-cell scores as Markdown.
pub fn table(study: &Study) -> String {
    let mut t = String::from("| candidate | mean rank | cells ranked first | failed runs |\n|---|---|---|---|\n");
    for (i, s) in study.standings.iter().enumerate() {
        let mark = if i == study.winner { " (chosen)" } else { "" };
        t.push_str(&format!("| {}{mark} | {:.2} | {} | {} |\n", s.candidate.name, s.mean_rank, s.firsts, s.failures));
    }
    t.push_str("\nScore of each run (mean batch loss over the steps; lower is better), final training loss in brackets:\n\n| problem | optimizer | seed |");
    for c in &study.config.candidates {
        t.push_str(&format!(" {} |", c.name));
    }
    t.push('\n');
    t.push_str(&"|---".repeat(3 + study.config.candidates.len()));
    t.push_str("|\n");
    for p in &study.config.problems {
        for &o in &study.config.optimizers {
            for &seed in &study.config.seeds {
                t.push_str(&format!("| {} | {} | {seed} |", p.name, o.name()));
                for c in &study.config.candidates {
                    let r = study
                        .runs
                        .iter()
                        .find(|r| r.problem == p.name && r.optimizer == o && r.seed == seed && r.candidate == c.name);
                    match r {
                        Some(r) if r.error.is_none() => {
                            t.push_str(&format!(" {} ({}) |", sig(r.score), sig(r.final_loss)));
                        }
                        Some(_) => t.push_str(" failed |"),
                        None => t.push_str(" – |"),
                    }
                }
                t.push('\n');
            }
        }
    }
    t
}

/// Four significant digits.
fn sig(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let digits = (3 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.digits$}")
}

/// Writes `defaults.json` and `defaults.md` into `dir`.
pub fn write(dir: &Path, study: &Study) -> Result<()> {
    report::ensure_dir(dir)?;
    report::write_atomic(&dir.join("defaults.json"), serde_json::to_string_pretty(study)?.as_bytes())?;
    let md = format!(
        "{}\n{} threads. Chosen: {}.\n",
        table(study),
        study.threads,
        study.standings[study.winner].candidate.name
    );
    report::write_atomic(&dir.join("defaults.md"), md.as_bytes())
}
