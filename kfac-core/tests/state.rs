//! Saving and restoring curvature state, the non-finite policy, the health
//! report and the `f32` to `f64` retry.

mod common;

use common::*;
use kfac_core::{
    BlockKind, BlockState, DampingKind, DampingSchedule, Error, KfacMethod, LayerBatch, LayerShape, LinAlg,
    LinAlgError, NonFinitePolicy, PiRule, Preconditioner, PreconditionerConfig, Real, Schedule, SymEig,
};
use kfac_linalg_faer::Faer;
use kfac_linalg_nalgebra::Nalgebra;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

const SHAPES: [LayerShape; 2] =
    [LayerShape { d_in: 5, d_out: 4, bias: true }, LayerShape { d_in: 4, d_out: 3, bias: false }];

fn data<T: Real>(seed: u64, n: usize) -> Vec<(Array2<T>, Array2<T>)> {
    let mut rng = Lcg::new(seed);
    SHAPES.iter().map(|s| (cast(&rng.matrix(n, s.d_in)), cast(&rng.matrix(n, s.d_out)))).collect()
}

fn views<T: Real>(b: &[(Array2<T>, Array2<T>)]) -> Vec<LayerBatch<'_, T>> {
    b.iter().map(|(x, g)| LayerBatch::new(x.view(), g.view())).collect()
}

fn grads<T: Real>(seed: u64) -> Vec<Array2<T>> {
    let mut rng = Lcg::new(seed);
    SHAPES.iter().map(|s| cast(&rng.matrix(s.d_out, s.a_dim()))).collect()
}

/// Every block kind with a damping it supports.
fn configs() -> Vec<PreconditionerConfig> {
    let tik = DampingSchedule { kind: DampingKind::Tikhonov, lambda: Schedule::Constant(0.05) };
    let fac = DampingSchedule { kind: DampingKind::Factored(PiRule::Trace), lambda: Schedule::Constant(0.05) };
    [
        (BlockKind::Kfac(KfacMethod::Eigen), tik.clone()),
        (BlockKind::Kfac(KfacMethod::Eigen), fac.clone()),
        (BlockKind::Kfac(KfacMethod::Inverse), fac),
        (BlockKind::Ekfac, tik.clone()),
        (BlockKind::Diagonal, tik.clone()),
        (BlockKind::Dense, tik),
    ]
    .into_iter()
    .map(|(block, damping)| PreconditionerConfig {
        block,
        damping,
        decay: Schedule::Constant(0.9),
        refresh_period: 3,
        ..Default::default()
    })
    .collect()
}

fn same<T: Real>(a: &[Array2<T>], b: &[Array2<T>]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.iter().zip(y).all(|(p, q)| p.to_f64_exact().to_bits() == q.to_f64_exact().to_bits()))
}

/// A preconditioner restored from a saved state continues exactly as the
/// original: the same directions, bit for bit, for every later step.
fn resume_is_exact<T: Real>(la: &dyn LinAlg<T>) {
    for config in configs() {
        let mut original = Preconditioner::<T>::new(config.clone(), &SHAPES).unwrap();
        for step in 0..4 {
            original.update(la, Some(&views(&data::<T>(step, 7)))).unwrap();
        }
        let saved = original.state();
        let mut resumed = Preconditioner::<T>::new(config.clone(), &SHAPES).unwrap();
        resumed.restore(&saved).unwrap();
        assert_eq!(resumed.state(), saved, "{:?}", config.block);
        assert_eq!(resumed.step(), 4);
        let g = grads::<T>(9);
        let gv: Vec<_> = g.iter().map(|x| x.view()).collect();
        for step in 4..9 {
            let d = data::<T>(step, 7);
            original.update(la, Some(&views(&d))).unwrap();
            resumed.update(la, Some(&views(&d))).unwrap();
            let a = original.precondition(la, &gv).unwrap();
            let b = resumed.precondition(la, &gv).unwrap();
            assert!(same(&a, &b), "{:?} ({}) step {step}", config.block, la.name());
        }
        assert_eq!(original.state(), resumed.state());
        assert_eq!(original.health(), resumed.health());
    }
}

