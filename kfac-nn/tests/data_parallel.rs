//! Data-parallel training in one process (`TrainConfig::data_parallel`
//! with kfac-core's `SingleProcess`): the parts' step against the whole
//! batch's, resume, and the refusals. The same runs on several MPI ranks
//! are tested by `tests/mpi.rs` (feature `mpi`).

use std::path::PathBuf;

use kfac::comm::Reduction;
use kfac_nn::backend::Scalar;
use kfac_nn::checkpoint;
use kfac_nn::distributed::DataParallel;
use kfac_nn::loss::FisherMode;
use kfac_nn::optim::{AdaptiveConfig, OptimizerConfig, OptimizerKind, OptimizerState};
use kfac_nn::train::{self, Metrics, RunOptions, Task, TaskKind, TrainConfig};

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kfac-dp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn classifier(kind: OptimizerKind, steps: usize, parts: Option<usize>) -> (TrainConfig, Task) {
    let mut config = TrainConfig::new(TaskKind::Classifier, OptimizerConfig::defaults(kind));
    config.steps = steps;
    config.batch_size = 64;
    config.eval_every = 5;
    config.data_parallel = parts.map(|p| DataParallel::new(p, Reduction::Ordered));
    let task = Task::load(config.task, &config.data, config.seed).unwrap();
    (config, task)
}

fn run<T: Scalar>(config: &TrainConfig, task: &Task, options: &RunOptions) -> kfac_nn::Result<Metrics> {
    train::train_with::<T>(config, task, options, &mut |_| {})
}

fn bits(m: &Metrics) -> Vec<u64> {
    m.steps.iter().map(|s| s.loss.to_bits()).collect()
}

fn empirical(config: &mut TrainConfig) {
    config.optimizer.kfac_mut().unwrap().curvature.fisher = FisherMode::Empirical;
}

/// One part holding the whole batch is the one-process step itself, bit
/// for bit, when nothing is sampled (the empirical Fisher): kfac-core takes
/// a single part's values as they are.
fn one_part_is_the_whole_batch<T: Scalar>(kind: OptimizerKind, adaptive: bool) {
    let (mut whole, task) = classifier(kind, 12, None);
    empirical(&mut whole);
    if adaptive {
        let k = whole.optimizer.kfac_mut().unwrap();
        *k = k.clone().with_adaptive(AdaptiveConfig::default());
    }
    let one = TrainConfig { data_parallel: Some(DataParallel::new(1, Reduction::Ordered)), ..whole.clone() };
    let a = run::<T>(&whole, &task, &RunOptions::default()).unwrap();
    let b = run::<T>(&one, &task, &RunOptions::default()).unwrap();
    assert_eq!(bits(&a), bits(&b), "{} adaptive={adaptive}", kind.name());
    assert_eq!(a.final_loss.to_bits(), b.final_loss.to_bits());
    assert_eq!(a.test, b.test);
}

#[test]
fn one_part_is_the_whole_batch_for_kfac_and_ekfac() {
    for kind in [OptimizerKind::Kfac, OptimizerKind::Ekfac] {
        for adaptive in [false, true] {
            one_part_is_the_whole_batch::<f32>(kind, adaptive);
            one_part_is_the_whole_batch::<f64>(kind, adaptive);
        }
    }
}

