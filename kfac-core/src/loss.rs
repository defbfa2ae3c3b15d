//! Losses as negative log-likelihoods of predictive distributions.
//!
//! Each loss takes the network's last pre-activations $s$ (one example per
//! row), owns the output link, and is the negative log-likelihood of a
//! distribution $p(t \mid s)$ **summed over outputs** and **averaged over the
//! batch**:
//!
//! | loss | distribution | $\ell(s, t)$ | $\partial \ell / \partial s$ |
//! |---|---|---|---|
//! | [`Loss::SoftmaxCrossEntropy`] | categorical, $p = \operatorname{softmax}(s)$ | $-\sum_k t_k \log p_k$ | $p - t$ |
//! | [`Loss::SigmoidCrossEntropy`] | independent Bernoulli, $p = \sigma(s)$ | $-\sum_k t_k \log p_k + (1 - t_k)\log(1 - p_k)$ | $p - t$ |
//! | [`Loss::SquaredError`] | Gaussian $\mathcal N(s, I)$ | $\tfrac12 \lVert s - t\rVert^2$ | $s - t$ |
//!
//! For these (canonical-link) losses the Fisher equals the generalised
//! Gauss–Newton matrix. The **true Fisher** uses gradients at targets drawn
//! from $p(t \mid s)$ ([`Loss::sample`]); the **empirical Fisher** uses the data
//! targets ([`FisherMode`]).
//!
//! The sigmoid cross-entropy's value and gradient come from one pass over
//! the outputs ([`Loss::value_and_grad`]), with the vectorised $e^x$ and
//! $\ln(1 + x)$ of [`crate::vmath`] in the outputs' precision; its value is
//! summed in `f64` over fixed blocks (see `loss/bernoulli.rs`), so that it
//! does not depend on the thread count either.

mod bernoulli;

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::scalar::Real;
use crate::vmath::Vmath;

/// A loss; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum Loss {
    /// Softmax cross-entropy (one-hot or soft targets).
    SoftmaxCrossEntropy,
    /// Sigmoid cross-entropy, summed over outputs (targets in [0, 1]).
    SigmoidCrossEntropy,
    /// Half the squared error, summed over outputs.
    SquaredError,
}

/// Which targets feed the curvature statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
pub enum FisherMode {
    /// Targets sampled from the model's predictive distribution (the Fisher).
    #[default]
    True,
    /// The data targets (the empirical Fisher; Kunstner et al., 2019).
    Empirical,
}

fn check<T>(what: &'static str, s: &ArrayView2<'_, T>, t: &ArrayView2<'_, T>) -> Result<()> {
    if s.dim() != t.dim() {
        return Err(Error::ShapeMismatch { block: "loss".into(), what, expected: s.dim(), found: t.dim() });
    }
    Ok(())
}

/// Elements per parallel task of the elementwise maps: fixed, and large
/// enough (2¹⁶ elements, tens of microseconds) that rayon's hand-offs do
/// not show.
const MAP_CHUNK: usize = 1 << 16;

/// Rows per parallel task of the row-wise losses: about [`MAP_CHUNK`]
/// elements, at least one row.
fn rows_per_task(ncols: usize) -> usize {
    (MAP_CHUNK / ncols.max(1)).max(1)
}

/// `x = f(x)` for every element, in parallel over contiguous chunks
/// ([`crate::vmath::map_in_place`], loops over fixed-width arrays that the
/// compiler vectorises) when the view is contiguous. The result does not
/// depend on the thread count.
pub fn par_map_inplace<T: Real>(mut z: ndarray::ArrayViewMut2<'_, T>, f: impl Fn(T) -> T + Sync + Send) {
    match z.as_slice_memory_order_mut() {
        Some(slice) => slice.par_chunks_mut(MAP_CHUNK).for_each(|c| crate::vmath::map_in_place(c, &f)),
        None => z.par_mapv_inplace(f),
    }
}

/// The logistic function $\sigma(x) = 1/(1 + e^{-x})$, without overflow and
/// vectorisable ([`Vmath::vsigmoid`]; within 2
/// ulps of libm's, see [`crate::vmath`]).
#[inline]
pub fn sigmoid<T: Real>(x: T) -> T {
    x.vsigmoid()
}

