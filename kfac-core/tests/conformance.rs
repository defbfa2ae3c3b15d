//! The conformance suite: every block and damping checked against exact
//! dense quantities, for f32 and f64, on every backend.
//!
//! Each `check_*` function is generic over the scalar and takes the backend
//! as `&dyn LinAlg<T>`; `suite!` instantiates them as proptest tests for one
//! (backend, scalar) pair.

mod common;

use common::*;
use kfac_core::{
    BlockKind, CurvatureBlock, Damping, DenseBlock, DiagonalBlock, EkfacBlock, Error, KfacBlock, KfacMethod,
    KroneckerFactors, LayerBatch, LayerShape, LinAlg, PiRule, Real,
};
use kfac_linalg_faer::Faer;
use kfac_linalg_nalgebra::Nalgebra;
use ndarray::{Array2, Axis, s};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

type Check = Result<(), TestCaseError>;

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond { Ok(()) } else { Err(TestCaseError::fail(msg())) }
}

fn close(what: &str, got: &Array2<f64>, want: &Array2<f64>, tol: f64) -> Check {
    let e = rel_err(got, want);
    ensure(e <= tol, || format!("{what}: relative error {e:.3e} > tolerance {tol:.3e}\n got {got:.5}\nwant {want:.5}"))
}

fn ok<V>(r: kfac_core::Result<V>) -> Result<V, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("unexpected error: {e}")))
}

/// The condition number bound (‖M‖_F + λ) / λ of a damped PSD matrix.
fn kappa(m: &Array2<f64>, lambda: f64) -> f64 {
    (fro(m) + lambda) / lambda
}

// ---------------------------------------------------------------- factors

fn check_factors<T: Real>(la: &dyn LinAlg<T>, p: &Problem) -> Check {
    let (x, g) = (p.inputs_t::<T>(), p.grads_t::<T>());
    let batch = LayerBatch::new(x.view(), g.view());
    let mut f = KroneckerFactors::<T>::new(p.shape);
    ok(f.update(la, &batch, 0.9, "t"))?;
    let t = tol::<T>(p.n() + p.shape.a_dim(), 1.0);
    close("A", &to64(f.a()), &p.a_ref(), t)?;
    close("B", &to64(f.b()), &p.b_ref(), t)?;

    // Feeding the same batch again (a second step) changes nothing.
    ok(f.update(la, &batch, 0.9, "t"))?;
    close("A after a repeat", &to64(f.a()), &p.a_ref(), t)?;
    close("B after a repeat", &to64(f.b()), &p.b_ref(), t)?;

    // The batch twice within one step, or split in two chunks, is the batch.
    let mut twice = KroneckerFactors::<T>::new(p.shape);
    ok(twice.accumulate(la, &batch, "t"))?;
    ok(twice.accumulate(la, &batch, "t"))?;
    ok(twice.commit(0.9).map(|_| ()))?;
    close("A twice", &to64(twice.a()), &p.a_ref(), t)?;
    close("B twice", &to64(twice.b()), &p.b_ref(), t)?;
    let half = p.n() / 2;
    let mut split = KroneckerFactors::<T>::new(p.shape);
    for (lo, hi) in [(0, half), (half, p.n())] {
        if hi > lo {
            let chunk = LayerBatch::new(x.slice(s![lo..hi, ..]), g.slice(s![lo..hi, ..]));
            ok(split.accumulate(la, &chunk, "t"))?;
        }
    }
    ok(split.commit(0.9).map(|_| ()))?;
    close("A split", &to64(split.a()), &p.a_ref(), t)?;
    close("B split", &to64(split.b()), &p.b_ref(), t)?;

    // Gradients of the mean loss (g / N) are scaled back.
    let n = T::from_usize(p.n()).unwrap();
    let g_mean = g.mapv(|v| v / n);
    let mut mean = KroneckerFactors::<T>::new(p.shape);
    ok(mean.update(la, &LayerBatch::from_mean_loss(x.view(), g_mean.view()), 0.9, "t"))?;
    close("B from mean-loss gradients", &to64(mean.b()), &p.b_ref(), t)
}

