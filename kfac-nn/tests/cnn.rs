//! The convolutional layers and the CNN task: finite-difference checks of
//! every new layer and of the whole network, the R-operator, the factors a
//! training step hands kfac-core against explicit loops over examples and
//! output locations, thread-count independence, checkpoints, and the
//! refusal of block-tridiagonal K-FAC.
//!
//! Finite differences are central, in f64, with step $h$: their error is
//! $O(h^2)$ (truncation) plus $O(\epsilon/h)$ (rounding, $\epsilon$ the
//! machine epsilon), so the tolerances are `fd_tol(h)` $= C (h^2 + \epsilon/h)$
//! times the size of the quantity, $C = 10^4$ covering the third
//! derivatives of these small networks.

use std::path::PathBuf;

use kfac::conv::Conv2dGeometry;
use kfac::{LinAlg, Sharing};
use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::curvature::output_directional_derivative;
use kfac_nn::layers::{Conv2d, ConvSpec, LayerKind, Pool2d};
use kfac_nn::loss::{FisherMode, Loss};
use kfac_nn::mlp::{Activation, Layer, Mlp, NoHook, Parallelism};
use kfac_nn::optim::{AdaptiveConfig, KfacConfig, Optimizer, OptimizerConfig, OptimizerKind, Structure, UpdateRule};
use kfac_nn::rng::Rng;
use kfac_nn::train::{self, DataSource, Metrics, RunOptions, Task, TaskKind, TrainConfig};
use kfac_nn::{Error, checkpoint};
use ndarray::{Array2, Array4, ArrayView2};

fn la() -> Box<dyn LinAlg<f64>> {
    f64::backend(Backend::default(), true).unwrap()
}

fn random(rows: usize, cols: usize, rng: &mut Rng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.normal())
}

/// The tolerance of a central difference with step `h` in f64 (module docs).
fn fd_tol(h: f64) -> f64 {
    1e4 * (h * h + f64::EPSILON / h)
}

/// A convolution layer with random weights and biases.
#[allow(clippy::too_many_arguments)]
fn conv_layer(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    input: (usize, usize),
    pool: Option<Pool2d>,
    rng: &mut Rng,
) -> Layer<f64> {
    let mut geometry = Conv2dGeometry::new(c_in, c_out, (k, k), input);
    geometry.stride = (stride, stride);
    geometry.padding = (padding, padding);
    geometry.dilation = (dilation, dilation);
    let conv = Conv2d { geometry, pool };
    conv.validate().unwrap();
    let w = random(c_out, geometry.patch_len() + 1, rng) * 0.5;
    Layer { w, activation: Activation::Tanh, kind: LayerKind::Conv2d(conv) }
}

/// A dense output layer on `d_in` inputs.
fn dense_out(d_in: usize, d_out: usize, rng: &mut Rng) -> Layer<f64> {
    Layer::dense(random(d_out, d_in + 1, rng) * 0.3, Activation::Identity)
}

fn net(layers: Vec<Layer<f64>>) -> Mlp<f64> {
    Mlp { layers, parallelism: Parallelism::Products }
}

fn loss_of(mlp: &Mlp<f64>, x: ArrayView2<'_, f64>, t: ArrayView2<'_, f64>, loss: Loss) -> f64 {
    let f = mlp.forward(&*la(), x, &mut NoHook).unwrap();
    loss.value(f.output(), t).unwrap()
}

