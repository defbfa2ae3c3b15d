//! The step schedule of `Preconditioner`: statistics, refresh and scalings
//! periods, damping schedules, and its errors.

mod common;

use common::*;
use kfac_core::{
    BlockKind, CurvatureBlock, Damping, DampingKind, DampingSchedule, EkfacBlock, Error, KfacBlock, KfacMethod,
    LayerBatch, LayerShape, LinAlg, Preconditioner, PreconditionerConfig, Schedule,
};
use kfac_linalg_faer::Faer;
use ndarray::Array2;

fn batches(seed: u64, shapes: &[LayerShape], n: usize) -> Vec<(Array2<f64>, Array2<f64>)> {
    let mut rng = Lcg::new(seed);
    shapes.iter().map(|s| (rng.matrix(n, s.d_in), rng.matrix(n, s.d_out))).collect()
}

fn views(b: &[(Array2<f64>, Array2<f64>)]) -> Vec<LayerBatch<'_, f64>> {
    b.iter().map(|(x, g)| LayerBatch::new(x.view(), g.view())).collect()
}

fn grads(seed: u64, shapes: &[LayerShape]) -> Vec<Array2<f64>> {
    let mut rng = Lcg::new(seed);
    shapes.iter().map(|s| rng.matrix(s.d_out, s.a_dim())).collect()
}

const SHAPES: [LayerShape; 2] =
    [LayerShape { d_in: 4, d_out: 3, bias: true }, LayerShape { d_in: 3, d_out: 2, bias: false }];

/// The preconditioner refreshes on its period and in between keeps the old
/// cache while the statistics move on: compare with blocks driven by hand.
#[test]
fn refresh_period_is_honoured() {
    let la = Faer::sequential();
    let damping = Damping::tikhonov(0.05);
    let config = PreconditionerConfig {
        block: BlockKind::Kfac(KfacMethod::Eigen),
        damping: DampingSchedule { kind: DampingKind::Tikhonov, lambda: Schedule::Constant(0.05) },
        decay: Schedule::Constant(0.8),
        refresh_period: 3,
        ..Default::default()
    };
    let mut pre = Preconditioner::<f64>::new(config, &SHAPES).unwrap();
    let mut manual: Vec<KfacBlock<f64>> = SHAPES.iter().map(|&s| KfacBlock::new("m", s, KfacMethod::Eigen)).collect();
    let g = grads(99, &SHAPES);
    let gv: Vec<_> = g.iter().map(|x| x.view()).collect();
    for step in 0..7 {
        let data = batches(step, &SHAPES, 6);
        pre.update(&la, Some(&views(&data))).unwrap();
        for (b, batch) in manual.iter_mut().zip(views(&data)) {
            b.update_statistics(&la, &batch, 0.8).unwrap();
            if step % 3 == 0 {
                b.refresh(&la, damping).unwrap();
            }
        }
        let got = pre.precondition(&la, &gv).unwrap();
        for (i, b) in manual.iter().enumerate() {
            let want = b.precondition(&la, gv[i]).unwrap();
            assert!(rel_err(&got[i], &want) < 1e-12, "step {step}, layer {i}");
        }
    }
    assert_eq!(pre.step(), 7);
}

/// EKFAC's scalings are updated after the refresh, from the same batch.
#[test]
fn ekfac_scalings_follow_the_refresh() {
    let la = Faer::sequential();
    let config = PreconditionerConfig { refresh_period: 2, decay: Schedule::Constant(0.5), ..Default::default() };
    let mut pre = Preconditioner::<f64>::new(config, &SHAPES[..1]).unwrap();
    let mut manual = EkfacBlock::<f64>::new("m", SHAPES[0]);
    let d = Damping::tikhonov(1e-3);
    let g = grads(5, &SHAPES[..1]);
    for step in 0..5 {
        let data = batches(step + 10, &SHAPES[..1], 5);
        let v = views(&data);
        pre.update(&la, Some(&v)).unwrap();
        manual.update_statistics(&la, &v[0], 0.5).unwrap();
        if step % 2 == 0 {
            manual.refresh(&la, d).unwrap();
        }
        manual.update_scalings(&la, &v[0], 0.5).unwrap();
        let got = pre.precondition(&la, &[g[0].view()]).unwrap();
        let want = manual.precondition(&la, g[0].view()).unwrap();
        assert!(rel_err(&got[0], &want) < 1e-12, "step {step}");
    }
}

