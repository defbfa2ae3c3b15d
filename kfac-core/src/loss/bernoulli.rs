//! The sigmoid cross-entropy (independent Bernoulli outputs): its value and
//! its gradient in one pass over the outputs, with the kernels of
//! [`crate::vmath`].
//!
//! Per element, with $e = e^{-|s|}$,
//! $$ \ell(s, t) = \max(s, 0) - t s + \ln(1 + e), \qquad \frac{\partial \ell}{\partial s} = \sigma(s) - t ,$$
//! $\sigma(s)$ and $\ln(1 + e)$ from one exponential ([`Vmath::vlogistic`],
//! in the precision of the outputs). The rest of $\ell$ is formed in `f64`
//! from the exact values of $s$ and $t$, so that nothing cancels: for
//! $t \in [0, 1]$ both $\max(s, 0) - t s$ and $\ln(1 + e)$ are nonnegative.
//!
//! The sum over the batch is accumulated in `f64` over fixed blocks of
//! [`BLOCK`] elements (row-major), each in [`LANES`] partial sums (element
//! $i$ of a block into sum $i \bmod$ [`LANES`], added pairwise at the end),
//! the blocks' sums then added in order. Blocks and order depend on the
//! shape only, so the value does not depend on the thread count.

use std::borrow::Cow;

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::scalar::Real;
use crate::vmath::LANES;

/// Elements per parallel task: fixed, so that the sums do not depend on the
/// thread count, and large enough (tens of microseconds of work) that
/// rayon's hand-offs do not show.
pub(crate) const BLOCK: usize = 1 << 15;

/// One element: $\ell$ in `f64` and $\partial \ell / \partial s$.
#[inline(always)]
fn element<T: Real>(s: T, t: T) -> (f64, T) {
    let (p, l) = s.vlogistic();
    let (sf, tf) = (s.to_f64_exact(), t.to_f64_exact());
    let pos = if sf > 0.0 { sf } else { 0.0 };
    (pos - tf * sf + l.to_f64_exact(), p - t)
}

/// The partial sums, added pairwise.
fn lanes_sum(acc: [f64; LANES]) -> f64 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// The summed loss of one block, and its gradient written to `g` when given:
/// [`block_lanes`] compiled for the widest vector unit the CPU has.
///
/// The default build targets baseline x86-64, whose vectors hold four
/// `f32`. The same loop compiled for AVX-512 or AVX2 makes the fused
/// pass 4.06× faster on the project's machine
/// (`docs/results/bench/vmath/native.md`). The result is the same bit for
/// bit: the same IEEE operations in the same order (Rust never contracts
/// `a * b + c` into an FMA), only more lanes at a time.
fn block<T: Real>(s: &[T], t: &[T], g: Option<&mut [T]>) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: `block_avx512` only needs AVX-512F, detected just above.
            return unsafe { block_avx512(s, t, g) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: `block_avx2` only needs AVX2, detected just above.
            return unsafe { block_avx2(s, t, g) };
        }
    }
    block_lanes(s, t, g)
}

/// [`block_lanes`] for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn block_avx512<T: Real>(s: &[T], t: &[T], g: Option<&mut [T]>) -> f64 {
    block_lanes(s, t, g)
}

/// [`block_lanes`] for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn block_avx2<T: Real>(s: &[T], t: &[T], g: Option<&mut [T]>) -> f64 {
    block_lanes(s, t, g)
}