/// Every weight and bias gradient of `mlp` against central differences of
/// the mean loss; returns the number of entries checked.
fn check_gradients(mlp: &Mlp<f64>, x: ArrayView2<'_, f64>, loss: Loss, rng: &mut Rng) -> usize {
    let la = la();
    let fwd = mlp.forward(&*la, x, &mut NoHook).unwrap();
    let t = loss.sample(fwd.output(), rng);
    let g = loss.grad(fwd.output(), t.view()).unwrap();
    let grads = mlp.backward(&*la, &fwd, g.view(), true, &mut NoHook).unwrap();
    let h = 1e-5;
    let mut checked = 0;
    for l in 0..mlp.layers.len() {
        assert_eq!(grads[l].dim(), mlp.layers[l].w.dim());
        for idx in ndarray::indices(mlp.layers[l].w.dim()) {
            let mut plus = mlp.clone();
            plus.layers[l].w[idx] += h;
            let mut minus = mlp.clone();
            minus.layers[l].w[idx] -= h;
            let fd = (loss_of(&plus, x, t.view(), loss) - loss_of(&minus, x, t.view(), loss)) / (2.0 * h);
            let bp = grads[l][idx];
            assert!(
                (fd - bp).abs() <= fd_tol(h) * (1.0 + fd.abs()),
                "layer {l} {idx:?}: finite difference {fd}, backprop {bp}"
            );
            checked += 1;
        }
    }
    checked
}

/// A convolution's weight and bias gradients, for strides, paddings and
/// dilations (including kernels that leave the edge uncovered), and, by
/// a second convolution on top, the input gradient (col2im): the first
/// layer's gradient passes through it.
#[test]
fn convolution_gradients_match_finite_differences() {
    let mut rng = Rng::new(11);
    // (k, stride, padding, dilation) on a 7×6 input.
    for (k, stride, padding, dilation) in [(3, 1, 0, 1), (3, 2, 1, 1), (2, 3, 0, 1), (3, 1, 2, 2), (1, 2, 0, 1)] {
        let first = conv_layer(2, 3, k, stride, padding, dilation, (7, 6), None, &mut rng);
        let LayerKind::Conv2d(c1) = first.kind else { unreachable!() };
        let second = conv_layer(3, 2, 2, 1, 1, 1, c1.output_size(), None, &mut rng);
        let LayerKind::Conv2d(c2) = second.kind else { unreachable!() };
        let mlp = net(vec![first, second, dense_out(c2.output_width(), 3, &mut rng)]);
        let x = random(4, c1.input_width(), &mut rng);
        let checked = check_gradients(&mlp, x.view(), Loss::SoftmaxCrossEntropy, &mut rng);
        assert_eq!(checked, mlp.num_params(), "k {k} stride {stride} padding {padding} dilation {dilation}");
    }
}

/// Pooling's backward pass and R-operator against central differences of
/// its forward pass, max and average, on an input whose last row and
/// column are dropped (5×7 with 2×2 windows).
#[test]
fn pooling_matches_finite_differences() {
    let mut rng = Rng::new(12);
    let (c, input, n) = (2, (5, 7), 3);
    for pool in [Pool2d::max(2), Pool2d::average(2), Pool2d::max(3)] {
        let y = random(n, c * input.0 * input.1, &mut rng);
        let (z, argmax) = pool.forward(y.view(), c, input).unwrap();
        let (ho, wo) = pool.output(input);
        assert_eq!(z.dim(), (n, c * ho * wo));
        // The gradient of Σ w ⊙ pool(y).
        let wts = random(n, z.ncols(), &mut rng);
        let dy = pool.backward(wts.view(), &argmax, c, input).unwrap();
        let f = |y: &Array2<f64>| (&pool.forward(y.view(), c, input).unwrap().0 * &wts).sum();
        let h = 1e-6;
        for idx in ndarray::indices(y.dim()) {
            let (mut p, mut m) = (y.clone(), y.clone());
            p[idx] += h;
            m[idx] -= h;
            let fd = (f(&p) - f(&m)) / (2.0 * h);
            assert!((fd - dy[idx]).abs() <= fd_tol(h) * (1.0 + fd.abs()), "{pool:?} {idx:?}: {fd} vs {}", dy[idx]);
        }
        // R(pool)(y; r) = d/dh pool(y + h r).
        let r = random(n, y.ncols(), &mut rng);
        let rz = pool.tangent(r.view(), &argmax, c, input).unwrap();
        let fd = (pool.forward((&y + &(&r * h)).view(), c, input).unwrap().0
            - pool.forward((&y - &(&r * h)).view(), c, input).unwrap().0)
            / (2.0 * h);
        let err = (&fd - &rz).iter().fold(0.0f64, |m, e| m.max(e.abs()));
        assert!(err <= fd_tol(h) * (1.0 + r.iter().fold(0.0f64, |m, e| m.max(e.abs()))), "{pool:?}: {err}");
    }
}