impl Loss {
    /// The mean over the batch of the per-example losses, accumulated in `f64`
    /// in a fixed order: the sigmoid cross-entropy's over fixed blocks of
    /// elements (see the [module docs](self)), the others' row by row (rows
    /// in parallel, in tasks of about 2¹⁶ elements, summed in order).
    pub fn value<T: Real>(self, s: ArrayView2<'_, T>, t: ArrayView2<'_, T>) -> Result<f64> {
        check("targets", &s, &t)?;
        if self == Self::SigmoidCrossEntropy {
            return Ok(bernoulli::value(s, t));
        }
        let n = s.nrows().max(1) as f64;
        let rows = rows_per_task(s.ncols());
        let tasks: Vec<Vec<f64>> = s
            .axis_chunks_iter(Axis(0), rows)
            .into_par_iter()
            .zip(t.axis_chunks_iter(Axis(0), rows).into_par_iter())
            .map(|(sc, tc)| sc.outer_iter().zip(tc.outer_iter()).map(|(row, trow)| self.row_value(row, trow)).collect())
            .collect();
        Ok(tasks.iter().flatten().sum::<f64>() / n)
    }

    /// [`Loss::value`] and [`Loss::grad`], each bit for bit, from one pass over
    /// the outputs for the sigmoid cross-entropy (one exponential and one
    /// logarithm per output), from the two functions for the others.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] when `s` and `t` differ in shape.
    pub fn value_and_grad<T: Real>(self, s: ArrayView2<'_, T>, t: ArrayView2<'_, T>) -> Result<(f64, Array2<T>)> {
        check("targets", &s, &t)?;
        match self {
            Self::SigmoidCrossEntropy => bernoulli::value_and_grad(s, t),
            _ => Ok((self.value(s, t)?, self.grad(s, t)?)),
        }
    }

