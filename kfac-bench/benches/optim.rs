//! One step of each optimizer on the reference autoencoder
//! (784-1000-500-250-30-250-500-1000-784, batch 1000, f32, faer on all
//! cores), grouped as `step/<optimizer>-faer` (`kfac-tridiagonal`: K-FAC with
//! the block-tridiagonal structure; `-adaptive`: Martens & Grosse's step
//! size, momentum and damping with our defaults, rejected steps included;
//! `-noreject`: the same without rejection; `-paper`: the paper's rule and
//! values, without rejection). K-FAC and EKFAC keep their
//! state across iterations, so their refreshes (every 20 steps) are part of
//! the measured mean; the race (`kfac-bench race`) reports the same ratio
//! amortised over a whole run.
//!
//! Run: `cargo bench -p kfac-bench --bench optim`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::optim::{AdaptiveConfig, BlockStructure, Optimizer, OptimizerConfig, OptimizerKind};
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
    let tridiagonal =
        OptimizerConfig { structure: BlockStructure::Tridiagonal, ..OptimizerConfig::defaults(OptimizerKind::Kfac) };
    let adaptive =
        |kind| OptimizerConfig { adaptive: Some(AdaptiveConfig::default()), ..OptimizerConfig::defaults(kind) };
    for (name, config) in [
        ("sgd", OptimizerConfig::defaults(OptimizerKind::Sgd)),
        ("adam", OptimizerConfig::defaults(OptimizerKind::Adam)),
        ("kfac", OptimizerConfig::defaults(OptimizerKind::Kfac)),
        ("kfac-tridiagonal", tridiagonal),
        ("ekfac", OptimizerConfig::defaults(OptimizerKind::Ekfac)),
        ("kfac-adaptive", adaptive(OptimizerKind::Kfac)),
        ("ekfac-adaptive", adaptive(OptimizerKind::Ekfac)),
        (
            "kfac-adaptive-noreject",
            OptimizerConfig {
                adaptive: Some(AdaptiveConfig { reject: false, ..AdaptiveConfig::default() }),
                ..OptimizerConfig::defaults(OptimizerKind::Kfac)
            },
        ),
        (
            "kfac-adaptive-paper",
            OptimizerConfig {
                adaptive: Some(AdaptiveConfig::paper()),
                ..OptimizerConfig::defaults(OptimizerKind::Kfac)
            },
        ),
    ] {
        let mut mlp = task.network::<f32>(0).unwrap();
        let mut opt = Optimizer::new(config, &mlp).unwrap();
        let mut rng = Rng::new(0);
        g.bench_function(BenchmarkId::new(format!("{name}-faer"), "ae-1000"), |b| {
            b.iter(|| black_box(opt.step(&*la, &mut mlp, x.view(), t.view(), task.loss, &mut rng).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
