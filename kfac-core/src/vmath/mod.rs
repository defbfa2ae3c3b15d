//! $e^x$, $\ln(1 + x)$, $\operatorname{softplus}$ and the logistic $\sigma$ at
//! vector speed, in `f32` and `f64`.
//!
//! The standard library's `exp` and `ln_1p` are calls into the system's
//! libm, one element at a time: a loop over them cannot be vectorised, and
//! on some machines (glibc on Intel Xeons) they took half of a training
//! step. These kernels are straight-line code, each operation an arithmetic
//! one, an integer operation on the bits, or a select, so that a loop over a
//! slice ([`map_in_place`], or any loop over the scalar functions) compiles
//! to SIMD instructions. The `f32` kernels never widen to `f64`.
//!
//! # Method
//! - $e^x$: $x$ is clamped to the range where the result is finite and
//!   nonzero (NaN passes), then $x = n \ln 2 + r$ with $n = \operatorname{round}(x/\ln 2)$
//!   and $|r| \le \ln 2 / 2$, $r$ computed with $\ln 2$ split in two
//!   (Cody–Waite) so that $n \ln 2$ is exact; $e^r = 1 + r + r^2 q(r)$ with
//!   Cephes' minimax polynomial of degree 5 (`f32`) or the Taylor polynomial
//!   to $r^{13}$ (`f64`, the first term left out is below $4 \cdot 10^{-18}$);
//!   then $e^x = e^r \, 2^{n_1} 2^{n - n_1}$, $n_1 = \operatorname{round}(n/2)$,
//!   both powers built from their bits. The two factors let the result
//!   overflow to $+\infty$ and underflow gradually through the subnormals.
//! - $\ln(1 + x)$: $u = 1 + x$ rounded, and $c = (x - (u - 1))/u$ carries
//!   the rounding error to first order ($\ln(u + d) \approx \ln u + d/u$);
//!   $u = 2^k m$ with $m \in [\sqrt{1/2}, \sqrt 2)$ from the bits, $f = m - 1$,
//!   and $\ln(1 + f)$ by Cephes' polynomial $f - f^2/2 + f^3 P(f)$ (`f32`) or
//!   fdlibm's $2s + s R(s^2)$, $s = f/(2 + f)$ (`f64`). Then
//!   $\ln(1+x) = k \ln 2 + \ln(1 + f) + c$. Selects give $+\infty$, $-\infty$
//!   at $x = -1$, NaN below, and $x$ itself for $x = \pm 0$.
//! - $\sigma(x) = 1/(1 + e^{-x})$ for $x \ge 0$ and $e^{x}/(1 + e^{x})$ below,
//!   both from $e = e^{-|x|} \in (0, 1]$, so nothing overflows.
//! - $\operatorname{softplus}(x) = \ln(1 + e^x) = \max(x, 0) + \ln(1 + e^{-|x|})$:
//!   two nonnegative terms, so no cancellation. [`Vmath::vlogistic`] returns
//!   $\sigma(x)$ and $\ln(1 + e^{-|x|})$ from one exponential: the
//!   Bernoulli loss and its gradient.
//!
//! # Accuracy
//! Measured against libm in `kfac-core/tests/vmath.rs`, over the whole range
//! (every 257th `f32` bit pattern, a Weyl sequence of 2²⁴ `f64` bit patterns,
//! dense grids where the functions bend, and the edge cases: $\pm 0$,
//! subnormals, the overflow and underflow thresholds, $\pm\infty$, NaN). For
//! `f32` the reference is the `f64` libm result rounded to `f32`; for `f64`
//! it is libm's own `f64` result (itself within about one unit in the last
//! place, ulp). The maximum errors, in ulps of the result (subnormal results
//! count in units of the smallest subnormal), that the tests assert:
//!
//! | function | `f32` | `f64` |
//! |---|---|---|
//! | [`exp_f32`], [`exp_f64`] | 1 | 1 |
//! | [`ln_1p_f32`], [`ln_1p_f64`] | 1 | 1 |
//! | [`sigmoid_f32`], [`sigmoid_f64`] | 2 | 2 |
//! | [`softplus_f32`], [`softplus_f64`] | 2 | 2 |
//!
//! Special values follow libm: NaN gives NaN, $e^{+\infty} = +\infty$,
//! $e^{-\infty} = 0$, $\ln(1 + (-1)) = -\infty$, $\ln(1 + x) = $ NaN for $x < -1$,
//! $\sigma(\pm\infty) = 1, 0$, $\operatorname{softplus}(+\infty) = +\infty$.

