//! How close K-FAC and EKFAC come to the exact Fisher: the figure of Martens
//! & Grosse (2015, fig. 2) and the comparison of George et al. (2018).
//!
//! A small autoencoder on the 8×8 digits (64-32-16-8-16-32-64, tanh, linear
//! code, Bernoulli cross-entropy) is trained part of the way with Adam; then,
//! on $M$ training examples, for every layer:
//!
//! - the **exact Fisher block** from per-example gradients,
//!   $F = \frac1M \sum_n \mathbb E_{y \sim p(y \mid x_n)}\!\left[\operatorname{vec}(\nabla_n) \operatorname{vec}(\nabla_n)^\top\right]$
//!   with $\nabla_n = g_n \bar a_n^\top$ (column-major vec, the layout of
//!   `kfac_core`). The expectation over $y$ is taken exactly, not sampled:
//!   the output Fisher $F_\text{out}(s) = \mathbb E_y[\partial_s \ell\, \partial_s \ell^\top]$
//!   is written as $\sum_k r_k r_k^\top$ ([`output_fisher_factor`]), and each
//!   $r_k$ is back-propagated as its own row. With the **empirical Fisher**
//!   the rows are the data gradients $\partial_s \ell(y_n)$;
//! - the **K-FAC** block $A \otimes B$ and the **EKFAC** block
//!   $(U_A \otimes U_B) \operatorname{diag}(S) (U_A \otimes U_B)^\top$ that
//!   `kfac_core`'s [`KfacBlock`](kfac_core::KfacBlock) and
//!   [`EkfacBlock`](kfac_core::EkfacBlock) build from the same rows;
//! - their damped inverses next to the exact one, $(\hat F + \lambda I)^{-1}$
//!   with $\lambda = \rho \operatorname{tr}(F) / P$ ($P$ parameters), obtained by
//!   running the blocks' `precondition` on the unit vectors.
//!
//! The relative Frobenius errors $\lVert F - \hat F \rVert_F / \lVert F \rVert_F$
//! go to `fidelity.json`. EKFAC's $S$ is the diagonal of $F$ in K-FAC's
//! eigenbasis, the best diagonal there in the Frobenius norm, and K-FAC is
//! also diagonal in that basis: EKFAC's error can never exceed K-FAC's (the
//! run checks it and reports it).
//!
//! **Across layers** ([`chain_matrices`]): on the middle layers (`chain`), the
//! exact Fisher over all their parameters, cross-layer blocks included, is
//! built from the same rows, damped ($F + \lambda I$, the same rule for
//! $\lambda$) and inverted. Next to it: the damped inverses of block-diagonal
//! K-FAC and of Martens & Grosse's block-tridiagonal model
//! ([`TridiagonalKfac`]), both with factored damping of the same $\lambda$, as
//! the paper's figure 3 compares them.

use std::path::Path;

use kfac_core::{BlockKind, CurvatureBlock, Damping, KfacMethod, LayerBatch, LayerShape, LinAlg, TridiagonalKfac};
use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::data::{self, Batches};
use kfac_nn::loss::{FisherMode, Loss};
use kfac_nn::mlp::{Activation, GradRecorder, Init, Mlp, NoHook};
use kfac_nn::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use kfac_nn::report::{self, Panel};
use kfac_nn::rng::Rng;
use kfac_nn::{Error, Result};
use ndarray::{Array2, ArrayView1, ArrayView2, Axis, s};

/// What the study runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FidelityConfig {
    /// Layer widths, input first.
    pub sizes: Vec<usize>,
    /// The layer whose activation is the identity (the code).
    pub code_layer: usize,
    /// Adam steps before the Fisher is measured.
    pub train_steps: usize,
    /// Batch size of that training.
    pub batch_size: usize,
    /// $M$: the examples the Fisher is measured on.
    pub examples: usize,
    /// The layers drawn in the figure (0-based).
    pub shown: Vec<usize>,
    /// $\rho$: the damping of the inverses relative to the mean eigenvalue $\operatorname{tr}(F)/P$.
    pub relative_damping: f64,
    /// The consecutive layers (0-based) of the cross-layer comparison.
    #[serde(default)]
    pub chain: Vec<usize>,
    /// Seed of the split, the initialisation and the batches.
    pub seed: u64,
}

