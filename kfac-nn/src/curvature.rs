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
//! (§6.4, §7), kfac-core's adaptive rule ([`kfac::optim::adaptive`]), need
//! only the quadratic forms $u^\top F v$ of two directions: [`fisher_gram`]
//! computes them from the forward-mode passes alone
//! ($\frac1N\sum_n (J_n u)^\top H_n (J_n v)$), which is how the MLP supplies
//! them as a [`CurvatureModel`](kfac::optim::CurvatureModel).

use kfac::LinAlg;
use ndarray::{Array2, ArrayView2, s};

use crate::backend::Scalar;
use crate::error::{Error, Result};
use crate::layers::{Conv2d, LayerKind};
use crate::loss::Loss;
use crate::mlp::{Forward, Mlp, NoHook};

/// $J v$: the directional derivative of every example's output (logits)
/// along the parameter direction `v` (one $d_\text{out} \times (d_\text{in}+1)$
/// matrix per layer, the $\bar W$ layout), by forward-mode differentiation
/// through the pass `fwd` of `mlp`.
///
/// Per layer, with $R(\cdot)$ the derivative along $v$ and $R(a_0) = 0$:
/// - dense: $R(s_l) = a_l V_l^\top + \mathbf 1 v_{b}^\top + R(a_l) W_l^\top$;
/// - convolution: the same on the patches,
///   $R(S_l) = P_l V_l^\top + \mathbf 1 v_b^\top + \operatorname{im2col}(R(a_l)) W_l^\top$
///   (linear in the input and in the weights);
///
/// then $R(\phi(s_l)) = \phi'(s_l) \odot R(s_l)$, and through a pooling:
/// max pooling takes $R$ at the forward pass's argmax, average pooling
/// averages it ([`crate::layers::pool`]).
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
        let conv = match &layer.kind {
            LayerKind::Dense => None,
            LayerKind::Conv2d(c) => Some(c),
        };
        // The layer's inputs (a_l, or its patches) and R of them.
        let input = fwd.statistics_input(l);
        let r_patches = match (conv, &r_a) {
            (Some(c), Some(ra)) => Some(c.patches(ra.view())?),
            _ => None,
        };
        let r_input = if conv.is_some() { r_patches.as_ref() } else { r_a.as_ref() };
        // R(s_l) = a_l V_lᵀ + 1 v_bᵀ + R(a_l) W_lᵀ
        let mut r_s = Array2::<T>::zeros((input.nrows(), layer.d_out()));
        crate::elementwise::broadcast_rows(r_s.view_mut(), vl.column(d_in));
        la.gemm(T::one(), input, vl.slice(s![.., ..d_in]).t(), T::one(), r_s.view_mut()).map_err(lin)?;
        if let Some(ra) = r_input {
            la.gemm(T::one(), ra.view(), layer.weight().t(), T::one(), r_s.view_mut()).map_err(lin)?;
        }
        if let Some(c) = conv {
            r_s = c.rows_to_batch(r_s.view(), n)?;
        }
        // R(a_{l+1}) = φ'(s_l) ⊙ R(s_l), φ' read from the activation φ(s_l).
        let out = fwd.activated(l);
        crate::elementwise::scale_by_derivative(layer.activation, r_s.view_mut(), out.view());
        if let (Some(Conv2d { pool: Some(pool), geometry }), Some(Some(cache))) = (conv, fwd.conv.get(l)) {
            r_s = pool.tangent(r_s.view(), &cache.argmax, geometry.out_channels, geometry.output())?;
        }
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

fn views<T>(a: &[Array2<T>]) -> Vec<ArrayView2<'_, T>> {
    a.iter().map(|x| x.view()).collect()
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
    let hju = ju
        .iter()
        .map(|j| loss.hessian_vector(fwd.output(), j.view()).map_err(Error::from))
        .collect::<Result<Vec<_>>>()?;
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
