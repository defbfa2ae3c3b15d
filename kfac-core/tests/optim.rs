//! kfac-core's optimizer on models of its own (neither kfac-nn's MLP nor any
//! framework's): a two-layer tanh network with hand-written forward,
//! backward and forward-mode passes, and a linear model. They check the
//! finite-difference fallback against exact Jacobian-vector products, the
//! adaptive rule against the exact quadratic model, the fixed rule against
//! its formula, refused steps, validation in the run's precision, and the
//! state round trip.

use kfac_core::optim::{
    AdaptiveConfig, CurvatureConfig, CurvatureModel, FiniteDifferences, FixedRule, KfacConfig, KfacOptimizer,
    NoCurvature, OutputModel, StepInput, UpdateRule,
};
use kfac_core::{Error, LayerBatch, LayerShape, Loss, NonFinitePolicy, Preconditioner, Real, Rng};
use kfac_linalg_faer::Faer;
use ndarray::{Array2, ArrayView2, Axis, s};

/// z₁ = x W₁ᵀ + b₁, h = tanh(z₁), y = h W₂ᵀ + b₂ on a fixed batch, the
/// loss ½‖y − t‖² averaged over the batch; parameters in the [W | b] layout.
struct TwoLayer<T> {
    x: Array2<T>,
    t: Array2<T>,
    w: Vec<Array2<T>>,
}

fn cols<T: Real>(w: &Array2<T>) -> usize {
    w.ncols() - 1
}

fn affine<T: Real>(x: &Array2<T>, w: &Array2<T>) -> Array2<T> {
    x.dot(&w.slice(s![.., ..cols(w)]).t()) + w.column(cols(w))
}

impl<T: Real> TwoLayer<T> {
    fn new(n: usize, d: usize, hidden: usize, k: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut r = |rows, cols, scale: f64| {
            Array2::from_shape_simple_fn((rows, cols), || T::from_f64_lossy(scale * rng.normal()))
        };
        let x = r(n, d, 1.0);
        let t = r(n, k, 1.0);
        let w = vec![r(hidden, d + 1, 0.7), r(k, hidden + 1, 0.5)];
        Self { x, t, w }
    }

    fn shapes(&self) -> Vec<LayerShape> {
        self.w.iter().map(|w| LayerShape::new(cols(w), w.nrows())).collect()
    }

    fn forward(&self, w: &[Array2<T>]) -> (Array2<T>, Array2<T>) {
        let h = affine(&self.x, &w[0]).mapv(|v| v.tanh());
        let y = affine(&h, &w[1]);
        (h, y)
    }

    /// The exact J u for every example: forward mode by hand.
    fn jvp(&self, u: &[Array2<T>]) -> Array2<T> {
        let (h, _) = self.forward(&self.w);
        let rh = affine(&self.x, &u[0]) * &h.mapv(|v| T::one() - v * v);
        let w2 = self.w[1].slice(s![.., ..cols(&self.w[1])]);
        rh.dot(&w2.t()) + affine(&h, &u[1])
    }

    /// The mean loss's gradient, the per-example pre-activation gradients
    /// at targets sampled from N(y, I), the hidden layer and the loss.
    fn gradients(&self, rng: &mut Rng) -> Pass<T> {
        let (h, y) = self.forward(&self.w);
        let w2 = self.w[1].slice(s![.., ..cols(&self.w[1])]).to_owned();
        let back = |g2: &Array2<T>| g2.dot(&w2) * &h.mapv(|v| T::one() - v * v);
        let g2 = &y - &self.t;
        let g1 = back(&g2);
        let n = T::from_usize(self.x.nrows()).unwrap();
        let grad = |g: &Array2<T>, a: &Array2<T>| {
            let mut out = Array2::zeros((g.ncols(), a.ncols() + 1));
            out.slice_mut(s![.., ..a.ncols()]).assign(&(g.t().dot(a) / n));
            out.column_mut(a.ncols()).assign(&g.mean_axis(Axis(0)).unwrap());
            out
        };
        let grads = vec![grad(&g1, &self.x), grad(&g2, &h)];
        let s2 = Loss::SquaredError.sampled_grad(y.view(), rng);
        let s1 = back(&s2);
        let loss = Loss::SquaredError.value(y.view(), self.t.view()).unwrap();
        Pass { grads, sampled: [s1, s2], h, loss }
    }

