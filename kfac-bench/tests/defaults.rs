//! The defaults study's scoring, ranking and decision on synthetic runs, and
//! a small study on the 8×8 digits checked against direct training runs.

use kfac_bench::defaults::{self, Candidate, DefaultsConfig, Problem, Run, ranks, score};
use kfac_nn::optim::{AdaptiveConfig, OptimizerConfig, OptimizerKind};
use kfac_nn::train::{self, DataSource, Task, TaskKind, TrainConfig};

mod common;

fn steps(losses: &[f64]) -> Vec<kfac_nn::train::StepRecord> {
    common::curve(losses, 1.0)
}

#[test]
fn the_score_is_the_mean_batch_loss_and_a_bad_run_scores_worst() {
    assert_eq!(score(&steps(&[4.0, 2.0, 3.0])), 3.0);
    assert_eq!(score(&steps(&[])), f64::INFINITY);
    assert_eq!(score(&steps(&[1.0, f64::NAN])), f64::INFINITY);
    assert_eq!(score(&steps(&[1.0, f64::INFINITY])), f64::INFINITY);
}

#[test]
fn ranks_share_ties_and_put_nan_last() {
    assert_eq!(ranks(&[3.0, 1.0, 2.0]), [3.0, 1.0, 2.0]);
    assert_eq!(ranks(&[1.0, 1.0, 5.0, 0.5]), [2.5, 2.5, 4.0, 1.0]);
    assert_eq!(ranks(&[f64::NAN, 2.0, f64::INFINITY]), [2.5, 1.0, 2.5]);
    assert_eq!(ranks(&[2.0, 2.0, 2.0, 7.0]), [2.0, 2.0, 2.0, 4.0]);
    // Ranks always sum to n(n+1)/2.
    let r = ranks(&[0.3, 0.3, 0.3, 0.1, 9.0]);
    assert_eq!(r.iter().sum::<f64>(), 15.0);
}

fn config(candidates: &[&str], seeds: &[u64]) -> DefaultsConfig {
    DefaultsConfig {
        problems: vec![Problem {
            name: "p".into(),
            task: TaskKind::Classifier,
            data: DataSource::Digits,
            steps: Some(4),
        }],
        optimizers: vec![OptimizerKind::Kfac, OptimizerKind::Ekfac],
        seeds: seeds.to_vec(),
        candidates: candidates
            .iter()
            .map(|&n| Candidate { name: n.into(), omega: 0.95, lambda: Some(150.0) })
            .collect(),
    }
}

fn run(candidate: &str, optimizer: OptimizerKind, seed: u64, score: f64) -> Run {
    Run {
        problem: "p".into(),
        optimizer,
        seed,
        candidate: candidate.into(),
        score,
        final_loss: score,
        rejected: 0,
        seconds: 1.0,
        error: None,
    }
}

#[test]
fn the_lowest_mean_rank_wins_and_a_tie_keeps_the_first_candidate() {
    use OptimizerKind::{Ekfac, Kfac};
    let c = config(&["a", "b", "c"], &[1, 2]);
    // b is best in three cells of four, a in one; c failed once.
    let runs = vec![
        run("a", Kfac, 1, 2.0),
        run("b", Kfac, 1, 1.0),
        run("c", Kfac, 1, 3.0),
        run("a", Kfac, 2, 1.0),
        run("b", Kfac, 2, 2.0),
        run("c", Kfac, 2, f64::INFINITY),
        run("a", Ekfac, 1, 5.0),
        run("b", Ekfac, 1, 4.0),
        run("c", Ekfac, 1, 6.0),
        run("a", Ekfac, 2, 5.0),
        run("b", Ekfac, 2, 4.0),
        run("c", Ekfac, 2, 4.5),
    ];
    let s = defaults::decide(&c, runs.clone(), 2).unwrap();
    let mean: Vec<f64> = s.standings.iter().map(|s| s.mean_rank).collect();
    assert_eq!(mean, [(2.0 + 1.0 + 2.0 + 3.0) / 4.0, (1.0 + 2.0 + 1.0 + 1.0) / 4.0, (3.0 + 3.0 + 3.0 + 2.0) / 4.0]);
    assert_eq!(s.winner, 1);
    assert_eq!(s.standings.iter().map(|s| s.firsts).collect::<Vec<_>>(), [1, 3, 0]);
    assert_eq!(s.standings.iter().map(|s| s.failures).collect::<Vec<_>>(), [0, 0, 1]);
    assert!(defaults::table(&s).contains("| b (chosen) | 1.25 | 3 | 0 |"));

    // Equal scores everywhere: the first candidate keeps it.
    let tied: Vec<Run> = runs.iter().map(|r| Run { score: 1.0, ..r.clone() }).collect();
    let s = defaults::decide(&c, tied.clone(), 2).unwrap();
    assert_eq!(s.winner, 0);
    assert!(s.standings.iter().all(|s| s.mean_rank == 2.0 && s.firsts == 4));

    // A three-way tie for the lowest score counts as first for all three.
    let mut three = tied.clone();
    three.iter_mut().filter(|r| r.candidate == "c" || r.seed == 2).for_each(|r| r.score = 2.0);
    let s = defaults::decide(&c, three, 2).unwrap();
    assert_eq!(s.standings.iter().map(|s| s.firsts).collect::<Vec<_>>(), [4, 4, 2]);
    assert_eq!(s.standings.iter().map(|s| s.mean_rank).collect::<Vec<_>>(), [1.75, 1.75, 2.5]);
    assert_eq!(s.winner, 0);

    // A missing run is an error, not a silent gap.
    let err = defaults::decide(&c, runs[1..].to_vec(), 2).unwrap_err().to_string();
    assert!(err.contains("p / kfac / seed 1 / a") && err.contains("missing"), "{err}");
}

