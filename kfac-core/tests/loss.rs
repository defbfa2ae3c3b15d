//! The losses' fused value-and-gradient pass: equal bit for bit to the
//! separate value and gradient, within the error the vectorised kernels
//! allow of an `f64` libm reference, and independent of the thread count.

use kfac_core::{Loss, Real, Rng};
use ndarray::{Array2, ArrayView2, s};
use proptest::prelude::*;

const LOSSES: [Loss; 3] = [Loss::SoftmaxCrossEntropy, Loss::SigmoidCrossEntropy, Loss::SquaredError];

/// Logits in $[-30, 30]$ and targets in $[0, 1]$ (a tenth of them exactly 0
/// or 1, as in images), from the seeded generator.
fn batch<T: Real>(rows: usize, cols: usize, seed: u64) -> (Array2<T>, Array2<T>) {
    let mut rng = Rng::new(seed);
    let s = Array2::from_shape_simple_fn((rows, cols), || T::from_f64_lossy(60.0 * rng.uniform() - 30.0));
    let t = Array2::from_shape_simple_fn((rows, cols), || {
        let u = rng.uniform();
        T::from_f64_lossy(if u < 0.05 {
            0.0
        } else if u > 0.95 {
            1.0
        } else {
            u
        })
    });
    (s, t)
}

fn same<T: Real>(a: &Array2<T>, b: &Array2<T>) -> bool {
    a.dim() == b.dim() && a.iter().zip(b.iter()).all(|(x, y)| x.to_f64_exact().to_bits() == y.to_f64_exact().to_bits())
}

/// `value_and_grad` gives `value` and `grad` bit for bit, on contiguous and
/// strided views (every other column), for every loss.
fn fused_matches_separate<T: Real>(rows: usize, cols: usize, seed: u64) {
    let (s, t) = batch::<T>(rows, cols, seed);
    for loss in LOSSES {
        let views: [(ArrayView2<'_, T>, ArrayView2<'_, T>); 2] =
            [(s.view(), t.view()), (s.slice(s![.., ..;2]), t.slice(s![.., ..;2]))];
        for (sv, tv) in views {
            let (v, g) = loss.value_and_grad(sv, tv).unwrap();
            assert_eq!(v.to_bits(), loss.value(sv, tv).unwrap().to_bits(), "{loss:?} value, {}", T::NAME);
            assert!(same(&g, &loss.grad(sv, tv).unwrap()), "{loss:?} gradient, {}", T::NAME);
        }
    }
}

#[test]
fn fused_pass_matches_value_and_grad() {
    // One row, a remainder of lanes, and several blocks of 2^15 elements.
    for (rows, cols) in [(1, 1), (3, 13), (37, 784), (100, 1000)] {
        fused_matches_separate::<f32>(rows, cols, 1);
        fused_matches_separate::<f64>(rows, cols, 2);
    }
}

/// libm's Bernoulli loss in `f64`: the mean over rows of
/// $\sum_k \operatorname{softplus}(s_k) - t_k s_k$, and $\sigma(s) - t$.
fn reference<T: Real>(s: &Array2<T>, t: &Array2<T>) -> (f64, Array2<f64>) {
    let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
    let sigmoid = |x: f64| if x >= 0.0 { 1.0 / (1.0 + (-x).exp()) } else { x.exp() / (1.0 + x.exp()) };
    let (s64, t64) = (s.mapv(T::to_f64_exact), t.mapv(T::to_f64_exact));
    let value = s64.iter().zip(t64.iter()).map(|(&x, &y)| softplus(x) - y * x).sum::<f64>() / s.nrows() as f64;
    (value, s64.mapv(sigmoid) - &t64)
}

/// The Bernoulli value and gradient against libm in `f64`. The bound follows
/// from `kfac_core::vmath`'s: each element's loss is $a + l$ with $a \ge 0$
/// formed in `f64` and $l = \ln(1 + e^{-|s|}) \ge 0$ in `T`, within 2 ulps
/// from the logarithm and 1 carried from $e^{-|s|}$, so within $4\varepsilon$
/// relatively, and a sum of nonnegative terms keeps that relative bound
/// (plus the `f64` summation's, $m \varepsilon_{64}$ for $m$ terms). The
/// gradient $\sigma(s) - t$: 2 ulps of $\sigma$ against the reference, half
/// an ulp for rounding it to `f32`, and half an ulp for each of the two
/// subtractions (ours, and in `f64` the reference's).
fn close_to_libm<T: Real>(rows: usize, cols: usize, seed: u64) {
    let (s, t) = batch::<T>(rows, cols, seed);
    let (v, g) = Loss::SigmoidCrossEntropy.value_and_grad(s.view(), t.view()).unwrap();
    let (v_ref, g_ref) = reference(&s, &t);
    let eps = T::EPSILON.to_f64_exact();
    let tol = (4.0 * eps + (rows * cols) as f64 * f64::EPSILON) * v_ref;
    assert!((v - v_ref).abs() <= tol, "{}: value {v} against {v_ref}, tolerance {tol:e}", T::NAME);
    for (((&g, &r), &x), &y) in g.iter().zip(g_ref.iter()).zip(s.iter()).zip(t.iter()) {
        let sigma = r + y.to_f64_exact();
        let tol = 2.5 * eps * sigma + eps * r.abs();
        assert!((g.to_f64_exact() - r).abs() <= tol, "{}: gradient {g} against {r} at s = {x}", T::NAME);
    }
}

#[test]
fn bernoulli_loss_is_close_to_libm() {
    close_to_libm::<f32>(200, 784, 3);
    close_to_libm::<f64>(200, 784, 4);
}

proptest! {
    /// The same value and gradients, bit for bit, on 1 and 2 threads.
    #[test]
    fn bernoulli_pass_is_independent_of_the_thread_count(rows in 1usize..120, cols in 1usize..800, seed in 0u64..1000) {
        let (s, t) = batch::<f32>(rows, cols, seed);
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| Loss::SigmoidCrossEntropy.value_and_grad(s.view(), t.view()).unwrap())
        };
        let ((v1, g1), (v2, g2)) = (on(1), on(2));
        prop_assert_eq!(v1.to_bits(), v2.to_bits());
        prop_assert!(same(&g1, &g2));
    }
}