#[test]
fn resume_is_exact_f64_faer() {
    resume_is_exact::<f64>(&Faer::new());
}

#[test]
fn resume_is_exact_f32_faer() {
    resume_is_exact::<f32>(&Faer::new());
}

#[test]
fn resume_is_exact_f64_nalgebra() {
    resume_is_exact::<f64>(&Nalgebra);
}

#[test]
fn resume_is_exact_f32_nalgebra() {
    resume_is_exact::<f32>(&Nalgebra);
}

/// A state saved in the middle of a step (statistics accumulated, not yet
/// committed) keeps the pending sums.
#[test]
fn pending_sums_are_saved() {
    let la = Faer::sequential();
    let shape = SHAPES[0];
    let mut block = BlockKind::Ekfac.build::<f64>("b", shape).unwrap();
    let d = data::<f64>(1, 6);
    block.update_statistics(&la, &LayerBatch::new(d[0].0.view(), d[0].1.view()), 0.9).unwrap();
    block.accumulate(&la, &LayerBatch::new(d[0].0.view(), d[0].1.view())).unwrap();
    let st = block.state();
    assert!(st.tensors.contains_key("A.pending") && st.scalars["A.pending_count"] == 6.0);
    let mut copy = block.restored(&st).unwrap();
    block.commit(0.5).unwrap();
    copy.commit(0.5).unwrap();
    assert_eq!(block.state(), copy.state());
}

/// Damaged or foreign states are refused with a message naming the
/// problem, and the preconditioner is left as it was.
#[test]
fn bad_states_are_refused_and_change_nothing() {
    let la = Faer::sequential();
    let config = configs().remove(3); // EKFAC
    let mut pre = Preconditioner::<f64>::new(config.clone(), &SHAPES).unwrap();
    pre.update(&la, Some(&views(&data::<f64>(0, 7)))).unwrap();
    let good = pre.state();
    let mut target = Preconditioner::<f64>::new(config, &SHAPES).unwrap();
    let before = target.state();
    type Damage = Box<dyn Fn(&mut BlockState<f64>)>;
    let cases: Vec<(&str, Damage)> = vec![
        ("kind", Box::new(|s| s.kind = "kfac-eigen".into())),
        ("shape", Box::new(|s| s.shape.d_in += 1)),
        ("missing", Box::new(|s| drop(s.tensors.remove("ua")))),
        (
            "extra",
            Box::new(|s| {
                s.scalars.insert("surprise".into(), 1.0);
            }),
        ),
        ("dims", Box::new(|s| drop(s.tensors.insert("sa".into(), ndarray::ArrayD::zeros(vec![2]))))),
        ("nan", Box::new(|s| s.tensors.get_mut("A").unwrap()[[0, 0]] = f64::NAN)),
        (
            "weight",
            Box::new(|s| {
                s.scalars.insert("A.weight".into(), -1.0);
            }),
        ),
        (
            "count",
            Box::new(|s| {
                s.scalars.insert("count.refreshes".into(), 1.5);
            }),
        ),
        (
            "damping",
            Box::new(|s| {
                s.scalars.insert("damping.kind".into(), 7.0);
            }),
        ),
        (
            "factored",
            Box::new(|s| {
                s.scalars.insert("damping.kind".into(), 1.0);
            }),
        ),
        ("no basis", Box::new(|s| ["ua", "ub", "sa", "sb"].iter().for_each(|k| drop(s.tensors.remove(*k))))),
    ];
    for (what, damage) in cases {
        let mut bad = good.clone();
        damage(&mut bad.blocks[1]);
        let err = target.restore(&bad).unwrap_err();
        assert!(matches!(err, Error::InvalidState { .. }), "{what}: {err}");
        assert_eq!(target.state(), before, "{what}: the target changed");
    }
    let mut short = good.clone();
    short.blocks.pop();
    assert!(matches!(target.restore(&short), Err(Error::InvalidState { .. })));
    target.restore(&good).unwrap();
    assert_eq!(target.state(), good);
}

