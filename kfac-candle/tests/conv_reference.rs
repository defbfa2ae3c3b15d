//! A candle CNN (Conv2d → tanh → flatten → Linear; tanh rather than ReLU,
//! whose dead units would give the factors repeated zero eigenvalues and
//! EKFAC an eigenbasis that is not unique) through kfac-candle
//! against a reference computed with kfac-core directly: the forward pass
//! by kfac-core's `im2col`, the gradients by explicit loops over examples,
//! channels, kernel offsets and output locations, the statistics handed to
//! kfac-core's optimizer as `LayerBatch::shared` (per-example rows). The
//! factors, EKFAC's scalings, the update and the preconditioned gradient
//! agree, with both Fishers, in f64 and f32 (tolerances as in
//! `same_as_kfac_nn.rs`, with the sums over the $NR$ patch rows), at both
//! of the two steps, EKFAC included.

mod common;

use candle_core::{Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig};
use common::*;
use kfac_candle::{Kfac, KfacConv2d, KfacLinear, Scalar};
use kfac_core::conv::{Conv2dGeometry, im2col, location_rows, rows_to_nchw};
use kfac_core::optim::{KfacConfig, KfacOptimizer, NoCurvature, StepInput};
use kfac_core::{FisherMode, LayerBatch, LayerShape, Loss, Real, Rng};
use ndarray::{Array2, Array4, ArrayView2, ArrayView4, Axis, s};

/// With τ = 1, 64 statistics rows: well above the linear layer's input
/// factor's side (28), so that EKFAC's eigenbasis is unique up to signs.
const N: usize = 64;
const SEED: u64 = 3;
const CLASSES: usize = 4;

/// The network's parameters, $[W \mid b]$ per layer.
struct Net<T> {
    geometry: Conv2dGeometry,
    conv: Array2<T>,
    linear: Array2<T>,
}

impl<T: Both> Net<T> {
    fn new(stride: usize, padding: usize) -> Self {
        let mut geometry = Conv2dGeometry::new(2, 3, (3, 3), (6, 6));
        geometry.stride = (stride, stride);
        geometry.padding = (padding, padding);
        let p = geometry.patch_len();
        let flat = 3 * geometry.locations();
        let f = |i: usize, j: usize, c: f64| T::from_f64_lossy(0.4 * ((i * 13 + j * 7) as f64 * c).sin());
        Self {
            geometry,
            conv: Array2::from_shape_fn((3, p + 1), |(i, j)| f(i, j, 0.53)),
            linear: Array2::from_shape_fn((CLASSES, flat + 1), |(i, j)| f(i, j, 0.29) * T::from_f64_lossy(0.3)),
        }
    }

    fn shapes(&self) -> [LayerShape; 2] {
        [LayerShape::new(self.geometry.patch_len(), 3), LayerShape::new(3 * self.geometry.locations(), CLASSES)]
    }

    /// The forward pass: conv pre-activations as location rows, the
    /// flattened ReLU output (NCHW order) and the logits.
    fn forward(&self, x: ArrayView4<'_, T>) -> (Array2<T>, Array2<T>, Array2<T>) {
        let patches = im2col(&self.geometry, x).unwrap();
        let n = x.dim().0;
        let p = self.geometry.patch_len();
        let mut z = patches.dot(&self.conv.slice(s![.., ..p]).t());
        z += &self.conv.column(p).insert_axis(Axis(0));
        let h = z.mapv(T::tanh);
        let h4 = rows_to_nchw(h.view(), n, self.geometry.output()).unwrap();
        let flat = h4.into_shape_with_order((n, 3 * self.geometry.locations())).unwrap().to_owned();
        let d = flat.ncols();
        let mut logits = flat.dot(&self.linear.slice(s![.., ..d]).t());
        logits += &self.linear.column(d).insert_axis(Axis(0));
        (z, flat, logits)
    }

    /// Per-example gradients at the conv's pre-activations (NCHW) from the
    /// per-example output gradients `g` of the first `g.nrows()` examples.
    fn conv_grads(&self, z: &Array2<T>, g: ArrayView2<'_, T>) -> Array4<T> {
        let n = g.nrows();
        let d = 3 * self.geometry.locations();
        let dflat = g.dot(&self.linear.slice(s![.., ..d]));
        let mut u = dflat.into_shape_with_order((n, 3, self.geometry.output().0, self.geometry.output().1)).unwrap();
        let z4 = rows_to_nchw(z.view(), N, self.geometry.output()).unwrap();
        ndarray::Zip::from(&mut u).and(&z4.slice(s![..n, .., .., ..])).for_each(|u, &z| {
            let h = z.tanh();
            *u *= T::one() - h * h;
        });
        u
    }

