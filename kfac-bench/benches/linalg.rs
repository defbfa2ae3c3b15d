//! Backend and block benchmarks, grouped as `op/backend`:
//!
//! - `eigh/{faer,faer-direct,nalgebra}`: symmetric eigendecomposition, d = 256, 512, 1000;
//!   `faer-direct` calls faer's own `self_adjoint_eigen` on a faer matrix, the
//!   reference for the cost of our layer.
//! - `spd_inverse/{faer,nalgebra}`: Cholesky inverse, same sizes.
//! - `matmul/faer-direct`: the products of one preconditioning of a 1000 x 1001 layer
//!   (the FLOP-rate reference).
//! - `kron_matvec/{faer,nalgebra}`: $(C \otimes D) \operatorname{vec}(X)$ with
//!   $C, D, X$ of side d = 256, 512, 1000.
//! - `precondition/{kfac-eigen,kfac-inverse,ekfac}-{faer,nalgebra}`: one layer of
//!   d inputs (plus bias) and d outputs, d = 256, 512, 1000.
//! - `gram/{faer,faer-gemm,nalgebra}`: the Gram matrix XᵀX of a batch of 1000
//!   examples of d = 256, 512, 784 features, f32: `LinAlg::gram` (faer: lower
//!   triangle only, mirrored) against the full product `gemm(Xᵀ, X)`.
//! - `update/{kfac,ekfac}-{faer,nalgebra}`: statistics (and EKFAC's scalings)
//!   of a batch of 1000 for the 1000 x 1001 layer.
//!
//! - `chain/{refresh,precondition}-{diagonal,tridiagonal}`: the whole stack of
//!   the reference autoencoder's 8 layers (784-1000-500-250-30-250-500-1000-784),
//!   f32 on faer with all cores, statistics from 250 random rows: rebuilding the
//!   cache (block-diagonal K-FAC's Cholesky inverses against the chain model's
//!   inverses and generalised eigendecompositions) and one preconditioning of
//!   all layers.
//!
//! Run: `cargo bench -p kfac-bench --bench linalg` (add `-- eigh` to filter).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kfac_bench::{batch, batch_data, matrix, spd};
use kfac_core::{BlockKind, Damping, KfacMethod, LayerBatch, LayerShape, LinAlg, TridiagonalKfac};
use kfac_linalg_faer::Faer;
use kfac_linalg_nalgebra::Nalgebra;

const SIZES: [usize; 3] = [256, 512, 1000];

fn eigh(c: &mut Criterion) {
    let mut g = c.benchmark_group("eigh");
    g.sample_size(10);
    let faer = Faer::new();
    for &n in &SIZES {
        let a = spd::<f64>(n, 1);
        g.bench_with_input(BenchmarkId::new("faer", n), &a, |b, a| b.iter(|| faer.eigh(a.view()).unwrap()));
        let fa = faer::Mat::<f64>::from_fn(n, n, |i, j| a[(i, j)]);
        g.bench_with_input(BenchmarkId::new("faer-direct", n), &fa, |b, fa| {
            b.iter(|| black_box(fa.self_adjoint_eigen(faer::Side::Lower).unwrap()))
        });
        if n <= 512 || std::env::var_os("KFAC_BENCH_SLOW").is_some() {
            let nal = Nalgebra;
            g.bench_with_input(BenchmarkId::new("nalgebra", n), &a, |b, a| b.iter(|| nal.eigh(a.view()).unwrap()));
        }
    }
    g.finish();
}

fn spd_inverse(c: &mut Criterion) {
    let mut g = c.benchmark_group("spd_inverse");
    g.sample_size(10);
    let faer = Faer::new();
    for &n in &SIZES {
        let a = spd::<f64>(n, 2);
        g.bench_with_input(BenchmarkId::new("faer", n), &a, |b, a| b.iter(|| faer.spd_inverse(a.view()).unwrap()));
        g.bench_with_input(BenchmarkId::new("nalgebra", n), &a, |b, a| {
            b.iter(|| Nalgebra.spd_inverse(a.view()).unwrap())
        });
    }
    g.finish();
}

