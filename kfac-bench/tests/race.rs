//! The race's bookkeeping (smoothing, targets, costs, checks) on synthetic
//! curves, and a small end-to-end race on the 8×8 digits.

use kfac_bench::race::{self, Contestant, RaceConfig, reach, smoothed};
use kfac_nn::optim::{OptimizerConfig, OptimizerKind};
use kfac_nn::train::{Metrics, TaskKind, TrainConfig};

mod common;
use common::curve;

fn metrics(kind: OptimizerKind, losses: &[f64], step_seconds: f64) -> (Contestant, Metrics) {
    let steps = curve(losses, step_seconds);
    let config = TrainConfig::new(TaskKind::Autoencoder, OptimizerConfig::defaults(kind));
    let m = Metrics {
        config: config.clone(),
        threads: 1,
        seconds: steps.last().map_or(0.0, |s| s.seconds),
        steps,
        test: vec![],
        final_loss: *losses.last().unwrap(),
        final_test_loss: f64::NAN,
        parameters: 0,
        skipped_steps: 0,
        health: vec![],
        resumed_from: None,
    };
    (Contestant { name: kind.name().into(), optimizer: config.optimizer }, m)
}

#[test]
fn smoothing_is_a_trailing_mean() {
    let c = curve(&[4.0, 2.0, 6.0, 0.0, 8.0], 1.0);
    assert_eq!(smoothed(&c, 2), vec![4.0, 3.0, 4.0, 3.0, 4.0]);
    assert_eq!(smoothed(&c, 1), vec![4.0, 2.0, 6.0, 0.0, 8.0]);
    assert_eq!(smoothed(&c, 10), vec![4.0, 3.0, 4.0, 3.0, 4.0]);
}

#[test]
fn a_target_is_reached_when_the_trailing_mean_gets_there() {
    let c = curve(&[10.0, 1.0, 9.0, 3.0, 2.0], 0.5);
    // Trailing means of 2: 10, 5.5, 5, 6, 2.5.
    let r = reach(&c, 2, 5.0);
    assert_eq!((r.step, r.seconds), (Some(3), Some(1.5)));
    // A single batch at 1.0 does not count.
    assert_eq!(reach(&c, 2, 1.0).step, None);
}

#[test]
fn costs_and_checks_follow_the_definitions() {
    let config = RaceConfig { steps: 4, window: 1, fixed_targets: vec![], ..RaceConfig::full() };
    let runs = vec![
        metrics(OptimizerKind::Sgd, &[10.0, 9.0, 8.0, 7.0], 1.0),
        metrics(OptimizerKind::Adam, &[10.0, 8.0, 6.0, 4.0], 1.0),
        metrics(OptimizerKind::Kfac, &[10.0, 5.0, 3.0, 2.0], 1.9),
        metrics(OptimizerKind::Ekfac, &[10.0, 4.0, 3.0, 2.0], 2.6),
    ];
    let r = race::assemble(&config, &runs).unwrap();
    let ek = &r.entries[3];
    assert!((ek.cost_vs_sgd - 2.6).abs() < 1e-12);
    // Targets: SGD's final 7, Adam's final 4.
    assert_eq!(ek.reach[0].target, 7.0);
    assert_eq!(ek.reach[1].target, 4.0);
    assert_eq!(ek.reach[1].step, Some(2));
    let c = r.checks;
    assert!((c.kfac_cost - 1.9).abs() < 1e-12 && c.kfac_cost_met);
    assert!((c.ekfac_cost - 2.6).abs() < 1e-12 && !c.ekfac_cost_met);
    assert_eq!(c.adam_final, 4.0);
    assert_eq!(c.adam_seconds, 4.0);
    // EKFAC reaches 4 at step 2, 5.2 s: 1.3 × Adam's 4 s.
    assert!((c.ekfac_seconds_to_adam_final.unwrap() - 5.2).abs() < 1e-12);
    assert!(!c.ekfac_time_met);
    let table = race::table(&r);
    assert_eq!(table.lines().count(), 2 + runs.len());
}

#[test]
fn a_race_without_sgd_or_adam_is_refused() {
    let config = RaceConfig::full();
    let runs = vec![metrics(OptimizerKind::Kfac, &[1.0], 1.0)];
    assert!(race::assemble(&config, &runs).is_err());
}

#[test]
fn a_small_race_runs_end_to_end_and_writes_its_files() {
    let config = RaceConfig {
        task: TaskKind::Classifier,
        steps: 6,
        batch_size: 64,
        refresh_period: 3,
        fixed_targets: vec![1.0],
        ..RaceConfig::full()
    };
    let mut seen = vec![];
    let r = race::run(&config, &mut |name, _| seen.push(name.to_string())).unwrap();
    assert_eq!(
        seen,
        [
            "sgd",
            "adam",
            "kfac",
            "kfac-adaptive",
            "kfac-tridiagonal",
            "kfac-empirical",
            "ekfac",
            "ekfac-adaptive",
            "ekfac-empirical"
        ]
    );
    let names = |c: &RaceConfig| race::contestants(c).into_iter().map(|c| c.name).collect::<Vec<_>>();
    assert_eq!(
        names(&RaceConfig::quick()),
        ["sgd", "adam", "kfac", "kfac-tridiagonal", "kfac-empirical", "ekfac", "ekfac-empirical"]
    );
    for e in &r.entries {
        assert_eq!(e.curve.len(), 6);
        assert!(e.final_loss.is_finite() && e.mean_step_seconds > 0.0);
        assert_eq!(e.reach.len(), 3);
    }
    let dir = std::env::temp_dir().join(format!("kfac-race-test-{}", std::process::id()));
    race::write(&dir, &r).unwrap();
    let back: race::Race = serde_json::from_str(&std::fs::read_to_string(dir.join("race.json")).unwrap()).unwrap();
    assert_eq!(back.entries.len(), 9);
    for (a, b) in back.entries[2].curve.iter().zip(&r.entries[2].curve) {
        assert_eq!(a.step, b.step);
        assert!((a.loss - b.loss).abs() <= 1e-15 * b.loss.abs(), "{a:?} vs {b:?}");
    }
    for f in ["race_steps.png", "race_seconds.png", "race.md"] {
        assert!(std::fs::metadata(dir.join(f)).unwrap().len() > 100, "{f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
