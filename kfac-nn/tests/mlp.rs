//! The MLP against finite differences, the hooks against the weight
//! gradient, and the sampled targets against the predictive distribution.

use kfac::LinAlg;
use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::loss::Loss;
use kfac_nn::mlp::{Activation, GradRecorder, Hook, Init, Mlp, NoHook, Parallelism};
use kfac_nn::rng::Rng;
use ndarray::{Array2, ArrayView2, Axis};

fn la() -> Box<dyn LinAlg<f64>> {
    f64::backend(Backend::default(), true).unwrap()
}

fn random(rows: usize, cols: usize, rng: &mut Rng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.normal())
}

fn targets(loss: Loss, s: ArrayView2<'_, f64>, rng: &mut Rng) -> Array2<f64> {
    match loss {
        // Soft targets in [0, 1] for the Bernoulli loss, a sample otherwise.
        Loss::SigmoidCrossEntropy => s.mapv(|_| rng.uniform()),
        _ => loss.sample(s, rng),
    }
}

const ACTIVATIONS: [Activation; 4] = [Activation::Tanh, Activation::Relu, Activation::Sigmoid, Activation::Identity];
const LOSSES: [Loss; 3] = [Loss::SoftmaxCrossEntropy, Loss::SigmoidCrossEntropy, Loss::SquaredError];

/// Central differences of the mean loss against the backward pass, for
/// every activation and loss. With h = 1e-5 the truncation error is
/// O(h²) ≈ 1e-10 relative and the rounding error O(ε/h) ≈ 1e-11.
#[test]
fn gradients_match_finite_differences() {
    let la = la();
    let mut rng = Rng::new(1);
    for act in ACTIVATIONS {
        for loss in LOSSES {
            let mut mlp = Mlp::<f64>::new(&[3, 5, 4, 3], act, Activation::Identity, Init::Glorot, 7, &[]).unwrap();
            // Nonzero biases, so their gradients are exercised too.
            for layer in &mut mlp.layers {
                let d = layer.d_in();
                layer.w.column_mut(d).mapv_inplace(|_| 0.3 * rng.normal());
            }
            let x = random(6, 3, &mut rng);
            let s = mlp.forward(&*la, x.view(), &mut NoHook).unwrap().output().to_owned();
            let t = targets(loss, s.view(), &mut rng);
            let value = |m: &Mlp<f64>| {
                let f = m.forward(&*la, x.view(), &mut NoHook).unwrap();
                loss.value(f.output(), t.view()).unwrap()
            };
            let fwd = mlp.forward(&*la, x.view(), &mut NoHook).unwrap();
            let g = loss.grad(fwd.output(), t.view()).unwrap();
            let grads = mlp.backward(&*la, &fwd, g.view(), true, &mut NoHook).unwrap();
            let h = 1e-5;
            let mut checked = 0;
            for l in 0..mlp.layers.len() {
                let d_in = mlp.layers[l].d_in();
                for idx in [(0, 0), (1, 2), (2, 1), (0, d_in), (2, d_in)] {
                    if idx.0 >= mlp.layers[l].d_out() || idx.1 > d_in {
                        continue;
                    }
                    let mut plus = mlp.clone();
                    plus.layers[l].w[idx] += h;
                    let mut minus = mlp.clone();
                    minus.layers[l].w[idx] -= h;
                    let fd = (value(&plus) - value(&minus)) / (2.0 * h);
                    let bp = grads[l][idx];
                    assert!(
                        (fd - bp).abs() <= 1e-6 * (1.0 + fd.abs()),
                        "{act:?}/{loss:?} layer {l} {idx:?}: finite difference {fd}, backprop {bp}"
                    );
                    checked += 1;
                }
            }
            assert!(checked >= 12);
        }
    }
}

/// A hook that keeps the layer inputs.
#[derive(Default)]
struct Inputs(Vec<Array2<f64>>);
impl Hook<f64> for Inputs {
    fn forward(&mut self, _layer: usize, input: ArrayView2<'_, f64>) {
        self.0.push(input.to_owned());
    }
}

/// The ā and g the hooks hand out reproduce the weight gradient
/// ∇W̄ = (1/N) Σ gₙ āₙᵀ.
#[test]
fn hooks_reproduce_the_weight_gradient() {
    let la = la();
    let mut rng = Rng::new(2);
    let mlp = Mlp::<f64>::new(&[4, 6, 3], Activation::Tanh, Activation::Identity, Init::Glorot, 3, &[]).unwrap();
    let x = random(9, 4, &mut rng);
    let mut inputs = Inputs::default();
    let fwd = mlp.forward(&*la, x.view(), &mut inputs).unwrap();
    let t = Loss::SoftmaxCrossEntropy.sample(fwd.output(), &mut rng);
    let g = Loss::SoftmaxCrossEntropy.grad(fwd.output(), t.view()).unwrap();
    let mut rec = GradRecorder::default();
    let grads = mlp.backward(&*la, &fwd, g.view(), true, &mut rec).unwrap();
    assert_eq!(inputs.0.len(), 2);
    for l in 0..2 {
        let a = &inputs.0[l];
        let gl = rec.grads[l].as_ref().unwrap();
        let n = a.nrows() as f64;
        let a_bar = ndarray::concatenate(Axis(1), &[a.view(), Array2::ones((a.nrows(), 1)).view()]).unwrap();
        let want = gl.t().dot(&a_bar) / n;
        let err = (&grads[l] - &want).iter().fold(0.0f64, |m, e| m.max(e.abs()));
        assert!(err < 1e-12, "layer {l}: {err}");
    }
}