mod double;
mod single;

pub use double::{exp_f64, ln_1p_f64, logistic_f64, sigmoid_f64, softplus_f64};
pub use single::{exp_f32, ln_1p_f32, logistic_f32, sigmoid_f32, softplus_f32};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The kernels of this module for a generic `f32` or `f64` (a supertrait of
/// [`Real`](crate::Real)). The names carry a `v` so that they do not clash
/// with `num_traits::Float`'s libm methods.
pub trait Vmath: Copy + Send + Sync + sealed::Sealed {
    /// $e^x$: [`exp_f32`], [`exp_f64`].
    fn vexp(self) -> Self;
    /// $\ln(1 + x)$: [`ln_1p_f32`], [`ln_1p_f64`].
    fn vln_1p(self) -> Self;
    /// $\sigma(x) = 1/(1 + e^{-x})$: [`sigmoid_f32`], [`sigmoid_f64`].
    fn vsigmoid(self) -> Self;
    /// $\ln(1 + e^x)$: [`softplus_f32`], [`softplus_f64`].
    fn vsoftplus(self) -> Self;
    /// $(\sigma(x), \ln(1 + e^{-|x|}))$ from one exponential: [`logistic_f32`],
    /// [`logistic_f64`]. The first is [`Vmath::vsigmoid`] bit for bit, and
    /// $\max(x, 0)$ plus the second is [`Vmath::vsoftplus`] bit for bit.
    fn vlogistic(self) -> (Self, Self);
}

macro_rules! impl_vmath {
    ($t:ty, $exp:ident, $ln_1p:ident, $sigmoid:ident, $softplus:ident, $both:ident) => {
        impl Vmath for $t {
            #[inline(always)]
            fn vexp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn vln_1p(self) -> Self {
                $ln_1p(self)
            }
            #[inline(always)]
            fn vsigmoid(self) -> Self {
                $sigmoid(self)
            }
            #[inline(always)]
            fn vsoftplus(self) -> Self {
                $softplus(self)
            }
            #[inline(always)]
            fn vlogistic(self) -> (Self, Self) {
                $both(self)
            }
        }
    };
}
impl_vmath!(f32, exp_f32, ln_1p_f32, sigmoid_f32, softplus_f32, logistic_f32);
impl_vmath!(f64, exp_f64, ln_1p_f64, sigmoid_f64, softplus_f64, logistic_f64);

/// Elements per unrolled group: two AVX registers of `f32`, and an array
/// length that SSE2, AVX2 and AVX-512 lanes all divide.
pub const LANES: usize = 8;

/// `x = f(x)` for every element, [`LANES`] at a time over fixed-width
/// arrays (then the remainder), so that a branch-free `f` is vectorised.
#[inline]
pub fn map_in_place<T: Copy>(xs: &mut [T], f: impl Fn(T) -> T) {
    let mut chunks = xs.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        if let Ok(lanes) = <&mut [T; LANES]>::try_from(chunk) {
            for x in lanes.iter_mut() {
                *x = f(*x);
            }
        }
    }
    for x in chunks.into_remainder() {
        *x = f(*x);
    }
}

/// $e^x$ for every element of `xs`, in place ([`Vmath::vexp`]).
pub fn exp_in_place<T: Vmath>(xs: &mut [T]) {
    map_in_place(xs, T::vexp);
}

/// $\ln(1 + x)$ for every element of `xs`, in place ([`Vmath::vln_1p`]).
pub fn ln_1p_in_place<T: Vmath>(xs: &mut [T]) {
    map_in_place(xs, T::vln_1p);
}

/// $\sigma(x)$ for every element of `xs`, in place ([`Vmath::vsigmoid`]).
pub fn sigmoid_in_place<T: Vmath>(xs: &mut [T]) {
    map_in_place(xs, T::vsigmoid);
}

/// $\ln(1 + e^x)$ for every element of `xs`, in place ([`Vmath::vsoftplus`]).
pub fn softplus_in_place<T: Vmath>(xs: &mut [T]) {
    map_in_place(xs, T::vsoftplus);
}
