//! The quadratic model of Martens & Grosse (2015, §6–7), the reduction
//! ratio and the Levenberg–Marquardt rule, and the trace of the Fisher per
//! parameter for the scale-free initial damping. Everything here needs only
//! numbers the caller can compute for any model: the quadratic forms
//! $u_i^\top F u_j$ (a [`CurvatureModel`](super::CurvatureModel)), the
//! gradient, and the layers' statistics.

use ndarray::{Array2, ArrayView1};

use crate::error::{Error, Result};
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape};

/// The minimiser of the quadratic model over the plane spanned by the
/// preconditioned direction $\Delta$ and the previous update $\delta_0$:
/// $$ M(\delta) = \tfrac12 \delta^\top (F + (\lambda + \eta) I)\,\delta + \nabla h^\top \delta,
///    \qquad \delta = \alpha \Delta + \mu \delta_0 .$$
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelStep {
    /// The coefficient of $\Delta$.
    pub alpha: f64,
    /// The coefficient of $\delta_0$ (0 without a previous update).
    pub mu: f64,
    /// $M(\delta) - M(0)$ at the minimiser ($\le 0$).
    pub model_change: f64,
}

/// $\sum_l \langle a_l, b_l \rangle$ over the layers, in `f64`, in a fixed order.
pub fn dot<T: Real>(a: &[Array2<T>], b: &[impl std::borrow::Borrow<Array2<T>>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y.borrow().iter()).map(|(&p, &q)| p.to_f64_exact() * q.to_f64_exact()).sum::<f64>())
        .sum()
}

/// Minimises the quadratic model exactly over $\alpha \Delta + \mu \delta_0$: a
/// 2 × 2 solve. `gram` is the Gram matrix of the Fisher on the batch,
/// $G_{ij} = u_i^\top F u_j$ for $u = (\Delta, \delta_0)$ (or $(\Delta)$ alone
/// without a previous update), `grad` is $\nabla h$ (with the $\ell_2$ term),
/// `lambda` the model's damping $\lambda$ and `l2` the $\ell_2$ coefficient
/// $\eta$. Without a previous update, or when the two directions are
/// (numerically) parallel, the 1-D problem in $\alpha$ is solved instead.
///
/// The Fisher must be that of the examples of `grad`: $M$ is then the
/// second-order model of the objective the step is measured on. A Fisher
/// from fewer examples than the gradient has no curvature along the part
/// of the gradient the other examples contribute, and the model then
/// predicts an unbounded decrease there, held back by $\lambda + \eta$ alone.
///
/// # Errors
///
/// [`Error::InvalidConfig`] when the model's curvature along $\Delta$ is
/// not positive (a zero direction with $\lambda + \eta = 0$), or `gram` does
/// not have one row and column per direction.
pub fn quadratic_step<T: Real>(
    gram: &[Vec<f64>],
    grad: &[Array2<T>],
    delta: &[Array2<T>],
    previous: Option<&[Array2<T>]>,
    lambda: f64,
    l2: f64,
) -> Result<ModelStep> {
    let k = 1 + usize::from(previous.is_some());
    if gram.len() != k || gram.iter().any(|r| r.len() != k) {
        return Err(Error::InvalidConfig {
            what: "quadratic model",
            value: format!("a Gram matrix of {} rows", gram.len()),
            why: "needs one row and one column per direction",
        });
    }
    let c = lambda + l2;
    let g11 = gram[0][0] + c * dot(delta, delta);
    let b1 = dot(grad, delta);
    if !(g11 > 0.0 && g11.is_finite()) {
        return Err(Error::InvalidConfig {
            what: "quadratic model",
            value: g11.to_string(),
            why: "the curvature along the direction must be positive",
        });
    }
    let one_d = || {
        let alpha = -b1 / g11;
        ModelStep { alpha, mu: 0.0, model_change: 0.5 * alpha * b1 }
    };
    let Some(prev) = previous else { return Ok(one_d()) };
    let g22 = gram[1][1] + c * dot(prev, prev);
    let g12 = gram[0][1] + c * dot(delta, prev);
    let b2 = dot(grad, prev);
    let det = g11 * g22 - g12 * g12;
    // Parallel directions (or a zero previous update): the plane degenerates.
    if !(g22 > 0.0 && det > 1e-12 * g11 * g22) {
        return Ok(one_d());
    }
    let alpha = -(g22 * b1 - g12 * b2) / det;
    let mu = -(g11 * b2 - g12 * b1) / det;
    Ok(ModelStep { alpha, mu, model_change: 0.5 * (alpha * b1 + mu * b2) })
}

