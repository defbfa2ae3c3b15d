//! `KfacOptimizer::step_distributed` in one process: with one part it is
//! `step` bit for bit; with several parts it is the step of their union
//! (up to rounding, `Reduction::Sum`), and `Reduction::Ordered` gives the
//! same result as the sum in order. The runs across processes are in
//! `kfac-mpi`'s tests.

use kfac_core::comm::{Reducer, Reduction, SingleProcess};
use kfac_core::optim::{AdaptiveConfig, FiniteDifferences, KfacConfig, KfacOptimizer, OutputModel, Shard, StepInput};
use kfac_core::{LayerBatch, LayerShape, Loss, Real, Rng};
use kfac_linalg_faer::Faer;
use ndarray::{Array2, ArrayView2, Axis, s};

const D: usize = 4;
const K: usize = 3;
const N: usize = 24;

fn shape() -> LayerShape {
    LayerShape::new(D, K)
}

/// y = x Wᵀ + b on rows of x.
fn outputs<T: Real>(w: &Array2<T>, x: ArrayView2<'_, T>) -> Array2<T> {
    x.dot(&w.slice(s![.., ..D]).t()) + w.column(D).insert_axis(Axis(0))
}

struct Linear<'a, T> {
    w: &'a Array2<T>,
    x: ArrayView2<'a, T>,
    t: ArrayView2<'a, T>,
}

impl<T: Real> OutputModel<T> for Linear<'_, T> {
    type Error = kfac_core::Error;
    fn outputs_at(&mut self, delta: &[Array2<T>]) -> kfac_core::Result<Array2<T>> {
        Ok(outputs(&(self.w + &delta[0]), self.x))
    }
    fn loss_at(&mut self, delta: &[Array2<T>]) -> kfac_core::Result<f64> {
        Loss::SquaredError.value(self.outputs_at(delta)?.view(), self.t)
    }
}

fn batch(step: usize) -> (Array2<f64>, Array2<f64>, Array2<f64>) {
    let mut rng = Rng::stream(3, step as u64);
    let x = Array2::from_shape_simple_fn((N, D), || rng.normal());
    let t = Array2::from_shape_fn((N, K), |(i, k)| (x[(i, k)] * 1.5).sin());
    let eps = Array2::from_shape_simple_fn((N, K), || rng.normal());
    (x, t, eps)
}

/// The part's gradient of the mean loss, its loss, and its statistics
/// gradients (true Fisher, squared error: $-\varepsilon$).
fn part(w: &Array2<f64>, x: ArrayView2<'_, f64>, t: ArrayView2<'_, f64>) -> (Array2<f64>, f64, Array2<f64>) {
    let y = outputs(w, x);
    let g = Loss::SquaredError.grad(y.view(), t).unwrap();
    let m = x.nrows() as f64;
    let mut grad = Array2::zeros(shape().param_dims());
    grad.slice_mut(s![.., ..D]).assign(&(g.t().dot(&x) / m));
    grad.column_mut(D).assign(&(g.sum_axis(Axis(0)) / m));
    (grad, Loss::SquaredError.value(y.view(), t).unwrap(), y)
}

