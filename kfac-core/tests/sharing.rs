//! Layers that share their weights over positions (sequences, convolutions)
//! against the exact Fisher built from explicit loops over examples and
//! positions, for f32 and f64, on both backends:
//! - on deep linear networks with the squared error, K-FAC-expand is the
//!   exact Gauss–Newton block when the loss has a term per position, and
//!   K-FAC-reduce when the network pools (mean or sum) over positions
//!   first; the mismatched approximation is not (Eschenhagen et al., 2023);
//! - the dense and diagonal blocks are the exact Fisher and its diagonal;
//! - EKFAC's Frobenius distance to the exact block is never above K-FAC's,
//!   for both approximations;
//! - duplicating or splitting a batch leaves the factors unchanged, and the
//!   normalisations and gradient scalings agree with each other;
//! - with one position everything is the dense convention, bit for bit;
//! - the patch matrix of a convolution gives the direct convolution, and
//!   its adjoint the direct convolution's input gradient.

mod common;

use common::*;
use kfac_core::conv::{Conv2dGeometry, col2im, im2col, location_rows, rows_to_nchw};
use kfac_core::{
    BlockKind, GradScale, KfacMethod, KroneckerFactors, LayerBatch, LayerShape, LinAlg, Normalization, Real, Sharing,
};
use kfac_linalg_faer::Faer;
use kfac_linalg_nalgebra::Nalgebra;
use ndarray::{Array1, Array2, Array4, s};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

type Check = Result<(), TestCaseError>;

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond { Ok(()) } else { Err(TestCaseError::fail(msg())) }
}

fn ok<V>(r: kfac_core::Result<V>) -> Result<V, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("unexpected error: {e}")))
}

fn close(what: &str, got: &Array2<f64>, want: &Array2<f64>, tol: f64) -> Check {
    let e = rel_err(got, want);
    ensure(e <= tol, || format!("{what}: relative error {e:.3e} > tolerance {tol:.3e}"))
}

/// A weight-sharing layer problem: N examples of R positions.
#[derive(Debug, Clone)]
struct Shared {
    shape: LayerShape,
    n: usize,
    r: usize,
    /// (N·R) × d_in, row n·R + r.
    inputs: Array2<f64>,
    /// (N·R) × d_out: u_{n,r}, the gradients of the unscaled per-example losses.
    grads: Array2<f64>,
}

impl Shared {
    fn abar(&self, row: usize) -> Array1<f64> {
        let d = self.shape.d_in;
        Array1::from_shape_fn(self.shape.a_dim(), |j| if j < d { self.inputs[(row, j)] } else { 1.0 })
    }

    /// U_n = Σ_r u_{n,r} ā_{n,r}ᵀ, by loops.
    fn example_gradient(&self, n: usize) -> Array2<f64> {
        let (d_out, a_dim) = self.shape.param_dims();
        let mut u = Array2::zeros((d_out, a_dim));
        for r in 0..self.r {
            let row = n * self.r + r;
            let a = self.abar(row);
            for i in 0..d_out {
                for j in 0..a_dim {
                    u[(i, j)] += self.grads[(row, i)] * a[j];
                }
            }
        }
        u
    }

    /// The exact Fisher block c Σ_n vec(U_n) vec(U_n)ᵀ with c = `c`.
    fn fisher(&self, c: f64) -> Array2<f64> {
        let p = self.shape.num_params();
        let mut f = Array2::zeros((p, p));
        for n in 0..self.n {
            let v = vec(&self.example_gradient(n));
            for i in 0..p {
                for j in 0..p {
                    f[(i, j)] += c * v[i] * v[j];
                }
            }
        }
        f
    }

    /// Expand's factors by loops: A = (1/NR) Σ ā āᵀ, B = c Σ u uᵀ.
    fn expand(&self, c: f64) -> (Array2<f64>, Array2<f64>) {
        let (d_out, a_dim) = self.shape.param_dims();
        let (mut a, mut b) = (Array2::zeros((a_dim, a_dim)), Array2::zeros((d_out, d_out)));
        for row in 0..self.n * self.r {
            let ab = self.abar(row);
            let u = self.grads.row(row);
            for i in 0..a_dim {
                for j in 0..a_dim {
                    a[(i, j)] += ab[i] * ab[j] / (self.n * self.r) as f64;
                }
            }
            for i in 0..d_out {
                for j in 0..d_out {
                    b[(i, j)] += c * u[i] * u[j];
                }
            }
        }
        (a, b)
    }