impl Default for FidelityConfig {
    fn default() -> Self {
        Self {
            sizes: vec![64, 32, 16, 8, 16, 32, 64],
            code_layer: 2,
            train_steps: 300,
            batch_size: 128,
            examples: 256,
            shown: vec![2, 3],
            relative_damping: 0.1,
            chain: vec![1, 2, 3, 4],
            seed: 0,
        }
    }
}

/// The errors of the approximations of one layer's block, for one kind of Fisher.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Errors {
    /// $\lVert F - A \otimes B \rVert_F / \lVert F \rVert_F$.
    pub kfac: f64,
    /// $\lVert F - \hat F_\text{EKFAC} \rVert_F / \lVert F \rVert_F$.
    pub ekfac: f64,
    /// The same for the damped inverses, relative to $\lVert (F + \lambda I)^{-1} \rVert_F$.
    pub kfac_inverse: f64,
    /// EKFAC's damped inverse against the exact one.
    pub ekfac_inverse: f64,
    /// The $\lambda$ of the inverses.
    pub damping: f64,
}

/// One layer's results.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerFidelity {
    /// Layer index (0-based).
    pub layer: usize,
    /// `[d_in, d_out]`.
    pub shape: [usize; 2],
    /// Parameters $P = d_\text{out} (d_\text{in} + 1)$.
    pub params: usize,
    /// Against the true Fisher.
    pub true_fisher: Errors,
    /// Against the empirical Fisher.
    pub empirical_fisher: Errors,
    /// $\lVert F_\text{emp} - F \rVert_F / \lVert F \rVert_F$: how far the empirical Fisher is from the true one.
    pub empirical_vs_true: f64,
}

/// The dense matrices of one layer and one kind of Fisher.
#[derive(Debug, Clone)]
pub struct Matrices {
    /// The exact block $F$.
    pub exact: Array2<f64>,
    /// K-FAC's $A \otimes B$.
    pub kfac: Array2<f64>,
    /// EKFAC's block.
    pub ekfac: Array2<f64>,
    /// $(F + \lambda I)^{-1}$.
    pub exact_inverse: Array2<f64>,
    /// $(A \otimes B + \lambda I)^{-1}$.
    pub kfac_inverse: Array2<f64>,
    /// EKFAC's damped inverse.
    pub ekfac_inverse: Array2<f64>,
    /// The errors.
    pub errors: Errors,
}

/// The cross-layer comparison for one kind of Fisher; see [`chain_matrices`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChainErrors {
    /// $\lVert (F+\lambda I)^{-1} - \hat F_\text{diag}^{-1} \rVert_F / \lVert (F+\lambda I)^{-1} \rVert_F$, block-diagonal K-FAC.
    pub block_diagonal_inverse: f64,
    /// The same for the block-tridiagonal model.
    pub tridiagonal_inverse: f64,
    /// The part of the exact inverse outside the block tridiagonal, $\lVert \cdot \rVert_F$ relative to the whole.
    pub exact_inverse_beyond_tridiagonal: f64,
    /// The part of the exact inverse outside the block diagonal.
    pub exact_inverse_beyond_diagonal: f64,
    /// The $\lambda$ of the damping.
    pub damping: f64,
    /// Links of the tridiagonal model that fell back to block-diagonal.
    pub fallbacks: usize,
}

/// The dense inverses of the cross-layer comparison.
#[derive(Debug, Clone)]
pub struct ChainMatrices {
    /// $(F + \lambda I)^{-1}$ over the chain's parameters.
    pub exact_inverse: Array2<f64>,
    /// Block-diagonal K-FAC's damped inverse.
    pub block_diagonal_inverse: Array2<f64>,
    /// The block-tridiagonal model's damped inverse.
    pub tridiagonal_inverse: Array2<f64>,
    /// The errors.
    pub errors: ChainErrors,
}

/// The cross-layer comparison of the middle layers.
#[derive(Debug, Clone)]
pub struct ChainStudy {
    /// The layers (0-based).
    pub layers: Vec<usize>,
    /// Their parameters, in all.
    pub params: usize,
    /// True Fisher.
    pub true_fisher: ChainMatrices,
    /// Empirical Fisher.
    pub empirical_fisher: ChainMatrices,
}

