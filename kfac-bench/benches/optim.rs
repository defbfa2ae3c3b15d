//! One step of each optimizer on the reference autoencoder
//! (784-1000-500-250-30-250-500-1000-784, batch 1000, f32, faer on all
//! cores), grouped as `step/<optimizer>-faer` (`kfac-tridiagonal`: K-FAC with
//! the block-tridiagonal structure; `-adaptive`: Martens & Grosse's step
//! size, momentum and damping with our defaults, rejected steps included;
//! `-fd`: the same with the quadratic forms from kfac-core's
//! finite-difference fallback instead of exact forward-mode products;
//! `-noreject`: the same without rejection; `-paper`: the paper's rule and
//! values, without rejection). K-FAC and EKFAC keep their
//! state across iterations, so their refreshes (every 20 steps) are part of
//! the measured mean; the race (`kfac-bench race`) reports the same ratio
//! amortised over a whole run.
//!
//! `cnn-step/<optimizer>`: one step of each optimizer on the CNN task
//! (conv 5×5 ×16, max pool, conv 5×5 ×32, max pool, dense 10; batch 256 of
//! the embedded MNIST subset, f32, faer, the optimizers' defaults, K-FAC's
//! convolutions by KFC; `kfac-reduce`: K-FAC with the convolutions by
//! K-FAC-reduce).
//!
//! Run: `cargo bench -p kfac-bench --bench optim`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::optim::{
    AdaptiveConfig, CurvatureProducts, Optimizer, OptimizerConfig, OptimizerKind, Sharing, Structure, UpdateRule,
};
use kfac_nn::rng::Rng;
use kfac_nn::train::{Task, TaskKind};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn step(c: &mut Criterion) {
    let task = Task::load(TaskKind::Autoencoder, &kfac_nn::train::DataSource::Mnist5k, 0).unwrap();
    let idx: Vec<usize> = (0..1000).collect();
    let (x, t) = task.batch::<f32>(&task.train, &idx);
    let la = f32::backend(Backend::Faer, true).unwrap();
    let mut g = c.benchmark_group("step");
    g.sample_size(20);
    let kfac = |kind, edit: &dyn Fn(&mut kfac_nn::optim::KfacConfig)| {
        let mut o = OptimizerConfig::defaults(kind);
        edit(o.kfac_mut().unwrap());
        o
    };
    let adaptive = |kind, a: AdaptiveConfig| kfac(kind, &|k| k.rule = UpdateRule::Adaptive(a.clone()));
    let (exact, fd) = (CurvatureProducts::Exact, CurvatureProducts::FiniteDifferences);
    for (name, config, products) in [
        ("sgd", OptimizerConfig::defaults(OptimizerKind::Sgd), exact),
        ("adam", OptimizerConfig::defaults(OptimizerKind::Adam), exact),
        ("kfac", OptimizerConfig::defaults(OptimizerKind::Kfac), exact),
        ("kfac-tridiagonal", kfac(OptimizerKind::Kfac, &|k| k.curvature.structure = Structure::Tridiagonal), exact),
        ("ekfac", OptimizerConfig::defaults(OptimizerKind::Ekfac), exact),
        ("kfac-adaptive", adaptive(OptimizerKind::Kfac, AdaptiveConfig::default()), exact),
        ("ekfac-adaptive", adaptive(OptimizerKind::Ekfac, AdaptiveConfig::default()), exact),
        ("kfac-adaptive-fd", adaptive(OptimizerKind::Kfac, AdaptiveConfig::default()), fd),
        ("ekfac-adaptive-fd", adaptive(OptimizerKind::Ekfac, AdaptiveConfig::default()), fd),
        (
            "kfac-adaptive-noreject",
            adaptive(OptimizerKind::Kfac, AdaptiveConfig { reject: false, ..AdaptiveConfig::default() }),
            exact,
        ),
        ("kfac-adaptive-paper", adaptive(OptimizerKind::Kfac, AdaptiveConfig::paper()), exact),
    ] {
        let mut mlp = task.network::<f32>(0, None).unwrap();
        let mut opt = Optimizer::with_products(config, &mlp, products).unwrap();
        let mut rng = Rng::new(0);
        g.bench_function(BenchmarkId::new(format!("{name}-faer"), "ae-1000"), |b| {
            b.iter(|| black_box(opt.step(&*la, &mut mlp, x.view(), t.view(), task.loss, &mut rng).unwrap()))
        });
    }
    g.finish();
}

fn cnn_step(c: &mut Criterion) {
    let task = Task::load(TaskKind::Cnn, &kfac_nn::train::DataSource::Mnist5k, 0).unwrap();
    let idx: Vec<usize> = (0..256).collect();
    let (x, t) = task.batch::<f32>(&task.train, &idx);
    let la = f32::backend(Backend::Faer, true).unwrap();
    let mut g = c.benchmark_group("cnn-step");
    g.sample_size(20);
    let adaptive = |kind| {
        let mut o = OptimizerConfig::defaults(kind);
        o.kfac_mut().unwrap().rule = UpdateRule::Adaptive(AdaptiveConfig::default());
        o
    };
    let (expand, reduce) = (Sharing::Expand, Sharing::Reduce);
    for (name, config, sharing) in [
        ("sgd", OptimizerConfig::defaults(OptimizerKind::Sgd), expand),
        ("adam", OptimizerConfig::defaults(OptimizerKind::Adam), expand),
        ("kfac", OptimizerConfig::defaults(OptimizerKind::Kfac), expand),
        ("kfac-reduce", OptimizerConfig::defaults(OptimizerKind::Kfac), reduce),
        ("ekfac", OptimizerConfig::defaults(OptimizerKind::Ekfac), expand),
        ("kfac-adaptive", adaptive(OptimizerKind::Kfac), expand),
        ("ekfac-adaptive", adaptive(OptimizerKind::Ekfac), expand),
    ] {
        let mut mlp = task.network::<f32>(0, None).unwrap();
        let mut opt = Optimizer::new(config, &mlp).unwrap().with_sharing(sharing);
        let mut rng = Rng::new(0);
        g.bench_function(BenchmarkId::new(name, "cnn-256"), |b| {
            b.iter(|| black_box(opt.step(&*la, &mut mlp, x.view(), t.view(), task.loss, &mut rng).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, step, cnn_step);
criterion_main!(benches);
