//! The `f64` kernels. Every operation is `f64` arithmetic, an integer
//! operation on the bits, or a select: no call, no branch.

// fdlibm's coefficients are written with all the digits they were published with.
#![allow(clippy::excessive_precision)]

/// $\log_2 e$.
const LOG2E: f64 = std::f64::consts::LOG2_E;
/// $\ln 2$ split in two (fdlibm's): `LN2_HI` has 32 significant bits, so
/// that $n \cdot$ `LN2_HI` is exact for $|n| < 2^{21}$.
const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
/// $1.5 \cdot 2^{52}$: adding and subtracting it rounds to the nearest integer.
const ROUND: f64 = 6_755_399_441_055_744.0;
const ROUND_BITS: u64 = 0x4338_0000_0000_0000;
/// Beyond these, $e^x$ is $+\infty$ and $0$ in `f64` ($\ln$ of the largest
/// float is 709.78, half the smallest subnormal is $e^{-745.13}$).
const EXP_HI: f64 = 710.0;
const EXP_LO: f64 = -746.0;
/// The high bits of $\sqrt{1/2}$, where the mantissa range $[\sqrt{1/2}, \sqrt 2)$ starts.
const SQRT_HALF_BITS: u64 = 0x3fe6_a09e_0000_0000;
/// $2^{52}$, whose low mantissa bits take a small integer exactly.
const TWO52: f64 = 4_503_599_627_370_496.0;
const TWO52_BITS: u64 = 0x4330_0000_0000_0000;

/// $2^k$ for an integer-valued `k` in $[-1022, 1023]$, built from the bits.
#[inline(always)]
fn pow2i(k: f64) -> f64 {
    let n = (k + ROUND).to_bits().wrapping_sub(ROUND_BITS);
    f64::from_bits(n.wrapping_add(1023) << 52)
}

/// $e^x$ in `f64`. See the [module docs](super) for the method and the error bound.
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r = 1 + r + r² q(r), q the Taylor polynomial to r¹¹/13! (|r| ≤ ln 2 / 2:
    // the first term left out is below 4·10⁻¹⁸).
    let mut q = 1.0 / 6_227_020_800.0;
    q = q * r + 1.0 / 479_001_600.0;
    q = q * r + 1.0 / 39_916_800.0;
    q = q * r + 1.0 / 3_628_800.0;
    q = q * r + 1.0 / 362_880.0;
    q = q * r + 1.0 / 40_320.0;
    q = q * r + 1.0 / 5_040.0;
    q = q * r + 1.0 / 720.0;
    q = q * r + 1.0 / 120.0;
    q = q * r + 1.0 / 24.0;
    q = q * r + 1.0 / 6.0;
    q = q * r + 0.5;
    let e = q * (r * r) + r + 1.0;
    let n1 = (n * 0.5 + ROUND) - ROUND;
    e * pow2i(n1) * pow2i(n - n1)
}

/// $\ln(1 + x)$ in `f64`. See the [module docs](super).
#[inline(always)]
pub fn ln_1p_f64(x: f64) -> f64 {
    const LG: [f64; 7] = [
        6.666_666_666_666_735_130e-01,
        3.999_999_999_940_941_908e-01,
        2.857_142_874_366_239_149e-01,
        2.222_219_843_214_978_396e-01,
        1.818_357_216_161_805_012e-01,
        1.531_383_769_920_937_332e-01,
        1.479_819_860_511_658_591e-01,
    ];
    let u = 1.0 + x;
    let c = (x - (u - 1.0)) / u;
    // u = 2^k m with m in [√½, √2) (musl's log reduction).
    let ix = u.to_bits().wrapping_add(0x3ff0_0000_0000_0000 - SQRT_HALF_BITS);
    let k = f64::from_bits((ix >> 52) | TWO52_BITS) - (TWO52 + 1023.0);
    let f = f64::from_bits((ix & 0x000f_ffff_ffff_ffff) + SQRT_HALF_BITS) - 1.0;
    // fdlibm's log: s = f / (2 + f), ln(1 + f) = 2s + s R(s²).
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG[1] + w * (LG[3] + w * LG[5]));
    let t2 = z * (LG[0] + w * (LG[2] + w * (LG[4] + w * LG[6])));
    let hfsq = 0.5 * f * f;
    let r = k * LN2_HI - ((hfsq - (s * (hfsq + (t1 + t2)) + (k * LN2_LO + c))) - f);
    let r = if u == f64::INFINITY { u } else { r };
    let r = if u == 0.0 { f64::NEG_INFINITY } else { r };
    let r = if x == 0.0 { x } else { r };
    if u < 0.0 { f64::NAN } else { r }
}

/// $\sigma(x) = 1/(1 + e^{-x})$ and $\ln(1 + e^{-|x|})$ in `f64`, from one
/// exponential. See the [module docs](super).
#[inline(always)]
pub fn logistic_f64(x: f64) -> (f64, f64) {
    let e = exp_f64(-x.abs());
    // NaN: e is NaN, so both results are.
    let num = if x >= 0.0 { 1.0 } else { e };
    (num / (1.0 + e), ln_1p_f64(e))
}

/// $\sigma(x) = 1/(1 + e^{-x})$ in `f64`, without overflow. See the [module docs](super).
#[inline(always)]
pub fn sigmoid_f64(x: f64) -> f64 {
    let e = exp_f64(-x.abs());
    let num = if x >= 0.0 { 1.0 } else { e };
    num / (1.0 + e)
}

/// $\operatorname{softplus}(x) = \max(x, 0) + \ln(1 + e^{-|x|})$ in `f64`,
/// without overflow. See the [module docs](super).
#[inline(always)]
pub fn softplus_f64(x: f64) -> f64 {
    let e = exp_f64(-x.abs());
    let pos = if x > 0.0 { x } else { 0.0 };
    pos + ln_1p_f64(e)
}