    fn loss_with(&self, delta: &[Array2<T>]) -> f64 {
        let w: Vec<Array2<T>> = self.w.iter().zip(delta).map(|(w, d)| w + d).collect();
        Loss::SquaredError.value(self.forward(&w).1.view(), self.t.view()).unwrap()
    }
}

/// What one pass of [`TwoLayer::gradients`] gives.
struct Pass<T> {
    grads: Vec<Array2<T>>,
    sampled: [Array2<T>; 2],
    h: Array2<T>,
    loss: f64,
}

impl<T: Real> OutputModel<T> for TwoLayer<T> {
    type Error = Error;
    fn outputs_at(&mut self, delta: &[Array2<T>]) -> Result<Array2<T>, Error> {
        let w: Vec<Array2<T>> = self.w.iter().zip(delta).map(|(w, d)| w + d).collect();
        Ok(self.forward(&w).1)
    }
    fn loss_at(&mut self, delta: &[Array2<T>]) -> Result<f64, Error> {
        Ok(self.loss_with(delta))
    }
}

/// The same network with exact quadratic forms: for the squared error the
/// output-space Fisher is I, so uᵀFv = (1/N) Σ (J u)·(J v).
struct Exact<'a, T>(&'a TwoLayer<T>);

impl<T: Real> CurvatureModel<T> for Exact<'_, T> {
    type Error = Error;
    fn fisher_gram(&mut self, dirs: &[&[Array2<T>]]) -> Result<Vec<Vec<f64>>, Error> {
        let n = self.0.x.nrows() as f64;
        let ju: Vec<Array2<T>> = dirs.iter().map(|d| self.0.jvp(d)).collect();
        Ok(ju
            .iter()
            .map(|a| {
                ju.iter()
                    .map(|b| a.iter().zip(b).map(|(p, q)| p.to_f64_exact() * q.to_f64_exact()).sum::<f64>() / n)
                    .collect()
            })
            .collect())
    }
    fn loss_at(&mut self, delta: &[Array2<T>]) -> Result<f64, Error> {
        Ok(self.0.loss_with(delta))
    }
}

fn directions<T: Real>(net: &TwoLayer<T>, seed: u64) -> Vec<Array2<T>> {
    let mut rng = Rng::new(seed);
    net.w.iter().map(|w| Array2::from_shape_simple_fn(w.dim(), || T::from_f64_lossy(rng.normal()))).collect()
}

/// The finite-difference Gram against the exact forward-mode one. The
/// documented error is of order ε^{2/3}: about 2.4e-5 in f32 and 3.7e-11 in
/// f64, relative to the Gram's scale √(G₁₁G₂₂); the bound allows a factor
/// 100 for the network's third derivatives and the rounding of θ ± hu.
fn check_fd_gram<T: Real>(seed: u64) -> f64 {
    let mut net = TwoLayer::<T>::new(40, 5, 12, 3, seed);
    let (u, v) = (directions(&net, seed + 1), directions(&net, seed + 2));
    let exact = Exact(&net).fisher_gram(&[&u, &v]).unwrap();
    let outputs = net.forward(&net.w).1;
    let w = net.w.clone();
    let params: Vec<ArrayView2<'_, T>> = w.iter().map(|a| a.view()).collect();
    let mut fd = FiniteDifferences::new(&mut net, Loss::SquaredError, outputs, &params);
    let got = fd.fisher_gram(&[&u, &v]).unwrap();
    let eps = T::EPSILON.to_f64_exact();
    let tol = 100.0 * eps.powf(2.0 / 3.0);
    let mut worst = 0.0f64;
    for i in 0..2 {
        for j in 0..2 {
            let scale = (exact[i][i] * exact[j][j]).sqrt();
            let err = (got[i][j] - exact[i][j]).abs() / scale;
            worst = worst.max(err);
            assert!(
                err <= tol,
                "{} G[{i}][{j}]: {} vs {} (relative {err:e} > {tol:e})",
                T::NAME,
                got[i][j],
                exact[i][j]
            );
        }
    }
    assert_eq!(got[0][1], got[1][0]);
    worst
}

#[test]
fn finite_differences_match_exact_products() {
    for seed in [1, 7, 19] {
        let (e64, e32) = (check_fd_gram::<f64>(seed), check_fd_gram::<f32>(seed));
        eprintln!("seed {seed}: largest relative error of the Gram, f64 {e64:.2e}, f32 {e32:.2e}");
    }
}