    /// Reduce's factors by loops: A = (1/N) Σ â âᵀ, â = mean_r ā; B = c Σ û ûᵀ, û = Σ_r u.
    fn reduce(&self, c: f64) -> (Array2<f64>, Array2<f64>) {
        let (d_out, a_dim) = self.shape.param_dims();
        let (mut a, mut b) = (Array2::zeros((a_dim, a_dim)), Array2::zeros((d_out, d_out)));
        for n in 0..self.n {
            let mut ah = Array1::<f64>::zeros(a_dim);
            let mut uh = Array1::<f64>::zeros(d_out);
            for r in 0..self.r {
                ah += &(self.abar(n * self.r + r) / self.r as f64);
                uh += &self.grads.row(n * self.r + r);
            }
            for i in 0..a_dim {
                for j in 0..a_dim {
                    a[(i, j)] += ah[i] * ah[j] / self.n as f64;
                }
            }
            for i in 0..d_out {
                for j in 0..d_out {
                    b[(i, j)] += c * uh[i] * uh[j];
                }
            }
        }
        (a, b)
    }
}

/// Random problems: 1..=4 inputs and outputs, 1..=5 examples of 1..=6
/// positions, with or without a bias.
fn shared() -> impl Strategy<Value = Shared> {
    (1usize..=4, 1usize..=4, 1usize..=5, 1usize..=6, any::<bool>(), any::<u64>()).prop_map(
        |(d_in, d_out, n, r, bias, seed)| {
            let mut rng = Lcg::new(seed);
            let shape = if bias { LayerShape::new(d_in, d_out) } else { LayerShape::without_bias(d_in, d_out) };
            Shared { shape, n, r, inputs: rng.matrix(n * r, d_in), grads: rng.matrix(n * r, d_out) }
        },
    )
}