    /// The conv weight gradient of the mean loss by loops (no im2col).
    fn conv_weight_grad(&self, x: ArrayView4<'_, T>, u: &Array4<T>) -> Array2<T> {
        let g = self.geometry;
        let (n, c_in, hi, wi) = x.dim();
        let (_, c_out, ho, wo) = u.dim();
        let (kh, kw) = g.kernel;
        let mut out = Array2::<f64>::zeros((c_out, c_in * kh * kw + 1));
        for e in 0..n {
            for o in 0..c_out {
                for (y, xo) in (0..ho).flat_map(|y| (0..wo).map(move |xo| (y, xo))) {
                    let uv = u[[e, o, y, xo]].to_f64_exact();
                    out[[o, c_in * kh * kw]] += uv;
                    for (c, i, j) in (0..c_in).flat_map(|c| (0..kh).flat_map(move |i| (0..kw).map(move |j| (c, i, j))))
                    {
                        let (r, q) = (y * g.stride.0 + i, xo * g.stride.1 + j);
                        let (Some(r), Some(q)) = (r.checked_sub(g.padding.0), q.checked_sub(g.padding.1)) else {
                            continue;
                        };
                        if r < hi && q < wi {
                            out[[o, c * kh * kw + i * kw + j]] += uv * x[[e, c, r, q]].to_f64_exact();
                        }
                    }
                }
            }
        }
        out.mapv(|v| T::from_f64_lossy(v / n as f64))
    }
}

/// The reference step with kfac-core alone; returns the optimizer.
fn reference<T: Both + Scalar>(
    net: &mut Net<T>,
    x: &Array4<T>,
    t: &Array2<T>,
    opt: &mut KfacOptimizer<T>,
    rng: &mut Rng,
) {
    let loss = Loss::SoftmaxCrossEntropy;
    let (z, flat, logits) = net.forward(x.view());
    let g = loss.grad(logits.view(), t.view()).unwrap();
    let inv_n = T::one() / T::from_usize(N).unwrap();
    let ones = Array2::from_elem((N, 1), T::one());
    let lin_grad = g.t().dot(&ndarray::concatenate![Axis(1), flat, ones]).mapv(|v| v * inv_n);
    let conv_grad = net.conv_weight_grad(x.view(), &net.conv_grads(&z, g.view()));
    let curvature = opt.config().curvature.clone();
    let n_s = curvature.statistics_rows(N);
    let g_s = match curvature.fisher {
        FisherMode::True => loss.sampled_grad(logits.slice(s![..n_s, ..]), rng),
        FisherMode::Empirical => g.slice(s![..n_s, ..]).to_owned(),
    };
    let u_s = net.conv_grads(&z, g_s.view());
    let patches = im2col(&net.geometry, x.slice(s![..n_s, .., .., ..])).unwrap();
    let rows = location_rows(u_s.view());
    let stats = [
        LayerBatch::shared(patches.view(), rows.view(), net.geometry.locations()),
        LayerBatch::new(flat.slice(s![..n_s, ..]), g_s.view()),
    ];
    let value = loss.value(logits.view(), t.view()).unwrap();
    let params = [net.conv.view(), net.linear.view()];
    let input = StepInput { params: &params, grads: vec![conv_grad, lin_grad], loss: value, statistics: Some(&stats) };
    let step = opt.step(&*T::linalg(), input, &mut NoCurvature).unwrap();
    let update = step.update().unwrap();
    net.conv += &update[0];
    net.linear += &update[1];
}

/// The same network in candle.
fn candle_net<T: Both>(net: &Net<T>) -> (KfacConv2d, KfacLinear) {
    let p = net.geometry.patch_len();
    let var = |a: ArrayView2<'_, T>, dims: &[usize]| {
        Var::from_vec(a.iter().copied().collect::<Vec<_>>(), dims, &Device::Cpu).unwrap()
    };
    let w = var(net.conv.slice(s![.., ..p]), &[3, 2, 3, 3]);
    let b = var(net.conv.slice(s![.., p..]), &[3]);
    let config = Conv2dConfig { padding: net.geometry.padding.0, stride: net.geometry.stride.0, ..Default::default() };
    let conv = KfacConv2d::new(Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), config)).unwrap();
    let d = net.linear.ncols() - 1;
    let w2 = var(net.linear.slice(s![.., ..d]), &[CLASSES, d]);
    let b2 = var(net.linear.slice(s![.., d..]), &[CLASSES]);
    (conv, KfacLinear::from_vars(w2, Some(b2)).unwrap())
}

fn forward(conv: &KfacConv2d, linear: &KfacLinear, x: &Tensor) -> candle_core::Result<Tensor> {
    linear.forward(&conv.forward(x)?.tanh()?.flatten_from(1)?)
}

fn current<T: Both>(conv: &KfacConv2d, linear: &KfacLinear) -> [Array2<T>; 2] {
    let w = to_array::<T>(&conv.weight().as_tensor().flatten_from(1).unwrap());
    let b = conv.bias().unwrap().as_tensor().to_vec1::<T>().unwrap();
    let c = conv.shape().join(w.view(), Some(ndarray::ArrayView1::from(&b[..]))).unwrap();
    let w2 = to_array::<T>(linear.weight().as_tensor());
    let b2 = linear.bias().unwrap().as_tensor().to_vec1::<T>().unwrap();
    [c, linear.shape().join(w2.view(), Some(ndarray::ArrayView1::from(&b2[..]))).unwrap()]
}

