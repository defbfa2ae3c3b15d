//! What the library refuses (issue 22): Adam's non-finite updates, and
//! checkpoints edited to hold impossible values.

use std::path::PathBuf;

use kfac_nn::Error;
use kfac_nn::checkpoint::{self, Checkpoint};
use kfac_nn::optim::{
    AdamConfig, AdaptiveConfig, NonFinitePolicy, Optimizer, OptimizerConfig, OptimizerKind, OptimizerState, UpdateRule,
};
use kfac_nn::rng::Rng;
use kfac_nn::train::{self, RunOptions, Task, TaskKind, TrainConfig};

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kfac-guards-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Finding 2: Adam wrote non-finite weights and moments, unreported (it
/// lacked the finiteness and overflow checks of the other optimizers), and
/// with `error` said "nothing was changed" after the weights were changed.
/// With a learning rate of 3e38 (finite in f32) its first steps overflow;
/// now every step either writes finite weights and moments or changes
/// nothing.
#[test]
fn adam_never_writes_a_non_finite_weight_or_moment() {
    let config = TrainConfig::new(TaskKind::Classifier, OptimizerConfig::defaults(OptimizerKind::Adam));
    let task = Task::load(config.task, &config.data, config.seed).unwrap();
    let la = <f32 as kfac_nn::backend::Scalar>::backend(config.backend, true).unwrap();
    for policy in [NonFinitePolicy::Skip, NonFinitePolicy::Error] {
        let mut mlp = task.network::<f32>(0, None).unwrap();
        let cfg = OptimizerConfig::Adam(AdamConfig { lr: 3e38, on_non_finite: policy, ..AdamConfig::default() });
        let mut opt = Optimizer::<f32>::new(cfg, &mlp).unwrap();
        let mut rng = Rng::new(1);
        let mut refused = 0;
        for step in 0..8 {
            let idx: Vec<usize> = (step * 32..(step + 1) * 32).collect();
            let (x, t) = task.batch::<f32>(&task.train, &idx);
            let before: Vec<_> = mlp.layers.iter().map(|l| l.w.clone()).collect();
            let state = opt.state();
            let r = opt.step(&*la, &mut mlp, x.view(), t.view(), task.loss, &mut rng);
            let unchanged = match (&r, policy) {
                (Ok(rep), NonFinitePolicy::Skip) => rep.skipped.is_some(),
                (Err(Error::NonFinite { .. }), NonFinitePolicy::Error) => true,
                (Ok(_), _) => false,
                (Err(e), _) => panic!("{e}"),
            };
            if unchanged {
                refused += 1;
                for (l, w) in mlp.layers.iter().zip(&before) {
                    assert_eq!(&l.w, w, "step {step}: a refused step changed the weights");
                }
                let (OptimizerState::Adam { m, v, t, .. }, OptimizerState::Adam { m: m0, v: v0, t: t0, .. }) =
                    (opt.state(), state)
                else {
                    panic!("not Adam's state")
                };
                assert_eq!((m, v), (m0, v0), "step {step}: a refused step changed the moments");
                assert_eq!(t, t0, "step {step}: a refused step counted");
            }
            assert!(mlp.layers.iter().all(|l| l.w.iter().all(|v| v.is_finite())), "step {step}: weights");
            let OptimizerState::Adam { m, v, .. } = opt.state() else { panic!("not Adam's state") };
            for (name, arrays) in [("m", m), ("v", v)] {
                assert!(arrays.iter().all(|a| a.iter().all(|v| v.is_finite())), "step {step}: {name}");
            }
        }
        assert!(refused >= 1, "{policy:?}: no step was refused");
    }
}

/// A saved run to edit: EKFAC (or `kind`) on the digits, 6 steps, with the
/// values the edits start from.
fn saved(kind: OptimizerKind, name: &str) -> (TrainConfig, Task, PathBuf, Checkpoint<f32>) {
    let mut config = TrainConfig::new(TaskKind::Classifier, OptimizerConfig::defaults(kind));
    config.steps = 6;
    config.batch_size = 64;
    config.eval_every = 3;
    let task = Task::load(config.task, &config.data, config.seed).unwrap();
    let path = tempdir(name).join("ck.safetensors");
    let opts = RunOptions { save: Some(path.clone()), ..Default::default() };
    train::train_with::<f32>(&config, &task, &opts, &mut |_| {}).unwrap();
    let ck = checkpoint::load::<f32>(&path).unwrap();
    (config, task, path, ck)
}

/// Writes `ck` (the checksum is computed anew, as an editor would) and
/// resumes from it for 10 steps; the error's text, or `None` if it resumed.
fn resume_edited(config: &TrainConfig, task: &Task, path: &PathBuf, ck: &Checkpoint<f32>) -> Option<String> {
    let mut mlp = task.network::<f32>(config.seed, None).unwrap();
    for (layer, w) in mlp.layers.iter_mut().zip(&ck.weights) {
        layer.w = w.clone();
    }
    let mut run = ck.run.clone();
    run.optimizer = ck.optimizer.clone();
    let bytes = checkpoint::encode(&run, &mlp).unwrap();
    std::fs::write(path, bytes).unwrap();
    let longer = TrainConfig { steps: 10, ..config.clone() };
    let opts = RunOptions { resume: Some(path.clone()), ..Default::default() };
    train::train_with::<f32>(&longer, task, &opts, &mut |_| {}).err().map(|e| e.to_string())
}

type Edit = Box<dyn Fn(&mut Checkpoint<f32>)>;

/// The K-FAC state of a checkpoint, to edit.
fn kfac_state(c: &mut Checkpoint<f32>) -> &mut kfac::KfacState<f32> {
    match &mut c.optimizer {
        OptimizerState::Kfac(k) => k,
        _ => panic!("not a K-FAC checkpoint"),
    }
}

/// Finding 15: a checkpoint edited to hold impossible values (with its
/// checksum recomputed) was accepted. Each edit below must be refused, with
/// a checkpoint error.
#[test]
fn checkpoints_with_impossible_values_are_refused() {
    let (config, task, path, good) = saved(OptimizerKind::Ekfac, "impossible");
    assert_eq!(resume_edited(&config, &task, &path, &good), None, "the unedited checkpoint");
    let edits: Vec<(&str, Edit)> = vec![
        (
            "step 0",
            Box::new(|c| {
                c.run.step = 0;
                c.run.steps.clear();
                c.run.test.clear();
            }),
        ),
        ("negative seconds", Box::new(|c| c.run.seconds = -1.0)),
        ("NaN seconds", Box::new(|c| c.run.seconds = f64::NAN)),
        ("records out of order", Box::new(|c| c.run.steps.swap(1, 2))),
        ("a record's step", Box::new(|c| c.run.steps[3].step = 40)),
        ("a record's seconds", Box::new(|c| c.run.steps[2].seconds = -5.0)),
        ("a test record after the step", Box::new(|c| c.run.test[0].step = 99)),
        ("a test accuracy above 1", Box::new(|c| c.run.test[0].accuracy = Some(1.5))),
        ("data order epoch", Box::new(|c| c.run.batches.epoch = 1 << 40)),
        ("data order position", Box::new(|c| c.run.batches.position = 3)),
        ("data order generator", Box::new(|c| c.run.batches.rng_state ^= 1)),
        ("skipped steps above the step", Box::new(|c| kfac_state(c).skipped_steps = 7)),
        ("preconditioner step above the step", Box::new(|c| kfac_state(c).preconditioner.step = 1 << 50)),
        ("a kl scale above 1", Box::new(|c| c.run.steps[1].kl_scale = Some(7.0))),
    ];
    let mut accepted = Vec::new();
    for (what, edit) in edits {
        let mut ck = good.clone();
        edit(&mut ck);
        match resume_edited(&config, &task, &path, &ck) {
            None => accepted.push(what),
            Some(e) => assert!(e.contains("checkpoint"), "{what}: {e}"),
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Finding 15: Adam's moments and counter, and the adaptive machinery's
/// state, edited to impossible values.
#[test]
fn optimizer_states_with_impossible_values_are_refused() {
    let (config, task, path, good) = saved(OptimizerKind::Adam, "impossible-adam");
    assert_eq!(resume_edited(&config, &task, &path, &good), None);
    let edits: Vec<(&str, Edit)> = vec![
        (
            "a negative second moment",
            Box::new(|c| {
                if let OptimizerState::Adam { v, .. } = &mut c.optimizer {
                    v[0][[0, 0]] = -1.0;
                }
            }),
        ),
        (
            "Adam's counter above the step",
            Box::new(|c| {
                if let OptimizerState::Adam { t, .. } = &mut c.optimizer {
                    *t = 1000;
                }
            }),
        ),
    ];
    let mut accepted = Vec::new();
    for (what, edit) in edits {
        let mut ck = good.clone();
        edit(&mut ck);
        if resume_edited(&config, &task, &path, &ck).is_none() {
            accepted.push(what);
        }
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    let (config, task, path, good) = {
        let mut c = TrainConfig::new(TaskKind::Classifier, OptimizerConfig::defaults(OptimizerKind::Kfac));
        c.optimizer.kfac_mut().unwrap().rule =
            UpdateRule::Adaptive(AdaptiveConfig { lambda: Some(1.0), ..Default::default() });
        c.steps = 6;
        c.batch_size = 64;
        let task = Task::load(c.task, &c.data, c.seed).unwrap();
        let path = tempdir("impossible-adaptive").join("ck.safetensors");
        let opts = RunOptions { save: Some(path.clone()), ..Default::default() };
        train::train_with::<f32>(&c, &task, &opts, &mut |_| {}).unwrap();
        let ck = checkpoint::load::<f32>(&path).unwrap();
        (c, task, path, ck)
    };
    assert_eq!(resume_edited(&config, &task, &path, &good), None);
    let edits: Vec<(&str, Edit)> = vec![
        ("adaptive steps above the step", Box::new(|c| kfac_state(c).adaptive.as_mut().unwrap().steps = 1 << 40)),
        ("lambda above its bound", Box::new(|c| kfac_state(c).adaptive.as_mut().unwrap().lambda = 1e300)),
    ];
    for (what, edit) in edits {
        let mut ck = good.clone();
        edit(&mut ck);
        if resume_edited(&config, &task, &path, &ck).is_none() {
            accepted.push(what);
        }
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}

/// Finding 6: a checkpoint declaring an absurd data-order size was used
/// (a permutation of that size allocated) before it was checked against the
/// data: a capacity-overflow panic, or an abort.
#[test]
fn an_absurd_data_order_is_checked_before_it_is_used() {
    let (config, task, path, good) = saved(OptimizerKind::Sgd, "absurd-order");
    let mut ck = good.clone();
    ck.run.batches.n = usize::MAX / 2;
    let e = resume_edited(&config, &task, &path, &ck).expect("accepted");
    assert!(e.contains("data order"), "{e}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