fn check_moving_average<T: Real>(la: &dyn LinAlg<T>, p: &Problem) -> Check {
    // Two steps with different data: Ā₂ = (ε Ā₁ + Â₂) / (ε + 1) with w₁ = 1.
    let decay = 0.7;
    let (x, g) = (p.inputs_t::<T>(), p.grads_t::<T>());
    let x2 = x.mapv(|v| v * T::from_f64_lossy(0.5) + T::one());
    let mut f = KroneckerFactors::<T>::new(p.shape);
    ok(f.update(la, &LayerBatch::new(x.view(), g.view()), decay, "t"))?;
    ok(f.update(la, &LayerBatch::new(x2.view(), g.view()), decay, "t"))?;
    let q = Problem { inputs: p.inputs.mapv(|v| v * 0.5 + 1.0), ..p.clone() };
    let want = (p.a_ref() * decay + q.a_ref()) / (decay + 1.0);
    ensure((f.a_average().weight() - (decay + 1.0)).abs() < 1e-12, || "weight".into())?;
    close("A after two steps", &to64(f.a()), &want, tol::<T>(p.n() + p.shape.a_dim(), 4.0))
}

// ---------------------------------------------------------- dense identities

fn check_kfac_is_kron<T: Real>(la: &dyn LinAlg<T>, p: &Problem) -> Check {
    let (x, g) = (p.inputs_t::<T>(), p.grads_t::<T>());
    let mut b = KfacBlock::<T>::new("kfac", p.shape, KfacMethod::Eigen);
    ok(b.update_statistics(la, &LayerBatch::new(x.view(), g.view()), 0.95))?;
    let dense = to64(ok(b.to_dense(la))?.view());
    let t = tol::<T>(p.n() + p.shape.num_params(), 1.0);
    close("K-FAC block = A ⊗ B", &dense, &kron(&p.a_ref(), &p.b_ref()), t)?;

    // For one example the Kronecker factorisation is exact.
    let one = Problem {
        inputs: p.inputs.slice(s![..1, ..]).to_owned(),
        grads: p.grads.slice(s![..1, ..]).to_owned(),
        ..p.clone()
    };
    let (x1, g1) = (one.inputs_t::<T>(), one.grads_t::<T>());
    let mut b1 = KfacBlock::<T>::new("kfac", p.shape, KfacMethod::Eigen);
    ok(b1.update_statistics(la, &LayerBatch::new(x1.view(), g1.view()), 0.95))?;
    close("K-FAC block of one example = exact Fisher", &to64(ok(b1.to_dense(la))?.view()), &one.fisher(), t)
}

fn check_dense_is_exact<T: Real>(la: &dyn LinAlg<T>, p: &Problem) -> Check {
    let (x, g) = (p.inputs_t::<T>(), p.grads_t::<T>());
    let batch = LayerBatch::new(x.view(), g.view());
    let t = tol::<T>(p.n() + p.shape.num_params(), 1.0);
    let mut d = ok(DenseBlock::<T>::new("dense", p.shape))?;
    ok(d.update_statistics(la, &batch, 0.95))?;
    let f = p.fisher();
    close("dense block = exact Fisher", &to64(ok(d.to_dense(la))?.view()), &f, t)?;
    let mut diag = DiagonalBlock::<T>::new("diag", p.shape);
    ok(diag.update_statistics(la, &batch, 0.95))?;
    let want = Array2::from_diag(&f.diag());
    close("diagonal block = diag(exact Fisher)", &to64(ok(diag.to_dense(la))?.view()), &want, t)
}

// ---------------------------------------------- precondition and multiply

