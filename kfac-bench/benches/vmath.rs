//! The vectorised transcendentals of `kfac_core::vmath` against libm, and the
//! sigmoid cross-entropy's value and gradient before and after the fused
//! pass, each pair measured one after the other in the same run.
//!
//! Run: `cargo bench -p kfac-bench --bench vmath`. Groups:
//! - `vmath-f32/<function>/<libm|vmath>` and `vmath-f64/...`: 784,000
//!   values (one batch of the autoencoder's outputs: logits in [-20, 20];
//!   `ln_1p` of their absolute values), one thread, elements per second;
//! - `bernoulli/<libm|fused>-2t`: the loss value and the output gradients on
//!   the 1000 x 784 outputs, 2 threads: the code before (an `f64` softplus
//!   per element, rows in parallel, then libm's `f32` sigmoid and a
//!   subtraction) and [`Loss::value_and_grad`];
//! - `pass/<libm|fused>-loss-2t`: forward, loss value and gradient, backward
//!   of the reference autoencoder with each of the two.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kfac_bench::matrix;
use kfac_core::vmath::{self, Vmath};
use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::loss::Loss;
use kfac_nn::mlp::{Activation, Init, Mlp, NoHook};
use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: usize = 1000;
const D: usize = 784;

/// libm's softplus in `f64`, as the loss computed it before.
fn softplus_libm(x: f64) -> f64 {
    if x > 0.0 { x + (-x).exp().ln_1p() } else { x.exp().ln_1p() }
}

/// libm's logistic function, as the loss computed it before.
fn sigmoid_libm<T: kfac_core::Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// The sigmoid cross-entropy's value and gradient as computed before the
/// fused pass (kfac-core at ffba89d).
fn bernoulli_libm(s: ArrayView2<'_, f32>, t: ArrayView2<'_, f32>) -> (f64, Array2<f32>) {
    let rows: Vec<f64> = s
        .axis_iter(Axis(0))
        .into_par_iter()
        .zip(t.axis_iter(Axis(0)).into_par_iter())
        .map(|(r, tr)| {
            r.iter().zip(tr.iter()).map(|(&x, &y)| softplus_libm(f64::from(x)) - f64::from(y) * f64::from(x)).sum()
        })
        .collect();
    let value = rows.iter().sum::<f64>() / s.nrows() as f64;
    let mut p = s.to_owned();
    if let Some(slice) = p.as_slice_memory_order_mut() {
        slice.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|x| *x = sigmoid_libm(*x)));
    }
    p -= &t;
    (value, p)
}

/// libm's softplus in `f32`.
fn softplus_libm32(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Each function by libm and by vmath, in turn, on a copy of `$xs`. (A macro,
/// not a table of function pointers: a call through a pointer would not be
/// inlined, and the vmath loop would not vectorise.)
macro_rules! pairs {
    ($c:expr, $group:literal, $xs:expr, $(($name:literal, $libm:expr, $fast:expr)),*) => {{
        let xs = $xs;
        let mut g = $c.benchmark_group($group);
        g.sample_size(20);
        g.throughput(Throughput::Elements(xs.len() as u64));
        let mut buf = xs.to_vec();
        $(
            g.bench_function(BenchmarkId::new($name, "libm"), |b| {
                b.iter(|| {
                    buf.copy_from_slice(xs);
                    vmath::map_in_place(&mut buf, $libm);
                    black_box(&buf);
                })
            });
            g.bench_function(BenchmarkId::new($name, "vmath"), |b| {
                b.iter(|| {
                    buf.copy_from_slice(xs);
                    vmath::map_in_place(&mut buf, $fast);
                    black_box(&buf);
                })
            });
        )*
        g.finish();
    }};
}

fn transcendentals(c: &mut Criterion) {
    // Logits as the autoencoder's outputs spread them, in [-20, 20].
    let xs32: Vec<f32> = matrix::<f32>(N, D, 7).iter().map(|&v| 20.0 * v).collect();
    let xs64: Vec<f64> = xs32.iter().map(|&v| f64::from(v)).collect();
    pairs!(
        c,
        "vmath-f32",
        &xs32[..],
        ("exp", f32::exp, f32::vexp),
        ("ln_1p", |x: f32| x.abs().ln_1p(), |x: f32| x.abs().vln_1p()),
        ("sigmoid", sigmoid_libm::<f32>, f32::vsigmoid),
        ("softplus", softplus_libm32, f32::vsoftplus)
    );
    pairs!(
        c,
        "vmath-f64",
        &xs64[..],
        ("exp", f64::exp, f64::vexp),
        ("ln_1p", |x: f64| x.abs().ln_1p(), |x: f64| x.abs().vln_1p()),
        ("sigmoid", sigmoid_libm::<f64>, f64::vsigmoid),
        ("softplus", softplus_libm, f64::vsoftplus)
    );
}

fn bernoulli(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let s = matrix::<f32>(N, D, 8).mapv(|v| 8.0 * v);
    let t = matrix::<f32>(N, D, 9).mapv(|v| 0.5 + 0.5 * v);
    let mut g = c.benchmark_group("bernoulli");
    g.sample_size(20);
    g.throughput(Throughput::Elements((N * D) as u64));
    g.bench_function(BenchmarkId::new("libm-2t", "1000x784"), |b| {
        pool.install(|| b.iter(|| black_box(bernoulli_libm(s.view(), t.view()))))
    });
    g.bench_function(BenchmarkId::new("fused-2t", "1000x784"), |b| {
        pool.install(|| b.iter(|| black_box(Loss::SigmoidCrossEntropy.value_and_grad(s.view(), t.view()).unwrap())))
    });
    g.finish();

    let sizes = [784, 1000, 500, 250, 30, 250, 500, 1000, 784];
    let mlp = Mlp::<f32>::new(
        &sizes,
        Activation::Tanh,
        Activation::Identity,
        Init::default(),
        0,
        &[(3, Activation::Identity)],
    )
    .unwrap();
    let la = f32::backend(Backend::Faer, true).unwrap();
    let x = matrix::<f32>(N, D, 1).mapv(|v| 0.5 + 0.5 * v);
    let mut g = c.benchmark_group("pass");
    g.sample_size(15);
    for fused in [false, true] {
        let name = if fused { "fused-loss-2t" } else { "libm-loss-2t" };
        g.bench_function(BenchmarkId::new(name, "ae-1000"), |b| {
            pool.install(|| {
                b.iter(|| {
                    let fwd = mlp.forward(&*la, x.view(), &mut NoHook).unwrap();
                    let (value, gout) = if fused {
                        Loss::SigmoidCrossEntropy.value_and_grad(fwd.output(), x.view()).unwrap()
                    } else {
                        bernoulli_libm(fwd.output(), x.view())
                    };
                    black_box(value);
                    black_box(mlp.backward(&*la, &fwd, gout.view(), true, &mut NoHook).unwrap());
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, transcendentals, bernoulli);
criterion_main!(benches);