#[test]
fn a_small_study_scores_what_direct_training_gives_and_writes_its_files() {
    // The autoencoder's own default data is the MNIST subset: the study must
    // train on the data its problem names.
    let c = DefaultsConfig {
        problems: vec![Problem {
            name: "p".into(),
            task: TaskKind::Autoencoder,
            data: DataSource::Digits,
            steps: Some(3),
        }],
        optimizers: vec![OptimizerKind::Kfac],
        seeds: vec![1],
        candidates: vec![
            Candidate { name: "slow".into(), omega: 0.95, lambda: Some(150.0) },
            Candidate { name: "auto".into(), omega: 0.9, lambda: None },
        ],
    };
    let mut seen = 0;
    let s = defaults::run(&c, &mut |_| seen += 1).unwrap();
    assert_eq!(seen, 2);
    assert_eq!(s.runs.len(), 2);
    // Each score is the mean batch loss of the same run trained directly,
    // configured by hand from the protocol's words.
    let task = Task::load(TaskKind::Autoencoder, &DataSource::Digits, 1).unwrap();
    assert_eq!(task.sizes[0], 64);
    for (r, (omega, lambda)) in s.runs.iter().zip([(0.95, Some(150.0)), (0.9, None)]) {
        assert!(r.error.is_none(), "{r:?}");
        let adaptive = AdaptiveConfig {
            lambda,
            omega,
            t1: 5,
            t2: 20,
            lambda_min: 1e-8,
            lambda_max: 1e8,
            gamma: None,
            reject: true,
        };
        let mut optimizer = OptimizerConfig::defaults(OptimizerKind::Kfac);
        optimizer.kfac_mut().unwrap().rule = kfac_nn::optim::UpdateRule::Adaptive(adaptive);
        let mut tc = TrainConfig::new(TaskKind::Autoencoder, optimizer);
        tc.data = DataSource::Digits;
        tc.seed = 1;
        tc.steps = 3;
        tc.eval_every = 3;
        let m = train::train::<f32>(&tc, &task, &mut |_| {}).unwrap();
        let direct = m.steps.iter().map(|s| s.loss).sum::<f64>() / 3.0;
        assert_eq!(r.score, direct);
        assert_eq!(r.final_loss, m.final_loss);
        assert!(r.score.is_finite() && r.score > 0.0);
    }
    // One cell: one candidate ranks 1, the other 2 (the scores differ).
    assert_ne!(s.runs[0].score, s.runs[1].score);
    let mut mean: Vec<f64> = s.standings.iter().map(|s| s.mean_rank).collect();
    mean.sort_by(f64::total_cmp);
    assert_eq!(mean, [1.0, 2.0]);
    let best = if s.runs[0].score < s.runs[1].score { 0 } else { 1 };
    assert_eq!(s.winner, best);

    let dir = std::env::temp_dir().join(format!("kfac-defaults-test-{}", std::process::id()));
    defaults::write(&dir, &s).unwrap();
    let back: defaults::Study =
        serde_json::from_str(&std::fs::read_to_string(dir.join("defaults.json")).unwrap()).unwrap();
    assert_eq!(back.winner, s.winner);
    assert_eq!(back.runs.len(), 2);
    let md = std::fs::read_to_string(dir.join("defaults.md")).unwrap();
    assert!(md.contains("(chosen)") && md.contains("| p | kfac | 1 |"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_protocol_is_the_one_written_down() {
    let p = DefaultsConfig::protocol();
    let problems: Vec<(TaskKind, DataSource, Option<usize>)> =
        p.problems.iter().map(|q| (q.task, q.data.clone(), q.steps)).collect();
    assert_eq!(
        problems,
        [
            (TaskKind::Autoencoder, DataSource::Digits, None),
            (TaskKind::Classifier, DataSource::Digits, None),
            (TaskKind::Classifier, DataSource::Mnist5k, None),
        ]
    );
    assert_eq!(p.seeds, [1, 2, 3]);
    assert_eq!(p.optimizers, [OptimizerKind::Kfac, OptimizerKind::Ekfac]);
    let pairs: Vec<(f64, Option<f64>)> = p.candidates.iter().map(|c| (c.omega, c.lambda)).collect();
    assert_eq!(pairs, [(0.95, Some(150.0)), (0.95, None), (0.9, Some(150.0)), (0.9, None)]);
    // The other knobs are the protocol's, whatever the defaults become.
    for c in &p.candidates {
        let a = c.adaptive();
        assert_eq!((a.t1, a.t2, a.lambda_min, a.lambda_max, a.gamma, a.reject), (5, 20, 1e-8, 1e8, None, true));
    }
}
