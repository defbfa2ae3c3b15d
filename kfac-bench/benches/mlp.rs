//! The MLP's forward and backward passes on the reference autoencoder
//! (784-1000-500-250-30-250-500-1000-784, batch 1000, f32), grouped as
//! `fwd_bwd/<parallelism>-<threads>t`, and faer's matmul on the largest layer's
//! shapes as the FLOP-rate reference (`matmul/faer-direct`).
//!
//! Run: `cargo bench -p kfac-bench --bench mlp`. The FLOP count of one
//! forward+backward pass is printed first: 2 N P for the forward pass and
//! 4 N P for the backward pass (input and weight gradients), less the
//! input gradient of the first layer, with P the number of weights.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kfac_bench::matrix;
use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::loss::Loss;
use kfac_nn::mlp::{Activation, Init, Mlp, NoHook, Parallelism};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SIZES: [usize; 9] = [784, 1000, 500, 250, 30, 250, 500, 1000, 784];
const N: usize = 1000;

fn fwd_bwd_flops() -> u64 {
    let p: usize = SIZES.windows(2).map(|w| w[0] * w[1]).sum();
    let first = SIZES[0] * SIZES[1];
    (2 * N * p + 4 * N * p - 2 * N * first) as u64
}

fn fwd_bwd(c: &mut Criterion) {
    let flops = fwd_bwd_flops();
    println!("forward+backward: {:.2} GFLOP per step", flops as f64 * 1e-9);
    let mut g = c.benchmark_group("fwd_bwd");
    g.sample_size(15);
    g.throughput(Throughput::Elements(flops));
    let x = matrix::<f32>(N, 784, 1).mapv(|v| 0.5 + 0.5 * v);
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for par in [Parallelism::Products, Parallelism::Shards] {
            let mut mlp = Mlp::<f32>::new(
                &SIZES,
                Activation::Tanh,
                Activation::Identity,
                Init::default(),
                0,
                &[(3, Activation::Identity)],
            )
            .unwrap();
            mlp.parallelism = par;
            let la = f32::backend(Backend::Faer, par == Parallelism::Products).unwrap();
            let name = format!("{}-{threads}t", if par == Parallelism::Products { "products" } else { "shards" });
            g.bench_function(BenchmarkId::new(name, "ae-1000"), |b| {
                pool.install(|| {
                    b.iter(|| {
                        let fwd = mlp.forward(&*la, x.view(), &mut NoHook).unwrap();
                        let gout = Loss::SigmoidCrossEntropy.grad(fwd.output(), x.view()).unwrap();
                        black_box(mlp.backward(&*la, &fwd, gout.view(), true, &mut NoHook).unwrap());
                    })
                })
            });
        }
    }
    g.finish();

    // The reference rate: faer's f32 matmul on the 1000 x 784 x 1000 shape, 2 threads.
    let mut g = c.benchmark_group("matmul");
    g.sample_size(20);
    let (m, k, n) = (N, 784, 1000);
    g.throughput(Throughput::Elements((2 * m * k * n) as u64));
    let a = faer::Mat::<f32>::from_fn(m, k, |i, j| ((i + j) % 7) as f32);
    let b = faer::Mat::<f32>::from_fn(k, n, |i, j| ((i * j) % 5) as f32);
    let mut cm = faer::Mat::<f32>::zeros(m, n);
    g.bench_function(BenchmarkId::new("faer-direct-2t", "1000x784x1000"), |bch| {
        bch.iter(|| {
            faer::linalg::matmul::matmul(
                cm.as_mut(),
                faer::Accum::Replace,
                a.as_ref(),
                b.as_ref(),
                1.0f32,
                faer::Par::rayon(2),
            );
            black_box(&cm);
        })
    });
    g.finish();
}

criterion_group!(benches, fwd_bwd);
criterion_main!(benches);