/// The forward pass of a convolution, its pooling and the flatten into a
/// dense layer against direct loops: the convolution sum of
/// `kfac::conv`'s module docs, a max over each window, and the dense layer
/// reading input $c H W + y W + x$.
#[test]
fn forward_equals_direct_loops() {
    let mut rng = Rng::new(13);
    let conv_l = conv_layer(2, 3, 3, 2, 1, 1, (7, 8), Some(Pool2d::max(2)), &mut rng);
    let LayerKind::Conv2d(conv) = conv_l.kind else { unreachable!() };
    let mlp = net(vec![conv_l.clone(), dense_out(conv.output_width(), 4, &mut rng)]);
    let n = 3;
    let x = random(n, conv.input_width(), &mut rng);
    let out = mlp.forward(&*la(), x.view(), &mut NoHook).unwrap().output().to_owned();
    let g = conv.geometry;
    let (ho, wo) = g.output();
    let xi = x.clone().into_shape_with_order((n, 2, 7, 8)).unwrap();
    let mut y = Array4::<f64>::zeros((n, 3, ho, wo));
    for ((e, o, r, q), v) in y.indexed_iter_mut() {
        let mut s = conv_l.w[(o, g.patch_len())];
        for c in 0..2 {
            for i in 0..3 {
                for j in 0..3 {
                    let (sy, sx) = ((r * 2 + i) as isize - 1, (q * 2 + j) as isize - 1);
                    if (0..7).contains(&sy) && (0..8).contains(&sx) {
                        s += conv_l.w[(o, (c * 3 + i) * 3 + j)] * xi[(e, c, sy as usize, sx as usize)];
                    }
                }
            }
        }
        *v = s.tanh();
    }
    let (ph, pw) = (ho / 2, wo / 2);
    let dense = &mlp.layers[1];
    for e in 0..n {
        for k in 0..4 {
            let mut s = dense.w[(k, dense.d_in())];
            for o in 0..3 {
                for r in 0..ph {
                    for q in 0..pw {
                        let m = (0..2).flat_map(|a| (0..2).map(move |b| (a, b)));
                        let z = m.map(|(a, b)| y[(e, o, 2 * r + a, 2 * q + b)]).fold(f64::NEG_INFINITY, f64::max);
                        s += dense.w[(k, (o * ph + r) * pw + q)] * z;
                    }
                }
            }
            let tol = 64.0 * f64::EPSILON * (1.0 + s.abs()) * dense.d_in() as f64;
            assert!((s - out[(e, k)]).abs() <= tol, "example {e} output {k}: {s} vs {}", out[(e, k)]);
        }
    }
}

/// A small CNN (two convolutions, max and average pooling, two dense
/// layers) built by `Mlp::cnn`: every gradient of the whole network's loss.
fn small_cnn(seed: u64) -> Mlp<f64> {
    let convs = [
        ConvSpec { padding: 1, ..ConvSpec::new(3, 3, Some(Pool2d::max(2))) },
        ConvSpec { stride: 2, padding: 1, ..ConvSpec::new(4, 3, Some(Pool2d::average(2))) },
    ];
    let mut mlp = Mlp::<f64>::cnn((2, 9, 9), &convs, &[5, 3], Activation::Tanh, seed).unwrap();
    let mut rng = Rng::new(seed + 100);
    for layer in &mut mlp.layers {
        let d = layer.d_in();
        layer.w.column_mut(d).mapv_inplace(|_| 0.3 * rng.normal());
    }
    mlp
}