/// The factors of a batch through [`KroneckerFactors`].
fn factors<T: Real>(
    la: &dyn LinAlg<T>,
    shape: LayerShape,
    batches: &[LayerBatch<'_, T>],
) -> Result<(Array2<f64>, Array2<f64>), TestCaseError> {
    let mut f = KroneckerFactors::<T>::new(shape);
    for b in batches {
        ok(f.accumulate(la, b, "t"))?;
    }
    ok(f.commit(0.9).map(|_| ()))?;
    Ok((to64(f.a()), to64(f.b())))
}

/// Expand and reduce against their loops, for the three normalisations and
/// both gradient scalings; a duplicated batch or one split in two chunks
/// gives the same factors.
fn check_factors<T: Real>(la: &dyn LinAlg<T>, p: &Shared) -> Check {
    let (x, g) = (cast::<T>(&p.inputs), cast::<T>(&p.grads));
    let t = tol::<T>(p.n * p.r + p.shape.a_dim(), 1.0);
    let (n, r) = (p.n, p.r);
    for (norm, c) in [
        (Normalization::MeanOverExamples, 1.0 / n as f64),
        (Normalization::MeanOverPositions, 1.0 / (n * r) as f64),
        (Normalization::Sum { batch_size: n }, 1.0),
    ] {
        for sharing in [Sharing::Expand, Sharing::Reduce] {
            let batch = LayerBatch::shared(x.view(), g.view(), r).with_sharing(sharing).with_normalization(norm);
            let (a, b) = factors(la, p.shape, std::slice::from_ref(&batch))?;
            let (a_ref, b_ref) = if sharing == Sharing::Expand { p.expand(c) } else { p.reduce(c) };
            close(&format!("{sharing:?} {norm:?} A"), &a, &a_ref, t)?;
            close(&format!("{sharing:?} {norm:?} B"), &b, &b_ref, t)?;
            // The same batch twice, and in two chunks of whole examples.
            let (a2, b2) = factors(la, p.shape, &[batch.clone(), batch.clone()])?;
            close("A twice", &a2, &a_ref, t)?;
            close("B twice", &b2, &b_ref, t)?;
            if n > 1 {
                let k = (n / 2) * r;
                let halves = [
                    LayerBatch { inputs: x.slice(s![..k, ..]), grads: g.slice(s![..k, ..]), ..batch.clone() },
                    LayerBatch { inputs: x.slice(s![k.., ..]), grads: g.slice(s![k.., ..]), ..batch.clone() },
                ];
                let (ah, bh) = factors(la, p.shape, &halves)?;
                close("A in halves", &ah, &a_ref, t)?;
                close("B in halves", &bh, &b_ref, t)?;
            }
            // Gradients of the training loss L = c Σ ℓ (c u per row) with MeanLoss.
            let scaled = g.mapv(|v| v * T::from_f64_lossy(c));
            let of_loss =
                LayerBatch { grads: scaled.view(), scale: GradScale::MeanLoss { batch_size: n }, ..batch.clone() };
            let (_, bl) = factors(la, p.shape, &[of_loss])?;
            close(&format!("{sharing:?} {norm:?} B from the loss's gradients"), &bl, &b_ref, t)?;
        }
    }
    Ok(())
}

/// The dense and diagonal blocks are the exact Fisher and its diagonal, and
/// EKFAC is no further from it than K-FAC, in either approximation's basis.
fn check_blocks<T: Real>(la: &dyn LinAlg<T>, p: &Shared) -> Check {
    let (x, g) = (cast::<T>(&p.inputs), cast::<T>(&p.grads));
    let c = 1.0 / p.n as f64;
    let f = p.fisher(c);
    let t = tol::<T>(p.n * p.r + p.shape.num_params(), 1.0);
    let batch = LayerBatch::shared(x.view(), g.view(), p.r);
    let mut dense = ok(BlockKind::Dense.build::<T>("d", p.shape))?;
    ok(dense.update_statistics(la, &batch, 0.9))?;
    close("dense block", &to64(ok(dense.to_dense(la))?.view()), &f, t)?;
    let mut diag = ok(BlockKind::Diagonal.build::<T>("g", p.shape))?;
    ok(diag.update_statistics(la, &batch, 0.9))?;
    close("diagonal block", &to64(ok(diag.to_dense(la))?.view()), &Array2::from_diag(&f.diag()), t)?;
    for sharing in [Sharing::Expand, Sharing::Reduce] {
        let b = batch.clone().with_sharing(sharing);
        let mut k = ok(BlockKind::Kfac(KfacMethod::Eigen).build::<T>("k", p.shape))?;
        ok(k.update_statistics(la, &b, 0.9))?;
        let mut e = ok(BlockKind::Ekfac.build::<T>("e", p.shape))?;
        ok(e.update_statistics(la, &b, 0.9))?;
        ok(e.refresh(la, kfac_core::Damping::tikhonov(0.1)))?;
        ok(e.update_scalings(la, &b, 0.0))?;
        let dk = fro(&(&to64(ok(k.to_dense(la))?.view()) - &f));
        let de = fro(&(&to64(ok(e.to_dense(la))?.view()) - &f));
        ensure(de <= dk * (1.0 + t) + t * fro(&f), || format!("{sharing:?}: EKFAC {de:e} farther than K-FAC {dk:e}"))?;
    }
    Ok(())
}

/// K-FAC's two paths and both dampings precondition shared batches with the
/// damped inverse of the loop-built factors: Tikhonov on the whole block,
/// $(A \otimes B + \lambda I)^{-1}$ (eigen path), and factored damping,
/// $(A + \pi\sqrt\lambda I)^{-1} \otimes (B + \sqrt\lambda/\pi\, I)^{-1}$
/// (eigen and Cholesky paths).
fn check_damped<T: Real>(la: &dyn LinAlg<T>, p: &Shared) -> Check {
    let (x, g) = (cast::<T>(&p.inputs), cast::<T>(&p.grads));
    let (d_out, a_dim) = p.shape.param_dims();
    let v = Lcg::new(7).matrix(d_out, a_dim);
    let lambda = 0.3;
    let c = 1.0 / p.n as f64;
    for sharing in [Sharing::Expand, Sharing::Reduce] {
        let (a, b) = if sharing == Sharing::Expand { p.expand(c) } else { p.reduce(c) };
        let batch = LayerBatch::shared(x.view(), g.view(), p.r).with_sharing(sharing);
        let tikhonov = add_identity(&kron(&a, &b), lambda);
        let (ta, tb) = (a.diag().sum() / a_dim as f64, b.diag().sum() / d_out as f64);
        let pi = if ta > 0.0 && tb > 0.0 { (ta / tb).sqrt() } else { 1.0 };
        let factored = kron(&add_identity(&a, pi * lambda.sqrt()), &add_identity(&b, lambda.sqrt() / pi));
        let cases = [
            (KfacMethod::Eigen, kfac_core::Damping::tikhonov(lambda), &tikhonov),
            (KfacMethod::Eigen, kfac_core::Damping::factored(lambda), &factored),
            (KfacMethod::Inverse, kfac_core::Damping::factored(lambda), &factored),
        ];
        for (method, damping, m) in cases {
            let mut k = ok(BlockKind::Kfac(method).build::<T>("k", p.shape))?;
            ok(k.update_statistics(la, &batch, 0.9))?;
            ok(k.refresh(la, damping))?;
            let got = to64(ok(k.precondition(la, cast::<T>(&v).view()))?.view());
            let want = unvec(&solve(m, &vec(&v)), d_out, a_dim);
            let t = tol::<T>(p.n * p.r + p.shape.num_params(), 1.0 + fro(m) / lambda.min(1.0));
            close(&format!("{sharing:?} {method:?} {damping:?}"), &got, &want, t)?;
        }
    }
    Ok(())
}

/// One position: every block's state is bit for bit that of the dense batch.
fn check_one_position<T: Real>(la: &dyn LinAlg<T>, p: &Shared) -> Check {
    let (x, g) = (cast::<T>(&p.inputs), cast::<T>(&p.grads));
    let dense = LayerBatch::new(x.view(), g.view());
    for kind in [BlockKind::Kfac(KfacMethod::Eigen), BlockKind::Ekfac, BlockKind::Diagonal, BlockKind::Dense] {
        let mut states = vec![];
        for batch in [
            dense.clone(),
            LayerBatch::shared(x.view(), g.view(), 1).with_sharing(Sharing::Reduce),
            LayerBatch::shared(x.view(), g.view(), 1).with_normalization(Normalization::MeanOverPositions),
        ] {
            let mut b = ok(kind.build::<T>("b", p.shape))?;
            ok(b.update_statistics(la, &batch, 0.9))?;
            ok(b.refresh(la, kfac_core::Damping::tikhonov(0.1)))?;
            ok(b.update_scalings(la, &batch, 0.9))?;
            states.push(b.state());
        }
        ensure(states.windows(2).all(|w| w[0] == w[1]), || format!("{kind:?}: one position differs from dense"))?;
    }
    Ok(())
}

macro_rules! suite {
    ($name:ident, $t:ty, $backend:expr) => {
        mod $name {
            use super::*;
            type T = $t;
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(64))]
                #[test] fn expand_and_reduce_factors(p in shared()) { check_factors::<T>(&$backend, &p)?; }
                #[test] fn blocks_against_the_exact_fisher(p in shared()) { check_blocks::<T>(&$backend, &p)?; }
                #[test] fn damped_inverses_of_shared_factors(p in shared()) { check_damped::<T>(&$backend, &p)?; }
                #[test] fn one_position_is_the_dense_layer(p in shared()) { check_one_position::<T>(&$backend, &p)?; }
            }
        }
    };
}

