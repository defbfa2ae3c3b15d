//! Exact curvature-vector products: the Fisher of the network times a
//! direction, without forming the Fisher.
//!
//! For our losses (softmax and sigmoid cross-entropy, squared error) the
//! output is the natural parameter of an exponential family, so the Fisher
//! equals the generalised Gauss–Newton matrix (Martens, 2014, §9.2):
//! $$ F = \frac1N \sum_n J_n^\top H_n J_n ,\qquad
//!    J_n = \frac{\partial s_{L,n}}{\partial \theta},\quad
//!    H_n = \frac{\partial^2 \ell_n}{\partial s_{L,n}^2} .$$
//! [`fisher_vector_product`] computes $F v$ with one forward-mode pass (the
//! R-operator of Pearlmutter, 1994: $J_n v$ for every example at once), the
//! product $H_n (J_n v)$ in the output space, and one ordinary backward pass
//! ($J_n^\top$). Its cost is about that of a forward and a backward pass.
//!
//! Martens & Grosse's step size, momentum and Levenberg–Marquardt damping
//! (§6.4, §7) need only the quadratic forms $u^\top F v$ of two directions:
//! [`fisher_gram`] computes them from the forward-mode passes alone
//! ($\frac1N\sum_n (J_n u)^\top H_n (J_n v)$), and [`quadratic_step`] solves
//! the model with them. [`fisher_trace_per_parameter`] gives
//! $\operatorname{tr}(F)/P$ from the statistics hooks, for the scale-free
//! initial damping.

use kfac::LinAlg;
use ndarray::{Array2, ArrayView2, Axis, Zip, s};

use crate::backend::Scalar;
use crate::error::{Error, Result};
use crate::loss::Loss;
use crate::mlp::{Forward, Mlp, NoHook};

impl Loss {
    /// $H_n r_n$ for every example $n$ (a row of `r`), with $H_n$ the Hessian
    /// of the per-example loss with respect to the outputs `s` (logits):
    /// softmax, $\operatorname{diag}(p) - p p^\top$; sigmoid (summed over the
    /// outputs), $\operatorname{diag}(p \odot (1-p))$; squared error, $I$.
    pub fn hessian_vector<T: Scalar>(self, s: ArrayView2<'_, T>, r: ArrayView2<'_, T>) -> Result<Array2<T>> {
        if s.dim() != r.dim() {
            return Err(Error::Shape { what: "output-space direction", expected: s.dim(), found: r.dim() });
        }
        Ok(match self {
            Self::SquaredError => r.to_owned(),
            Self::SigmoidCrossEntropy => {
                let p = self.mean(s);
                let mut out = r.to_owned();
                Zip::from(&mut out).and(&p).for_each(|o, &p| *o *= p * (T::one() - p));
                out
            }
            Self::SoftmaxCrossEntropy => {
                let p = self.mean(s);
                let mut out = Array2::zeros(r.dim());
                for ((mut o, p), r) in out.axis_iter_mut(Axis(0)).zip(p.axis_iter(Axis(0))).zip(r.axis_iter(Axis(0))) {
                    let pr = p.dot(&r);
                    Zip::from(&mut o).and(&p).and(&r).for_each(|o, &p, &r| *o = p * (r - pr));
                }
                out
            }
        })
    }
}