/// A linear model y = x Wᵀ + b with the squared error is exactly quadratic:
/// with λ = 0 the model's predicted change is the actual change, so every
/// reduction ratio is 1 to rounding, for K-FAC and EKFAC, with exact and
/// with finite-difference quadratic forms (central differences are exact
/// for a linear map, to rounding).
#[test]
fn the_adaptive_rule_is_exact_on_a_quadratic() {
    for curvature in [CurvatureConfig::kfac(), CurvatureConfig::kfac_eigen(), CurvatureConfig::ekfac()] {
        for finite in [false, true] {
            let mut net = TwoLayer::<f64>::new(64, 4, 1, 3, 3);
            // One layer: drop the hidden one and fit t from x linearly.
            net.w = vec![Array2::from_shape_fn((3, 5), |(i, j)| 0.1 * (i as f64 - j as f64))];
            let shape = LayerShape::new(4, 3);
            // Without rejection every step is applied (near the optimum a step can
            // raise h by rounding alone, which rejection would undo).
            let adaptive = AdaptiveConfig {
                lambda: Some(0.0),
                lambda_min: 0.0,
                t1: 1,
                gamma: Some(0.1),
                reject: false,
                ..Default::default()
            };
            let config = KfacConfig {
                curvature: CurvatureConfig { stats_fraction: 1.0, ..curvature.clone() },
                rule: UpdateRule::Adaptive(adaptive),
                l2: 1e-3,
                on_non_finite: NonFinitePolicy::Error,
            };
            let mut opt = KfacOptimizer::<f64>::new(config, &[shape]).unwrap();
            let la = Faer::sequential();
            let mut rng = Rng::new(0);
            for step in 0..20 {
                let y = affine(&net.x, &net.w[0]);
                let g = &y - &net.t;
                let n = net.x.nrows() as f64;
                let grad =
                    shape.join((g.t().dot(&net.x) / n).view(), Some(g.mean_axis(Axis(0)).unwrap().view())).unwrap();
                let sampled = Loss::SquaredError.sampled_grad(y.view(), &mut rng);
                let stats = [LayerBatch::new(net.x.view(), sampled.view())];
                let loss = Loss::SquaredError.value(y.view(), net.t.view()).unwrap();
                let w = net.w.clone();
                let params = [w[0].view()];
                let input = StepInput { params: &params, grads: vec![grad], loss, statistics: Some(&stats) };
                struct Linear<'a>(&'a TwoLayer<f64>);
                impl OutputModel<f64> for Linear<'_> {
                    type Error = Error;
                    fn outputs_at(&mut self, d: &[Array2<f64>]) -> Result<Array2<f64>, Error> {
                        Ok(affine(&self.0.x, &(&self.0.w[0] + &d[0])))
                    }
                    fn loss_at(&mut self, d: &[Array2<f64>]) -> Result<f64, Error> {
                        let y = self.outputs_at(d)?;
                        Loss::SquaredError.value(y.view(), self.0.t.view())
                    }
                }
                impl CurvatureModel<f64> for Linear<'_> {
                    type Error = Error;
                    fn fisher_gram(&mut self, dirs: &[&[Array2<f64>]]) -> Result<Vec<Vec<f64>>, Error> {
                        let n = self.0.x.nrows() as f64;
                        let ju: Vec<Array2<f64>> = dirs.iter().map(|d| affine(&self.0.x, &d[0])).collect();
                        Ok(ju.iter().map(|a| ju.iter().map(|b| (a * b).sum() / n).collect()).collect())
                    }
                    fn loss_at(&mut self, d: &[Array2<f64>]) -> Result<f64, Error> {
                        OutputModel::loss_at(self, d)
                    }
                }
                let mut model = Linear(&net);
                let step_out = if finite {
                    let mut fd = FiniteDifferences::new(&mut model, Loss::SquaredError, y.clone(), &params);
                    opt.step(&la, input, &mut fd).unwrap()
                } else {
                    opt.step(&la, input, &mut model).unwrap()
                };
                let r = step_out.report().adaptive.unwrap_or_else(|| panic!("{:?}", step_out.report()));
                let rho = r.rho.unwrap();
                let tol = 1e-9 + 256.0 * f64::EPSILON * (loss + 1.0) / r.model_change.abs();
                let fd_tol = if finite { 1e-6 } else { 0.0 };
                assert!((rho - 1.0).abs() <= tol + fd_tol, "{:?} fd {finite} step {step}: rho {rho}", curvature.block);
                let update = step_out.update().unwrap();
                net.w[0] += &update[0];
            }
        }
    }
}

