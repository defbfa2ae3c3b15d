//! The misspecification test (Kunstner et al., figure 2): logistic
//! regression without a bias on three two-class data sets, with the Fisher
//! and the empirical Fisher at the optimum.
//!
//! The model $p(y = 1 \mid x) = \sigma(w^\top x)$ is a dense layer $2 \to 1$ without a
//! bias, [`LayerShape::without_bias(2, 1)`](LayerShape::without_bias), followed by the
//! sigmoid cross-entropy; the per-example pre-activation gradient is
//! $g_n = p_n - y_n$. Both curvatures come from a [`DenseBlock`]:
//! - **EF** $= \frac1N \sum_n (p_n - y_n)^2 x_n x_n^\top$: fed $g_n = p_n - y_n$;
//! - **Fisher** $F = \frac1N \sum_n p_n (1 - p_n)\, x_n x_n^\top$, the exact expectation
//!   over $y \sim \operatorname{Bernoulli}(p_n)$ ($E_y[(p_n - y)^2] = p_n(1 - p_n)$): fed
//!   $g_n = \sqrt{p_n (1 - p_n)}$. It is also the Hessian of the loss.
//!
//! The optimum $w^*$ comes from Newton's method, $w \leftarrow w - F(w)^{-1} \nabla L(w)$,
//! through the same block. At $w^*$ the figure draws the ellipses
//! $\{w : (w - w^*)^\top M (w - w^*) = 9\}$ for $M = N F$ and $M = N\,\mathrm{EF}$.
//!
//! When the model is correct, $E[(p_n - y_n)^2 \mid x_n] = p_n(1 - p_n)$ and
//! $\mathrm{EF} \to F$ at the optimum: the eigenvalues of $F^{-1}\mathrm{EF}$ are 1 up to
//! sampling error. That error is measured by a parametric bootstrap under
//! the fitted model (White's information-matrix test): labels redrawn from
//! $\operatorname{Bernoulli}(\sigma(x_n^\top w^*))$ with the same inputs, the model
//! refitted, and the statistic $\max_i \lvert \lambda_i(F^{-1}\mathrm{EF}) - 1 \rvert$
//! recomputed.

use kfac_core::{CurvatureBlock, Damping, DenseBlock, LayerBatch, LayerShape, LinAlg};
use kfac_nn::rng::Rng;
use ndarray::{Array1, Array2, ArrayView2, Axis, array};

use super::data::{Case, Classes};

/// The layer: two inputs, one output, no bias.
pub const SHAPE: LayerShape = LayerShape { d_in: 2, d_out: 1, bias: false };

/// The level of the ellipses, $(w - w^*)^\top M (w - w^*) = 9$.
pub const LEVEL: f64 = 9.0;

/// Newton's method stops when a step is below this, in the max norm.
pub const NEWTON_TOLERANCE: f64 = 1e-12;

/// The most iterations Newton's method takes.
pub const NEWTON_ITERATIONS: usize = 100;

/// A fit whose Fisher has a trace below this fraction of $\operatorname{tr} E[x x^\top]$
/// is saturated: the classes are separable.
pub const SATURATION: f64 = 1e-8;

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 { 1.0 / (1.0 + (-z).exp()) } else { z.exp() / (1.0 + z.exp()) }
}

/// Logistic regression on a [`Classes`] data set.
#[derive(Debug, Clone)]
pub struct Logistic {
    x: Array2<f64>,
    y: Array1<f64>,
}

impl Logistic {
    /// The problem on `data`.
    pub fn new(data: &Classes) -> Self {
        Self { x: data.x.clone(), y: data.y.clone() }
    }

    /// The same inputs with other labels.
    pub fn with_labels(&self, y: Array1<f64>) -> Self {
        Self { x: self.x.clone(), y }
    }

    /// $p_n = \sigma(w^\top x_n)$.
    pub fn probabilities(&self, w: [f64; 2]) -> Array1<f64> {
        self.x.rows().into_iter().map(|r| sigmoid(w[0] * r[0] + w[1] * r[1])).collect()
    }

