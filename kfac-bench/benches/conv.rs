//! Convolution benchmarks, f32 on faer with all cores, for the two
//! convolutions of the CNN task (MNIST, 28×28, batch 128):
//! `c1` is 1 → 16 channels, 5×5, no padding (576 output locations, patches
//! of 25), `c2` is 16 → 32 channels, 5×5 on the pooled 12×12 map (64
//! locations, patches of 400).
//!
//! - `conv/im2col-{c1,c2}`: the patch matrix $(N|T|) \times (C_\text{in} k_h k_w)$
//!   of a batch (throughput in bytes written).
//! - `conv/matmul-{c1,c2}`: the product of the patch matrix with the weight,
//!   $(N|T|) \times C_\text{out}$, through `LinAlg::gemm` (throughput in
//!   FLOPs: the rate of the machine's products for this shape).
//! - `conv/forward-{c1,c2}`: im2col then the product, the whole convolution
//!   (throughput in FLOPs: compare it with `matmul`'s).
//! - `conv/stats-{expand,reduce}-{c1,c2}`: one `update_statistics` of a K-FAC
//!   block from the batch's patches and location gradients; `stats-ekfac-*`
//!   adds EKFAC's scalings (expand factors).
//!
//! Run: `cargo bench -p kfac-bench --bench conv`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kfac_bench::matrix;
use kfac_core::conv::{Conv2dGeometry, im2col};
use kfac_core::{BlockKind, Damping, KfacMethod, LayerBatch, LinAlg, Sharing};
use kfac_linalg_faer::Faer;
use ndarray::{Array2, Array4};

const BATCH: usize = 128;

/// The CNN task's two convolutions, by name.
fn layers() -> [(&'static str, Conv2dGeometry); 2] {
    [("c1", Conv2dGeometry::new(1, 16, (5, 5), (28, 28))), ("c2", Conv2dGeometry::new(16, 32, (5, 5), (12, 12)))]
}

/// A deterministic N × C × H × W input.
fn input(g: &Conv2dGeometry, seed: u64) -> Array4<f32> {
    let flat = matrix::<f32>(BATCH, g.in_channels * g.input.0 * g.input.1, seed);
    flat.into_shape_with_order((BATCH, g.in_channels, g.input.0, g.input.1)).expect("the sizes match")
}

fn flops(g: &Conv2dGeometry) -> u64 {
    (2 * BATCH * g.locations() * g.patch_len() * g.out_channels) as u64
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group.sample_size(20);
    let la = Faer::new();
    for (name, g) in layers() {
        let x = input(&g, 1);
        let w = matrix::<f32>(g.out_channels, g.patch_len(), 2);
        let patches = im2col(&g, x.view()).unwrap();
        let mut y = Array2::<f32>::zeros((patches.nrows(), g.out_channels));
        group.throughput(Throughput::Bytes((patches.len() * 4) as u64));
        group.bench_function(BenchmarkId::new("im2col", name), |b| b.iter(|| black_box(im2col(&g, x.view()).unwrap())));
        group.throughput(Throughput::Elements(flops(&g)));
        group.bench_function(BenchmarkId::new("matmul", name), |b| {
            b.iter(|| la.gemm(1.0, patches.view(), w.t(), 0.0, y.view_mut()).unwrap())
        });
        group.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| {
                let p = im2col(&g, x.view()).unwrap();
                la.gemm(1.0, p.view(), w.t(), 0.0, y.view_mut()).unwrap();
                black_box(&y);
            })
        });
    }
    group.finish();
}

fn statistics(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group.sample_size(10);
    let la = Faer::new();
    for (name, g) in layers() {
        let patches = im2col(&g, input(&g, 3).view()).unwrap();
        let grads = matrix::<f32>(patches.nrows(), g.out_channels, 4);
        let l = g.locations();
        for (kind, sharing) in [("expand", Sharing::Expand), ("reduce", Sharing::Reduce)] {
            let mut block = BlockKind::Kfac(KfacMethod::Eigen).build::<f32>("bench", g.shape()).unwrap();
            let batch = LayerBatch::shared(patches.view(), grads.view(), l).with_sharing(sharing);
            group.bench_function(BenchmarkId::new(format!("stats-{kind}"), name), |b| {
                b.iter(|| block.update_statistics(&la, &batch, 0.95).unwrap())
            });
        }
        let mut block = BlockKind::Ekfac.build::<f32>("bench", g.shape()).unwrap();
        let batch = LayerBatch::shared(patches.view(), grads.view(), l);
        block.update_statistics(&la, &batch, 0.95).unwrap();
        block.refresh(&la, Damping::tikhonov(1e-3)).unwrap();
        group.bench_function(BenchmarkId::new("stats-ekfac", name), |b| {
            b.iter(|| {
                block.update_statistics(&la, &batch, 0.95).unwrap();
                block.update_scalings(&la, &batch, 0.95).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, forward, statistics);
criterion_main!(benches);