/// The fixed rule's update is −η(μv + νΔ) with Δ the preconditioned
/// gradient (ℓ2 term included) and ν the KL clip, computed here from a
/// preconditioner fed the same statistics.
#[test]
fn the_fixed_rule_follows_its_formula() {
    let mut net = TwoLayer::<f64>::new(32, 4, 6, 2, 11);
    let shapes = net.shapes();
    let rule = FixedRule { lr: 0.2, momentum: 0.5, damping: 0.3, kl_clip: Some(1e-4) };
    let config = KfacConfig { rule: UpdateRule::Fixed(rule.clone()), l2: 1e-2, ..KfacConfig::ekfac() };
    let mut opt = KfacOptimizer::<f64>::new(config.clone(), &shapes).unwrap();
    let mut pre =
        Preconditioner::<f64>::new(config.curvature.preconditioner(rule.damping, NonFinitePolicy::Skip), &shapes)
            .unwrap();
    let la = Faer::sequential();
    let mut rng = Rng::new(5);
    let mut velocity: Vec<Array2<f64>> = shapes.iter().map(|s| Array2::zeros(s.param_dims())).collect();
    let mut clipped = false;
    for _ in 0..4 {
        let Pass { grads, sampled, h, loss } = net.gradients(&mut rng);
        let stats = [LayerBatch::new(net.x.view(), sampled[0].view()), LayerBatch::new(h.view(), sampled[1].view())];
        let with_l2: Vec<Array2<f64>> = grads.iter().zip(&net.w).map(|(g, w)| g + &(w * 1e-2)).collect();
        pre.update(&la, Some(&stats)).unwrap();
        let views: Vec<_> = with_l2.iter().map(|g| g.view()).collect();
        let delta = pre.precondition(&la, &views).unwrap();
        let q: f64 = delta.iter().zip(&with_l2).map(|(d, g)| (d * g).sum()).sum::<f64>() * rule.lr * rule.lr;
        let nu = (rule.kl_clip.unwrap() / q).sqrt().min(1.0);
        clipped |= nu < 1.0;
        for (v, d) in velocity.iter_mut().zip(&delta) {
            *v = &*v * rule.momentum + &(d * nu);
        }
        let w = net.w.clone();
        let params: Vec<_> = w.iter().map(|a| a.view()).collect();
        let input = StepInput { params: &params, grads, loss, statistics: Some(&stats) };
        let step = opt.step(&la, input, &mut NoCurvature).unwrap();
        assert_eq!(step.report().kl_scale, Some(nu));
        let update = step.update().unwrap();
        for ((u, v), w) in update.iter().zip(&velocity).zip(net.w.iter_mut()) {
            let want = v * -rule.lr;
            let err = (u - &want).iter().fold(0.0f64, |m, e| m.max(e.abs()));
            assert!(err <= 1e-12 * want.iter().fold(1e-300f64, |m, e| m.max(e.abs())), "{err:e}");
            *w += u;
        }
    }
    assert!(clipped, "the KL clip never bound: the test does not exercise it");
}