/// The damped dense curvature that `block` must represent, computed here.
fn reference_damped(
    p: &Problem,
    kind: BlockKind,
    damping: Damping,
    ekfac_basis: Option<(Array2<f64>, Array2<f64>)>,
) -> Array2<f64> {
    let l = damping.lambda();
    match (kind, damping) {
        (BlockKind::Kfac(_), Damping::Tikhonov { .. }) => add_identity(&kron(&p.a_ref(), &p.b_ref()), l),
        (BlockKind::Kfac(_), Damping::Factored { pi, .. }) => {
            let (a, b) = (p.a_ref(), p.b_ref());
            let ta = a.diag().sum() / a.nrows() as f64;
            let tb = b.diag().sum() / b.nrows() as f64;
            let pi = match pi {
                PiRule::Trace if ta > 0.0 && tb > 0.0 => (ta / tb).sqrt(),
                _ => 1.0,
            };
            kron(&add_identity(&a, pi * l.sqrt()), &add_identity(&b, l.sqrt() / pi))
        }
        (BlockKind::Ekfac, _) => {
            // S = diag(Qᵀ F Q): the Frobenius-optimal diagonal in the basis.
            let (ua, ub) = ekfac_basis.expect("basis");
            let q = kron(&ua, &ub);
            let s = (q.t().dot(&p.fisher()).dot(&q)).diag().to_owned();
            let scaled = &q * &s.insert_axis(Axis(0));
            add_identity(&scaled.dot(&q.t()), l)
        }
        (BlockKind::Diagonal, _) => add_identity(&Array2::from_diag(&p.fisher().diag()), l),
        (BlockKind::Dense, _) => add_identity(&p.fisher(), l),
    }
}

fn check_roundtrip<T: Real>(la: &dyn LinAlg<T>, p: &Problem, kind: BlockKind, damping: Damping) -> Check {
    let (x, g, v) = (p.inputs_t::<T>(), p.grads_t::<T>(), p.v_t::<T>());
    let batch = LayerBatch::new(x.view(), g.view());
    let mut block = ok(kind.build::<T>("block", p.shape))?;
    ok(block.update_statistics(la, &batch, 0.95))?;
    ok(block.refresh(la, damping))?;
    ok(block.update_scalings(la, &batch, 0.95))?;

    let basis = (kind == BlockKind::Ekfac).then(|| {
        // Read the basis back through the concrete type.
        let mut e = EkfacBlock::<T>::new("e", p.shape);
        e.update_statistics(la, &batch, 0.95).unwrap();
        e.refresh(la, damping).unwrap();
        let (ua, ub) = e.basis().unwrap();
        (to64(ua), to64(ub))
    });
    let m = reference_damped(p, kind, damping, basis);
    let (r, c) = p.shape.param_dims();
    let k = kappa(&m, damping.lambda().min(fro(&m)));
    let t = tol::<T>(p.n() + p.shape.num_params(), k);

    let mv = to64(ok(block.multiply(la, v.view()))?.view());
    close("multiply", &mv, &unvec(&m.dot(&vec(&p.v)), r, c), t)?;
    let pv = to64(ok(block.precondition(la, v.view()))?.view());
    close("precondition", &pv, &unvec(&solve(&m, &vec(&p.v)), r, c), t)?;
    let back = to64(ok(block.precondition(la, ok(block.multiply(la, v.view()))?.view()))?.view());
    close("precondition(multiply(v))", &back, &p.v, t)
}

fn check_eigen_equals_inverse<T: Real>(la: &dyn LinAlg<T>, p: &Problem) -> Check {
    let (x, g, v) = (p.inputs_t::<T>(), p.grads_t::<T>(), p.v_t::<T>());
    let batch = LayerBatch::new(x.view(), g.view());
    let damping = Damping::factored(p.lambda);
    let mut out = Vec::new();
    for method in [KfacMethod::Eigen, KfacMethod::Inverse] {
        let mut b = KfacBlock::<T>::new("kfac", p.shape, method);
        ok(b.update_statistics(la, &batch, 0.95))?;
        ok(b.refresh(la, damping))?;
        out.push(to64(ok(b.precondition(la, v.view()))?.view()));
    }
    let m = reference_damped(p, BlockKind::Kfac(KfacMethod::Eigen), damping, None);
    close("eigen path = Cholesky path", &out[0], &out[1], tol::<T>(p.shape.num_params(), kappa(&m, p.lambda)))
}