    /// The mean cross-entropy $L(w)$.
    pub fn loss(&self, w: [f64; 2]) -> f64 {
        let n = self.y.len().max(1) as f64;
        let total: f64 = self
            .x
            .rows()
            .into_iter()
            .zip(self.y.iter())
            .map(|(r, &y)| {
                let z = w[0] * r[0] + w[1] * r[1];
                // log(1 + e^z) - y z, computed without overflow.
                z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z
            })
            .sum();
        total / n
    }

    /// The fraction of points with $\mathbb 1[p_n > 1/2] = y_n$.
    pub fn accuracy(&self, w: [f64; 2]) -> f64 {
        let p = self.probabilities(w);
        let right = p.iter().zip(self.y.iter()).filter(|&(&p, &y)| (p > 0.5) == (y > 0.5)).count();
        right as f64 / self.y.len().max(1) as f64
    }

    fn block(&self, la: &dyn LinAlg<f64>, name: &str, g: Array1<f64>) -> kfac_core::Result<DenseBlock<f64>> {
        let g = g.insert_axis(Axis(1));
        let mut block = DenseBlock::new(name, SHAPE)?;
        block.update_statistics(la, &LayerBatch::new(self.x.view(), g.view()), 0.0)?;
        Ok(block)
    }

    /// The Fisher block at `w`, fed $g_n = \sqrt{p_n(1 - p_n)}$ (not refreshed).
    pub fn fisher(&self, la: &dyn LinAlg<f64>, w: [f64; 2]) -> kfac_core::Result<DenseBlock<f64>> {
        self.block(la, "Fisher", self.probabilities(w).mapv(|p| (p * (1.0 - p)).sqrt()))
    }

    /// The empirical-Fisher block at `w`, fed $g_n = p_n - y_n$.
    pub fn empirical_fisher(&self, la: &dyn LinAlg<f64>, w: [f64; 2]) -> kfac_core::Result<DenseBlock<f64>> {
        self.block(la, "empirical Fisher", &self.probabilities(w) - &self.y)
    }

    /// $\nabla L(w) = \frac1N \sum_n (p_n - y_n) x_n^\top$, the mean per-example gradient.
    pub fn gradient(&self, w: [f64; 2]) -> Array2<f64> {
        let g = (&self.probabilities(w) - &self.y).insert_axis(Axis(1));
        let j = LayerBatch::new(self.x.view(), g.view()).per_example_gradients(SHAPE);
        j.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(2)).insert_axis(Axis(0))
    }

    /// Newton's method from `start` until the step is below $10^{-12}$ (in
    /// the max norm): the optimum and the number of iterations.
    ///
    /// Separable classes have no minimum: the iterates run off until the
    /// probabilities round to 0 and 1 and the steps vanish. Such a fit is
    /// refused: when $\operatorname{tr} F < 10^{-8} \operatorname{tr} E[x x^\top]$ at the
    /// end ([`SATURATION`]), i.e. the weights $p_n(1 - p_n)$ average below
    /// $10^{-8}$ (probabilities within $10^{-8}$ of 0 or 1).
    ///
    /// # Errors
    ///
    /// [`kfac_nn::Error::Data`] for separable classes or if 100 iterations do
    /// not converge; the blocks' errors.
    pub fn newton(&self, la: &dyn LinAlg<f64>, start: [f64; 2]) -> kfac_nn::Result<([f64; 2], usize)> {
        let refuse = |reason: String| kfac_nn::Error::Data { name: "logistic regression".into(), reason };
        let mut w = start;
        for it in 1..=NEWTON_ITERATIONS {
            let mut fisher = self.fisher(la, w)?;
            fisher.refresh(la, Damping::tikhonov(0.0))?;
            let step = fisher.precondition(la, self.gradient(w).view())?;
            w = [w[0] - step[(0, 0)], w[1] - step[(0, 1)]];
            if step.iter().all(|s| s.abs() <= NEWTON_TOLERANCE) {
                let trace_f = self.fisher(la, w)?.fisher().diag().sum();
                let trace_x = self.x.iter().map(|v| v * v).sum::<f64>() / self.y.len().max(1) as f64;
                let saturated = trace_f.partial_cmp(&(SATURATION * trace_x)) != Some(std::cmp::Ordering::Greater);
                if saturated {
                    return Err(refuse(format!(
                        "the fitted probabilities are all 0 or 1 at w = {w:?}: the classes are separable and the loss has no minimum"
                    )));
                }
                return Ok((w, it));
            }
        }
        Err(refuse(format!("Newton's method has not converged after {NEWTON_ITERATIONS} iterations (w = {w:?})")))
    }
}