/// One 1000 x 1001 layer (1000 inputs plus the bias, 1000 outputs).
const LAYER: LayerShape = LayerShape { d_in: 1000, d_out: 1000, bias: true };

fn kron_matvec(c: &mut Criterion) {
    let mut g = c.benchmark_group("kron_matvec");
    g.sample_size(20);
    let backends: [(&str, &dyn LinAlg<f64>); 2] = [("faer", &Faer::new()), ("nalgebra", &Nalgebra)];
    for &n in &SIZES {
        let (cm, dm, x) = (matrix::<f64>(n, n, 11), matrix::<f64>(n, n, 12), matrix::<f64>(n, n, 13));
        for (bname, la) in backends {
            g.bench_function(BenchmarkId::new(bname, n), |b| {
                b.iter(|| black_box(la.kron_matvec(cm.view(), dm.view(), x.view()).unwrap()))
            });
        }
    }
    g.finish();
}

fn precondition(c: &mut Criterion) {
    let mut g = c.benchmark_group("precondition");
    g.sample_size(20);
    let backends: [(&str, &dyn LinAlg<f64>); 2] = [("faer", &Faer::new()), ("nalgebra", &Nalgebra)];
    for &n in &SIZES {
        let shape = LayerShape::new(n, n);
        let data = batch_data::<f64>(shape, 1000, 3);
        let grad = matrix::<f64>(shape.d_out, shape.a_dim(), 4);
        let size = format!("{}x{}", shape.d_out, shape.a_dim());
        for (bname, la) in backends {
            for (kname, kind, damping) in [
                ("kfac-eigen", BlockKind::Kfac(KfacMethod::Eigen), Damping::tikhonov(1e-3)),
                ("kfac-inverse", BlockKind::Kfac(KfacMethod::Inverse), Damping::factored(1e-3)),
                ("ekfac", BlockKind::Ekfac, Damping::tikhonov(1e-3)),
            ] {
                let mut block = kind.build::<f64>("bench", shape).unwrap();
                block.update_statistics(la, &batch(&data), 0.95).unwrap();
                block.refresh(la, damping).unwrap();
                block.update_scalings(la, &batch(&data), 0.95).unwrap();
                g.bench_function(BenchmarkId::new(format!("{kname}-{bname}"), &size), |b| {
                    b.iter(|| block.precondition(la, grad.view()).unwrap())
                });
            }
        }
    }
    // The reference: the same products straight on faer, into preallocated
    // column-major outputs. The eigen path is four (1000 x 1000) x (1000 x 1001)
    // products; two are shown here, so compare with half the eigen path's time.
    let grad = matrix::<f64>(LAYER.d_out, LAYER.a_dim(), 4);
    let (m, k) = (LAYER.d_out, LAYER.a_dim());
    let ub = faer::Mat::<f64>::from_fn(m, m, |i, j| ((i * 7 + j) % 13) as f64);
    let ua = faer::Mat::<f64>::from_fn(k, k, |i, j| ((i * 5 + j) % 11) as f64);
    let v = faer::Mat::<f64>::from_fn(m, k, |i, j| grad[(i, j)]);
    let mut t = faer::Mat::<f64>::zeros(m, k);
    let mut out = faer::Mat::<f64>::zeros(m, k);
    let par = faer::Par::rayon(0);
    g.bench_function(BenchmarkId::new("two-matmuls-faer-direct", "1000x1001"), |b| {
        b.iter(|| {
            faer::linalg::matmul::matmul(t.as_mut(), faer::Accum::Replace, ub.transpose(), v.as_ref(), 1.0, par);
            faer::linalg::matmul::matmul(out.as_mut(), faer::Accum::Replace, t.as_ref(), ua.as_ref(), 1.0, par);
            black_box(&out);
        })
    });
    g.finish();
}