fn check_ekfac_vs_kfac<T: Real>(la: &dyn LinAlg<T>, p: &Problem) -> Check {
    let (x, g, v) = (p.inputs_t::<T>(), p.grads_t::<T>(), p.v_t::<T>());
    let batch = LayerBatch::new(x.view(), g.view());
    let damping = Damping::tikhonov(p.lambda);
    let mut e = EkfacBlock::<T>::new("ekfac", p.shape);
    ok(e.update_statistics(la, &batch, 0.95))?;
    ok(e.refresh(la, damping))?;
    let mut k = KfacBlock::<T>::new("kfac", p.shape, KfacMethod::Eigen);
    ok(k.update_statistics(la, &batch, 0.95))?;
    ok(k.refresh(la, damping))?;
    let m = reference_damped(p, BlockKind::Kfac(KfacMethod::Eigen), damping, None);
    let t = tol::<T>(p.shape.num_params(), kappa(&m, p.lambda));

    // Right after a refresh S = s_B s_Aᵀ: EKFAC is eigen K-FAC.
    let pe = to64(ok(e.precondition(la, v.view()))?.view());
    let pk = to64(ok(k.precondition(la, v.view()))?.view());
    close("EKFAC with S = s_B s_Aᵀ vs K-FAC", &pe, &pk, t)?;
    close(
        "EKFAC dense with S = s_B s_Aᵀ vs A ⊗ B",
        &to64(ok(e.to_dense(la))?.view()),
        &to64(ok(k.to_dense(la))?.view()),
        t,
    )?;

    // With S from the same examples, EKFAC is at least as close to F.
    ok(e.update_scalings(la, &batch, 0.95))?;
    let f = p.fisher();
    let err_e = fro(&(to64(ok(e.to_dense(la))?.view()) - &f));
    let err_k = fro(&(to64(ok(k.to_dense(la))?.view()) - &f));
    let slack = tol::<T>(p.shape.num_params(), 1.0) * fro(&f);
    ensure(err_e <= err_k + slack, || format!("‖F − EKFAC‖ = {err_e:.6e} > ‖F − K-FAC‖ = {err_k:.6e} (+{slack:.1e})"))
}

// ------------------------------------------------------------ bad input

fn check_errors<T: Real>(la: &dyn LinAlg<T>, p: &Problem) -> Check {
    let (x, g, v) = (p.inputs_t::<T>(), p.grads_t::<T>(), p.v_t::<T>());
    let shape = p.shape;
    for kind in [
        BlockKind::Kfac(KfacMethod::Eigen),
        BlockKind::Kfac(KfacMethod::Inverse),
        BlockKind::Ekfac,
        BlockKind::Diagonal,
        BlockKind::Dense,
    ] {
        let mut b = ok(kind.build::<T>("b", shape))?;
        // Not ready before statistics and refresh.
        ensure(matches!(b.precondition(la, v.view()), Err(Error::NotReady { .. })), || {
            format!("{kind:?}: precondition before refresh")
        })?;
        ensure(
            matches!(
                b.refresh(la, Damping::factored(1.0)),
                Err(Error::NotReady { .. }) | Err(Error::UnsupportedDamping { .. })
            ),
            || format!("{kind:?}: refresh without statistics"),
        )?;
        // Wrong shapes, empty batch, non-finite data.
        let wrong = Array2::<T>::zeros((p.n(), shape.d_in + 1));
        ensure(
            matches!(b.accumulate(la, &LayerBatch::new(wrong.view(), g.view())), Err(Error::ShapeMismatch { .. })),
            || format!("{kind:?}: wrong input width"),
        )?;
        let short = g.slice(s![..0, ..]);
        ensure(
            matches!(b.accumulate(la, &LayerBatch::new(x.slice(s![..0, ..]), short)), Err(Error::EmptyBatch { .. })),
            || format!("{kind:?}: empty batch"),
        )?;
        let mut bad = g.clone();
        bad[(0, 0)] = T::nan();
        ensure(
            matches!(b.accumulate(la, &LayerBatch::new(x.view(), bad.view())), Err(Error::NonFinite { .. })),
            || format!("{kind:?}: NaN gradient"),
        )?;
        ok(b.update_statistics(la, &LayerBatch::new(x.view(), g.view()), 0.95))?;
        let damping =
            if kind == BlockKind::Kfac(KfacMethod::Inverse) { Damping::factored(0.1) } else { Damping::tikhonov(0.1) };
        ok(b.refresh(la, damping))?;
        let vt = v.t().to_owned();
        if vt.dim() != v.dim() {
            ensure(matches!(b.precondition(la, vt.view()), Err(Error::ShapeMismatch { .. })), || {
                format!("{kind:?}: transposed gradient")
            })?;
        }
        ensure(matches!(b.refresh(la, Damping::tikhonov(-1.0)), Err(Error::InvalidConfig { .. })), || {
            format!("{kind:?}: negative damping")
        })?;
    }
    // Whole-block damping needs an eigendecomposition.
    let mut inv = KfacBlock::<T>::new("inv", shape, KfacMethod::Inverse);
    ok(inv.update_statistics(la, &LayerBatch::new(x.view(), g.view()), 0.95))?;
    ensure(matches!(inv.refresh(la, Damping::tikhonov(0.1)), Err(Error::UnsupportedDamping { .. })), || {
        "inverse path + Tikhonov".into()
    })?;
    // EKFAC scalings need a basis.
    let mut e = EkfacBlock::<T>::new("e", shape);
    ensure(
        matches!(e.accumulate_scalings(la, &LayerBatch::new(x.view(), g.view())), Err(Error::NotReady { .. })),
        || "scalings before basis".into(),
    )
}