/// The eigenvalues of $F^{-1} M$ for SPD `f` and symmetric `m`, ascending:
/// those of $F^{-1/2} M F^{-1/2}$, from two symmetric eigendecompositions.
pub fn relative_eigenvalues(
    la: &dyn LinAlg<f64>,
    f: ArrayView2<'_, f64>,
    m: ArrayView2<'_, f64>,
) -> kfac_core::Result<Vec<f64>> {
    let root = inverse_sqrt(la, f)?;
    let c = root.dot(&m).dot(&root);
    let sym = (&c + &c.t()) * 0.5;
    let e = la.eigh(sym.view()).map_err(|source| kfac_core::Error::LinAlg { block: "F^-1 EF".into(), source })?;
    let mut v = e.values.to_vec();
    v.sort_by(f64::total_cmp);
    Ok(v)
}

/// $M^{-1/2}$ of an SPD matrix, from its eigendecomposition.
pub fn inverse_sqrt(la: &dyn LinAlg<f64>, m: ArrayView2<'_, f64>) -> kfac_core::Result<Array2<f64>> {
    let e = la.eigh(m).map_err(|source| kfac_core::Error::LinAlg { block: "M^-1/2".into(), source })?;
    let u = &e.vectors;
    let scaled = Array2::from_shape_fn(u.dim(), |(i, j)| u[(i, j)] / e.values[j].sqrt());
    Ok(scaled.dot(&u.t()))
}

/// `points` points of the ellipse $\{w : (w - c)^\top M (w - c) = $ [`LEVEL`]$\}$,
/// $w = c + 3 M^{-1/2} (\cos\phi, \sin\phi)$, closed (the last equals the first).
pub fn ellipse(
    la: &dyn LinAlg<f64>,
    m: ArrayView2<'_, f64>,
    center: [f64; 2],
    points: usize,
) -> kfac_core::Result<Vec<[f64; 2]>> {
    let root = inverse_sqrt(la, m)? * LEVEL.sqrt();
    Ok((0..=points)
        .map(|k| {
            let phi = std::f64::consts::TAU * k as f64 / points as f64;
            let u = array![phi.cos(), phi.sin()];
            let d = root.dot(&u);
            [center[0] + d[0], center[1] + d[1]]
        })
        .collect())
}

/// The bootstrap's summary for one data set.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NullTest {
    /// Replicates $B$.
    pub replicates: usize,
    /// The 99.5 % quantile of the statistic under the fitted model.
    pub quantile_995: f64,
    /// Its largest value over the replicates.
    pub maximum: f64,
    /// Its median.
    pub median: f64,
    /// $(1 + \#\{\text{replicates} \ge \text{observed}\}) / (B + 1)$.
    pub p_value: f64,
}

/// One data set's results.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaseResult {
    /// Which data set.
    pub case: Case,
    /// $w^*$.
    pub optimum: [f64; 2],
    /// Newton iterations from 0.
    pub newton_iterations: usize,
    /// $\lVert \nabla L(w^*) \rVert_\infty$.
    pub gradient_at_optimum: f64,
    /// Training accuracy at $w^*$.
    pub accuracy: f64,
    /// $F(w^*)$ (per example, the mean).
    pub fisher: [[f64; 2]; 2],
    /// $\mathrm{EF}(w^*)$.
    pub empirical_fisher: [[f64; 2]; 2],
    /// The eigenvalues of $F^{-1}\mathrm{EF}$ at $w^*$, ascending.
    pub eigenvalues: [f64; 2],
    /// $\max_i \lvert \lambda_i - 1 \rvert$.
    pub statistic: f64,
    /// Its distribution under the fitted model.
    pub null: NullTest,
    /// The ellipse of $N F$.
    pub fisher_ellipse: Vec<[f64; 2]>,
    /// The ellipse of $N\,\mathrm{EF}$.
    pub empirical_fisher_ellipse: Vec<[f64; 2]>,
}