/// What [`study`] returns.
#[derive(Debug, Clone)]
pub struct Study {
    /// The configuration.
    pub config: FidelityConfig,
    /// Per layer.
    pub layers: Vec<LayerFidelity>,
    /// The matrices of the shown layers: `(layer, true Fisher, empirical Fisher)`.
    pub shown: Vec<(usize, Matrices, Matrices)>,
    /// The mean training loss on the $M$ examples when the Fisher was measured.
    pub loss: f64,
    /// The cross-layer comparison (`None` when `config.chain` is empty).
    pub chain: Option<ChainStudy>,
}

impl Study {
    /// Whether EKFAC's error is at most K-FAC's for every layer and both Fishers.
    pub fn ekfac_never_worse(&self) -> bool {
        self.layers
            .iter()
            .all(|l| l.true_fisher.ekfac <= l.true_fisher.kfac && l.empirical_fisher.ekfac <= l.empirical_fisher.kfac)
    }
}

/// A factor of the output Fisher at logits `s` (one example): rows $r_k$ with
/// $\sum_k r_k r_k^\top = \mathbb E_{y \sim p(y \mid s)}[\partial_s \ell\, \partial_s \ell^\top]$.
///
/// Sigmoid: $\operatorname{diag}(\sqrt{p_k(1-p_k)})$. Softmax:
/// $r_k = \sqrt{p_k}(e_k - p)$, since $\operatorname{diag}(p) - p p^\top = \sum_k p_k (e_k - p)(e_k - p)^\top$.
/// Squared error (unit-variance Gaussian): the identity.
pub fn output_fisher_factor(loss: Loss, s: ArrayView1<'_, f64>) -> Array2<f64> {
    let k = s.len();
    let p = loss.mean(s.insert_axis(Axis(0)));
    let p = p.row(0);
    match loss {
        Loss::SigmoidCrossEntropy => Array2::from_diag(&p.mapv(|q| (q * (1.0 - q)).sqrt())),
        Loss::SquaredError => Array2::eye(k),
        Loss::SoftmaxCrossEntropy => Array2::from_shape_fn((k, k), |(r, j)| {
            let e = if r == j { 1.0 } else { 0.0 };
            p[r].sqrt() * (e - p[j])
        }),
    }
}

/// The rows whose outer products average to the Fisher of `mlp` on `(x, t)`:
/// per layer, the inputs $a$ (without the bias column) and the pre-activation
/// gradients $g$, with $F_l = \frac1R \sum_r \operatorname{vec}(g_r \bar a_r^\top) \operatorname{vec}(g_r \bar a_r^\top)^\top$
/// over the $R$ rows.
///
/// True Fisher: one row per example and output-Fisher factor row, scaled by
/// $\sqrt K$ so that the average over the $R = MK$ rows is the sum over $k$
/// and the average over examples. Empirical Fisher: the data gradients.
pub fn fisher_rows(
    la: &dyn LinAlg<f64>,
    mlp: &Mlp<f64>,
    loss: Loss,
    x: ArrayView2<'_, f64>,
    t: ArrayView2<'_, f64>,
    mode: FisherMode,
) -> Result<Vec<(Array2<f64>, Array2<f64>)>> {
    let fwd = mlp.forward(la, x, &mut NoHook)?;
    let (inputs, g_out) = match mode {
        FisherMode::Empirical => (x.to_owned(), loss.grad(fwd.output(), t)?),
        FisherMode::True => {
            let (m, k) = fwd.output().dim();
            let scale = (k as f64).sqrt();
            let mut xs = Array2::zeros((m * k, x.ncols()));
            let mut gs = Array2::zeros((m * k, k));
            for (n, s) in fwd.output().outer_iter().enumerate() {
                let r = output_fisher_factor(loss, s);
                gs.slice_mut(s![n * k..(n + 1) * k, ..]).assign(&(r * scale));
                for mut row in xs.slice_mut(s![n * k..(n + 1) * k, ..]).outer_iter_mut() {
                    row.assign(&x.row(n));
                }
            }
            (xs, gs)
        }
    };
    let fwd = mlp.forward(la, inputs.view(), &mut NoHook)?;
    let mut rec = GradRecorder::default();
    mlp.backward(la, &fwd, g_out.view(), false, &mut rec)?;
    rec.grads
        .into_iter()
        .enumerate()
        .map(|(l, g)| {
            let g = g.ok_or_else(|| Error::Config {
                what: "layer",
                value: l.to_string(),
                why: "the backward pass did not reach it".into(),
            })?;
            Ok((fwd.acts[l].clone(), g))
        })
        .collect()
}