/// The loop of [`block`], inlined into each of its instruction-set variants.
#[inline(always)]
fn block_lanes<T: Real>(s: &[T], t: &[T], mut g: Option<&mut [T]>) -> f64 {
    let mut acc = [0.0; LANES];
    let (s8s, t8s) = (s.chunks_exact(LANES), t.chunks_exact(LANES));
    let (s_rest, t_rest) = (s8s.remainder(), t8s.remainder());
    for (k, (s8, t8)) in s8s.zip(t8s).enumerate() {
        let mut d8 = [T::zero(); LANES];
        for i in 0..LANES {
            let (v, d) = element(s8[i], t8[i]);
            acc[i] += v;
            d8[i] = d;
        }
        if let Some(g) = g.as_deref_mut() {
            g[k * LANES..(k + 1) * LANES].copy_from_slice(&d8);
        }
    }
    let whole = s.len() - s_rest.len();
    for (i, (&s, &t)) in s_rest.iter().zip(t_rest).enumerate() {
        let (v, d) = element(s, t);
        acc[i] += v;
        if let Some(g) = g.as_deref_mut() {
            g[whole + i] = d;
        }
    }
    lanes_sum(acc)
}

/// The elements in row-major order, borrowed when the view is contiguous.
fn flat<'a, T: Copy>(a: &'a ArrayView2<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}

/// The mean over the rows of the summed loss (shapes already checked).
pub(crate) fn value<T: Real>(s: ArrayView2<'_, T>, t: ArrayView2<'_, T>) -> f64 {
    let (sf, tf) = (flat(&s), flat(&t));
    let sums: Vec<f64> = sf.par_chunks(BLOCK).zip(tf.par_chunks(BLOCK)).map(|(sc, tc)| block(sc, tc, None)).collect();
    sums.iter().sum::<f64>() / s.nrows().max(1) as f64
}

/// [`value`] and the per-example gradients $\sigma(s) - t$, in one pass.
pub(crate) fn value_and_grad<T: Real>(s: ArrayView2<'_, T>, t: ArrayView2<'_, T>) -> Result<(f64, Array2<T>)> {
    let (sf, tf) = (flat(&s), flat(&t));
    let mut g = vec![T::zero(); sf.len()];
    let sums: Vec<f64> = sf
        .par_chunks(BLOCK)
        .zip(tf.par_chunks(BLOCK))
        .zip(g.par_chunks_mut(BLOCK))
        .map(|((sc, tc), gc)| block(sc, tc, Some(gc)))
        .collect();
    let value = sums.iter().sum::<f64>() / s.nrows().max(1) as f64;
    let g = Array2::from_shape_vec(s.dim(), g).map_err(|_| Error::ShapeMismatch {
        block: "loss".into(),
        what: "gradient",
        expected: s.dim(),
        found: s.dim(),
    })?;
    Ok((value, g))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs over the whole range that matters: outputs from -60 to 60 and
    /// soft targets in [0, 1], a length with a tail.
    fn inputs<T: Real>(n: usize) -> (Vec<T>, Vec<T>) {
        let s = (0..n).map(|i| T::from_f64_lossy(((i * 7919) % 12001) as f64 / 100.0 - 60.0)).collect();
        let t = (0..n).map(|i| T::from_f64_lossy(((i * 104_729) % 1001) as f64 / 1000.0)).collect();
        (s, t)
    }

    /// The dispatched block (AVX-512 or AVX2 where the CPU has them) gives
    /// the baseline loop's loss and gradient bit for bit.
    fn dispatch_matches_baseline<T: Real>() {
        let (s, t) = inputs::<T>(BLOCK - 3);
        let (mut g1, mut g2) = (vec![T::zero(); s.len()], vec![T::zero(); s.len()]);
        let v1 = block(&s, &t, Some(&mut g1));
        let v2 = block_lanes(&s, &t, Some(&mut g2));
        assert_eq!(v1.to_bits(), v2.to_bits());
        assert!(g1.iter().zip(&g2).all(|(a, b)| a.to_f64_exact().to_bits() == b.to_f64_exact().to_bits()));
        assert_eq!(block(&s, &t, None).to_bits(), v2.to_bits());
    }

    #[test]
    fn dispatch_matches_baseline_f32() {
        dispatch_matches_baseline::<f32>();
    }

    #[test]
    fn dispatch_matches_baseline_f64() {
        dispatch_matches_baseline::<f64>();
    }
}
