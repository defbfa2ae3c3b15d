//! Times the curvature phases of K-FAC and EKFAC on the reference
//! autoencoder's layer shapes (f32, faer, statistics on 250 examples):
//! statistics, refresh, scalings and preconditioning, summed over layers.
//! Run: `cargo run --release -p kfac-bench --example block_phases`.
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kfac_bench::{batch, batch_data, matrix};
use kfac_core::{BlockKind, Damping, KfacMethod, LayerShape};
use kfac_linalg_faer::Faer;

fn best(mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let sizes = [784, 1000, 500, 250, 30, 250, 500, 1000, 784];
    let la = Faer::new();
    for (name, kind, damping) in [
        ("kfac-inverse", BlockKind::Kfac(KfacMethod::Inverse), Damping::factored(1.0)),
        ("kfac-eigen", BlockKind::Kfac(KfacMethod::Eigen), Damping::tikhonov(1.0)),
        ("ekfac", BlockKind::Ekfac, Damping::tikhonov(1.0)),
    ] {
        let (mut stats, mut refresh, mut scal, mut pre, mut refresh_seq) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let seq = Faer::sequential();
        for (l, w) in sizes.windows(2).enumerate() {
            let shape = LayerShape::new(w[0], w[1]);
            let data = batch_data::<f32>(shape, 250, l as u64);
            let grad = matrix::<f32>(shape.d_out, shape.a_dim(), 99);
            let mut block = kind.build::<f32>("b", shape).unwrap();
            stats += best(|| block.update_statistics(&la, &batch(&data), 0.95).unwrap());
            refresh += best(|| block.refresh(&la, damping).unwrap());
            refresh_seq += best(|| block.refresh(&seq, damping).unwrap());
            scal += best(|| block.update_scalings(&la, &batch(&data), 0.95).unwrap());
            pre += best(|| {
                std::hint::black_box(block.precondition(&la, grad.view()).unwrap());
            });
        }
        println!(
            "{name:>13}: statistics {:6.1} ms, refresh {:6.1} ms (/20 = {:5.1}), scalings {:6.1} ms, precondition {:6.1} ms; refresh on one thread {:6.1} ms",
            stats * 1e3,
            refresh * 1e3,
            refresh * 50.0,
            scal * 1e3,
            pre * 1e3,
            refresh_seq * 1e3
        );
    }
}
