//! Checkpoints (save, resume bit for bit, damaged files refused), the
//! non-finite safeguards of the optimizers, and determinism across thread
//! counts.

use std::path::{Path, PathBuf};

use kfac_nn::Error;
use kfac_nn::backend::Scalar;
use kfac_nn::checkpoint;
use kfac_nn::optim::{
    AdaptiveConfig, CurvatureConfig, NonFinitePolicy, Optimizer, OptimizerConfig, OptimizerKind, OptimizerState,
    Structure, UpdateRule,
};
use kfac_nn::rng::Rng;
use kfac_nn::train::{self, Metrics, RunOptions, Task, TaskKind, TrainConfig};
use proptest::prelude::*;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kfac-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn classifier(kind: OptimizerKind, steps: usize) -> (TrainConfig, Task) {
    let mut config = TrainConfig::new(TaskKind::Classifier, OptimizerConfig::defaults(kind));
    config.steps = steps;
    config.batch_size = 64;
    config.eval_every = 7;
    let task = Task::load(config.task, &config.data, config.seed).unwrap();
    (config, task)
}

fn bits(m: &Metrics) -> Vec<u64> {
    m.steps.iter().map(|s| s.loss.to_bits()).collect()
}

fn run<T: Scalar>(config: &TrainConfig, task: &Task, options: &RunOptions) -> kfac_nn::Result<Metrics> {
    train::train_with::<T>(config, task, options, &mut |_| {})
}

/// Save at step 50 of 100, resume, and compare every loss bit for bit with
/// the uninterrupted run: every optimizer, both precisions.
fn resume_matches<T: Scalar>(kind: OptimizerKind, tikhonov_kfac: bool) {
    let (mut config, task) = classifier(kind, 100);
    if tikhonov_kfac {
        config.optimizer.kfac_mut().unwrap().curvature = CurvatureConfig::kfac_eigen();
    }
    let dir = tempdir(&format!("{}-{}-{tikhonov_kfac}", kind.name(), std::mem::size_of::<T>()));
    let whole = run::<T>(&config, &task, &RunOptions::default()).unwrap();
    let path = dir.join("ck.safetensors");
    let half = TrainConfig { steps: 50, ..config.clone() };
    run::<T>(&half, &task, &RunOptions { save: Some(path.clone()), ..Default::default() }).unwrap();
    let resumed = run::<T>(&config, &task, &RunOptions { resume: Some(path.clone()), ..Default::default() }).unwrap();
    assert_eq!(bits(&resumed), bits(&whole), "{}", kind.name());
    assert_eq!(resumed.final_loss.to_bits(), whole.final_loss.to_bits());
    assert_eq!(resumed.test, whole.test);
    assert_eq!(resumed.health, whole.health);
    assert_eq!(resumed.resumed_from, Some(50));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_is_bit_for_bit_f32() {
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adam, OptimizerKind::Kfac, OptimizerKind::Ekfac] {
        resume_matches::<f32>(kind, false);
    }
    resume_matches::<f32>(OptimizerKind::Kfac, true);
}