/// The mean of many sampled targets is the predictive mean, within five
/// standard errors (per output: sd ≤ 1 for Gaussian noise, ≤ 1/2 otherwise).
#[test]
fn sampled_targets_follow_the_predictive_distribution() {
    let mut rng = Rng::new(3);
    let s = random(3, 4, &mut rng);
    let draws = 20_000;
    for loss in LOSSES {
        let mean = loss.mean(s.view());
        let mut acc = Array2::<f64>::zeros(s.dim());
        for _ in 0..draws {
            acc += &loss.sample(s.view(), &mut rng);
        }
        acc /= draws as f64;
        let se = 1.0 / (draws as f64).sqrt();
        let err = (&acc - &mean).iter().fold(0.0f64, |m, e| m.max(e.abs()));
        assert!(err < 5.0 * se, "{loss:?}: max deviation {err}, 5 se = {}", 5.0 * se);
        if loss == Loss::SoftmaxCrossEntropy {
            let sample = loss.sample(s.view(), &mut rng);
            assert!(sample.sum_axis(Axis(1)).iter().all(|&r| r == 1.0), "one-hot rows");
        }
    }
}

/// Batch shards and parallel products compute the same thing.
#[test]
fn shards_equal_products() {
    let mut rng = Rng::new(4);
    let la32 = f32::backend(Backend::default(), true).unwrap();
    let mut a =
        Mlp::<f32>::new(&[20, 64, 30, 20], Activation::Tanh, Activation::Identity, Init::default(), 5, &[]).unwrap();
    let x = random(300, 20, &mut rng).mapv(|v| v as f32);
    let mut run = |p: Parallelism| {
        a.parallelism = p;
        let fwd = a.forward(&*la32, x.view(), &mut NoHook).unwrap();
        let g = Loss::SquaredError.grad(fwd.output(), x.view()).unwrap();
        (fwd.output().to_owned(), a.backward(&*la32, &fwd, g.view(), true, &mut NoHook).unwrap())
    };
    let (o1, g1) = run(Parallelism::Products);
    let (o2, g2) = run(Parallelism::Shards);
    let tol = 1e-4f32;
    assert!((&o1 - &o2).iter().all(|e| e.abs() < tol));
    for (a, b) in g1.iter().zip(&g2) {
        let scale = a.iter().fold(0.0f32, |m, e| m.max(e.abs()));
        assert!((a - b).iter().all(|e| e.abs() < tol * (1.0 + scale)));
    }
}

/// Wrong input widths and mismatched gradients are errors that name what
/// does not fit.
#[test]
fn bad_shapes_are_errors() {
    use kfac_nn::Error;
    let la = la();
    let mlp = Mlp::<f64>::new(&[4, 3], Activation::Tanh, Activation::Identity, Init::Glorot, 1, &[]).unwrap();
    let shape_error = |r: kfac_nn::Result<_>, name: &str, found: (usize, usize)| match r {
        Err(e @ Error::Shape { what, found: f, .. }) => {
            assert_eq!((what, f), (name, found));
            assert!(e.to_string().contains(name), "{e}");
        }
        Err(e) => panic!("expected a shape error about {name}, got {e}"),
        Ok(_) => panic!("expected a shape error about {name}, got Ok"),
    };
    shape_error(mlp.forward(&*la, Array2::zeros((2, 5)).view(), &mut NoHook).map(|_| ()), "input batch", (2, 5));
    let fwd = mlp.forward(&*la, Array2::zeros((2, 4)).view(), &mut NoHook).unwrap();
    let back = |g: Array2<f64>| mlp.backward(&*la, &fwd, g.view(), true, &mut NoHook).map(|_| ());
    shape_error(back(Array2::zeros((3, 3))), "output gradients", (3, 3));
    shape_error(back(Array2::zeros((2, 2))), "output gradients", (2, 2));
    match Mlp::<f64>::new(&[4], Activation::Tanh, Activation::Identity, Init::Glorot, 1, &[]) {
        Err(e @ Error::Config { what: "layer sizes", .. }) => assert!(e.to_string().contains("[4]"), "{e}"),
        other => panic!("expected a layer-sizes error, got {other:?}"),
    }
    // The losses are kfac-core's: their errors are kfac-core's.
    match Loss::SquaredError.value(fwd.output(), Array2::zeros((2, 4)).view()) {
        Err(e @ kfac::Error::ShapeMismatch { what: "targets", found: (2, 4), .. }) => {
            assert!(e.to_string().contains("targets"), "{e}")
        }
        other => panic!("expected a shape error about the targets, got {other:?}"),
    }
}