/// A damping schedule reaches the blocks at every step, not only at refreshes.
#[test]
fn damping_schedule_is_applied_every_step() {
    let la = Faer::sequential();
    for kind in [BlockKind::Kfac(KfacMethod::Eigen), BlockKind::Kfac(KfacMethod::Inverse), BlockKind::Ekfac] {
        let damping_kind = if kind == BlockKind::Kfac(KfacMethod::Inverse) {
            DampingKind::Factored(Default::default())
        } else {
            DampingKind::Tikhonov
        };
        let config = PreconditionerConfig {
            block: kind,
            damping: DampingSchedule { kind: damping_kind, lambda: Schedule::function(|k| 1.0 / (k as f64 + 1.0)) },
            refresh_period: 10,
            ..Default::default()
        };
        let mut pre = Preconditioner::<f64>::new(config, &SHAPES).unwrap();
        for step in 0..4 {
            let data = batches(step, &SHAPES, 4);
            pre.update(&la, Some(&views(&data))).unwrap();
            for b in pre.blocks() {
                assert_eq!(b.damping().unwrap().lambda(), 1.0 / (step as f64 + 1.0), "{kind:?} step {step}");
            }
        }
    }
}

/// With a statistics period, the steps in between need no batches.
#[test]
fn statistics_period_skips_batches() {
    let la = Faer::sequential();
    let config = PreconditionerConfig {
        block: BlockKind::Kfac(KfacMethod::Eigen),
        stats_period: 3,
        refresh_period: 3,
        ..Default::default()
    };
    let mut pre = Preconditioner::<f64>::new(config, &SHAPES).unwrap();
    let data = batches(1, &SHAPES, 4);
    for step in 0..7 {
        assert_eq!(pre.needs_statistics(), step % 3 == 0, "step {step}");
        if pre.needs_statistics() {
            pre.update(&la, Some(&views(&data))).unwrap();
        } else {
            pre.update(&la, None).unwrap();
        }
    }
    // EKFAC needs its scalings every step by default.
    let mut ekfac =
        Preconditioner::<f64>::new(PreconditionerConfig { stats_period: 3, ..Default::default() }, &SHAPES).unwrap();
    ekfac.update(&la, Some(&views(&data))).unwrap();
    assert!(ekfac.needs_statistics());
    assert!(matches!(ekfac.update(&la, None), Err(Error::NotReady { .. })));
}