    fn row_value<T: Real>(self, row: ArrayView1<'_, T>, trow: ArrayView1<'_, T>) -> f64 {
        let pairs = row.iter().zip(trow.iter()).map(|(&a, &b)| (a.to_f64_exact(), b.to_f64_exact()));
        match self {
            Self::SquaredError => pairs.map(|(x, y)| 0.5 * (x - y).powi(2)).sum(),
            // The sigmoid cross-entropy is summed by `bernoulli::value`.
            Self::SigmoidCrossEntropy => pairs.map(|(x, y)| x.vsoftplus() - y * x).sum(),
            Self::SoftmaxCrossEntropy => {
                let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x.to_f64_exact()));
                let lse = m + row.iter().map(|&x| (x.to_f64_exact() - m).exp()).sum::<f64>().ln();
                pairs.map(|(x, y)| y * (lse - x)).sum()
            }
        }
    }

    /// The predictive mean $E[t \mid s]$: softmax, sigmoid or $s$.
    pub fn mean<T: Real>(self, s: ArrayView2<'_, T>) -> Array2<T> {
        let mut p = s.to_owned();
        match self {
            Self::SquaredError => {}
            Self::SigmoidCrossEntropy => par_map_inplace(p.view_mut(), sigmoid),
            Self::SoftmaxCrossEntropy => {
                p.axis_iter_mut(Axis(0)).into_par_iter().for_each(|mut row| {
                    let m = row.iter().fold(T::neg_infinity(), |m, &x| m.max(x));
                    row.mapv_inplace(|x| (x - m).exp());
                    let z = row.sum();
                    row.mapv_inplace(|x| x / z);
                });
            }
        }
        p
    }

    /// The per-example gradients $\partial \ell_n / \partial s_n = E[t \mid s_n] - t_n$
    /// (not divided by the batch size).
    pub fn grad<T: Real>(self, s: ArrayView2<'_, T>, t: ArrayView2<'_, T>) -> Result<Array2<T>> {
        check("targets", &s, &t)?;
        let mut g = self.mean(s);
        g -= &t;
        Ok(g)
    }

    /// Targets drawn from the predictive distribution $p(t \mid s)$: a one-hot
    /// class from the softmax, a 0/1 per output from the sigmoid, $s + \varepsilon$
    /// with $\varepsilon \sim \mathcal N(0, I)$ for the squared error.
    pub fn sample<T: Real>(self, s: ArrayView2<'_, T>, rng: &mut Rng) -> Array2<T> {
        self.sample_from_mean(s, self.mean(s).view(), rng)
    }

    /// [`Loss::sample`] given the predictive mean `p` of `s`.
    fn sample_from_mean<T: Real>(self, s: ArrayView2<'_, T>, p: ArrayView2<'_, T>, rng: &mut Rng) -> Array2<T> {
        match self {
            Self::SquaredError => s.mapv(|x| x + T::from_f64_lossy(rng.normal())),
            Self::SigmoidCrossEntropy => {
                p.mapv(|q| if rng.uniform() < q.to_f64_exact() { T::one() } else { T::zero() })
            }
            Self::SoftmaxCrossEntropy => {
                let mut t = Array2::zeros(s.dim());
                for (prow, mut trow) in p.outer_iter().zip(t.outer_iter_mut()) {
                    let u = rng.uniform();
                    let mut acc = 0.0;
                    let mut k = prow.len() - 1;
                    for (j, &q) in prow.iter().enumerate() {
                        acc += q.to_f64_exact();
                        if u < acc {
                            k = j;
                            break;
                        }
                    }
                    trow[k] = T::one();
                }
                t
            }
        }
    }

    /// The per-example gradients at sampled targets, the input of the true
    /// Fisher statistics: $E[t \mid s_n] - \tilde t_n$, $\tilde t_n \sim p(t \mid s_n)$.
    pub fn sampled_grad<T: Real>(self, s: ArrayView2<'_, T>, rng: &mut Rng) -> Array2<T> {
        let mut g = self.mean(s);
        let t = self.sample_from_mean(s, g.view(), rng);
        g -= &t;
        g
    }

    /// $H_n r_n$ for every example $n$ (a row of `r`), with $H_n$ the Hessian
    /// of the per-example loss with respect to the outputs `s` (logits):
    /// softmax, $\operatorname{diag}(p) - p p^\top$; sigmoid (summed over the
    /// outputs), $\operatorname{diag}(p \odot (1-p))$; squared error, $I$.
    /// For these losses it is also the Fisher of the predictive
    /// distribution in the output space, so that the Fisher of the mean
    /// loss is $F = \frac1N \sum_n J_n^\top H_n J_n$, $J_n$ the Jacobian of
    /// example $n$'s outputs with respect to the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] when `s` and `r` differ in shape.
    pub fn hessian_vector<T: Real>(self, s: ArrayView2<'_, T>, r: ArrayView2<'_, T>) -> Result<Array2<T>> {
        check("output-space direction", &s, &r)?;
        Ok(match self {
            Self::SquaredError => r.to_owned(),
            Self::SigmoidCrossEntropy => {
                let p = self.mean(s);
                let mut out = r.to_owned();
                ndarray::Zip::from(&mut out).and(&p).for_each(|o, &p| *o *= p * (T::one() - p));
                out
            }
            Self::SoftmaxCrossEntropy => {
                let p = self.mean(s);
                let mut out = Array2::zeros(r.dim());
                for ((mut o, p), r) in out.axis_iter_mut(Axis(0)).zip(p.axis_iter(Axis(0))).zip(r.axis_iter(Axis(0))) {
                    let pr = p.dot(&r);
                    ndarray::Zip::from(&mut o).and(&p).and(&r).for_each(|o, &p, &r| *o = p * (r - pr));
                }
                out
            }
        })
    }

    /// Fraction of rows whose arg-max matches the target's (classification accuracy).
    pub fn accuracy<T: Real>(s: ArrayView2<'_, T>, t: ArrayView2<'_, T>) -> f64 {
        let argmax = |r: ndarray::ArrayView1<'_, T>| {
            r.iter()
                .enumerate()
                .fold((0, T::neg_infinity()), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
                .0
        };
        let hits = s.outer_iter().zip(t.outer_iter()).filter(|(a, b)| argmax(*a) == argmax(*b)).count();
        hits as f64 / s.nrows().max(1) as f64
    }
}

/// Sums of squares of a gradient list, for diagnostics.
pub fn sum_squares<T: Real>(xs: &[Array2<T>]) -> f64 {
    xs.iter().map(|x| x.iter().map(|v| v.to_f64_exact().powi(2)).sum::<f64>()).sum()
}