/// Zero gradients and no damping: the curvature is singular, an error says so.
fn check_singular<T: Real>(la: &dyn LinAlg<T>, p: &Problem) -> Check {
    let x = p.inputs_t::<T>();
    let g = Array2::<T>::zeros((p.n(), p.shape.d_out));
    let batch = LayerBatch::new(x.view(), g.view());
    for kind in [BlockKind::Kfac(KfacMethod::Eigen), BlockKind::Ekfac, BlockKind::Diagonal] {
        let mut b = ok(kind.build::<T>("b", p.shape))?;
        ok(b.update_statistics(la, &batch, 0.95))?;
        let r = b.refresh(la, Damping::tikhonov(0.0)).and_then(|_| b.precondition(la, p.v_t::<T>().view()));
        ensure(matches!(r, Err(Error::Singular { .. })), || format!("{kind:?}: singular curvature gave {r:?}"))?;
    }
    Ok(())
}

const CASES: u32 = 128;

macro_rules! suite {
    ($name:ident, $t:ty, $backend:expr) => {
        mod $name {
            use super::*;
            type T = $t;
            fn la() -> Box<dyn LinAlg<T>> {
                Box::new($backend)
            }
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(CASES))]
                #[test] fn factors_are_batch_means(p in problem()) { check_factors::<T>(&*la(), &p)?; }
                #[test] fn moving_average_weights(p in problem()) { check_moving_average::<T>(&*la(), &p)?; }
                #[test] fn kfac_block_is_kronecker_product(p in problem()) { check_kfac_is_kron::<T>(&*la(), &p)?; }
                #[test] fn dense_and_diagonal_blocks_are_exact(p in problem()) { check_dense_is_exact::<T>(&*la(), &p)?; }
                #[test] fn kfac_eigen_tikhonov(p in problem()) { let d = Damping::tikhonov(p.lambda); check_roundtrip::<T>(&*la(), &p, BlockKind::Kfac(KfacMethod::Eigen), d)?; }
                #[test] fn kfac_eigen_factored(p in problem()) { let d = Damping::factored(p.lambda); check_roundtrip::<T>(&*la(), &p, BlockKind::Kfac(KfacMethod::Eigen), d)?; }
                #[test] fn kfac_eigen_factored_pi_one(p in problem()) { let d = Damping::Factored { lambda: p.lambda, pi: PiRule::One }; check_roundtrip::<T>(&*la(), &p, BlockKind::Kfac(KfacMethod::Eigen), d)?; }
                #[test] fn kfac_inverse_factored(p in problem()) { let d = Damping::factored(p.lambda); check_roundtrip::<T>(&*la(), &p, BlockKind::Kfac(KfacMethod::Inverse), d)?; }
                #[test] fn ekfac_tikhonov(p in problem()) { let d = Damping::tikhonov(p.lambda); check_roundtrip::<T>(&*la(), &p, BlockKind::Ekfac, d)?; }
                #[test] fn diagonal_tikhonov(p in problem()) { let d = Damping::tikhonov(p.lambda); check_roundtrip::<T>(&*la(), &p, BlockKind::Diagonal, d)?; }
                #[test] fn dense_tikhonov(p in problem()) { let d = Damping::tikhonov(p.lambda); check_roundtrip::<T>(&*la(), &p, BlockKind::Dense, d)?; }
                #[test] fn kfac_eigen_path_equals_cholesky_path(p in problem()) { check_eigen_equals_inverse::<T>(&*la(), &p)?; }
                #[test] fn ekfac_is_no_worse_than_kfac(p in problem()) { check_ekfac_vs_kfac::<T>(&*la(), &p)?; }
                #[test] fn bad_input_is_an_error(p in problem()) { check_errors::<T>(&*la(), &p)?; }
                #[test] fn singular_curvature_is_an_error(p in problem()) { check_singular::<T>(&*la(), &p)?; }
            }
        }
    };
}