#[test]
fn whole_cnn_gradients_match_finite_differences() {
    let mlp = small_cnn(3);
    assert_eq!(mlp.d_in(), 2 * 81);
    let mut rng = Rng::new(14);
    let x = random(5, mlp.d_in(), &mut rng);
    for loss in [Loss::SoftmaxCrossEntropy, Loss::SquaredError] {
        assert_eq!(check_gradients(&mlp, x.view(), loss, &mut rng), mlp.num_params());
    }
}

/// The R-operator through convolutions, max and average pooling and dense
/// layers against central differences of the forward pass along random
/// directions.
#[test]
fn r_op_matches_finite_differences_of_the_forward_pass() {
    let la = la();
    let mlp = small_cnn(4);
    let mut rng = Rng::new(15);
    let x = random(6, mlp.d_in(), &mut rng);
    let fwd = mlp.forward(&*la, x.view(), &mut NoHook).unwrap();
    let h = 1e-5;
    for _ in 0..3 {
        let v: Vec<Array2<f64>> = mlp.layers.iter().map(|l| random(l.w.nrows(), l.w.ncols(), &mut rng)).collect();
        let views: Vec<_> = v.iter().map(|a| a.view()).collect();
        let jv = output_directional_derivative(&*la, &mlp, &fwd, &views).unwrap();
        let shifted = |sign: f64| {
            let mut m = mlp.clone();
            for (layer, d) in m.layers.iter_mut().zip(&v) {
                layer.w.scaled_add(sign * h, d);
            }
            m.forward(&*la, x.view(), &mut NoHook).unwrap().output().to_owned()
        };
        let fd = (shifted(1.0) - shifted(-1.0)) / (2.0 * h);
        for (a, b) in fd.iter().zip(jv.iter()) {
            assert!((a - b).abs() <= fd_tol(h) * (1.0 + a.abs()), "finite difference {a}, R-op {b}");
        }
    }
}

/// Vectors per example and output location: `v[n][t]`.
type PerLocation = Vec<Vec<Vec<f64>>>;

/// The explicit patches $\bar p_{n,t}$ (bias 1 last) and location gradients
/// $u_{n,t} = \partial \ell_n / \partial s_{n,t}$ of a network conv (tanh, no
/// pooling) → dense (identity) → softmax, by loops over examples, output
/// locations, channels and kernel offsets.
fn explicit_patches_and_grads(mlp: &Mlp<f64>, x: &Array2<f64>, t: &Array2<f64>) -> (PerLocation, PerLocation) {
    let LayerKind::Conv2d(conv) = mlp.layers[0].kind else { unreachable!() };
    let g = conv.geometry;
    let (w1, w2) = (&mlp.layers[0].w, &mlp.layers[1].w);
    let (ho, wo) = g.output();
    let (kh, kw) = g.kernel;
    let (n, locs, k_len) = (x.nrows(), ho * wo, g.patch_len());
    let (mut patches, mut grads) = (vec![], vec![]);
    for e in 0..n {
        let mut pe = vec![];
        let mut ys = vec![vec![0.0; locs]; g.out_channels];
        for t_ in 0..locs {
            let (r, q) = (t_ / wo, t_ % wo);
            let mut p = vec![0.0; k_len + 1];
            for c in 0..g.in_channels {
                for i in 0..kh {
                    for j in 0..kw {
                        let sy = (r * g.stride.0 + i * g.dilation.0) as isize - g.padding.0 as isize;
                        let sx = (q * g.stride.1 + j * g.dilation.1) as isize - g.padding.1 as isize;
                        if (0..g.input.0 as isize).contains(&sy) && (0..g.input.1 as isize).contains(&sx) {
                            p[(c * kh + i) * kw + j] = x[(e, (c * g.input.0 + sy as usize) * g.input.1 + sx as usize)];
                        }
                    }
                }
            }
            p[k_len] = 1.0;
            for (o, y) in ys.iter_mut().enumerate() {
                y[t_] = (0..=k_len).map(|i| w1[(o, i)] * p[i]).sum::<f64>().tanh();
            }
            pe.push(p);
        }
        // Logits, softmax, and dℓ/dz = softmax − target.
        let classes = w2.nrows();
        let z: Vec<f64> = (0..classes)
            .map(|k| {
                let lin: f64 = (0..g.out_channels)
                    .flat_map(|o| (0..locs).map(move |t_| (o, t_)))
                    .map(|(o, t_)| w2[(k, o * locs + t_)] * ys[o][t_])
                    .sum();
                lin + w2[(k, w2.ncols() - 1)]
            })
            .collect();
        let zmax = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let den: f64 = z.iter().map(|v| (v - zmax).exp()).sum();
        let gz: Vec<f64> = (0..classes).map(|k| (z[k] - zmax).exp() / den - t[(e, k)]).collect();
        let ge = (0..locs)
            .map(|t_| {
                (0..g.out_channels)
                    .map(|o| {
                        let dy: f64 = (0..classes).map(|k| gz[k] * w2[(k, o * locs + t_)]).sum();
                        dy * (1.0 - ys[o][t_] * ys[o][t_])
                    })
                    .collect()
            })
            .collect();
        patches.push(pe);
        grads.push(ge);
    }
    (patches, grads)
}