#[test]
fn configuration_and_input_errors() {
    let la = Faer::sequential();
    let bad = PreconditionerConfig { refresh_period: 0, ..Default::default() };
    assert!(matches!(Preconditioner::<f64>::new(bad, &SHAPES), Err(Error::InvalidConfig { .. })));
    let bad_decay = PreconditionerConfig { decay: Schedule::Constant(1.5), ..Default::default() };
    let mut pre = Preconditioner::<f64>::new(bad_decay, &SHAPES).unwrap();
    let data = batches(1, &SHAPES, 4);
    assert!(matches!(pre.update(&la, Some(&views(&data))), Err(Error::InvalidConfig { .. })));
    let neg = PreconditionerConfig {
        damping: DampingSchedule { kind: DampingKind::Tikhonov, lambda: Schedule::Constant(f64::NAN) },
        ..Default::default()
    };
    let mut pre = Preconditioner::<f64>::new(neg, &SHAPES).unwrap();
    assert!(matches!(pre.update(&la, Some(&views(&data))), Err(Error::InvalidConfig { .. })));
    let mut pre = Preconditioner::<f64>::new(PreconditionerConfig::default(), &SHAPES).unwrap();
    assert!(matches!(pre.update(&la, Some(&views(&data[..1]))), Err(Error::ShapeMismatch { .. })));
    pre.update(&la, Some(&views(&data))).unwrap();
    let g = grads(3, &SHAPES);
    assert!(matches!(pre.precondition(&la, &[g[0].view()]), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(pre.precondition(&la, &[g[1].view(), g[0].view()]), Err(Error::ShapeMismatch { .. })));
    assert!(pre.memory_bytes() > 0);
}

/// Memory is reported for statistics and caches, and grows with the cache.
#[test]
fn memory_is_reported() {
    let la = Faer::sequential();
    let shape = LayerShape::new(10, 6);
    let (x, g) = (Lcg::new(1).matrix(8, 10), Lcg::new(2).matrix(8, 6));
    let batch = LayerBatch::new(x.view(), g.view());
    let mut b = KfacBlock::<f64>::new("b", shape, KfacMethod::Eigen);
    let f64s = std::mem::size_of::<f64>();
    // Two averages (value + pending) of 11² and 6².
    assert_eq!(b.memory_bytes(), 2 * (121 + 36) * f64s);
    b.update_statistics(&la, &batch, 0.9).unwrap();
    b.refresh(&la, Damping::tikhonov(0.1)).unwrap();
    // Plus the eigenbases, eigenvalues and the 6 × 11 denominators.
    assert_eq!(b.memory_bytes(), (2 * (121 + 36) + 121 + 36 + 11 + 6 + 66) * f64s);
}

/// A backend that delegates to another but never refreshes blocks side by side.
#[derive(Debug)]
struct OneByOne<L>(L);

impl<L: LinAlg<f64>> LinAlg<f64> for OneByOne<L> {
    fn name(&self) -> &'static str {
        "one-by-one"
    }
    fn gemm(
        &self,
        alpha: f64,
        a: ndarray::ArrayView2<'_, f64>,
        b: ndarray::ArrayView2<'_, f64>,
        beta: f64,
        c: ndarray::ArrayViewMut2<'_, f64>,
    ) -> Result<(), kfac_core::LinAlgError> {
        self.0.gemm(alpha, a, b, beta, c)
    }
    fn eigh(&self, a: ndarray::ArrayView2<'_, f64>) -> Result<kfac_core::SymEig<f64>, kfac_core::LinAlgError> {
        self.0.eigh(a)
    }
    fn spd_inverse(&self, a: ndarray::ArrayView2<'_, f64>) -> Result<Array2<f64>, kfac_core::LinAlgError> {
        self.0.spd_inverse(a)
    }
}

/// Refreshing the blocks side by side on a 2-thread pool (what faer and
/// nalgebra ask for) gives bit for bit the preconditioner of refreshing them
/// one after the other, for every block kind.
#[test]
fn side_by_side_refresh_equals_one_by_one() {
    let shapes = [LayerShape::new(5, 4), LayerShape::new(4, 6), LayerShape::new(6, 3), LayerShape::new(3, 2)];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let backends: [(&dyn LinAlg<f64>, &dyn LinAlg<f64>); 2] = [
        (&Faer::new(), &OneByOne(Faer::sequential())),
        (&kfac_linalg_nalgebra::Nalgebra, &OneByOne(kfac_linalg_nalgebra::Nalgebra)),
    ];
    for (side, one) in backends {
        assert!(side.concurrent_decompositions().is_some() && one.concurrent_decompositions().is_none());
        for (block, damping) in [
            (BlockKind::Kfac(KfacMethod::Eigen), DampingSchedule::tikhonov(0.1)),
            (BlockKind::Kfac(KfacMethod::Inverse), DampingSchedule::factored(0.1)),
            (BlockKind::Ekfac, DampingSchedule::tikhonov(0.1)),
        ] {
            let config = PreconditionerConfig { block, damping, refresh_period: 2, ..Default::default() };
            let mut a = Preconditioner::<f64>::new(config.clone(), &shapes).unwrap();
            let mut b = Preconditioner::<f64>::new(config, &shapes).unwrap();
            let g = grads(5, &shapes);
            let gv: Vec<_> = g.iter().map(|x| x.view()).collect();
            for step in 0..5 {
                let data = batches(100 + step, &shapes, 7);
                pool.install(|| a.update(side, Some(&views(&data)))).unwrap();
                b.update(one, Some(&views(&data))).unwrap();
                let pa = pool.install(|| a.precondition(side, &gv)).unwrap();
                let pb = b.precondition(one, &gv).unwrap();
                assert_eq!(pa, pb, "{} {block:?} step {step}", side.name());
            }
        }
    }
}