suite!(faer_f64, f64, Faer::sequential());
suite!(faer_f32, f32, Faer::sequential());
suite!(faer_f64_threads, f64, Faer::with_threads(2));
suite!(nalgebra_f64, f64, Nalgebra);
suite!(nalgebra_f32, f32, Nalgebra);

// ------------------------------------------------- backends agree

fn check_backends_agree<T: Real>(p: &Problem) -> Check
where
    Faer: LinAlg<T>,
    Nalgebra: LinAlg<T>,
{
    let (x, g, v) = (p.inputs_t::<T>(), p.grads_t::<T>(), p.v_t::<T>());
    let batch = LayerBatch::new(x.view(), g.view());
    let backends: [Box<dyn LinAlg<T>>; 2] = [Box::new(Faer::sequential()), Box::new(Nalgebra)];
    for kind in [BlockKind::Kfac(KfacMethod::Eigen), BlockKind::Kfac(KfacMethod::Inverse), BlockKind::Ekfac] {
        let damping = if kind == BlockKind::Kfac(KfacMethod::Inverse) {
            Damping::factored(p.lambda)
        } else {
            Damping::tikhonov(p.lambda)
        };
        let mut out = Vec::new();
        for la in &backends {
            let la = &**la;
            let mut b = ok(kind.build::<T>("b", p.shape))?;
            ok(b.update_statistics(la, &batch, 0.95))?;
            ok(b.refresh(la, damping))?;
            ok(b.update_scalings(la, &batch, 0.95))?;
            out.push(to64(ok(b.precondition(la, v.view()))?.view()));
        }
        let m = reference_damped(p, BlockKind::Kfac(KfacMethod::Eigen), Damping::tikhonov(p.lambda), None);
        close(
            &format!("{kind:?}: faer vs nalgebra"),
            &out[0],
            &out[1],
            tol::<T>(p.shape.num_params(), kappa(&m, p.lambda)),
        )?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]
    #[test] fn faer_and_nalgebra_agree_f64(p in problem()) { check_backends_agree::<f64>(&p)?; }
    #[test] fn faer_and_nalgebra_agree_f32(p in problem()) { check_backends_agree::<f32>(&p)?; }
}

/// A layer of realistic width: the backends agree on K-FAC and EKFAC
/// preconditioning of a 64 × 49 layer.
#[test]
fn backends_agree_on_a_wider_layer() {
    let mut rng = Lcg::new(7);
    let shape = LayerShape::new(48, 64);
    let x = rng.matrix(200, 48);
    let g = rng.matrix(200, 64);
    let v = rng.matrix(64, 49);
    let batch = LayerBatch::new(x.view(), g.view());
    let (f, n) = (Faer::new(), Nalgebra);
    for kind in [BlockKind::Kfac(KfacMethod::Eigen), BlockKind::Ekfac] {
        let mut outs = Vec::new();
        for la in [&f as &dyn LinAlg<f64>, &n] {
            let mut b = kind.build::<f64>("b", shape).unwrap();
            b.update_statistics(la, &batch, 0.95).unwrap();
            b.refresh(la, Damping::tikhonov(1e-2)).unwrap();
            b.update_scalings(la, &batch, 0.95).unwrap();
            outs.push(b.precondition(la, v.view()).unwrap());
        }
        let e = rel_err(&outs[0], &outs[1]);
        assert!(e < tol::<f64>(shape.num_params(), 1e3), "{kind:?}: {e}");
    }
}
