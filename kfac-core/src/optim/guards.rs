//! The checks a step makes before it writes anything: finiteness, and
//! updates that could overflow the floating-point range. Public so that
//! other optimizers (kfac-nn's SGD and Adam) make the same checks.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::scalar::Real;

const SCAN_CHUNK: usize = 1 << 16;

/// Whether every entry is finite: a parallel scan over contiguous chunks
/// (the answer does not depend on the order or the thread count).
pub fn all_finite<T: Real>(a: ArrayView2<'_, T>) -> bool {
    match a.as_slice_memory_order() {
        Some(s) => s.par_chunks(SCAN_CHUNK).all(|c| c.iter().all(|x| x.is_finite())),
        None => a.iter().all(|x| x.is_finite()),
    }
}

/// Whether every entry of every array is finite.
pub fn finite<T: Real>(arrays: &[Array2<T>]) -> bool {
    arrays.iter().all(|a| all_finite(a.view()))
}

/// The largest $|a_{ij}|$ (the entries are finite), by the same scan.
pub fn max_abs<T: Real>(a: ArrayView2<'_, T>) -> f64 {
    let chunk_max = |c: &[T]| c.iter().fold(0.0f64, |m, &x| m.max(x.to_f64_exact().abs()));
    match a.as_slice_memory_order() {
        Some(s) => s.par_chunks(SCAN_CHUNK).map(chunk_max).reduce(|| 0.0, f64::max),
        None => a.iter().fold(0.0f64, |m, &x| m.max(x.to_f64_exact().abs())),
    }
}

/// Whether $\theta - \eta(\mu v + d)$ stays within the floating-point range
/// for every layer, by the bound
/// $\max|\theta| + \eta(1+\mu)(\mu \max|v| + \max|d|)$, checked before
/// anything is written.
pub fn update_fits<T: Real>(
    params: &[ArrayView2<'_, T>],
    velocity: &[Array2<T>],
    directions: &[Array2<T>],
    lr: f64,
    mom: f64,
) -> bool {
    let limit = T::max_value().to_f64_exact();
    params
        .iter()
        .zip(velocity)
        .zip(directions)
        .all(|((p, v), d)| max_abs(p.view()) + lr * (1.0 + mom) * (mom * max_abs(v.view()) + max_abs(d.view())) < limit)
}

/// $\tfrac{\eta}{2}\|\theta + \delta\|^2$ in `f64`, with $\theta + \delta$ rounded
/// to `T` entry by entry (the parameters the step would write); $\delta$
/// `None` for $\theta$ itself.
pub fn half_l2<T: Real>(l2: f64, params: &[ArrayView2<'_, T>], delta: Option<&[Array2<T>]>) -> f64 {
    let layer = |l: usize| -> f64 {
        match delta {
            None => params[l].iter().map(|x| x.to_f64_exact().powi(2)).sum::<f64>(),
            Some(d) => params[l].iter().zip(d[l].iter()).map(|(&w, &e)| (w + e).to_f64_exact().powi(2)).sum::<f64>(),
        }
    };
    0.5 * l2 * (0..params.len()).map(layer).sum::<f64>()
}