/// A non-finite loss or gradient is refused before any statistic changes:
/// the state is as it was (bar the skip counter) and nothing is applied;
/// under the error policy it is an error naming what was not finite.
#[test]
fn refused_steps_change_nothing() {
    for policy in [NonFinitePolicy::Skip, NonFinitePolicy::Error] {
        let net = TwoLayer::<f32>::new(16, 3, 4, 2, 2);
        let shapes = net.shapes();
        let config = KfacConfig { on_non_finite: policy, ..KfacConfig::kfac() };
        let mut opt = KfacOptimizer::<f32>::new(config, &shapes).unwrap();
        let la = Faer::sequential();
        let mut rng = Rng::new(1);
        let params: Vec<_> = net.w.iter().map(|a| a.view()).collect();
        let Pass { grads, sampled, h, loss } = net.gradients(&mut rng);
        let stats = [LayerBatch::new(net.x.view(), sampled[0].view()), LayerBatch::new(h.view(), sampled[1].view())];
        opt.step(
            &la,
            StepInput { params: &params, grads: grads.clone(), loss, statistics: Some(&stats) },
            &mut NoCurvature,
        )
        .unwrap();
        let before = opt.state();
        let mut bad = grads.clone();
        bad[1][(0, 0)] = f32::NAN;
        for (loss, grads, what) in [(f64::NAN, grads.clone(), "the loss"), (loss, bad, "the gradient")] {
            let input = StepInput { params: &params, grads, loss, statistics: Some(&stats) };
            match (opt.step(&la, input, &mut NoCurvature), policy) {
                (Ok(step), NonFinitePolicy::Skip) => {
                    assert_eq!(step.report().skipped, Some(what));
                    assert!(step.update().is_none());
                }
                (Err(Error::NonFinite { block, what: w }), NonFinitePolicy::Error) => {
                    assert_eq!((block.as_str(), w), ("optimizer", what));
                }
                (other, _) => panic!("{policy:?} {what}: {:?}", other.map(|s| s.into_report())),
            }
        }
        let mut after = opt.state();
        assert_eq!(after.skipped_steps, before.skipped_steps + if policy == NonFinitePolicy::Skip { 2 } else { 0 });
        after.skipped_steps = before.skipped_steps;
        assert_eq!(after, before);
    }
}

/// Missing statistics, the wrong number of layers or a wrong shape, and the
/// adaptive rule without a curvature model are errors.
#[test]
fn bad_input_is_an_error() {
    let net = TwoLayer::<f64>::new(8, 3, 4, 2, 4);
    let shapes = net.shapes();
    let la = Faer::sequential();
    let params: Vec<_> = net.w.iter().map(|a| a.view()).collect();
    let Pass { grads, loss, .. } = net.gradients(&mut Rng::new(0));
    let mut opt = KfacOptimizer::<f64>::new(KfacConfig::kfac(), &shapes).unwrap();
    let r =
        opt.step(&la, StepInput { params: &params, grads: grads.clone(), loss, statistics: None }, &mut NoCurvature);
    assert!(matches!(r, Err(Error::NotReady { .. })), "{:?}", r.map(|s| s.into_report()));
    let r = opt.step(
        &la,
        StepInput { params: &params[..1], grads: grads.clone(), loss, statistics: None },
        &mut NoCurvature,
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { what: "parameters (one per layer)", .. })));
    let mut wrong = grads.clone();
    wrong[0] = Array2::zeros((2, 2));
    let r = opt.step(&la, StepInput { params: &params, grads: wrong, loss, statistics: None }, &mut NoCurvature);
    assert!(matches!(r, Err(Error::ShapeMismatch { what: "gradient", .. })));
    let adaptive = KfacConfig::kfac().with_adaptive(AdaptiveConfig { lambda: Some(1.0), ..Default::default() });
    let mut opt = KfacOptimizer::<f64>::new(adaptive, &shapes).unwrap();
    let Pass { sampled, h, .. } = net.gradients(&mut Rng::new(0));
    let stats = [LayerBatch::new(net.x.view(), sampled[0].view()), LayerBatch::new(h.view(), sampled[1].view())];
    let r = opt.step(&la, StepInput { params: &params, grads, loss, statistics: Some(&stats) }, &mut NoCurvature);
    assert!(matches!(r, Err(Error::NotReady { what, .. }) if what.contains("CurvatureModel")));
}

/// Knobs are checked in the precision they are used in: a learning rate
/// that rounds to zero in f32, or a damping that overflows it, is refused
/// for an f32 optimizer and accepted for an f64 one.
#[test]
fn knobs_are_validated_in_the_run_precision() {
    let shapes = [LayerShape::new(3, 2)];
    for (field, rule) in [
        ("lr", FixedRule { lr: 1e-46, ..FixedRule::default() }),
        ("damping", FixedRule { damping: 1e308, ..FixedRule::default() }),
        ("lr", FixedRule { lr: 3.5e38 * 10.0, ..FixedRule::default() }),
    ] {
        let config = KfacConfig { rule: UpdateRule::Fixed(rule), ..KfacConfig::kfac() };
        match KfacOptimizer::<f32>::new(config.clone(), &shapes) {
            Err(Error::InvalidConfig { what, .. }) => assert_eq!(what, field),
            other => panic!("{field}: {other:?}"),
        }
        assert!(KfacOptimizer::<f64>::new(config, &shapes).is_ok(), "{field}");
    }
    let config = KfacConfig { l2: 1e-50, ..KfacConfig::kfac() };
    assert!(matches!(KfacOptimizer::<f32>::new(config, &shapes), Err(Error::InvalidConfig { what: "l2", .. })));
}

