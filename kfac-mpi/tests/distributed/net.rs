//! A two-layer tanh network with squared error, in plain ndarray, trained
//! data-parallel on fixed parts of a synthetic global batch.

use kfac_core::comm::Reducer;
use kfac_core::optim::{FiniteDifferences, KfacConfig, KfacOptimizer, KfacState, OutputModel, Shard};
use kfac_core::{LayerBatch, LayerShape, LinAlg, Loss, Real, Rng};
use ndarray::{Array2, ArrayView2, Axis, s};

pub const D_IN: usize = 5;
pub const HIDDEN: usize = 7;
pub const D_OUT: usize = 3;

pub fn shapes() -> [LayerShape; 2] {
    [LayerShape::new(D_IN, HIDDEN), LayerShape::new(HIDDEN, D_OUT)]
}

/// The initial weights, the same on every rank.
pub fn init<T: Real>() -> Vec<Array2<T>> {
    let mut rng = Rng::new(7);
    shapes()
        .iter()
        .map(|s| {
            let scale = 1.0 / (s.d_in as f64).sqrt();
            Array2::from_shape_fn(s.param_dims(), |_| T::from_f64_lossy(scale * rng.normal()))
        })
        .collect()
}

/// The global batch of step `step`: inputs, targets, and the noise of the
/// sampled targets of the true Fisher (for the squared error the sampled
/// gradient is $-\varepsilon_n$). Made whole on every rank, so that a
/// part's rows do not depend on how the batch is split.
pub fn global_batch<T: Real>(step: usize, n: usize) -> (Array2<T>, Array2<T>, Array2<T>) {
    let mut rng = Rng::stream(11, step as u64);
    let x = Array2::from_shape_fn((n, D_IN), |_| T::from_f64_lossy(rng.normal()));
    let t = Array2::from_shape_fn((n, D_OUT), |(i, k)| {
        let row = x.row(i);
        T::from_f64_lossy((row.iter().map(|v| v.to_f64_exact()).sum::<f64>() * (k as f64 + 1.0) * 0.3).sin())
    });
    let eps = Array2::from_shape_fn((n, D_OUT), |_| T::from_f64_lossy(rng.normal()));
    (x, t, eps)
}

fn affine<T: Real>(w: &Array2<T>, x: ArrayView2<'_, T>) -> Array2<T> {
    let d = x.ncols();
    let mut z = x.dot(&w.slice(s![.., ..d]).t());
    z += &w.column(d).insert_axis(Axis(0));
    z
}

/// The layers' inputs and the output.
pub fn forward<T: Real>(w: &[Array2<T>], x: ArrayView2<'_, T>) -> (Array2<T>, Array2<T>) {
    let h = affine(&w[0], x).mapv(|v| v.tanh());
    let out = affine(&w[1], h.view());
    (h, out)
}

/// Per-example pre-activation gradients of both layers from those of the output.
fn backward<T: Real>(w: &[Array2<T>], h: &Array2<T>, g_out: &Array2<T>) -> [Array2<T>; 2] {
    let mut g1 = g_out.dot(&w[1].slice(s![.., ..HIDDEN]));
    ndarray::Zip::from(&mut g1).and(h).for_each(|g, &h| *g *= T::one() - h * h);
    [g1, g_out.clone()]
}

/// $\frac1m\sum_n g_n \bar a_n^\top$: the gradient of the mean loss.
fn param_grad<T: Real>(g: &Array2<T>, a: ArrayView2<'_, T>) -> Array2<T> {
    let m = T::from_usize(g.nrows()).unwrap_or(T::one());
    let mut out = Array2::zeros((g.ncols(), a.ncols() + 1));
    out.slice_mut(s![.., ..a.ncols()]).assign(&g.t().dot(&a));
    out.column_mut(a.ncols()).assign(&g.sum_axis(Axis(0)));
    out.mapv(|v| v / m)
}

/// One part's forward pass at shifted weights, for the adaptive rule.
pub struct PartModel<'a, T> {
    pub w: &'a [Array2<T>],
    pub x: ArrayView2<'a, T>,
    pub t: ArrayView2<'a, T>,
}