/// A backend that counts the products it computes and delegates them to
/// the sequential faer backend.
#[derive(Debug, Default)]
struct Counting(std::sync::atomic::AtomicUsize);

impl LinAlg<f32> for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn gemm(
        &self,
        alpha: f32,
        a: ArrayView2<'_, f32>,
        b: ArrayView2<'_, f32>,
        beta: f32,
        c: ndarray::ArrayViewMut2<'_, f32>,
    ) -> Result<(), kfac::LinAlgError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        kfac::DefaultBackend::default().gemm(alpha, a, b, beta, c)
    }
    fn eigh(&self, a: ArrayView2<'_, f32>) -> Result<kfac::SymEig<f32>, kfac::LinAlgError> {
        kfac::DefaultBackend::default().eigh(a)
    }
    fn spd_inverse(&self, a: ArrayView2<'_, f32>) -> Result<Array2<f32>, kfac::LinAlgError> {
        kfac::DefaultBackend::default().spd_inverse(a)
    }
}

/// Batch shards run their products on the backend they are given (its
/// sequential form), not on a default one: every product of a pass in
/// shards is counted by the backend handed in.
#[test]
fn shards_use_the_backend_they_are_given() {
    let la = Counting::default();
    let mut rng = Rng::new(4);
    let mut mlp = Mlp::<f32>::new(&[6, 5, 3], Activation::Tanh, Activation::Identity, Init::Glorot, 3, &[]).unwrap();
    mlp.parallelism = Parallelism::Shards;
    let x = random(300, 6, &mut rng).mapv(|v| v as f32);
    let fwd = mlp.forward(&la, x.view(), &mut NoHook).unwrap();
    let forward_products = la.0.load(std::sync::atomic::Ordering::Relaxed);
    // 300 rows make 3 shards of 128 rows per layer.
    assert_eq!(forward_products, 2 * 3);
    let g = Loss::SquaredError.grad(fwd.output(), Array2::zeros((300, 3)).view()).unwrap();
    mlp.backward(&la, &fwd, g.view(), true, &mut NoHook).unwrap();
    assert!(la.0.load(std::sync::atomic::Ordering::Relaxed) > forward_products);
}

/// The sparse initialisation gives each unit exactly `min(15, d_in)` nonzero weights and zero biases.
#[test]
fn sparse_init() {
    let mlp = Mlp::<f32>::new(&[40, 8, 3], Activation::Tanh, Activation::Identity, Init::default(), 9, &[]).unwrap();
    for layer in &mlp.layers {
        let d = layer.d_in();
        for row in layer.w.outer_iter() {
            assert_eq!(row.iter().take(d).filter(|&&v| v != 0.0).count(), 15.min(d));
            assert_eq!(row[d], 0.0);
        }
    }
}

/// The Gaussian initialisation draws the weights from N(0, 1/d_in) and
/// leaves the biases at zero: each layer's sample mean and variance are
/// within six standard errors of 0 and 1/d_in (the standard error of a
/// normal sample's variance is sigma^2 sqrt(2/(m - 1)) over m weights).
#[test]
fn gaussian_init() {
    let mlp = Mlp::<f64>::new(&[400, 300, 50], Activation::Tanh, Activation::Identity, Init::Gaussian, 4, &[]).unwrap();
    for layer in &mlp.layers {
        let d = layer.d_in();
        let w = layer.weight();
        let m = w.len() as f64;
        let mean = w.sum() / m;
        let var = w.iter().map(|&v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0);
        let sigma2 = 1.0 / d as f64;
        assert!(mean.abs() <= 6.0 * (sigma2 / m).sqrt(), "mean {mean}");
        assert!((var - sigma2).abs() <= 6.0 * sigma2 * (2.0 / (m - 1.0)).sqrt(), "var {var} against {sigma2}");
        assert!(layer.w.column(d).iter().all(|&b| b == 0.0));
    }
    let again =
        Mlp::<f64>::new(&[400, 300, 50], Activation::Tanh, Activation::Identity, Init::Gaussian, 4, &[]).unwrap();
    assert_eq!(mlp.layers, again.layers);
}

/// The fast f32 tanh is within a few units in the last place of the exact one.
#[test]
fn fast_tanh_is_accurate() {
    let mut worst = 0.0f64;
    for i in -200_000..=200_000 {
        let x = i as f32 * 1e-4;
        let got = f64::from(kfac_nn::backend::tanh_f32(x));
        let want = f64::from(x).tanh();
        worst = worst.max((got - want).abs());
    }
    for x in [-1e30f32, -100.0, -9.0, 9.0, 100.0, 1e30] {
        assert!((1.0 - kfac_nn::backend::tanh_f32(x).abs()) <= 2.0 * f32::EPSILON);
    }
    // f32 spacing near 1 is 6e-8: a few ulps.
    assert!(worst < 4.0 * f64::from(f32::EPSILON), "max error {worst:e}");
}