fn as_array(m: ArrayView2<'_, f64>) -> [[f64; 2]; 2] {
    [[m[(0, 0)], m[(0, 1)]], [m[(1, 0)], m[(1, 1)]]]
}

/// $F$, EF and the eigenvalues of $F^{-1}$EF at `w`.
pub fn curvatures(
    la: &dyn LinAlg<f64>,
    problem: &Logistic,
    w: [f64; 2],
) -> kfac_core::Result<(Array2<f64>, Array2<f64>, [f64; 2])> {
    let f = problem.fisher(la, w)?.to_dense(la)?;
    let ef = problem.empirical_fisher(la, w)?.to_dense(la)?;
    let ev = relative_eigenvalues(la, f.view(), ef.view())?;
    Ok((f, ef, [ev[0], ev[1]]))
}

/// The statistic $\max_i \lvert \lambda_i - 1 \rvert$.
pub fn statistic(eigenvalues: [f64; 2]) -> f64 {
    eigenvalues.iter().map(|l| (l - 1.0).abs()).fold(0.0, f64::max)
}

/// The bootstrap under the model fitted at `w`: `replicates` statistics.
pub fn bootstrap(
    la: &dyn LinAlg<f64>,
    problem: &Logistic,
    w: [f64; 2],
    replicates: usize,
    rng: &mut Rng,
) -> kfac_nn::Result<Vec<f64>> {
    let p = problem.probabilities(w);
    let mut out = Vec::with_capacity(replicates);
    for _ in 0..replicates {
        let y: Array1<f64> = p.mapv(|pn| f64::from(u8::from(rng.uniform() < pn)));
        let redrawn = problem.with_labels(y);
        let (w_b, _) = redrawn.newton(la, w)?;
        let (_, _, ev) = curvatures(la, &redrawn, w_b)?;
        out.push(statistic(ev));
    }
    Ok(out)
}

/// Summarises the bootstrap's statistics against the observed one.
pub fn null_test(mut null: Vec<f64>, observed: f64) -> NullTest {
    null.sort_by(f64::total_cmp);
    let b = null.len();
    let at = |q: f64| null.get(((q * b as f64).ceil() as usize).clamp(1, b.max(1)) - 1).copied().unwrap_or(f64::NAN);
    let exceed = null.iter().filter(|&&s| s >= observed).count();
    NullTest {
        replicates: b,
        quantile_995: at(0.995),
        maximum: null.last().copied().unwrap_or(f64::NAN),
        median: crate::stats::median(&null),
        p_value: (1 + exceed) as f64 / (b + 1) as f64,
    }
}

/// Fits `data`, measures $F$ and EF at the optimum, runs the bootstrap and
/// draws the ellipses.
pub fn study_case(
    la: &dyn LinAlg<f64>,
    case: Case,
    data: &Classes,
    replicates: usize,
    seed: u64,
) -> kfac_nn::Result<CaseResult> {
    let problem = Logistic::new(data);
    let (w, iterations) = problem.newton(la, [0.0, 0.0])?;
    let (f, ef, eigenvalues) = curvatures(la, &problem, w)?;
    let observed = statistic(eigenvalues);
    let mut rng = Rng::stream(seed, 100 + case as u64);
    let null = null_test(bootstrap(la, &problem, w, replicates, &mut rng)?, observed);
    let n = data.y.len() as f64;
    Ok(CaseResult {
        case,
        optimum: w,
        newton_iterations: iterations,
        gradient_at_optimum: problem.gradient(w).iter().fold(0.0, |m, g| m.max(g.abs())),
        accuracy: problem.accuracy(w),
        fisher: as_array(f.view()),
        empirical_fisher: as_array(ef.view()),
        eigenvalues,
        statistic: observed,
        null,
        fisher_ellipse: ellipse(la, (&f * n).view(), w, 180)?,
        empirical_fisher_ellipse: ellipse(la, (&ef * n).view(), w, 180)?,
    })
}