/// Steps with the batch cut into `parts` equal parts (`None`: `step` itself).
fn run(config: &KfacConfig, parts: Option<(usize, Reduction)>, steps: usize) -> (Array2<f64>, Vec<f64>) {
    let la = Faer::sequential();
    let mut opt = KfacOptimizer::<f64>::new(config.clone(), &[shape()]).unwrap();
    let mut w = Array2::from_shape_fn(shape().param_dims(), |(i, j)| 0.1 * (i as f64 - j as f64));
    let mut losses = Vec::new();
    for k in 0..steps {
        let (x, t, eps) = batch(k);
        let sampled = eps.mapv(|e| -e);
        let params = [w.view()];
        let update = match parts {
            None => {
                let (grad, loss, y) = part(&w, x.view(), t.view());
                let stats = [LayerBatch::new(x.view(), sampled.view())];
                let input = StepInput { params: &params, grads: vec![grad], loss, statistics: Some(&stats) };
                let mut model = Linear { w: &w, x: x.view(), t: t.view() };
                let mut fd = FiniteDifferences::new(&mut model, Loss::SquaredError, y, &params);
                let step = opt.step(&la, input, &mut fd).unwrap();
                losses.push(step.report().loss);
                step.update()
            }
            Some((p, reduction)) => {
                let m = N / p;
                let rows = |a: &Array2<f64>, j: usize| a.slice(s![j * m..(j + 1) * m, ..]).to_owned();
                let xs: Vec<_> = (0..p).map(|j| rows(&x, j)).collect();
                let ts: Vec<_> = (0..p).map(|j| rows(&t, j)).collect();
                let ss: Vec<_> = (0..p).map(|j| rows(&sampled, j)).collect();
                let computed: Vec<_> = (0..p).map(|j| part(&w, xs[j].view(), ts[j].view())).collect();
                let stats: Vec<[LayerBatch<'_, f64>; 1]> =
                    (0..p).map(|j| [LayerBatch::new(xs[j].view(), ss[j].view())]).collect();
                let shards = (0..p)
                    .map(|j| Shard {
                        grads: vec![computed[j].0.clone()],
                        loss: computed[j].1,
                        examples: m,
                        statistics: Some(&stats[j][..]),
                    })
                    .collect();
                let mut models: Vec<_> = (0..p).map(|j| Linear { w: &w, x: xs[j].view(), t: ts[j].view() }).collect();
                let mut fds: Vec<_> = models
                    .iter_mut()
                    .zip(&computed)
                    .map(|(m, c)| FiniteDifferences::new(m, Loss::SquaredError, c.2.clone(), &params))
                    .collect();
                let reducer = Reducer::new(&SingleProcess, reduction, p).unwrap();
                let step = opt.step_distributed(&la, &reducer, &params, shards, &mut fds).unwrap();
                losses.push(step.report().loss);
                step.update()
            }
        };
        if let Some(u) = update {
            w += &u[0];
        }
    }
    (w, losses)
}

fn configs() -> Vec<KfacConfig> {
    let short = |mut c: KfacConfig| {
        c.curvature.refresh_period = 4;
        c
    };
    vec![
        short(KfacConfig::kfac()),
        short(KfacConfig::ekfac()),
        short(KfacConfig::kfac().with_adaptive(AdaptiveConfig::default())),
        short(KfacConfig::ekfac().with_adaptive(AdaptiveConfig::default())),
    ]
}

#[test]
fn one_part_is_step_bit_for_bit() {
    for config in configs() {
        for reduction in [Reduction::Sum, Reduction::Ordered] {
            let (a, la) = run(&config, None, 30);
            let (b, lb) = run(&config, Some((1, reduction)), 30);
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{config:?}");
            assert!(la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
}

#[test]
fn parts_give_the_step_of_their_union() {
    // 30 steps, three parts against the whole batch: the sums differ by
    // their rounding only, amplified by the steps; √ε of the largest weight.
    for config in configs() {
        let (a, _) = run(&config, None, 30);
        for reduction in [Reduction::Sum, Reduction::Ordered] {
            let (b, _) = run(&config, Some((3, reduction)), 30);
            let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let diff = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= f64::EPSILON.sqrt() * scale, "{diff:e} vs {scale:e}: {config:?}");
        }
    }
}

#[test]
fn ordered_and_sum_agree_in_one_process() {
    // One process: the local sum in order is the ordered sum.
    for config in configs() {
        let (a, la) = run(&config, Some((3, Reduction::Sum)), 20);
        let (b, lb) = run(&config, Some((3, Reduction::Ordered)), 20);
        assert_eq!(a, b);
        assert_eq!(la, lb);
    }
}