/// The exact Fisher block $\frac1R \sum_r (\bar a_r \otimes g_r)(\bar a_r \otimes g_r)^\top$
/// of rows `(a, g)` (`a` without the bias column; one is appended), in
/// column-major vec order, accumulated in chunks of rows.
pub fn exact_block(la: &dyn LinAlg<f64>, a: ArrayView2<'_, f64>, g: ArrayView2<'_, f64>) -> Result<Array2<f64>> {
    let (rows, d_in) = a.dim();
    let d_out = g.ncols();
    let p = (d_in + 1) * d_out;
    let mut f = Array2::<f64>::zeros((p, p));
    let chunk = 512;
    let mut v = Array2::<f64>::zeros((chunk.min(rows), p));
    for start in (0..rows).step_by(chunk) {
        let end = (start + chunk).min(rows);
        let mut v = v.slice_mut(s![..end - start, ..]);
        for (r, mut out) in (start..end).zip(v.outer_iter_mut()) {
            for j in 0..=d_in {
                let aj = if j < d_in { a[(r, j)] } else { 1.0 };
                for i in 0..d_out {
                    out[j * d_out + i] = aj * g[(r, i)];
                }
            }
        }
        la.gram(1.0 / rows as f64, v.view(), 1.0, f.view_mut()).map_err(|e| core_err("exact Fisher", e))?;
    }
    Ok(f)
}

fn core_err(block: &str, e: kfac_core::LinAlgError) -> Error {
    Error::Core(kfac_core::Error::LinAlg { block: block.into(), source: e })
}

fn frobenius(x: &Array2<f64>) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// $\lVert x - y \rVert_F / \lVert x \rVert_F$.
pub fn relative_error(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
    frobenius(&(x - y)) / frobenius(x)
}

/// The dense matrix of `block.precondition` (its damped inverse), one unit vector at a time.
fn dense_inverse(la: &dyn LinAlg<f64>, block: &dyn CurvatureBlock<f64>) -> Result<Array2<f64>> {
    let (rows, cols) = block.shape().param_dims();
    let p = rows * cols;
    let mut out = Array2::zeros((p, p));
    let mut e = Array2::<f64>::zeros((rows, cols));
    for j in 0..cols {
        for i in 0..rows {
            e[(i, j)] = 1.0;
            let col = block.precondition(la, e.view())?;
            e[(i, j)] = 0.0;
            for (jj, c) in col.axis_iter(Axis(1)).enumerate() {
                out.slice_mut(s![jj * rows..(jj + 1) * rows, j * rows + i]).assign(&c);
            }
        }
    }
    Ok(out)
}