/// An optimizer restored from another's state continues bit for bit, with
/// the fixed and the adaptive rule (λ, γ, the previous update, the blocks).
#[test]
fn a_restored_optimizer_continues_bit_for_bit() {
    let fixed = KfacConfig {
        curvature: CurvatureConfig { refresh_period: 3, ..CurvatureConfig::kfac() },
        ..KfacConfig::kfac()
    };
    let adaptive = KfacConfig::ekfac().with_adaptive(AdaptiveConfig { t2: 4, ..Default::default() });
    for config in [fixed, adaptive] {
        let shapes = TwoLayer::<f32>::new(24, 3, 5, 2, 8).shapes();
        let la = Faer::sequential();
        let run = |opt: &mut KfacOptimizer<f32>, net: &mut TwoLayer<f32>, rng: &mut Rng, steps: usize| {
            let mut losses = vec![];
            for _ in 0..steps {
                let Pass { grads, sampled, h, loss } = net.gradients(rng);
                let stats =
                    [LayerBatch::new(net.x.view(), sampled[0].view()), LayerBatch::new(h.view(), sampled[1].view())];
                let w = net.w.clone();
                let params: Vec<_> = w.iter().map(|a| a.view()).collect();
                let input = StepInput { params: &params, grads, loss, statistics: Some(&stats) };
                let update = {
                    let mut model = Exact(net);
                    opt.step(&la, input, &mut model).unwrap().update()
                };
                if let Some(u) = update {
                    net.w.iter_mut().zip(u).for_each(|(w, u)| *w += &u);
                }
                losses.push(loss.to_bits());
            }
            losses
        };
        let mut net = TwoLayer::<f32>::new(24, 3, 5, 2, 8);
        let mut opt = KfacOptimizer::<f32>::new(config.clone(), &shapes).unwrap();
        let mut rng = Rng::new(3);
        run(&mut opt, &mut net, &mut rng, 7);
        let (saved, saved_w, saved_rng) = (opt.state(), net.w.clone(), rng.clone());
        let whole = run(&mut opt, &mut net, &mut rng, 6);
        let mut other = KfacOptimizer::<f32>::new(config, &shapes).unwrap();
        other.restore(&saved).unwrap();
        let mut net2 = TwoLayer { w: saved_w, ..TwoLayer::<f32>::new(24, 3, 5, 2, 8) };
        let resumed = run(&mut other, &mut net2, &mut saved_rng.clone(), 6);
        assert_eq!(whole, resumed);
        assert_eq!(opt.state(), other.state());
        // A state that does not fit is refused, and changes nothing.
        let mut bad = saved.clone();
        bad.velocity.pop();
        assert!(matches!(other.restore(&bad), Err(Error::InvalidState { .. })));
        let mut newer = saved.clone();
        newer.version += 1;
        assert!(matches!(other.restore(&newer), Err(Error::InvalidState { why, .. }) if why.contains("version")));
    }
}

/// With the `serde` feature the state survives a JSON round trip exactly.
#[cfg(feature = "serde")]
#[test]
fn the_state_serialises_exactly() {
    let net = TwoLayer::<f64>::new(12, 3, 4, 2, 9);
    let shapes = net.shapes();
    let config = KfacConfig::ekfac().with_adaptive(AdaptiveConfig::default());
    let mut opt = KfacOptimizer::<f64>::new(config.clone(), &shapes).unwrap();
    let la = Faer::sequential();
    let Pass { grads, sampled, h, loss } = net.gradients(&mut Rng::new(2));
    let stats = [LayerBatch::new(net.x.view(), sampled[0].view()), LayerBatch::new(h.view(), sampled[1].view())];
    let params: Vec<_> = net.w.iter().map(|a| a.view()).collect();
    opt.step(&la, StepInput { params: &params, grads, loss, statistics: Some(&stats) }, &mut Exact(&net)).unwrap();
    let state = opt.state();
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<kfac_core::KfacState<f64>>(&json).unwrap(), state);
    let cfg = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<KfacConfig>(&cfg).unwrap(), config);
}