/// A batch with a NaN: skipped (that layer's statistics unchanged, counted)
/// or refused (nothing changed), as configured.
#[test]
fn non_finite_batches_follow_the_policy() {
    let la = Faer::sequential();
    for policy in [NonFinitePolicy::Skip, NonFinitePolicy::Error] {
        let config = PreconditionerConfig { on_non_finite: policy, ..configs().remove(3) };
        let mut pre = Preconditioner::<f64>::new(config, &SHAPES).unwrap();
        pre.update(&la, Some(&views(&data::<f64>(0, 7)))).unwrap();
        let before = pre.state();
        let mut bad = data::<f64>(1, 7);
        bad[1].1[[2, 1]] = f64::NAN;
        match policy {
            NonFinitePolicy::Skip => {
                let report = pre.update(&la, Some(&views(&bad))).unwrap();
                assert_eq!(report.skipped, vec![1]);
                let after = pre.state();
                assert_eq!(after.blocks[1], before.blocks[1], "the skipped layer changed");
                assert_ne!(after.blocks[0], before.blocks[0], "the good layer did not move");
                let health = pre.health();
                assert_eq!((health[0].skipped_updates, health[1].skipped_updates), (0, 1));
            }
            NonFinitePolicy::Error => {
                let err = pre.update(&la, Some(&views(&bad))).unwrap_err();
                assert!(matches!(err, Error::NonFinite { .. }), "{err}");
                assert_eq!(pre.state(), before);
            }
        }
    }
}

/// Statistics that overflow `f32` (finite inputs whose squares do not fit)
/// are dropped, not folded into the factors.
#[test]
fn overflowing_statistics_are_skipped() {
    let la = Faer::sequential();
    let mut pre = Preconditioner::<f32>::new(configs().remove(0), &SHAPES).unwrap();
    pre.update(&la, Some(&views(&data::<f32>(0, 7)))).unwrap();
    let before = pre.state();
    let mut big = data::<f32>(1, 7);
    big[0].0.fill(1e30);
    let report = pre.update(&la, Some(&views(&big))).unwrap();
    assert_eq!(report.skipped, vec![0]);
    assert_eq!(pre.state().blocks[0], before.blocks[0]);
    let g = grads::<f32>(3);
    let gv: Vec<_> = g.iter().map(|x| x.view()).collect();
    let d = pre.precondition(&la, &gv).unwrap();
    assert!(d.iter().all(|x| x.iter().all(|v| v.is_finite())));
}

/// The health report: the eigenvalue range of the estimate, the condition
/// number of the damped estimate, the damping and the refresh count.
#[test]
fn health_reports_the_spectrum() {
    let la = Faer::sequential();
    for config in configs() {
        let mut pre = Preconditioner::<f64>::new(config.clone(), &SHAPES).unwrap();
        for step in 0..4 {
            pre.update(&la, Some(&views(&data::<f64>(step, 7)))).unwrap();
        }
        for (h, block) in pre.health().iter().zip(pre.blocks()) {
            assert_eq!(h.damping, Some(0.05));
            match config.block {
                BlockKind::Kfac(KfacMethod::Inverse) | BlockKind::Dense => assert_eq!(h.min_eigenvalue, None),
                _ => {
                    let (lo, hi) = (h.min_eigenvalue.unwrap(), h.max_eigenvalue.unwrap());
                    assert!(0.0 <= lo && lo <= hi, "{lo} {hi}");
                    let c = h.condition.unwrap();
                    assert!((c - (hi + 0.05) / (lo + 0.05)).abs() <= 1e-12 * c);
                }
            }
            if let BlockKind::Kfac(KfacMethod::Eigen) = config.block {
                // The estimate's eigenvalues are the products s_B s_A: compare
                // with the dense A ⊗ B.
                let dense = block.to_dense(&la).unwrap();
                let e = la.eigh(dense.view()).unwrap().values;
                let (lo, hi) = (e[0].max(0.0), e[e.len() - 1]);
                assert!((h.max_eigenvalue.unwrap() - hi).abs() <= 1e-10 * hi);
                assert!((h.min_eigenvalue.unwrap() - lo).abs() <= 1e-10 * hi);
            }
            if !matches!(config.block, BlockKind::Diagonal) {
                // Refreshed at steps 0 and 3.
                assert_eq!(h.refreshes, 2, "{:?}", config.block);
            }
            assert_eq!(h.skipped_updates, 0);
        }
    }
}