/// The exact, K-FAC and EKFAC matrices of one layer from its Fisher rows.
pub fn layer_matrices(
    la: &dyn LinAlg<f64>,
    shape: LayerShape,
    a: ArrayView2<'_, f64>,
    g: ArrayView2<'_, f64>,
    relative_damping: f64,
) -> Result<Matrices> {
    let exact = exact_block(la, a, g)?;
    let p = exact.nrows();
    let lambda = relative_damping * exact.diag().sum() / p as f64;
    let batch = LayerBatch::new(a, g);
    // Decay 0: the statistics are exactly this batch's.
    let mut kfac = BlockKind::Kfac(KfacMethod::Eigen).build::<f64>("kfac", shape)?;
    kfac.update_statistics(la, &batch, 0.0)?;
    kfac.refresh(la, Damping::tikhonov(lambda))?;
    let mut ekfac = BlockKind::Ekfac.build::<f64>("ekfac", shape)?;
    ekfac.update_statistics(la, &batch, 0.0)?;
    ekfac.refresh(la, Damping::tikhonov(lambda))?;
    ekfac.update_scalings(la, &batch, 0.0)?;
    let kfac_dense = kfac.to_dense(la)?;
    let ekfac_dense = ekfac.to_dense(la)?;
    let mut damped = exact.clone();
    damped.diag_mut().mapv_inplace(|v| v + lambda);
    let exact_inverse = la.spd_inverse(damped.view()).map_err(|e| core_err("exact Fisher", e))?;
    let kfac_inverse = dense_inverse(la, &*kfac)?;
    let ekfac_inverse = dense_inverse(la, &*ekfac)?;
    let errors = Errors {
        kfac: relative_error(&exact, &kfac_dense),
        ekfac: relative_error(&exact, &ekfac_dense),
        kfac_inverse: relative_error(&exact_inverse, &kfac_inverse),
        ekfac_inverse: relative_error(&exact_inverse, &ekfac_inverse),
        damping: lambda,
    };
    Ok(Matrices { exact, kfac: kfac_dense, ekfac: ekfac_dense, exact_inverse, kfac_inverse, ekfac_inverse, errors })
}

/// The part of `m`'s Frobenius norm in the blocks $(i, j)$ with $|i - j| > $ `band`
/// (block boundaries `offsets`), relative to the whole.
fn beyond_band(m: &Array2<f64>, offsets: &[usize], band: usize) -> f64 {
    let mut outside = 0.0;
    for i in 0..offsets.len() - 1 {
        for j in 0..offsets.len() - 1 {
            if i.abs_diff(j) > band {
                let b = m.slice(s![offsets[i]..offsets[i + 1], offsets[j]..offsets[j + 1]]);
                outside += b.iter().map(|v| v * v).sum::<f64>();
            }
        }
    }
    outside.sqrt() / frobenius(m)
}

/// The cross-layer comparison from one kind of Fisher's rows, for the
/// consecutive layers `chain`.
pub fn chain_matrices(
    la: &dyn LinAlg<f64>,
    shapes: &[LayerShape],
    rows: &[(Array2<f64>, Array2<f64>)],
    chain: &[usize],
    relative_damping: f64,
) -> Result<ChainMatrices> {
    let chain_shapes: Vec<LayerShape> = chain.iter().map(|&l| shapes[l]).collect();
    let mut offsets = vec![0];
    for s in &chain_shapes {
        offsets.push(offsets.last().copied().unwrap_or(0) + s.num_params());
    }
    let p = *offsets.last().unwrap_or(&0);
    let r = rows[chain[0]].0.nrows();
    // Per-row gradients of every layer of the chain, side by side.
    let mut jac = Array2::<f64>::zeros((r, p));
    for (k, &l) in chain.iter().enumerate() {
        let (a, g) = &rows[l];
        let batch = LayerBatch::new(a.view(), g.view());
        jac.slice_mut(s![.., offsets[k]..offsets[k + 1]]).assign(&batch.per_example_gradients(shapes[l]));
    }
    let mut f = Array2::<f64>::zeros((p, p));
    la.gram(1.0 / r as f64, jac.view(), 0.0, f.view_mut()).map_err(|e| core_err("exact Fisher", e))?;
    let lambda = relative_damping * f.diag().sum() / p as f64;
    f.diag_mut().mapv_inplace(|v| v + lambda);
    let exact_inverse = la.spd_inverse(f.view()).map_err(|e| core_err("exact Fisher", e))?;
    let batches: Vec<LayerBatch<'_, f64>> =
        chain.iter().map(|&l| LayerBatch::new(rows[l].0.view(), rows[l].1.view())).collect();
    let fit = |breaks: &[usize]| -> Result<TridiagonalKfac<f64>> {
        let mut m = TridiagonalKfac::with_breaks(&chain_shapes, breaks)?;
        // Decay 0: the statistics are exactly these rows'.
        m.update_statistics(la, &batches, 0.0)?;
        m.refresh(la, Damping::factored(lambda))?;
        Ok(m)
    };
    let all_breaks: Vec<usize> = (0..chain.len().saturating_sub(1)).collect();
    let block_diagonal = fit(&all_breaks)?;
    let tridiagonal = fit(&[])?;
    let block_diagonal_inverse = block_diagonal.to_dense_inverse(la)?;
    let tridiagonal_inverse = tridiagonal.to_dense_inverse(la)?;
    let errors = ChainErrors {
        block_diagonal_inverse: relative_error(&exact_inverse, &block_diagonal_inverse),
        tridiagonal_inverse: relative_error(&exact_inverse, &tridiagonal_inverse),
        exact_inverse_beyond_tridiagonal: beyond_band(&exact_inverse, &offsets, 1),
        exact_inverse_beyond_diagonal: beyond_band(&exact_inverse, &offsets, 0),
        damping: lambda,
        fallbacks: tridiagonal.health().iter().map(|h| h.fallbacks).sum(),
    };
    Ok(ChainMatrices { exact_inverse, block_diagonal_inverse, tridiagonal_inverse, errors })
}