/// The reduction ratio $\rho = (h(\theta + \delta) - h(\theta)) / (M(\delta) - M(0))$:
/// how much of the decrease the quadratic model predicted the objective
/// delivered (1 when the model is exact).
pub fn reduction_ratio(h_before: f64, h_after: f64, model_change: f64) -> f64 {
    (h_after - h_before) / model_change
}

/// The Levenberg–Marquardt rule of Martens & Grosse (§6.5): $\lambda$ is
/// multiplied by `omega` ($< 1$) when $\rho > 3/4$, divided by it when
/// $\rho < 1/4$ (or $\rho$ is not a number), and kept within
/// `[min, max]`.
pub fn levenberg_marquardt(lambda: f64, rho: f64, omega: f64, min: f64, max: f64) -> f64 {
    let next = if rho.is_nan() || rho < 0.25 {
        lambda / omega
    } else if rho > 0.75 {
        lambda * omega
    } else {
        lambda
    };
    next.clamp(min, max)
}

/// $\operatorname{tr}(F)/P$, the mean eigenvalue of the Fisher of a batch,
/// from the layers' statistics batches (inputs and per-example
/// pre-activation gradients), without forming a per-example gradient.
///
/// The per-example gradient of layer $l$ is $g_{l,n} \bar a_{l,n}^\top$, whose
/// squared norm is $\lVert \bar a_{l,n}\rVert^2 \lVert g_{l,n}\rVert^2$
/// ($\bar a$ with the bias's 1 appended), so
/// $$ \frac{\operatorname{tr}(F)}{P} = \frac{1}{NP} \sum_{n=1}^{N} \sum_l
///    \bigl(\lVert a_{l,n}\rVert^2 + 1\bigr)\lVert g_{l,n}\rVert^2 ,\qquad
///    P = \sum_l d_{\text{out},l}\,(d_{\text{in},l} + 1). $$
/// With gradients at targets sampled from the model this is an unbiased
/// estimate of the trace of the true Fisher; at the data's targets, the
/// empirical Fisher's. The gradients are scaled to per-example ones as
/// each batch's [`GradScale`](crate::GradScale) says, and weighted by its
/// normalisation; with weight sharing the per-example gradient is
/// $U_n = \sum_r u_{n,r}\bar a_{n,r}^\top$ and its squared norm is taken whole. Sums are taken in
/// `f64`, in a fixed order.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] when the lists differ in length, are empty, or a
/// layer's rows differ from the first layer's or from its shape.
pub fn fisher_trace_per_parameter<T: Real>(shapes: &[LayerShape], batches: &[LayerBatch<'_, T>]) -> Result<f64> {
    let mismatch = |what, expected, found| Error::ShapeMismatch { block: "fisher trace".into(), what, expected, found };
    if shapes.len() != batches.len() || batches.is_empty() {
        return Err(mismatch("layers (shapes, batches)", (shapes.len(), shapes.len()), (shapes.len(), batches.len())));
    }
    let n = batches[0].len();
    let sq = |r: ArrayView1<'_, T>| r.iter().map(|&x| x.to_f64_exact().powi(2)).sum::<f64>();
    let (mut total, mut params) = (0.0f64, 0usize);
    for (shape, b) in shapes.iter().zip(batches) {
        if b.len() != n
            || b.grads.nrows() != b.rows()
            || n == 0
            || b.positions == 0
            || !b.rows().is_multiple_of(b.positions)
        {
            return Err(mismatch("examples (inputs, gradients)", (n, n), (b.len(), b.grads.nrows())));
        }
        if (b.inputs.ncols(), b.grads.ncols()) != (shape.d_in, shape.d_out) {
            return Err(mismatch(
                "widths (inputs, gradients)",
                (shape.d_in, shape.d_out),
                (b.inputs.ncols(), b.grads.ncols()),
            ));
        }
        let k = b.normalization_weight().to_f64_exact();
        if b.positions > 1 {
            // ‖U_n‖² of the per-example gradient summed over positions.
            let layer = (0..n)
                .map(|i| b.example_gradient(i, *shape).iter().map(|&x| x.to_f64_exact().powi(2)).sum::<f64>())
                .sum::<f64>();
            total += layer * k;
        } else {
            let w = b.grad_multiplier().to_f64_exact().powi(2) * k;
            let one = if shape.bias { 1.0 } else { 0.0 };
            let layer =
                b.inputs.outer_iter().zip(b.grads.outer_iter()).map(|(a, g)| (sq(a) + one) * sq(g)).sum::<f64>();
            total += if w == 1.0 { layer } else { layer * w };
        }
        params += shape.num_params();
    }
    Ok(total / (n as f64 * params as f64))
}