fn outer_sum(vs: &[Vec<f64>], scale: f64) -> Array2<f64> {
    let d = vs[0].len();
    Array2::from_shape_fn((d, d), |(i, j)| vs.iter().map(|v| v[i] * v[j]).sum::<f64>() * scale)
}

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// The factors after one K-FAC step on a tiny CNN (empirical Fisher, every
/// example in the statistics, so the factors are this batch's) against
/// explicit loops: expand (KFC) $A = \frac1{N|T|}\sum_{n,t} \bar p \bar p^\top$,
/// $B = \frac1N \sum_{n,t} u u^\top$; reduce $A = \frac1N \sum_n \hat p \hat p^\top$ with
/// $\hat p_n = \frac1{|T|}\sum_t \bar p_{n,t}$, $B = \frac1N \sum_n \hat u \hat u^\top$ with
/// $\hat u_n = \sum_t u_{n,t}$; the dense layer as before,
/// $A = \frac1N\sum_n \bar a \bar a^\top$, $B = \frac1N \sum_n g g^\top$.
#[test]
fn the_factors_of_a_step_equal_explicit_loops() {
    let la = la();
    let mut rng = Rng::new(16);
    // Stride 2, padding 1 on 5×6: 3×3 locations.
    let conv_l = conv_layer(2, 3, 3, 2, 1, 1, (5, 6), None, &mut rng);
    let LayerKind::Conv2d(conv) = conv_l.kind else { unreachable!() };
    let mlp0 = net(vec![conv_l, dense_out(conv.output_width(), 4, &mut rng)]);
    let n = 7;
    let x = random(n, conv.input_width(), &mut rng);
    let fwd = mlp0.forward(&*la, x.view(), &mut NoHook).unwrap();
    let t = Loss::SoftmaxCrossEntropy.sample(fwd.output(), &mut rng);
    let (patches, grads) = explicit_patches_and_grads(&mlp0, &x, &t);
    let locs = conv.locations() as f64;
    for sharing in [Sharing::Expand, Sharing::Reduce] {
        let mut config = OptimizerConfig::defaults(OptimizerKind::Kfac);
        let k = config.kfac_mut().unwrap();
        k.curvature.fisher = FisherMode::Empirical;
        k.curvature.stats_fraction = 1.0;
        let mut opt = Optimizer::new(config, &mlp0).unwrap().with_sharing(sharing);
        let mut mlp = mlp0.clone();
        opt.step(&*la, &mut mlp, x.view(), t.view(), Loss::SoftmaxCrossEntropy, &mut Rng::new(0)).unwrap();
        let blocks = opt.preconditioner().unwrap().blocks();
        let factor = |l: usize, name: &str| {
            let st = blocks[l].state();
            st.tensors[name].clone().into_dimensionality::<ndarray::Ix2>().unwrap()
        };
        let (want_a, want_b) = match sharing {
            Sharing::Expand => {
                let all_p: Vec<Vec<f64>> = patches.iter().flatten().cloned().collect();
                let all_u: Vec<Vec<f64>> = grads.iter().flatten().cloned().collect();
                (outer_sum(&all_p, 1.0 / (n as f64 * locs)), outer_sum(&all_u, 1.0 / n as f64))
            }
            Sharing::Reduce => {
                let mean = |vs: &Vec<Vec<f64>>, s: f64| {
                    (0..vs[0].len()).map(|i| vs.iter().map(|v| v[i]).sum::<f64>() * s).collect::<Vec<f64>>()
                };
                let p_hat: Vec<Vec<f64>> = patches.iter().map(|p| mean(p, 1.0 / locs)).collect();
                let u_hat: Vec<Vec<f64>> = grads.iter().map(|u| mean(u, 1.0)).collect();
                (outer_sum(&p_hat, 1.0 / n as f64), outer_sum(&u_hat, 1.0 / n as f64))
            }
        };
        // Sums of N|T| terms of size ≤ max|entry|² in another order.
        let terms = n as f64 * locs;
        for (got, want, what) in [(factor(0, "A"), want_a, "A"), (factor(0, "B"), want_b, "B")] {
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1.0);
            let err = max_abs_diff(&got, &want);
            assert!(err <= 4.0 * terms * f64::EPSILON * scale, "{sharing:?} conv {what}: {err}");
        }
        // The dense layer: its input is the conv output, its gradient dℓ/dz.
        let a1: Vec<Vec<f64>> = fwd.input(1).outer_iter().map(|r| r.iter().copied().chain([1.0]).collect()).collect();
        let gz = Loss::SoftmaxCrossEntropy.grad(fwd.output(), t.view()).unwrap();
        let g1: Vec<Vec<f64>> = gz.outer_iter().map(|r| r.to_vec()).collect();
        for (got, want) in
            [(factor(1, "A"), outer_sum(&a1, 1.0 / n as f64)), (factor(1, "B"), outer_sum(&g1, 1.0 / n as f64))]
        {
            let err = max_abs_diff(&got, &want);
            assert!(err <= 4.0 * conv.output_width() as f64 * f64::EPSILON, "{sharing:?} dense: {err}");
        }
    }
}