/// The partly trained network of the study, the examples and the loss there.
pub fn trained_network(config: &FidelityConfig) -> Result<(Mlp<f64>, Array2<f64>, f64)> {
    if config.sizes.len() < 2 || config.examples == 0 || config.batch_size == 0 {
        return Err(Error::Config {
            what: "fidelity",
            value: format!("sizes {:?}, examples {}", config.sizes, config.examples),
            why: "needs at least one layer and one example".into(),
        });
    }
    let la = f64::backend(Backend::Faer, true)?;
    let la = &*la;
    let (train, _) = data::digits8x8()?.split(0.2, config.seed)?;
    if train.dim() != config.sizes[0] || *config.sizes.last().unwrap_or(&0) != train.dim() {
        return Err(Error::Config {
            what: "fidelity sizes",
            value: format!("{:?}", config.sizes),
            why: format!("an autoencoder of the {}-pixel digits starts and ends with {}", train.dim(), train.dim()),
        });
    }
    let mut mlp = Mlp::<f64>::new(
        &config.sizes,
        Activation::Tanh,
        Activation::Identity,
        Init::default(),
        config.seed,
        &[(config.code_layer, Activation::Identity)],
    )?;
    let mut opt = Optimizer::new(OptimizerConfig::defaults(OptimizerKind::Adam), &mlp)?;
    let mut batches = Batches::new(train.len(), config.batch_size, config.seed ^ 0xF1DE);
    let mut rng = Rng::stream(config.seed, 0xF1DE);
    let images = train.images_as::<f64>();
    for _ in 0..config.train_steps {
        let x = data::gather(&images, &batches.next_batch());
        opt.step(la, &mut mlp, x.view(), x.view(), Loss::SigmoidCrossEntropy, &mut rng)?;
    }
    let m = config.examples.min(train.len());
    let x = images.slice(s![..m, ..]).to_owned();
    let fwd = mlp.forward(la, x.view(), &mut NoHook)?;
    let loss = Loss::SigmoidCrossEntropy.value(fwd.output(), x.view())?;
    Ok((mlp, x, loss))
}