suite!(faer_f64, f64, Faer::sequential());
suite!(faer_f32, f32, Faer::sequential());
suite!(nalgebra_f64, f64, Nalgebra);
suite!(nalgebra_f32, f32, Nalgebra);

// ------------------------------------------ deep linear networks, exactness

/// A two-layer linear network: s = W̄₁ ā at every position, then either
/// (expand) an output y_{n,r} = W₂ s_{n,r} per position with the loss
/// Σ_r ½‖y_{n,r} − t‖², or (reduce) y_n = W₂ pool_r(s_{n,r}) with ½‖y_n − t‖²
/// (pool: the mean, or the sum). One output: the output-space Fisher of the
/// squared error is 1, so each example (or each position, in the expand
/// setting) contributes one backpropagated vector, and the Gauss–Newton
/// block of the first layer is exact from them.
fn check_linear_network<T: Real>(la: &dyn LinAlg<T>, p: &Shared, pool_mean: bool) -> Check {
    let mut rng = Lcg::new(p.inputs.len() as u64 + 17);
    let w2 = rng.matrix(1, p.shape.d_out);
    let c = 1.0 / p.n as f64;
    let t = tol::<T>(p.n * p.r + p.shape.num_params(), 1.0);
    // Expand setting: one vector per position, nonzero at that position only:
    // the exact block is c Σ_{n,r} (ā āᵀ ⊗ W₂ᵀW₂) and expand's product is it.
    let cols = p.n * p.r;
    let mut f_exp = Array2::<f64>::zeros((p.shape.num_params(), p.shape.num_params()));
    for row in 0..cols {
        let single =
            Shared { n: 1, r: 1, inputs: p.inputs.slice(s![row..=row, ..]).to_owned(), grads: w2.clone(), ..p.clone() };
        f_exp += &single.fisher(c);
    }
    let u_exp = Array2::from_shape_fn((cols, p.shape.d_out), |(_, j)| w2[(0, j)]);
    // Reduce setting: u_{n,r} = W₂ᵀ/R (mean) or W₂ᵀ (sum) at every position.
    let scale = if pool_mean { 1.0 / p.r as f64 } else { 1.0 };
    let u_red = u_exp.mapv(|v| v * scale);
    let f_red = Shared { grads: u_red.clone(), ..p.clone() }.fisher(c);
    let (x, ue, ur) = (cast::<T>(&p.inputs), cast::<T>(&u_exp), cast::<T>(&u_red));
    let kron_of = |b: LayerBatch<'_, T>| -> Result<Array2<f64>, TestCaseError> {
        let mut k = ok(BlockKind::Kfac(KfacMethod::Eigen).build::<T>("k", p.shape))?;
        ok(k.update_statistics(la, &b, 0.9))?;
        Ok(to64(ok(k.to_dense(la))?.view()))
    };
    let expand = kron_of(LayerBatch::shared(x.view(), ue.view(), p.r))?;
    close("expand in the expand setting", &expand, &f_exp, t)?;
    let reduce = kron_of(LayerBatch::shared(x.view(), ur.view(), p.r).with_sharing(Sharing::Reduce))?;
    close("reduce in the reduce setting", &reduce, &f_red, t)?;
    // The mismatched approximations are not exact once the positions differ.
    let spread = (0..p.n).any(|n| (1..p.r).any(|r| p.inputs.row(n * p.r + r) != p.inputs.row(n * p.r)));
    if spread && p.r > 1 {
        let wrong = kron_of(LayerBatch::shared(x.view(), ur.view(), p.r))?;
        let e = rel_err(&wrong, &f_red);
        ensure(e > 1e-2, || format!("expand is exact in the reduce setting too ({e:e})"))?;
    }
    Ok(())
}