/// Block-tridiagonal K-FAC (cross factors and the chain's cache), with fixed
/// and adaptive hyperparameters, resumes bit for bit.
#[test]
fn tridiagonal_runs_resume_bit_for_bit() {
    for adaptive in [false, true] {
        let (mut config, task) = classifier(OptimizerKind::Kfac, 60);
        let k = config.optimizer.kfac_mut().unwrap();
        k.curvature.structure = Structure::Tridiagonal;
        k.curvature.refresh_period = 7;
        if adaptive {
            k.rule = UpdateRule::Adaptive(AdaptiveConfig { lambda: Some(1.0), t2: 10, ..Default::default() });
        }
        let dir = tempdir(&format!("tridiagonal-{adaptive}"));
        let whole = run::<f32>(&config, &task, &RunOptions::default()).unwrap();
        let path = dir.join("ck.safetensors");
        let half = TrainConfig { steps: 25, ..config.clone() };
        run::<f32>(&half, &task, &RunOptions { save: Some(path.clone()), ..Default::default() }).unwrap();
        let resumed = run::<f32>(&config, &task, &RunOptions { resume: Some(path), ..Default::default() }).unwrap();
        assert_eq!(bits(&resumed), bits(&whole), "adaptive {adaptive}");
        assert_eq!(resumed.health, whole.health);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The adaptive machinery (λ, γ, the previous update) is saved too, with a
/// configured λ₀ and with λ₀ = tr(F)/P set at the first step (not set again
/// on resume).
#[test]
fn adaptive_runs_resume_bit_for_bit() {
    for (kind, lambda) in
        [(OptimizerKind::Kfac, Some(1.0)), (OptimizerKind::Ekfac, Some(1.0)), (OptimizerKind::Kfac, None)]
    {
        let (mut config, task) = classifier(kind, 60);
        config.optimizer.kfac_mut().unwrap().rule =
            UpdateRule::Adaptive(AdaptiveConfig { lambda, t2: 10, ..Default::default() });
        let dir = tempdir(&format!("adaptive-{}-{}", kind.name(), lambda.is_some()));
        let whole = run::<f32>(&config, &task, &RunOptions::default()).unwrap();
        let path = dir.join("ck.safetensors");
        let half = TrainConfig { steps: 25, ..config.clone() };
        run::<f32>(&half, &task, &RunOptions { save: Some(path.clone()), ..Default::default() }).unwrap();
        let resumed = run::<f32>(&config, &task, &RunOptions { resume: Some(path), ..Default::default() }).unwrap();
        assert_eq!(bits(&resumed), bits(&whole), "{}", kind.name());
        assert_eq!(resumed.steps.last().unwrap().adaptive, whole.steps.last().unwrap().adaptive);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn resume_is_bit_for_bit_f64() {
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adam, OptimizerKind::Kfac, OptimizerKind::Ekfac] {
        resume_matches::<f64>(kind, false);
    }
}

/// Periodic saves: the checkpoint after the last step replaces the one of
/// step 20, and resuming from the final one adds nothing.
#[test]
fn periodic_saves_and_resume_from_the_end() {
    let (config, task) = classifier(OptimizerKind::Ekfac, 30);
    let dir = tempdir("periodic");
    let path = dir.join("ck.safetensors");
    let opts = RunOptions { save: Some(path.clone()), save_every: Some(20), resume: None };
    let whole = run::<f32>(&config, &task, &opts).unwrap();
    let ck = checkpoint::load::<f32>(&path).unwrap();
    assert_eq!(ck.run.step, 30);
    let again = run::<f32>(&config, &task, &RunOptions { resume: Some(path.clone()), ..Default::default() }).unwrap();
    assert_eq!(bits(&again), bits(&whole));
    assert_eq!(again.final_loss.to_bits(), whole.final_loss.to_bits());
    assert_eq!(again.test, whole.test);
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, vec!["ck.safetensors".to_string()], "temporary files left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn small_checkpoint(name: &str) -> (Vec<u8>, PathBuf) {
    let (config, task) = classifier(OptimizerKind::Ekfac, 3);
    let dir = tempdir(name);
    let path = dir.join("ck.safetensors");
    run::<f32>(&config, &task, &RunOptions { save: Some(path.clone()), ..Default::default() }).unwrap();
    (std::fs::read(&path).unwrap(), path)
}

fn reason(e: Error) -> String {
    match e {
        Error::Checkpoint { reason, .. } => reason,
        e => panic!("not a checkpoint error: {e}"),
    }
}

/// The weights are plain safetensors that other tools can read.
#[test]
fn weights_are_readable_safetensors() {
    let (bytes, path) = small_checkpoint("readable");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w = st.tensor("model.layer0.weight").unwrap();
    assert_eq!(w.shape(), &[128, 64]);
    assert_eq!(w.dtype(), safetensors::Dtype::F32);
    assert_eq!(st.tensor("model.layer2.bias").unwrap().shape(), &[10]);
    let ck = checkpoint::decode::<f32>(&bytes, &path).unwrap();
    assert_eq!(ck.weights[0][[3, 5]].to_le_bytes(), w.data()[4 * (3 * 64 + 5)..4 * (3 * 64 + 6)]);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Wrong precision, version, format or architecture: a clear error, and the
/// file on disk is left as it was.
#[test]
fn foreign_checkpoints_are_refused() {
    let (bytes, path) = small_checkpoint("foreign");
    assert!(reason(checkpoint::decode::<f64>(&bytes, &path).unwrap_err()).contains("saved in f32"));
    let (config, task) = classifier(OptimizerKind::Ekfac, 10);
    for (what, change) in [
        (
            "optimizer.kind",
            Box::new(|c: &mut TrainConfig| c.optimizer = OptimizerConfig::defaults(OptimizerKind::Adam))
                as Box<dyn Fn(&mut TrainConfig)>,
        ),
        (
            "optimizer.curvature.block",
            Box::new(|c: &mut TrainConfig| c.optimizer = OptimizerConfig::defaults(OptimizerKind::Kfac)),
        ),
        (
            "optimizer.rule.fixed.lr",
            Box::new(|c: &mut TrainConfig| {
                if let Some(UpdateRule::Fixed(f)) = c.optimizer.kfac_mut().map(|k| &mut k.rule) {
                    f.lr = 0.5;
                }
            }),
        ),
        ("batch_size", Box::new(|c: &mut TrainConfig| c.batch_size = 32)),
        ("seed", Box::new(|c: &mut TrainConfig| c.seed = 3)),
    ] {
        let mut other = config.clone();
        change(&mut other);
        let e =
            run::<f32>(&other, &task, &RunOptions { resume: Some(path.clone()), ..Default::default() }).unwrap_err();
        let r = reason(e);
        assert!(r.contains(what), "{what}: {r}");
    }
    let fewer = TrainConfig { steps: 2, ..config.clone() };
    assert!(
        reason(
            run::<f32>(&fewer, &task, &RunOptions { resume: Some(path.clone()), ..Default::default() }).unwrap_err()
        )
        .contains("after step 3")
    );
    // Another network with the same configuration name: the MNIST classifier.
    let mnist = Task::load(TaskKind::Classifier, &kfac_nn::train::DataSource::Mnist5k, 0).unwrap();
    let mut cm = config.clone();
    cm.data = kfac_nn::train::DataSource::Mnist5k;
    let r =
        reason(run::<f32>(&cm, &mnist, &RunOptions { resume: Some(path.clone()), ..Default::default() }).unwrap_err());
    assert!(r.contains("data"), "{r}");
    // Version and format: rewrite the header entries (same lengths), fix the checksum.
    for (from, to, expect) in [
        ("\"version\":\"2\"", "\"version\":\"9\"", "version 9"),
        // Version 1 lacked the layout of the optimizer state and the data's fingerprint: refused, saying why.
        ("\"version\":\"2\"", "\"version\":\"1\"", "lays out the optimizer's state as kfac-core does"),
        ("\"version\":\"2\"", "\"version\":\"1\"", "SHA-256"),
        ("kfac-checkpoint", "kfac-checkpoinx", "format"),
    ] {
        let mut b = bytes.clone();
        let at = b.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
        b[at..at + to.len()].copy_from_slice(to.as_bytes());
        let b = refresh_checksum(b);
        let r = reason(checkpoint::decode::<f32>(&b, &path).unwrap_err());
        assert!(r.contains(expect), "{r}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "a failed resume changed the file");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Recomputes the checksum of a deliberately edited file.
fn refresh_checksum(mut b: Vec<u8>) -> Vec<u8> {
    use sha2::Digest;
    let key = b"\"sha256\":\"";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    b[at..at + 64].fill(b'0');
    let sum: String = sha2::Sha256::digest(&b).iter().map(|x| format!("{x:02x}")).collect();
    b[at..at + 64].copy_from_slice(sum.as_bytes());
    b
}

/// A save that cannot complete (the target is a directory) fails cleanly
/// and leaves what was there, with no temporary file.
#[test]
fn failed_saves_leave_the_old_file() {
    let (config, task) = classifier(OptimizerKind::Sgd, 3);
    let dir = tempdir("failed-save");
    let target = dir.join("ck");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let e = run::<f32>(&config, &task, &RunOptions { save: Some(target.clone()), ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"x");
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, vec!["ck".to_string()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any truncation is refused with a checkpoint error (never a panic).
    #[test]
    fn truncated_checkpoints_are_refused(cut in 0.0f64..1.0) {
        let (bytes, path) = SMALL.with(|s| s.clone());
        let n = ((bytes.len() as f64) * cut) as usize;
        prop_assert!(n < bytes.len());
        let e = checkpoint::decode::<f32>(&bytes[..n], &path).unwrap_err();
        prop_assert!(matches!(e, Error::Checkpoint { .. }), "{}", e);
    }

    /// Any changed byte, anywhere, is refused.
    #[test]
    fn flipped_bytes_are_refused(at in 0.0f64..1.0, mask in 1u8..=255, extra in proptest::option::of((0.0f64..1.0, 1u8..=255))) {
        let (bytes, path) = SMALL.with(|s| s.clone());
        let mut b = bytes.clone();
        let i = ((b.len() as f64) * at) as usize;
        b[i] ^= mask;
        if let Some((at2, mask2)) = extra {
            let j = ((b.len() as f64) * at2) as usize;
            b[j] ^= mask2;
        }
        prop_assume!(b != bytes);
        let e = checkpoint::decode::<f32>(&b, &path).unwrap_err();
        prop_assert!(matches!(e, Error::Checkpoint { .. }), "{}", e);
    }

    /// Arbitrary bytes (a safetensors-looking prefix followed by noise) are
    /// refused without allocating from the claimed sizes.
    #[test]
    fn arbitrary_bytes_are_refused(header in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut b = header.to_le_bytes().to_vec();
        b.extend(body);
        let e = checkpoint::decode::<f32>(&b, Path::new("junk")).unwrap_err();
        prop_assert!(matches!(e, Error::Checkpoint { .. }), "{}", e);
    }
}

thread_local! {
    static SMALL: (Vec<u8>, PathBuf) = small_checkpoint(&format!("fuzz-{:?}", std::thread::current().id()));
}

/// A batch with a NaN: with `skip` nothing changes (weights bit for bit,
/// momentum, statistics) and the skip is reported; with `error` the step is
/// refused. The weights stay finite either way; the next good batch trains.
#[test]
fn nan_batches_are_skipped_or_refused() {
    let (config, task) = classifier(OptimizerKind::Ekfac, 1);
    let la = f32::backend(config.backend, true).unwrap();
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adam, OptimizerKind::Kfac, OptimizerKind::Ekfac] {
        for policy in [NonFinitePolicy::Skip, NonFinitePolicy::Error] {
            let mut mlp = task.network::<f32>(0, None).unwrap();
            let cfg = OptimizerConfig::defaults(kind).with_on_non_finite(policy);
            let mut opt = Optimizer::<f32>::new(cfg, &mlp).unwrap();
            let mut rng = Rng::new(1);
            let idx: Vec<usize> = (0..64).collect();
            let (x, t) = task.batch::<f32>(&task.train, &idx);
            opt.step(&*la, &mut mlp, x.view(), t.view(), task.loss, &mut rng).unwrap();
            let weights: Vec<_> = mlp.layers.iter().map(|l| l.w.clone()).collect();
            let state = opt.state();
            let mut bad = x.clone();
            bad[[5, 7]] = f32::NAN;
            let r = opt.step(&*la, &mut mlp, bad.view(), t.view(), task.loss, &mut rng);
            match policy {
                NonFinitePolicy::Skip => {
                    let r = r.unwrap();
                    assert_eq!(r.skipped, Some("the loss"), "{}", kind.name());
                    assert_eq!(opt.skipped_steps(), 1);
                }
                NonFinitePolicy::Error => assert!(matches!(r, Err(Error::NonFinite { .. })), "{}", kind.name()),
            }
            for (l, w) in mlp.layers.iter().zip(&weights) {
                assert_eq!(&l.w, w, "{}: the weights moved", kind.name());
            }
            // Nothing of the state moved but the skip counter.
            let after = opt.state();
            let skips = |s: &OptimizerState<f32>| match s {
                OptimizerState::Sgd { skipped_steps, .. } | OptimizerState::Adam { skipped_steps, .. } => {
                    *skipped_steps
                }
                OptimizerState::Kfac(k) => k.skipped_steps,
            };
            assert_eq!(skips(&after), skips(&state) + usize::from(policy == NonFinitePolicy::Skip));
            let mut same = after.clone();
            match &mut same {
                OptimizerState::Sgd { skipped_steps, .. } | OptimizerState::Adam { skipped_steps, .. } => {
                    *skipped_steps = skips(&state)
                }
                OptimizerState::Kfac(k) => k.skipped_steps = skips(&state),
            }
            assert_eq!(same, state, "{}: the optimizer's state moved", kind.name());
            opt.step(&*la, &mut mlp, x.view(), t.view(), task.loss, &mut rng).unwrap();
            assert!(mlp.layers.iter().all(|l| l.w.iter().all(|v| v.is_finite())));
        }
    }
}

/// The losses and the final weights are the same on 1 and 2 threads (the
/// reductions have a fixed order), on a network large enough for the
/// backends to run in parallel.
#[test]
fn one_and_two_threads_give_identical_runs() {
    let mut tridiagonal = OptimizerConfig::defaults(OptimizerKind::Kfac);
    tridiagonal.kfac_mut().unwrap().curvature.structure = Structure::Tridiagonal;
    for optimizer in [
        OptimizerConfig::defaults(OptimizerKind::Kfac),
        tridiagonal,
        OptimizerConfig::defaults(OptimizerKind::Ekfac),
        OptimizerConfig::defaults(OptimizerKind::Adam),
    ] {
        let name = optimizer.name();
        let mut config = TrainConfig::new(TaskKind::Classifier, optimizer);
        config.data = kfac_nn::train::DataSource::Mnist5k;
        config.steps = 12;
        config.batch_size = 500;
        config.eval_every = 6;
        let structure = config.optimizer.kfac_mut().map(|k| {
            k.curvature.refresh_period = 5;
            k.curvature.structure
        });
        let task = Task::load(config.task, &config.data, config.seed).unwrap();
        let dir = tempdir(&format!("threads-{name}-{structure:?}"));
        let on = |threads: usize| {
            let path = dir.join(format!("{threads}.safetensors"));
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let opts = RunOptions { save: Some(path.clone()), ..Default::default() };
            let m = pool.install(|| run::<f32>(&config, &task, &opts)).unwrap();
            assert_eq!(m.threads, threads);
            (m, checkpoint::load::<f32>(&path).unwrap())
        };
        let (m1, c1) = on(1);
        let (m2, c2) = on(2);
        assert_eq!(bits(&m1), bits(&m2), "{name}");
        assert_eq!(m1.final_loss.to_bits(), m2.final_loss.to_bits());
        assert_eq!(c1.weights, c2.weights);
        assert_eq!(c1.optimizer, c2.optimizer);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