/// Runs the study.
pub fn study(config: &FidelityConfig) -> Result<Study> {
    let (mlp, x, loss) = trained_network(config)?;
    let la = f64::backend(Backend::Faer, true)?;
    let la = &*la;
    let true_rows = fisher_rows(la, &mlp, Loss::SigmoidCrossEntropy, x.view(), x.view(), FisherMode::True)?;
    let emp_rows = fisher_rows(la, &mlp, Loss::SigmoidCrossEntropy, x.view(), x.view(), FisherMode::Empirical)?;
    let mut layers = Vec::new();
    let mut shown = Vec::new();
    for (l, shape) in mlp.shapes().into_iter().enumerate() {
        let (ta, tg) = &true_rows[l];
        let (ea, eg) = &emp_rows[l];
        let t = layer_matrices(la, shape, ta.view(), tg.view(), config.relative_damping)?;
        let e = layer_matrices(la, shape, ea.view(), eg.view(), config.relative_damping)?;
        layers.push(LayerFidelity {
            layer: l,
            shape: [shape.d_in, shape.d_out],
            params: shape.num_params(),
            true_fisher: t.errors,
            empirical_fisher: e.errors,
            empirical_vs_true: relative_error(&t.exact, &e.exact),
        });
        if config.shown.contains(&l) {
            shown.push((l, t, e));
        }
    }
    let chain = if config.chain.is_empty() {
        None
    } else {
        let shapes = mlp.shapes();
        let n = shapes.len();
        if config.chain.iter().any(|&l| l >= n) || config.chain.windows(2).any(|w| w[1] != w[0] + 1) {
            return Err(Error::Config {
                what: "fidelity chain",
                value: format!("{:?}", config.chain),
                why: format!("consecutive layers of the {n}-layer network"),
            });
        }
        let rd = config.relative_damping;
        Some(ChainStudy {
            layers: config.chain.clone(),
            params: config.chain.iter().map(|&l| shapes[l].num_params()).sum(),
            true_fisher: chain_matrices(la, &shapes, &true_rows, &config.chain, rd)?,
            empirical_fisher: chain_matrices(la, &shapes, &emp_rows, &config.chain, rd)?,
        })
    };
    Ok(Study { config: config.clone(), layers, shown, loss, chain })
}

/// The per-layer errors as a Markdown table.
pub fn table(study: &Study) -> String {
    let mut t = String::from(
        "| layer | params | K-FAC | EKFAC | K-FAC⁻¹ | EKFAC⁻¹ | K-FAC (emp.) | EKFAC (emp.) | emp. F vs true F |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for l in &study.layers {
        let (tf, ef) = (&l.true_fisher, &l.empirical_fisher);
        t.push_str(&format!(
            "| {} ({}→{}) | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            l.layer + 1,
            l.shape[0],
            l.shape[1],
            l.params,
            tf.kfac,
            tf.ekfac,
            tf.kfac_inverse,
            tf.ekfac_inverse,
            ef.kfac,
            ef.ekfac,
            l.empirical_vs_true
        ));
    }
    t
}

/// The cross-layer comparison as a Markdown table.
pub fn chain_table(c: &ChainStudy) -> String {
    let layers: Vec<String> = c.layers.iter().map(|l| (l + 1).to_string()).collect();
    let mut t = format!(
        "Layers {} together ({} parameters): relative Frobenius error of the damped inverses against \
         (F + λI)⁻¹, and the share of the exact inverse outside the block diagonal and the block tridiagonal.\n\n\
         | Fisher | λ | block-diagonal K-FAC⁻¹ | block-tridiagonal K-FAC⁻¹ | exact⁻¹ outside block diagonal | \
         exact⁻¹ outside block tridiagonal |\n|---|---|---|---|---|---|\n",
        layers.join("-"),
        c.params
    );
    for (name, m) in [("true", &c.true_fisher), ("empirical", &c.empirical_fisher)] {
        let e = &m.errors;
        t.push_str(&format!(
            "| {name} | {:.3e} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            e.damping,
            e.block_diagonal_inverse,
            e.tridiagonal_inverse,
            e.exact_inverse_beyond_diagonal,
            e.exact_inverse_beyond_tridiagonal
        ));
    }
    t
}