fn cnn_config(optimizer: OptimizerConfig, steps: usize) -> (TrainConfig, Task) {
    let mut config = TrainConfig::new(TaskKind::Cnn, optimizer);
    config.data = DataSource::Digits;
    config.steps = steps;
    config.batch_size = 128;
    config.eval_every = 4;
    let task = Task::load(config.task, &config.data, config.seed).unwrap();
    (config, task)
}

fn adaptive(kind: OptimizerKind) -> OptimizerConfig {
    let mut c = OptimizerConfig::defaults(kind);
    c.kfac_mut().unwrap().rule = UpdateRule::Adaptive(AdaptiveConfig::default());
    c
}

fn bits(m: &Metrics) -> Vec<u64> {
    m.steps.iter().map(|s| s.loss.to_bits()).collect()
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kfac-cnn-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The digits CNN: the architecture of the docs, and it learns.
#[test]
fn the_cnn_task_has_its_architecture_and_trains() {
    let (config, task) = cnn_config(OptimizerConfig::defaults(OptimizerKind::Kfac), 30);
    let mlp = task.network::<f32>(0, None).unwrap();
    let kinds: Vec<_> = mlp.layers.iter().map(|l| (l.d_in(), l.d_out(), l.positions(), l.output_width())).collect();
    assert_eq!(kinds, vec![(9, 8, 64, 8 * 16), (72, 16, 16, 16 * 4), (64, 10, 1, 10)]);
    assert_eq!(mlp.num_params(), 1898);
    let mnist = Task::load(TaskKind::Cnn, &DataSource::Mnist5k, 0).unwrap().network::<f32>(0, None).unwrap();
    let kinds: Vec<_> = mnist.layers.iter().map(|l| (l.d_in(), l.d_out(), l.positions(), l.output_width())).collect();
    assert_eq!(kinds, vec![(25, 16, 576, 16 * 144), (400, 32, 64, 32 * 16), (512, 10, 1, 10)]);
    assert_eq!(mnist.num_params(), 18378);
    let m = train::train::<f32>(&config, &task, &mut |_| {}).unwrap();
    let (first, last) = (m.steps[0].loss, m.final_loss);
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    assert!(m.test.last().unwrap().accuracy.unwrap() > 0.8, "{:?}", m.test.last());
}

/// 1 and 2 threads give the same losses, weights and optimizer state, bit
/// for bit, for every optimizer on the CNN (both parallelisms for K-FAC).
#[test]
fn one_and_two_threads_give_identical_cnn_runs() {
    let mut shards = OptimizerConfig::defaults(OptimizerKind::Kfac);
    shards.kfac_mut().unwrap().curvature.refresh_period = 3;
    for (i, (optimizer, parallelism)) in [
        (OptimizerConfig::defaults(OptimizerKind::Sgd), Parallelism::Products),
        (OptimizerConfig::defaults(OptimizerKind::Adam), Parallelism::Products),
        (shards.clone(), Parallelism::Products),
        (shards, Parallelism::Shards),
        (adaptive(OptimizerKind::Ekfac), Parallelism::Products),
    ]
    .into_iter()
    .enumerate()
    {
        let (mut config, task) = cnn_config(optimizer, 5);
        config.batch_size = 300;
        config.parallelism = parallelism;
        let dir = tempdir(&format!("threads-{i}"));
        let on = |threads: usize| {
            let path = dir.join(format!("{threads}.safetensors"));
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let opts = RunOptions { save: Some(path.clone()), ..Default::default() };
            let m = pool.install(|| train::train_with::<f32>(&config, &task, &opts, &mut |_| {})).unwrap();
            assert_eq!(m.threads, threads);
            (m, checkpoint::load::<f32>(&path).unwrap())
        };
        let (m1, c1) = on(1);
        let (m2, c2) = on(2);
        assert_eq!(bits(&m1), bits(&m2), "{i}");
        assert_eq!(m1.final_loss.to_bits(), m2.final_loss.to_bits());
        assert_eq!(c1.weights, c2.weights);
        assert_eq!(c1.optimizer, c2.optimizer);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Save at step 6 of 12, resume, and compare every loss bit for bit with
/// the uninterrupted run: K-FAC (reduce), EKFAC and adaptive K-FAC, f32 and f64.
#[test]
fn cnn_runs_resume_bit_for_bit() {
    fn check<T: Scalar>(optimizer: OptimizerConfig, sharing: Sharing, name: &str) {
        let (mut config, task) = cnn_config(optimizer, 12);
        config.sharing = sharing;
        let dir = tempdir(&format!("resume-{name}-{}", std::mem::size_of::<T>()));
        let path = dir.join("ck.safetensors");
        let run = |c: &TrainConfig, o: RunOptions| train::train_with::<T>(c, &task, &o, &mut |_| {}).unwrap();
        let whole = run(&config, RunOptions::default());
        run(&TrainConfig { steps: 6, ..config.clone() }, RunOptions { save: Some(path.clone()), ..Default::default() });
        let resumed = run(&config, RunOptions { resume: Some(path), ..Default::default() });
        assert_eq!(bits(&resumed), bits(&whole), "{name}");
        assert_eq!(resumed.final_loss.to_bits(), whole.final_loss.to_bits());
        assert_eq!(resumed.test, whole.test);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    check::<f32>(OptimizerConfig::defaults(OptimizerKind::Kfac), Sharing::Reduce, "kfac-reduce");
    check::<f32>(OptimizerConfig::defaults(OptimizerKind::Ekfac), Sharing::Expand, "ekfac");
    check::<f64>(adaptive(OptimizerKind::Kfac), Sharing::Expand, "adaptive-kfac");
}

/// Block-tridiagonal K-FAC refuses a network with convolutions, before any
/// step, naming the structure; on an MLP it is still accepted.
#[test]
fn tridiagonal_kfac_refuses_convolutions() {
    let mut config = OptimizerConfig::defaults(OptimizerKind::Kfac);
    let k: &mut KfacConfig = config.kfac_mut().unwrap();
    k.curvature.structure = Structure::Tridiagonal;
    let cnn = small_cnn(1);
    match Optimizer::new(config.clone(), &cnn) {
        Err(Error::Config { what: "structure", why, .. }) => assert!(why.contains("convolution"), "{why}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    let mlp = Mlp::<f64>::new(&[4, 5, 3], Activation::Tanh, Activation::Identity, Default::default(), 0, &[]).unwrap();
    assert!(Optimizer::new(config, &mlp).is_ok());
}

fn kfac() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_kfac"))
}

fn metrics(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

/// `kfac train --task cnn --steps 2` on the embedded MNIST subset for every
/// optimizer, fixed and adaptive (both products), true and empirical Fisher,
/// expand and reduce.
#[test]
fn kfac_train_cnn_runs_every_optimizer() {
    let out = tempdir("cli-train");
    for extra in [
        &["--optimizer", "sgd"][..],
        &["--optimizer", "adam"],
        &["--optimizer", "kfac"],
        &["--optimizer", "ekfac"],
        &["--optimizer", "kfac", "--fisher", "empirical", "--sharing", "reduce"],
        &["--optimizer", "ekfac", "--sharing", "reduce"],
        &["--optimizer", "kfac", "--adaptive"],
        &["--optimizer", "ekfac", "--adaptive", "--fisher", "empirical"],
        &["--optimizer", "kfac", "--adaptive", "--adaptive-products", "finite-differences"],
    ] {
        let st = kfac()
            .args(["train", "--task", "cnn", "--steps", "2", "--batch-size", "64", "--quiet"])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(st.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&st.stderr));
        let m = metrics(&out);
        assert_eq!(m["config"]["task"], "cnn", "{extra:?}");
        assert_eq!(m["config"]["data"], "mnist5k");
        assert_eq!(m["steps"].as_array().unwrap().len(), 2);
        assert!(m["final_loss"].as_f64().unwrap().is_finite(), "{extra:?}");
        let sharing = if extra.contains(&"reduce") { "reduce" } else { "expand" };
        assert_eq!(m["config"]["sharing"], sharing);
        if extra.contains(&"--adaptive") {
            assert!(m["steps"][1]["adaptive"]["alpha"].is_number(), "{extra:?}");
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--structure tridiagonal` on the cnn task: one readable line, exit 1,
/// no step taken and no output written.
#[test]
fn kfac_refuses_tridiagonal_on_the_cnn() {
    let out = tempdir("cli-tridiagonal");
    let st = kfac()
        .args(["train", "--task", "cnn", "--optimizer", "kfac", "--structure", "tridiagonal", "--steps", "2"])
        .args(["--quiet", "--out"])
        .arg(out.join("run"))
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(1));
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("tridiagonal") && err.contains("convolution"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.join("run").join("metrics.json").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

/// `kfac compare --task cnn` races the optimizers on the same batches.
#[test]
fn kfac_compare_races_on_the_cnn() {
    let out = tempdir("cli-compare");
    let st = kfac()
        .args(["compare", "--task", "cnn", "--dataset", "digits", "--optimizers", "sgd,adam,kfac,ekfac"])
        .args(["--steps", "3", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    for name in ["sgd", "adam", "kfac", "ekfac"] {
        let m = metrics(&out.join(name));
        assert_eq!(m["config"]["task"], "cnn");
        assert_eq!(m["steps"].as_array().unwrap().len(), 3);
    }
    assert!(out.join("compare.json").exists());
    std::fs::remove_dir_all(&out).unwrap();
}