impl<T: Real> OutputModel<T> for PartModel<'_, T> {
    type Error = kfac_core::Error;

    fn outputs_at(&mut self, delta: &[Array2<T>]) -> kfac_core::Result<Array2<T>> {
        let w: Vec<Array2<T>> = self.w.iter().zip(delta).map(|(w, d)| w + d).collect();
        Ok(forward(&w, self.x).1)
    }

    fn loss_at(&mut self, delta: &[Array2<T>]) -> kfac_core::Result<f64> {
        let out = self.outputs_at(delta)?;
        Loss::SquaredError.value(out.view(), self.t)
    }
}

/// What a run ends with.
#[derive(Debug)]
pub struct Run<T> {
    pub weights: Vec<Array2<T>>,
    pub state: KfacState<T>,
    pub losses: Vec<f64>,
}

/// Data-parallel steps up to `steps` (from `resume`'s end, or from the start) of batches of `n` examples; this rank's parts
/// are the rows `parts[j] = (start, len)`.
pub fn train<T: Real>(
    la: &dyn LinAlg<T>,
    reducer: &Reducer<'_>,
    config: &KfacConfig,
    n: usize,
    parts: &[(usize, usize)],
    steps: usize,
    resume: Option<&Run<T>>,
) -> kfac_core::Result<Run<T>> {
    let mut opt = KfacOptimizer::<T>::new(config.clone(), &shapes())?;
    let mut w = init::<T>();
    let mut losses = Vec::new();
    if let Some(r) = resume {
        opt.restore(&r.state)?;
        w = r.weights.clone();
        losses = r.losses.clone();
    }
    for step in losses.len()..steps {
        let (x, t, eps) = global_batch::<T>(step, n);
        let rows = |a: &Array2<T>, (s0, len): (usize, usize)| a.slice(s![s0..s0 + len, ..]).to_owned();
        let xs: Vec<Array2<T>> = parts.iter().map(|&p| rows(&x, p)).collect();
        let ts: Vec<Array2<T>> = parts.iter().map(|&p| rows(&t, p)).collect();
        let mut data = Vec::new();
        for (j, &p) in parts.iter().enumerate() {
            let (h, out) = forward(&w, xs[j].view());
            let loss = Loss::SquaredError.value(out.view(), ts[j].view())?;
            let g_out = Loss::SquaredError.grad(out.view(), ts[j].view())?;
            let [g1, g2] = backward(&w, &h, &g_out);
            let grads = vec![param_grad(&g1, xs[j].view()), param_grad(&g2, h.view())];
            let sampled = rows(&eps, p).mapv(|e| -e);
            let [s1, s2] = backward(&w, &h, &sampled);
            data.push((h, out, loss, grads, [s1, s2]));
        }
        let batches: Vec<[LayerBatch<'_, T>; 2]> = data
            .iter()
            .zip(&xs)
            .map(|(d, x)| [LayerBatch::new(x.view(), d.4[0].view()), LayerBatch::new(d.0.view(), d.4[1].view())])
            .collect();
        let shards: Vec<Shard<'_, T>> = data
            .iter()
            .zip(&batches)
            .zip(parts)
            .map(|((d, b), p)| Shard { grads: d.3.clone(), loss: d.2, examples: p.1, statistics: Some(&b[..]) })
            .collect();
        let params: Vec<ArrayView2<'_, T>> = w.iter().map(|a| a.view()).collect();
        let mut part_models: Vec<PartModel<'_, T>> =
            xs.iter().zip(&ts).map(|(x, t)| PartModel { w: &w, x: x.view(), t: t.view() }).collect();
        let mut models: Vec<_> = part_models
            .iter_mut()
            .zip(&data)
            .map(|(m, d)| FiniteDifferences::new(m, Loss::SquaredError, d.1.clone(), &params))
            .collect();
        let step = opt.step_distributed(la, reducer, &params, shards, &mut models)?;
        losses.push(step.report().loss);
        let update = step.update();
        drop(models);
        drop(part_models);
        if let Some(u) = update {
            w.iter_mut().zip(&u).for_each(|(w, u)| *w += u);
        }
    }
    Ok(Run { weights: w, state: opt.state(), losses })
}