/// Larger problems for the exactness check, where the approximations differ visibly.
fn linear_problem() -> impl Strategy<Value = Shared> {
    (2usize..=4, 2usize..=3, 2usize..=4, 2usize..=5, any::<u64>()).prop_map(|(d_in, d_out, n, r, seed)| {
        let mut rng = Lcg::new(seed);
        Shared {
            shape: LayerShape::new(d_in, d_out),
            n,
            r,
            inputs: rng.matrix(n * r, d_in),
            grads: Array2::zeros((0, 0)),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test] fn deep_linear_networks_f64(p in linear_problem(), mean in any::<bool>()) {
        check_linear_network::<f64>(&Faer::sequential(), &p, mean)?;
        check_linear_network::<f64>(&Nalgebra, &p, mean)?;
    }
    #[test] fn deep_linear_networks_f32(p in linear_problem(), mean in any::<bool>()) {
        check_linear_network::<f32>(&Faer::sequential(), &p, mean)?;
        check_linear_network::<f32>(&Nalgebra, &p, mean)?;
    }
}

// ------------------------------------------------------- convolutions

/// A random geometry: 1..=3 channels in and out, kernels 1..=4, strides,
/// paddings and dilations 1..=3 / 0..=2 / 1..=2, inputs up to 7 × 6; only
/// geometries whose dilated kernel fits the padded input.
fn geometry() -> impl Strategy<Value = (Conv2dGeometry, u64, usize)> {
    (
        (1usize..=3, 1usize..=3),
        (1usize..=4, 1usize..=4),
        (1usize..=3, 1usize..=3),
        (0usize..=2, 0usize..=2),
        (1usize..=2, 1usize..=2),
        (2usize..=7, 2usize..=6),
        any::<u64>(),
        1usize..=3,
    )
        .prop_filter_map("the kernel must fit", |(ch, k, st, pad, dil, inp, seed, n)| {
            let g = Conv2dGeometry {
                in_channels: ch.0,
                out_channels: ch.1,
                kernel: k,
                stride: st,
                padding: pad,
                dilation: dil,
                input: inp,
            };
            g.validate().ok().map(|_| (g, seed, n))
        })
}

/// The direct convolution by its definition, with zero padding.
fn direct_conv(g: &Conv2dGeometry, x: &Array4<f64>, w: &Array2<f64>) -> Array4<f64> {
    let (ho, wo) = g.output();
    let (kh, kw) = g.kernel;
    let n = x.dim().0;
    let mut y = Array4::zeros((n, g.out_channels, ho, wo));
    for e in 0..n {
        for o in 0..g.out_channels {
            for yy in 0..ho {
                for xx in 0..wo {
                    let mut s = w[(o, g.patch_len())];
                    for c in 0..g.in_channels {
                        for i in 0..kh {
                            for j in 0..kw {
                                let sy = (yy * g.stride.0 + i * g.dilation.0) as isize - g.padding.0 as isize;
                                let sx = (xx * g.stride.1 + j * g.dilation.1) as isize - g.padding.1 as isize;
                                if sy >= 0 && sx >= 0 && (sy as usize) < g.input.0 && (sx as usize) < g.input.1 {
                                    s += w[(o, (c * kh + i) * kw + j)] * x[(e, c, sy as usize, sx as usize)];
                                }
                            }
                        }
                    }
                    y[(e, o, yy, xx)] = s;
                }
            }
        }
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// patches · W̄ᵀ is the direct convolution; the number of locations is
    /// the output's; col2im is the adjoint of im2col.
    #[test]
    fn im2col_is_the_convolution((g, seed, n) in geometry()) {
        let mut rng = Lcg::new(seed);
        let x = Array4::from_shape_fn((n, g.in_channels, g.input.0, g.input.1), |_| rng.next());
        let w = rng.matrix(g.out_channels, g.patch_len() + 1);
        let patches = im2col(&g, x.view()).unwrap();
        let (ho, wo) = g.output();
        prop_assert_eq!(g.locations(), ho * wo);
        prop_assert_eq!(patches.dim(), (n * ho * wo, g.patch_len()));
        let rows = patches.dot(&w.slice(s![.., ..g.patch_len()]).t()) + w.column(g.patch_len());
        let want = location_rows(direct_conv(&g, &x, &w).view());
        prop_assert!(rel_err(&rows, &want) < 1e-12, "{:?}", g);
        // ⟨im2col(x), P⟩ = ⟨x, col2im(P)⟩.
        let pm = rng.matrix(patches.nrows(), patches.ncols());
        let back = col2im(&g, pm.view(), n).unwrap();
        let lhs = (&patches * &pm).sum();
        let rhs = (&x * &back).sum();
        prop_assert!((lhs - rhs).abs() < 1e-12 * (1.0 + lhs.abs()), "{} vs {}", lhs, rhs);
    }

    /// The helpers read views of any layout as their standard copies, bit
    /// for bit (an NHWC array seen as NCHW, a transposed patch matrix), and
    /// `rows_to_nchw` inverts `location_rows`.
    #[test]
    fn the_helpers_read_any_layout((g, seed, n) in geometry()) {
        let mut rng = Lcg::new(seed);
        let nhwc = Array4::from_shape_fn((n, g.input.0, g.input.1, g.in_channels), |_| rng.next());
        let x = nhwc.view().permuted_axes([0, 3, 1, 2]);
        prop_assert_eq!(im2col(&g, x).unwrap(), im2col(&g, x.as_standard_layout().view()).unwrap());
        let pm_t = rng.matrix(g.patch_len(), n * g.locations());
        let back = col2im(&g, pm_t.t(), n).unwrap();
        prop_assert_eq!(back, col2im(&g, pm_t.t().as_standard_layout().view(), n).unwrap());
        let y = Array4::from_shape_fn((n, g.out_channels, g.output().0, g.output().1), |_| rng.next());
        let rows = location_rows(y.view());
        prop_assert_eq!(rows_to_nchw(rows.view(), n, g.output()).unwrap(), y.clone());
        let y_t = y.view().permuted_axes([0, 1, 3, 2]);
        prop_assert_eq!(location_rows(y_t), location_rows(y_t.as_standard_layout().view()));
    }
}

/// KFC on a linear convolution followed by a linear per-location output
/// (the expand setting) is the exact Gauss–Newton block of the convolution,
/// built from per-example loops over the output locations; with average
/// pooling before the output (the reduce setting) K-FAC-reduce is.
#[test]
fn kfc_is_exact_on_a_linear_convolution() {
    let g = Conv2dGeometry { padding: (1, 1), stride: (2, 1), ..Conv2dGeometry::new(2, 3, (3, 2), (6, 5)) };
    let n = 4;
    let mut rng = Lcg::new(5);
    let x = Array4::from_shape_fn((n, g.in_channels, g.input.0, g.input.1), |_| rng.next());
    let w2 = rng.matrix(1, g.out_channels);
    let patches = im2col(&g, x.view()).unwrap();
    let l = g.locations();
    let shape = g.shape();
    let base = Shared { shape, n, r: l, inputs: patches.clone(), grads: Array2::zeros((n * l, g.out_channels)) };
    // Expand: the vector of each location is W₂ᵀ there and 0 elsewhere.
    let mut f = Array2::<f64>::zeros((shape.num_params(), shape.num_params()));
    for row in 0..n * l {
        let one = Shared {
            n: 1,
            r: 1,
            inputs: patches.slice(s![row..=row, ..]).to_owned(),
            grads: w2.clone(),
            ..base.clone()
        };
        f += &one.fisher(1.0 / n as f64);
    }
    let u = Array2::from_shape_fn((n * l, g.out_channels), |(_, j)| w2[(0, j)]);
    let la = Faer::sequential();
    let mut k = BlockKind::Kfac(KfacMethod::Eigen).build::<f64>("conv", shape).unwrap();
    k.update_statistics(&la, &LayerBatch::shared(patches.view(), u.view(), l), 0.9).unwrap();
    let e = rel_err(&k.to_dense(&la).unwrap(), &f);
    assert!(e < 1e-12, "KFC: {e:e}");
    // Reduce: average pooling over the locations, then W₂: u = W₂ᵀ/|T| everywhere.
    let ur = u.mapv(|v| v / l as f64);
    let f_red = Shared { grads: ur.clone(), ..base }.fisher(1.0 / n as f64);
    let mut kr = BlockKind::Kfac(KfacMethod::Eigen).build::<f64>("conv", shape).unwrap();
    kr.update_statistics(&la, &LayerBatch::shared(patches.view(), ur.view(), l).with_sharing(Sharing::Reduce), 0.9)
        .unwrap();
    let e = rel_err(&kr.to_dense(&la).unwrap(), &f_red);
    assert!(e < 1e-12, "reduce: {e:e}");
    // The input factor is normalised by the output locations, not the input's pixels.
    let mut kf = KroneckerFactors::<f64>::new(shape);
    kf.update(&la, &LayerBatch::shared(patches.view(), u.view(), l), 0.9, "t").unwrap();
    assert!((kf.a()[(shape.d_in, shape.d_in)] - 1.0).abs() < 1e-15, "the bias entry of A is the mean of 1");
}

/// Bad weight-sharing input is a typed error.
#[test]
fn bad_positions_are_errors() {
    let la = Faer::sequential();
    let x = Array2::<f64>::zeros((6, 2));
    let g = Array2::<f64>::zeros((6, 3));
    let mut f = KroneckerFactors::<f64>::new(LayerShape::new(2, 3));
    for r in [0, 4] {
        let e = f.accumulate(&la, &LayerBatch::shared(x.view(), g.view(), r), "t").unwrap_err();
        assert!(matches!(e, kfac_core::Error::InvalidConfig { what: "LayerBatch::positions", .. }), "{e}");
    }
    let bad = Conv2dGeometry::new(1, 1, (5, 5), (3, 3));
    assert!(matches!(bad.validate(), Err(kfac_core::Error::InvalidConfig { what: "conv kernel", .. })));
    let zero = Conv2dGeometry { stride: (0, 1), ..Conv2dGeometry::new(1, 1, (1, 1), (3, 3)) };
    assert!(matches!(zero.validate(), Err(kfac_core::Error::InvalidConfig { what: "conv stride", .. })));
    let x4 = Array4::<f64>::zeros((1, 2, 3, 3));
    assert!(matches!(
        im2col(&Conv2dGeometry::new(1, 1, (1, 1), (3, 3)), x4.view()),
        Err(kfac_core::Error::ShapeMismatch { .. })
    ));
}