fn gram(c: &mut Criterion) {
    let mut g = c.benchmark_group("gram");
    g.sample_size(20);
    let faer = Faer::new();
    for d in [256usize, 512, 784] {
        let x = matrix::<f32>(1000, d, 6);
        let mut out = ndarray::Array2::<f32>::zeros((d, d));
        let size = format!("1000x{d}");
        g.bench_function(BenchmarkId::new("faer", &size), |b| {
            b.iter(|| faer.gram(1.0, x.view(), 0.0, out.view_mut()).unwrap())
        });
        g.bench_function(BenchmarkId::new("faer-gemm", &size), |b| {
            b.iter(|| faer.gemm(1.0, x.t(), x.view(), 0.0, out.view_mut()).unwrap())
        });
        g.bench_function(BenchmarkId::new("nalgebra", &size), |b| {
            b.iter(|| Nalgebra.gram(1.0, x.view(), 0.0, out.view_mut()).unwrap())
        });
    }
    g.finish();
}

fn update(c: &mut Criterion) {
    let mut g = c.benchmark_group("update");
    g.sample_size(10);
    let data = batch_data::<f64>(LAYER, 1000, 5);
    let backends: [(&str, &dyn LinAlg<f64>); 2] = [("faer", &Faer::new()), ("nalgebra", &Nalgebra)];
    for (bname, la) in backends {
        for (name, kind) in [("kfac", BlockKind::Kfac(KfacMethod::Eigen)), ("ekfac", BlockKind::Ekfac)] {
            let mut block = kind.build::<f64>("bench", LAYER).unwrap();
            block.update_statistics(la, &batch(&data), 0.95).unwrap();
            block.refresh(la, Damping::tikhonov(1e-3)).unwrap();
            g.bench_function(BenchmarkId::new(format!("{name}-{bname}"), "1000x1001/N=1000"), |b| {
                b.iter(|| {
                    block.update_statistics(la, &batch(&data), 0.95).unwrap();
                    block.update_scalings(la, &batch(&data), 0.95).unwrap();
                })
            });
        }
    }
    g.finish();
}

fn chain(c: &mut Criterion) {
    let mut g = c.benchmark_group("chain");
    g.sample_size(10);
    let la = Faer::new();
    let widths = [784usize, 1000, 500, 250, 30, 250, 500, 1000, 784];
    let shapes: Vec<LayerShape> = widths.windows(2).map(|w| LayerShape::new(w[0], w[1])).collect();
    let data: Vec<_> = shapes.iter().enumerate().map(|(i, &s)| batch_data::<f32>(s, 250, 10 + i as u64)).collect();
    let batches: Vec<LayerBatch<'_, f32>> = data.iter().map(batch).collect();
    let grads: Vec<_> =
        shapes.iter().enumerate().map(|(i, s)| matrix::<f32>(s.d_out, s.a_dim(), 40 + i as u64)).collect();
    let views: Vec<_> = grads.iter().map(|g| g.view()).collect();
    let damping = Damping::factored(1.0);
    let breaks: Vec<usize> = (0..shapes.len() - 1).collect();
    for (name, cuts) in [("diagonal", &breaks[..]), ("tridiagonal", &[][..])] {
        // A chain cut after every layer is block-diagonal K-FAC (Cholesky path).
        let mut model = TridiagonalKfac::<f32>::with_breaks(&shapes, cuts).unwrap();
        model.update_statistics(&la, &batches, 0.95).unwrap();
        model.refresh(&la, damping).unwrap();
        g.bench_function(BenchmarkId::new(format!("refresh-{name}"), "ae-8-layers"), |b| {
            b.iter(|| model.refresh(&la, damping).unwrap())
        });
        g.bench_function(BenchmarkId::new(format!("precondition-{name}"), "ae-8-layers"), |b| {
            b.iter(|| black_box(model.precondition(&la, &views).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, eigh, spd_inverse, kron_matvec, precondition, gram, update, chain);
criterion_main!(benches);