/// Three unequal parts (21, 21 and 22 of a batch of 64) against the whole
/// batch, empirical Fisher on every example, f64, one step: the same factors up to the order
/// of the sums. Each entry of a factor is a sum of at most 64 products of
/// entries of size one, so it may move by $64\,\varepsilon$ relative to the
/// largest entry; we allow $4\cdot 64\,\varepsilon$.
#[test]
fn unequal_parts_give_the_factors_of_the_whole_batch() {
    let (mut whole, task) = classifier(OptimizerKind::Kfac, 1, None);
    empirical(&mut whole);
    // Statistics on every example: each part's first ⌈τ n_p⌉ examples are
    // not the batch's first ⌈τ N⌉ when τ < 1.
    whole.optimizer.kfac_mut().unwrap().curvature.stats_fraction = 1.0;
    let parts = TrainConfig { data_parallel: Some(DataParallel::new(3, Reduction::Sum)), ..whole.clone() };
    let dir = tempdir("unequal");
    let (pa, pb) = (dir.join("whole.safetensors"), dir.join("parts.safetensors"));
    run::<f64>(&whole, &task, &RunOptions { save: Some(pa.clone()), ..Default::default() }).unwrap();
    run::<f64>(&parts, &task, &RunOptions { save: Some(pb.clone()), ..Default::default() }).unwrap();
    let (a, b) = (checkpoint::load::<f64>(&pa).unwrap(), checkpoint::load::<f64>(&pb).unwrap());
    let (fa, fb) = (factors(&a.optimizer), factors(&b.optimizer));
    assert_eq!(fa.len(), 2 * 3, "A and B of each of the three layers");
    let tol = 4.0 * 64.0 * f64::EPSILON;
    for (x, y) in fa.iter().zip(&fb) {
        let scale = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = x.iter().zip(y).fold(0.0f64, |m, (u, v)| m.max((u - v).abs()));
        assert!(diff <= tol * scale, "factor differs by {diff:e} (scale {scale:e})");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The Kronecker factors `A` and `B` of every block of a K-FAC state.
fn factors(state: &OptimizerState<f64>) -> Vec<Vec<f64>> {
    let OptimizerState::Kfac(k) = state else { panic!("not a K-FAC state") };
    let mut out = Vec::new();
    for block in &k.preconditioner.blocks {
        for name in ["A", "B"] {
            out.push(block.tensors[name].iter().copied().collect());
        }
    }
    out
}

/// A data-parallel run saved at step 10 and resumed gives the uninterrupted
/// run's losses, bit for bit (true Fisher: the parts' generators are a
/// function of the step).
#[test]
fn a_data_parallel_run_resumes_bit_for_bit() {
    for kind in [OptimizerKind::Kfac, OptimizerKind::Ekfac] {
        let (config, task) = classifier(kind, 20, Some(4));
        let dir = tempdir(&format!("resume-{}", kind.name()));
        let path = dir.join("ck.safetensors");
        let whole = run::<f32>(&config, &task, &RunOptions::default()).unwrap();
        let half = TrainConfig { steps: 10, ..config.clone() };
        run::<f32>(&half, &task, &RunOptions { save: Some(path.clone()), ..Default::default() }).unwrap();
        let resumed = run::<f32>(&config, &task, &RunOptions { resume: Some(path), ..Default::default() }).unwrap();
        assert_eq!(bits(&resumed), bits(&whole), "{}", kind.name());
        assert_eq!(resumed.test, whole.test);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A checkpoint resumes only with the parts and reduction it was saved
/// with (the run would differ otherwise), and the error says which.
#[test]
fn resume_refuses_other_parts() {
    let (config, task) = classifier(OptimizerKind::Kfac, 4, Some(4));
    let dir = tempdir("other-parts");
    let path = dir.join("ck.safetensors");
    run::<f32>(&config, &task, &RunOptions { save: Some(path.clone()), ..Default::default() }).unwrap();
    let resume = RunOptions { resume: Some(path), ..Default::default() };
    for other in [Some(DataParallel::new(2, Reduction::Ordered)), Some(DataParallel::new(4, Reduction::Sum)), None] {
        let asked = TrainConfig { steps: 8, data_parallel: other, ..config.clone() };
        let err = run::<f32>(&asked, &task, &resume).unwrap_err().to_string();
        assert!(err.contains("data_parallel"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sgd_and_adam_refuse_parts_and_bad_parts_are_refused() {
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
        let (config, task) = classifier(kind, 2, Some(2));
        let err = run::<f32>(&config, &task, &RunOptions::default()).unwrap_err().to_string();
        assert!(err.contains("kfac and ekfac"), "{err}");
    }
    for parts in [0, 65] {
        let (config, task) = classifier(OptimizerKind::Kfac, 2, Some(parts));
        let err = run::<f32>(&config, &task, &RunOptions::default()).unwrap_err().to_string();
        assert!(err.contains("parts") && err.contains("1..=64"), "{err}");
    }
}

/// Parts are computed alike on every thread count: 1 and 2 threads give
/// the same data-parallel run, bit for bit.
#[test]
fn a_data_parallel_run_does_not_depend_on_the_thread_count() {
    let (config, task) = classifier(OptimizerKind::Ekfac, 10, Some(3));
    let with = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| run::<f32>(&config, &task, &RunOptions::default()).unwrap())
    };
    assert_eq!(bits(&with(1)), bits(&with(2)));
}