fn tolerance<T: Real>(rows: usize, widest: usize, kappa: f64) -> f64 {
    let bound = 4.0 * (rows + 2 * widest) as f64 * T::EPSILON.to_f64_exact() * kappa;
    if T::NAME == "f64" { 1e-12_f64.max(bound) } else { bound }
}

fn run<T: Both + Scalar>(fisher: FisherMode, mut config: KfacConfig, stride: usize, padding: usize) {
    config.curvature.fisher = fisher;
    config.curvature.stats_fraction = 1.0;
    let mut net = Net::<T>::new(stride, padding);
    // Pseudo-random inputs. Inputs such as sin(0.23 (31n + 17c + 5i + j)),
    // linear in every index inside the sine, put every patch in the span of
    // two vectors (sin(u + v) = sin u cos v + cos u sin v): the conv layer's
    // A then has rank 3 of 19, EKFAC's eigenbasis is arbitrary in its null
    // space, and the second step's scalings, estimated in that basis on
    // changed inputs, differed from the reference by 4e-6 relative (f64)
    // for that reason alone.
    let mut draw = Rng::new(SEED ^ 0x1A7E);
    let x = Array4::from_shape_fn((N, 2, 6, 6), |_| T::from_f64_lossy(draw.normal()));
    let t =
        Array2::from_shape_fn((N, CLASSES), |(n, k)| T::from_f64_lossy(f64::from(u8::from((n * 3) % CLASSES == k))));
    let (conv, linear) = candle_net(&net);
    let xt = Tensor::from_slice(x.as_slice().unwrap(), (N, 2, 6, 6), &Device::Cpu).unwrap();
    let tt = tensor(&t);
    let mut opt = KfacOptimizer::<T>::new(config.clone(), &net.shapes()).unwrap();
    let mut kc =
        Kfac::<T>::new(config.clone(), vec![(&conv).into(), (&linear).into()], Loss::SoftmaxCrossEntropy, SEED)
            .unwrap();
    let mut rng = Rng::new(SEED);
    let case = format!("{} {fisher:?} {:?} stride {stride} padding {padding}", T::NAME, config.curvature.block);
    let rows = N * net.geometry.locations();
    let widest = 3 * net.geometry.locations();
    for step in 0..2 {
        let before = current::<T>(&conv, &linear);
        reference(&mut net, &x, &t, &mut opt, &mut rng);
        let outcome = kc.step(&xt, &tt, |x| forward(&conv, &linear, x)).unwrap();
        assert!(outcome.report.skipped.is_none(), "{case}: {:?}", outcome.report);
        let (sr, sc) = (opt.preconditioner().state(), kc.core().preconditioner().state());
        let ekfac = sr.blocks[0].tensors.contains_key("S");
        let names: &[&str] = if ekfac { &["A", "B", "S", "sa", "sb"] } else { &["A", "B"] };
        let tol = tolerance::<T>(rows, widest, 1.0);
        for (l, (a, b)) in sc.blocks.iter().zip(&sr.blocks).enumerate() {
            let (e, name) = compare_states(a, b, names);
            assert!(e <= tol, "{case} step {step} layer {l} {name}: {e:e} > {tol:e}");
        }
        let trace = |m: &ndarray::ArrayD<T>| (0..m.shape()[0]).map(|i| m[[i, i]].to_f64_exact()).sum::<f64>();
        let kappa = sr.blocks.iter().map(|b| 1.0 + trace(&b.tensors["A"]) * trace(&b.tensors["B"])).fold(1.0, f64::max);
        let tol = tolerance::<T>(rows, widest, kappa);
        let after = current::<T>(&conv, &linear);
        for (l, ((b0, c1), r1)) in before.iter().zip(&after).zip([&net.conv, &net.linear]).enumerate() {
            let e = rel((c1 - b0).view(), (r1 - b0).view());
            assert!(e <= tol, "{case} step {step} layer {l} update: {e:e} > {tol:e}");
        }
        let g = directions::<T>(&[net.conv.dim(), net.linear.dim()], 0.7);
        let la = T::linalg();
        let pc = kc.core().preconditioner().precondition(&*la, &views(&g)).unwrap();
        let pr = opt.preconditioner().precondition(&*la, &views(&g)).unwrap();
        for (l, (a, b)) in pc.iter().zip(&pr).enumerate() {
            let e = rel(a.view(), b.view());
            assert!(e <= tol, "{case} step {step} layer {l} preconditioned: {e:e} > {tol:e}");
        }
    }
}

fn all<T: Both + Scalar>() {
    for fisher in [FisherMode::True, FisherMode::Empirical] {
        for config in [KfacConfig::kfac(), KfacConfig::ekfac()] {
            run::<T>(fisher, config.clone(), 2, 1);
            run::<T>(fisher, config, 2, 0);
        }
    }
}

#[test]
fn conv2d_matches_the_kfac_core_reference_f64() {
    all::<f64>();
}

#[test]
fn conv2d_matches_the_kfac_core_reference_f32() {
    all::<f32>();
}