fn max_abs(x: &Array2<f64>) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Writes `fidelity.json`, `fidelity.md` (the [`table`]), `fidelity.png`
/// (true Fisher) and `fidelity_empirical.png` into `dir`.
pub fn write(dir: &Path, study: &Study) -> Result<()> {
    report::ensure_dir(dir)?;
    let json = serde_json::json!({
        "description": "relative Frobenius errors of K-FAC and EKFAC against the exact Fisher block of each layer, \
                        and of their damped inverses against (F + lambda I)^-1, lambda = relative_damping * tr(F) / P",
        "config": study.config,
        "loss": study.loss,
        "ekfac_never_worse": study.ekfac_never_worse(),
        "layers": study.layers,
        "chain": study.chain.as_ref().map(|c| serde_json::json!({
            "description": "the middle layers' exact damped inverse Fisher (F + lambda I)^-1 over all their parameters \
                            against block-diagonal K-FAC and the block-tridiagonal model (factored damping, same \
                            lambda): relative Frobenius errors",
            "layers": c.layers,
            "params": c.params,
            "true_fisher": c.true_fisher.errors,
            "empirical_fisher": c.empirical_fisher.errors,
        })),
    });
    report::write_atomic(&dir.join("fidelity.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    let md = format!(
        "{}\nRelative Frobenius errors against the exact block (inverses: damped, λ = {} tr(F)/P). \
         EKFAC never worse than K-FAC: {}.\n",
        table(study),
        study.config.relative_damping,
        study.ekfac_never_worse()
    );
    let md = match &study.chain {
        Some(c) => format!("{md}\n{}", chain_table(c)),
        None => md,
    };
    report::write_atomic(&dir.join("fidelity.md"), md.as_bytes())?;
    if let Some(c) = &study.chain {
        let rows: Vec<(String, Vec<Panel>)> =
            [("true Fisher", &c.true_fisher), ("empirical Fisher", &c.empirical_fisher)]
                .into_iter()
                .map(|(name, m)| {
                    let scale = max_abs(&m.exact_inverse);
                    let e = &m.errors;
                    (
                        name.to_string(),
                        vec![
                            Panel { title: "exact (F+λI)⁻¹".into(), matrix: m.exact_inverse.clone(), scale },
                            Panel {
                                title: format!("block-diagonal K-FAC⁻¹ ({:.0}%)", 100.0 * e.block_diagonal_inverse),
                                matrix: m.block_diagonal_inverse.clone(),
                                scale,
                            },
                            Panel {
                                title: format!("block-tridiagonal K-FAC⁻¹ ({:.0}%)", 100.0 * e.tridiagonal_inverse),
                                matrix: m.tridiagonal_inverse.clone(),
                                scale,
                            },
                        ],
                    )
                })
                .collect();
        let layers: Vec<String> = c.layers.iter().map(|l| (l + 1).to_string()).collect();
        let title = format!(
            "damped inverse Fisher of layers {} ({} parameters) of the digits autoencoder (|entry|, sqrt scale; \
             relative error in brackets)",
            layers.join("-"),
            c.params
        );
        report::heatmaps(&dir.join("fidelity_chain.png"), &title, &rows, 360)?;
    }
    for (which, file) in [(0, "fidelity.png"), (1, "fidelity_empirical.png")] {
        let rows: Vec<(String, Vec<Panel>)> = study
            .shown
            .iter()
            .map(|(l, t, e)| {
                let m = if which == 0 { t } else { e };
                let fs = max_abs(&m.exact);
                let is = max_abs(&m.exact_inverse);
                let er = &m.errors;
                let panel = |title: String, matrix: &Array2<f64>, scale| Panel { title, matrix: matrix.clone(), scale };
                let shape = mlp_shape(&study.config.sizes, *l);
                (
                    format!("layer {} ({}→{})", l + 1, shape.0, shape.1),
                    vec![
                        panel("exact F".into(), &m.exact, fs),
                        panel(format!("K-FAC ({:.0}%)", 100.0 * er.kfac), &m.kfac, fs),
                        panel(format!("EKFAC ({:.0}%)", 100.0 * er.ekfac), &m.ekfac, fs),
                        panel("exact (F+λI)⁻¹".into(), &m.exact_inverse, is),
                        panel(format!("K-FAC⁻¹ ({:.0}%)", 100.0 * er.kfac_inverse), &m.kfac_inverse, is),
                        panel(format!("EKFAC⁻¹ ({:.0}%)", 100.0 * er.ekfac_inverse), &m.ekfac_inverse, is),
                    ],
                )
            })
            .collect();
        let kind = if which == 0 { "true" } else { "empirical" };
        let title = format!(
            "{kind} Fisher blocks of a digits autoencoder {:?} (|entry|, sqrt scale; relative Frobenius error in brackets)",
            study.config.sizes
        );
        report::heatmaps(&dir.join(file), &title, &rows, 260)?;
    }
    Ok(())
}

fn mlp_shape(sizes: &[usize], l: usize) -> (usize, usize) {
    (sizes.get(l).copied().unwrap_or(0), sizes.get(l + 1).copied().unwrap_or(0))
}