/// An `f32` backend whose decompositions always fail, with faer as its
/// `f64` twin (or without one).
#[derive(Debug)]
struct Failing {
    inner: Faer,
    twin: bool,
}

impl LinAlg<f32> for Failing {
    fn name(&self) -> &'static str {
        "failing"
    }
    fn gemm(
        &self,
        alpha: f32,
        a: ArrayView2<'_, f32>,
        b: ArrayView2<'_, f32>,
        beta: f32,
        c: ArrayViewMut2<'_, f32>,
    ) -> Result<(), LinAlgError> {
        self.inner.gemm(alpha, a, b, beta, c)
    }
    fn eigh(&self, _a: ArrayView2<'_, f32>) -> Result<SymEig<f32>, LinAlgError> {
        Err(LinAlgError::NoConvergence { op: "eigh" })
    }
    fn spd_inverse(&self, _a: ArrayView2<'_, f32>) -> Result<Array2<f32>, LinAlgError> {
        Err(LinAlgError::NotPositiveDefinite { index: 0 })
    }
    fn f64_backend(&self) -> Option<&dyn LinAlg<f64>> {
        if self.twin { Some(&self.inner) } else { None }
    }
}

/// A failed `f32` decomposition is redone in `f64` and counted; without an
/// `f64` twin it is a typed error.
#[test]
fn failed_f32_decompositions_are_retried_in_f64() {
    for (block, damping) in [
        (BlockKind::Kfac(KfacMethod::Eigen), DampingKind::Tikhonov),
        (BlockKind::Kfac(KfacMethod::Inverse), DampingKind::Factored(PiRule::Trace)),
        (BlockKind::Ekfac, DampingKind::Tikhonov),
    ] {
        let config = PreconditionerConfig {
            block,
            damping: DampingSchedule { kind: damping, lambda: Schedule::Constant(0.05) },
            ..Default::default()
        };
        let d = data::<f32>(0, 7);
        let failing = Failing { inner: Faer::sequential(), twin: true };
        let mut pre = Preconditioner::<f32>::new(config.clone(), &SHAPES).unwrap();
        pre.update(&failing, Some(&views(&d))).unwrap();
        let mut reference = Preconditioner::<f32>::new(config.clone(), &SHAPES).unwrap();
        reference.update(&Faer::sequential(), Some(&views(&d))).unwrap();
        assert!(pre.health().iter().all(|h| h.f64_retries == 2), "{:?}: {:?}", block, pre.health());
        let g = grads::<f32>(1);
        let gv: Vec<_> = g.iter().map(|x| x.view()).collect();
        let (a, b) =
            (pre.precondition(&failing, &gv).unwrap(), reference.precondition(&Faer::sequential(), &gv).unwrap());
        for (x, y) in a.iter().zip(&b) {
            assert!(rel_err(&to64(x.view()), &to64(y.view())) < 1e-4, "{block:?}");
        }
        let alone = Failing { inner: Faer::sequential(), twin: false };
        let mut pre = Preconditioner::<f32>::new(config, &SHAPES).unwrap();
        let err = pre.update(&alone, Some(&views(&d))).unwrap_err();
        assert!(matches!(err, Error::Decomposition { .. }), "{err}");
    }
}