/// $J v$: the directional derivative of every example's output (logits)
/// along the parameter direction `v` (one $d_\text{out} \times (d_\text{in}+1)$
/// matrix per layer, the $\bar W$ layout), by forward-mode differentiation
/// through the pass `fwd` of `mlp`.
pub fn output_directional_derivative<T: Scalar>(
    la: &dyn LinAlg<T>,
    mlp: &Mlp<T>,
    fwd: &Forward<T>,
    v: &[ArrayView2<'_, T>],
) -> Result<Array2<T>> {
    if v.len() != mlp.layers.len() {
        return Err(Error::Shape { what: "direction (layers)", expected: (mlp.layers.len(), 1), found: (v.len(), 1) });
    }
    let lin = |e: kfac::LinAlgError| Error::Core(kfac::Error::LinAlg { block: "R-op".into(), source: e });
    let n = fwd.input(0).nrows();
    // R(a_0) = 0: the input does not depend on the parameters.
    let mut r_a: Option<Array2<T>> = None;
    for (l, (layer, vl)) in mlp.layers.iter().zip(v).enumerate() {
        if vl.dim() != layer.w.dim() {
            return Err(Error::Shape { what: "direction", expected: layer.w.dim(), found: vl.dim() });
        }
        let d_in = layer.d_in();
        // R(s_l) = a_l V_lᵀ + 1 v_bᵀ + R(a_l) W_lᵀ
        let mut r_s = Array2::<T>::zeros((n, layer.d_out()));
        r_s.assign(&vl.column(d_in).insert_axis(Axis(0)));
        la.gemm(T::one(), fwd.input(l), vl.slice(s![.., ..d_in]).t(), T::one(), r_s.view_mut()).map_err(lin)?;
        if let Some(ra) = &r_a {
            la.gemm(T::one(), ra.view(), layer.weight().t(), T::one(), r_s.view_mut()).map_err(lin)?;
        }
        // R(a_{l+1}) = φ'(s_l) ⊙ R(s_l), φ' read from the output a_{l+1}.
        let out = fwd.input(l + 1);
        Zip::from(&mut r_s).and(&out).for_each(|r, &y| *r *= layer.activation.derivative_from_output(y));
        r_a = Some(r_s);
    }
    r_a.ok_or(Error::Shape { what: "network (layers)", expected: (1, 1), found: (0, 0) })
}

/// $F v$ on the batch `x`: the exact Fisher (= generalised Gauss–Newton) of
/// the **mean** loss over the batch, times the direction `v` (one matrix per
/// layer in the $\bar W$ layout); the result has the same layout. The
/// curvature of an $\ell_2$ term is not included.
pub fn fisher_vector_product<T: Scalar>(
    la: &dyn LinAlg<T>,
    mlp: &Mlp<T>,
    x: ArrayView2<'_, T>,
    loss: Loss,
    v: &[ArrayView2<'_, T>],
) -> Result<Vec<Array2<T>>> {
    let fwd = mlp.forward(la, x, &mut NoHook)?;
    fisher_vector_product_at(la, mlp, &fwd, loss, v)
}

/// [`fisher_vector_product`] reusing a forward pass `fwd` of `mlp`.
pub fn fisher_vector_product_at<T: Scalar>(
    la: &dyn LinAlg<T>,
    mlp: &Mlp<T>,
    fwd: &Forward<T>,
    loss: Loss,
    v: &[ArrayView2<'_, T>],
) -> Result<Vec<Array2<T>>> {
    let jv = output_directional_derivative(la, mlp, fwd, v)?;
    let hjv = loss.hessian_vector(fwd.output(), jv.view())?;
    mlp.backward(la, fwd, hjv.view(), true, &mut NoHook)
}

/// $\operatorname{tr}(F)/P$, the mean eigenvalue of the Fisher of a batch,
/// from the layers' inputs and per-example pre-activation gradients
/// (what the statistics hooks see), without forming a per-example gradient.
///
/// The per-example gradient of layer $l$ is $g_{l,n} \bar a_{l,n}^\top$, whose
/// squared norm is $\lVert \bar a_{l,n}\rVert^2 \lVert g_{l,n}\rVert^2$
/// ($\bar a$ with the bias's 1 appended), so
/// $$ \frac{\operatorname{tr}(F)}{P} = \frac{1}{NP} \sum_{n=1}^{N} \sum_l
///    \bigl(\lVert a_{l,n}\rVert^2 + 1\bigr)\lVert g_{l,n}\rVert^2 ,\qquad
///    P = \sum_l d_{\text{out},l}\,(d_{\text{in},l} + 1). $$
/// With gradients at targets sampled from the model this is an unbiased
/// estimate of the trace of the true Fisher; at the data's targets, the
/// empirical Fisher's. `inputs[l]` is $N \times d_{\text{in},l}$ and
/// `grads[l]` $N \times d_{\text{out},l}$ (per example: not divided by $N$).
/// Sums are taken in f64, in a fixed order.
///
/// # Errors
///
/// [`Error::Shape`] when the lists differ in length, are empty, or a
/// layer's rows differ from the first layer's.
pub fn fisher_trace_per_parameter<T: Scalar>(inputs: &[ArrayView2<'_, T>], grads: &[ArrayView2<'_, T>]) -> Result<f64> {
    if inputs.len() != grads.len() || inputs.is_empty() {
        return Err(Error::Shape {
            what: "layers (inputs, gradients)",
            expected: (inputs.len(), inputs.len()),
            found: (inputs.len(), grads.len()),
        });
    }
    let n = inputs[0].nrows();
    let sq = |r: ndarray::ArrayView1<'_, T>| r.iter().map(|&x| x.to_f64_exact().powi(2)).sum::<f64>();
    let (mut total, mut params) = (0.0f64, 0usize);
    for (a, g) in inputs.iter().zip(grads) {
        if a.nrows() != n || g.nrows() != n || n == 0 {
            return Err(Error::Shape {
                what: "examples (inputs, gradients)",
                expected: (n, n),
                found: (a.nrows(), g.nrows()),
            });
        }
        total += a.outer_iter().zip(g.outer_iter()).map(|(a, g)| (sq(a) + 1.0) * sq(g)).sum::<f64>();
        params += g.ncols() * (a.ncols() + 1);
    }
    Ok(total / (n as f64 * params as f64))
}

/// The minimiser of the quadratic model over the plane spanned by the
/// preconditioned direction $\Delta$ and the previous update $\delta_0$
/// (Martens & Grosse, 2015, §7):
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

fn views<T>(a: &[Array2<T>]) -> Vec<ArrayView2<'_, T>> {
    a.iter().map(|x| x.view()).collect()
}

fn dot<T: Scalar>(a: &[Array2<T>], b: &[impl std::borrow::Borrow<Array2<T>>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y.borrow().iter()).map(|(&p, &q)| p.to_f64_exact() * q.to_f64_exact()).sum::<f64>())
        .sum()
}

/// The Gram matrix $G_{ij} = u_i^\top F u_j$ of the directions `dirs` (each
/// one matrix per layer in the $\bar W$ layout) under the Fisher of the
/// batch of the pass `fwd`, from forward-mode products alone:
/// $$ u_i^\top F u_j = \frac1N \sum_n (J_n u_i)^\top H_n (J_n u_j) , $$
/// one R-op pass per direction ([`output_directional_derivative`]) and
/// $H_n$ applied in the output space. No backward pass: the quadratic model
/// needs these numbers, not $F u$. Sums are taken in f64, in a fixed
/// order; $G$ is symmetric by construction (the upper triangle is
/// mirrored).
///
/// # Errors
///
/// Shape errors from the products.
pub fn fisher_gram<T: Scalar>(
    la: &dyn LinAlg<T>,
    mlp: &Mlp<T>,
    fwd: &Forward<T>,
    loss: Loss,
    dirs: &[&[Array2<T>]],
) -> Result<Vec<Vec<f64>>> {
    let n = fwd.input(0).nrows().max(1) as f64;
    let ju = dirs.iter().map(|d| output_directional_derivative(la, mlp, fwd, &views(d))).collect::<Result<Vec<_>>>()?;
    let hju = ju.iter().map(|j| loss.hessian_vector(fwd.output(), j.view())).collect::<Result<Vec<_>>>()?;
    let k = dirs.len();
    let mut g = vec![vec![0.0; k]; k];
    for i in 0..k {
        for j in i..k {
            let v =
                ju[i].iter().zip(hju[j].iter()).map(|(&a, &b)| a.to_f64_exact() * b.to_f64_exact()).sum::<f64>() / n;
            g[i][j] = v;
            g[j][i] = v;
        }
    }
    Ok(g)
}

/// Minimises the quadratic model exactly over $\alpha \Delta + \mu \delta_0$: a
/// 2 × 2 solve built from the quadratic forms $\Delta^\top F \Delta$,
/// $\Delta^\top F \delta_0$ and $\delta_0^\top F \delta_0$ ([`fisher_gram`] on
/// the pass `fwd`). Without a previous update, or when the two
/// directions are (numerically) parallel, the 1-D problem in $\alpha$ is
/// solved instead. `grad` is $\nabla h$ (with the $\ell_2$ term), `lambda`
/// the model's damping $\lambda$ and `l2` the $\ell_2$ coefficient $\eta$.
///
/// `fwd` must be the pass over the same examples as `grad`: $M$ is then
/// the second-order model of the objective the step is measured on. A
/// Fisher from fewer examples than the gradient has no curvature along
/// the part of the gradient that the other examples contribute, and the
/// model then predicts an unbounded decrease there, held back by
/// $\lambda + \eta$ alone.
///
/// # Errors
///
/// Shape errors from the products; [`Error::Config`] when the model's
/// curvature along $\Delta$ is not positive (a zero direction with
/// $\lambda + \eta = 0$).
pub fn quadratic_step<T: Scalar>(
    la: &dyn LinAlg<T>,
    mlp: &Mlp<T>,
    fwd: &Forward<T>,
    loss: Loss,
    grad: &[Array2<T>],
    delta: &[Array2<T>],
    previous: Option<&[Array2<T>]>,
    lambda: f64,
    l2: f64,
) -> Result<ModelStep> {
    let c = lambda + l2;
    let gram = match previous {
        Some(prev) => fisher_gram(la, mlp, fwd, loss, &[delta, prev])?,
        None => fisher_gram(la, mlp, fwd, loss, &[delta])?,
    };
    let g11 = gram[0][0] + c * dot(delta, delta);
    let b1 = dot(grad, delta);
    if !(g11 > 0.0 && g11.is_finite()) {
        return Err(Error::Config {
            what: "quadratic model",
            value: g11.to_string(),
            why: "the curvature along the direction must be positive".into(),
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
