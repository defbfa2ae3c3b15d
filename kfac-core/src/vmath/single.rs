//! The `f32` kernels. Every operation is `f32` arithmetic, an integer
//! operation on the bits, or a select: no call, no branch, no `f64`.

// Cephes' coefficients are written with all the digits they were published with.
#![allow(clippy::excessive_precision)]

/// $\log_2 e$.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// $\ln 2$ split in two (Cody–Waite): `LN2_HI` has 9 significant bits, so
/// that $n \cdot$ `LN2_HI` is exact for $|n| < 2^{15}$.
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;
/// $1.5 \cdot 2^{23}$: adding and subtracting it rounds to the nearest integer
/// (ties to even) any $|x| < 2^{22}$, and the integer sits in the low bits.
const ROUND: f32 = 12_582_912.0;
const ROUND_BITS: u32 = 0x4b40_0000;
/// Beyond these, $e^x$ is $+\infty$ and $0$ in `f32` ($\ln$ of the largest
/// float is 88.72, half the smallest subnormal is $e^{-103.97}$).
const EXP_HI: f32 = 89.0;
const EXP_LO: f32 = -104.0;
/// The bits of $\sqrt{1/2}$, where the mantissa range $[\sqrt{1/2}, \sqrt 2)$ starts.
const SQRT_HALF_BITS: u32 = 0x3f35_04f3;

/// $2^k$ for an integer-valued `k` in $[-126, 127]$, built from the bits.
#[inline(always)]
fn pow2i(k: f32) -> f32 {
    let n = (k + ROUND).to_bits().wrapping_sub(ROUND_BITS);
    f32::from_bits(n.wrapping_add(127) << 23)
}

/// $e^x$ in `f32`. See the [module docs](super) for the method and the error bound.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // NaN passes through the clamp and the arithmetic.
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Cephes' expf: e^r = 1 + r + r² P(r) on |r| ≤ ln 2 / 2.
    let mut p = 1.987_569_15e-4;
    p = p * r + 1.398_199_950_7e-3;
    p = p * r + 8.333_451_907_3e-3;
    p = p * r + 4.166_579_589_4e-2;
    p = p * r + 1.666_666_545_9e-1;
    p = p * r + 5.000_000_120_1e-1;
    let e = p * (r * r) + r + 1.0;
    // 2^n in two factors, so that n = 128 (overflow) and n < -126
    // (subnormal results, rounded once, by the last product) both work.
    let n1 = (n * 0.5 + ROUND) - ROUND;
    e * pow2i(n1) * pow2i(n - n1)
}

/// $\ln(1 + x)$ in `f32`. See the [module docs](super).
#[inline(always)]
pub fn ln_1p_f32(x: f32) -> f32 {
    let u = 1.0 + x;
    // The rounding error of 1 + x, carried to first order: ln(u + d) ≈ ln u + d / u.
    let c = (x - (u - 1.0)) / u;
    // u = 2^k m with m in [√½, √2) (musl's logf reduction).
    let ix = u.to_bits().wrapping_add(0x3f80_0000 - SQRT_HALF_BITS);
    let k = ((ix >> 23) as i32 - 127) as f32;
    let f = f32::from_bits((ix & 0x007f_ffff) + SQRT_HALF_BITS) - 1.0;
    // Cephes' logf: ln(1 + f) = f - f²/2 + f³ P(f).
    let z = f * f;
    let mut p = 7.037_683_629_2e-2;
    p = p * f - 1.151_461_031_0e-1;
    p = p * f + 1.167_699_874_0e-1;
    p = p * f - 1.242_014_084_6e-1;
    p = p * f + 1.424_932_278_7e-1;
    p = p * f - 1.666_805_766_5e-1;
    p = p * f + 2.000_071_476_5e-1;
    p = p * f - 2.499_999_399_3e-1;
    p = p * f + 3.333_333_117_4e-1;
    let y = f * z * p + (k * LN2_LO + c) - 0.5 * z;
    let r = (f + y) + k * LN2_HI;
    let r = if u == f32::INFINITY { u } else { r };
    let r = if u == 0.0 { f32::NEG_INFINITY } else { r };
    let r = if x == 0.0 { x } else { r };
    if u < 0.0 { f32::NAN } else { r }
}

/// $\sigma(x) = 1/(1 + e^{-x})$ and $\ln(1 + e^{-|x|})$ in `f32`, from one
/// exponential. See the [module docs](super).
#[inline(always)]
pub fn logistic_f32(x: f32) -> (f32, f32) {
    let e = exp_f32(-x.abs());
    // NaN: e is NaN, so both results are.
    let num = if x >= 0.0 { 1.0 } else { e };
    (num / (1.0 + e), ln_1p_f32(e))
}

/// $\sigma(x) = 1/(1 + e^{-x})$ in `f32`, without overflow. See the [module docs](super).
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    let e = exp_f32(-x.abs());
    let num = if x >= 0.0 { 1.0 } else { e };
    num / (1.0 + e)
}

/// $\operatorname{softplus}(x) = \ln(1 + e^x) = \max(x, 0) + \ln(1 + e^{-|x|})$
/// in `f32`, without overflow. See the [module docs](super).
#[inline(always)]
pub fn softplus_f32(x: f32) -> f32 {
    let e = exp_f32(-x.abs());
    let pos = if x > 0.0 { x } else { 0.0 };
    pos + ln_1p_f32(e)
}