/// A factor like the autoencoder's input factor with `--damping 1e-12`: a
/// few large, sparse inputs (rank 6 of 60, 20 coordinates always zero), so
/// that its round-off in `f32` is far above the damping. The Cholesky
/// inverse of the damped factor fails in `f32`, and in `f64` from the
/// rounded `f32` matrix. The block must still refresh: the damped factor is
/// inverted through its eigendecomposition with the eigenvalues raised to
/// the damping, counted as an eigen fallback, and the inverse is that of
/// the repaired factor (checked in `f64` against the clamped dense
/// reference).
#[test]
fn numerically_singular_damped_factors_fall_back_to_the_eigenbasis() {
    use kfac_core::{CurvatureBlock, Damping, KfacBlock};
    let shape = LayerShape::new(60, 8);
    let mut rng = Lcg::new(11);
    let x64 = Array2::from_shape_fn((6, 60), |(_, j)| if j < 20 { 0.0 } else { 255.0 * rng.next().abs() });
    let g64 = rng.matrix(6, 8);
    let (x, g): (Array2<f32>, Array2<f32>) = (cast(&x64), cast(&g64));
    for la in [&Faer::default() as &dyn LinAlg<f32>, &Nalgebra as &dyn LinAlg<f32>] {
        let mut block = KfacBlock::<f32>::new("layer0", shape, KfacMethod::Inverse);
        block.update_statistics(la, &LayerBatch::new(x.view(), g.view()), 0.95).unwrap();
        let damping = Damping::factored(1e-12);
        block.refresh(la, damping).unwrap_or_else(|e| panic!("{}: {e}", la.name()));
        let h = block.health();
        assert!(h.eigen_fallbacks >= 1, "{}: {h:?}", la.name());
        // The reference: the damped factor A + δ_A I in f64, eigenvalues
        // raised to δ_A, inverted.
        let a = to64(block.factors().a());
        let md = |m: &Array2<f64>| m.diag().sum() / m.nrows() as f64;
        let b = to64(block.factors().b());
        let pi = (md(&a) / md(&b)).sqrt();
        let da = f64::from((pi * 1e-6) as f32);
        let la64 = la.f64_backend().unwrap();
        let e = la64.eigh(add_identity(&a, da).view()).unwrap();
        let s = e.values.mapv(|v| v.max(da));
        let inv_ref = (&e.vectors * &s.mapv(|v| 1.0 / v).insert_axis(ndarray::Axis(0))).dot(&e.vectors.t());
        // The preconditioned direction is finite, and A's inverse is the
        // reference's.
        let v: Array2<f32> = cast(&rng.matrix(8, 61));
        let d = to64(block.precondition(la, v.view()).unwrap().view());
        assert!(d.iter().all(|x| x.is_finite()));
        let st = block.state();
        let a_inv = to64(st.tensors["a_inv"].view().into_dimensionality::<ndarray::Ix2>().unwrap());
        let err = rel_err(&a_inv, &inv_ref);
        assert!(err < 1e-4, "{}: |A_inv - ref| / |ref| = {err}", la.name());
        // Saved and restored, the block keeps its count.
        let restored = block.restored(&st).unwrap();
        assert_eq!(restored.health().eigen_fallbacks, h.eigen_fallbacks);
    }
    // Without damping there is no floor: the error stays.
    let mut block = KfacBlock::<f32>::new("layer0", shape, KfacMethod::Inverse);
    block.update_statistics(&Faer::default(), &LayerBatch::new(x.view(), g.view()), 0.95).unwrap();
    assert!(block.refresh(&Faer::default(), Damping::factored(0.0)).is_err());
}
