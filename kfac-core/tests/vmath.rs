//! The vectorised kernels of `kfac_core::vmath` against libm, over the whole
//! range of each precision: a stride through every `f32` bit pattern, a Weyl
//! sequence through the `f64` ones, dense grids where the functions bend,
//! and the edge cases. The bounds asserted are the ones the module's rustdoc
//! states; the worst case found is printed (`--nocapture`).

use kfac_core::vmath::{self, Vmath};
use proptest::prelude::*;

/// The `f32` bit patterns as integers in the order of the values, so that the
/// distance between two floats is their difference (±0 both map to 0).
fn ordered32(x: f32) -> i64 {
    let b = x.to_bits();
    if b >> 31 == 1 { -i64::from(b & 0x7fff_ffff) } else { i64::from(b) }
}

fn ordered64(x: f64) -> i128 {
    let b = x.to_bits();
    if b >> 63 == 1 { -i128::from(b & 0x7fff_ffff_ffff_ffff) } else { i128::from(b) }
}

/// The distance in ulps; NaN matches only NaN.
fn ulps32(got: f32, want: f32) -> u64 {
    match (got.is_nan(), want.is_nan()) {
        (true, true) => 0,
        (false, false) => (ordered32(got) - ordered32(want)).unsigned_abs(),
        _ => u64::MAX,
    }
}

fn ulps64(got: f64, want: f64) -> u64 {
    match (got.is_nan(), want.is_nan()) {
        (true, true) => 0,
        (false, false) => u64::try_from((ordered64(got) - ordered64(want)).unsigned_abs()).unwrap_or(u64::MAX),
        _ => u64::MAX,
    }
}

const EDGES32: &[f32] = &[
    0.0,
    -0.0,
    1e-45,
    -1e-45,
    1e-40,
    -1e-40,
    f32::MIN_POSITIVE,
    -f32::MIN_POSITIVE,
    1e-30,
    -1e-30,
    1e-8,
    -1e-8,
    5.9604645e-8,
    -5.9604645e-8,
    1.0,
    -1.0,
    -0.99999994,
    -1.0000001,
    -0.5,
    88.72283,
    88.72284,
    88.7229,
    89.0,
    100.0,
    -87.33654,
    -87.33655,
    -103.27893,
    -103.97207,
    -103.97208,
    -104.0,
    -200.0,
    16.635532,
    17.0,
    f32::MAX,
    f32::MIN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
];

const EDGES64: &[f64] = &[
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    1e-310,
    -1e-310,
    f64::MIN_POSITIVE,
    -f64::MIN_POSITIVE,
    1e-200,
    -1e-200,
    1e-17,
    -1e-17,
    1.1102230246251565e-16,
    -1.1102230246251565e-16,
    1.0,
    -1.0,
    -0.9999999999999999,
    -1.0000000000000002,
    -0.5,
    709.782712893384,
    709.7827128933841,
    709.8,
    710.0,
    1000.0,
    -708.3964185322641,
    -708.4,
    -744.44007192138,
    -745.1332191019411,
    -745.1332191019412,
    -746.0,
    -2000.0,
    36.7368005696771,
    37.0,
    f64::MAX,
    f64::MIN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN,
];

/// Every 257th `f32` bit pattern (both signs, every exponent), a dense
/// grid on `[lo, hi]`, and the edge cases.
fn samples32(lo: f32, hi: f32) -> Vec<f32> {
    let mut xs: Vec<f32> = (0..=u32::MAX / 257).map(|i| f32::from_bits(i.wrapping_mul(257))).collect();
    let n = 1 << 22;
    xs.extend((0..=n).map(|i| lo + (hi - lo) * (i as f32 / n as f32)));
    xs.extend_from_slice(EDGES32);
    xs
}

/// A Weyl sequence of 2²⁴ `f64` bit patterns, a dense grid on `[lo, hi]`,
/// and the edge cases.
fn samples64(lo: f64, hi: f64) -> Vec<f64> {
    let mut xs: Vec<f64> = (0..1u64 << 24).map(|i| f64::from_bits(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect();
    let n = 1 << 22;
    xs.extend((0..=n).map(|i| lo + (hi - lo) * (i as f64 / n as f64)));
    xs.extend_from_slice(EDGES64);
    xs
}

/// The slice kernel on `xs` against `reference` (computed in `f64`, rounded);
/// the worst error in ulps and where it is.
fn worst32(xs: &[f32], kernel: fn(&mut [f32]), reference: fn(f64) -> f64) -> (u64, f32) {
    let mut got = xs.to_vec();
    kernel(&mut got);
    xs.iter()
        .zip(&got)
        .map(|(&x, &g)| (ulps32(g, reference(f64::from(x)) as f32), x))
        .fold((0, 0.0), |w, e| if e.0 > w.0 { e } else { w })
}

fn worst64(xs: &[f64], kernel: fn(&mut [f64]), reference: fn(f64) -> f64) -> (u64, f64) {
    let mut got = xs.to_vec();
    kernel(&mut got);
    xs.iter()
        .zip(&got)
        .map(|(&x, &g)| (ulps64(g, reference(x)), x))
        .fold((0, 0.0), |w, e| if e.0 > w.0 { e } else { w })
}

fn sigmoid_ref(x: f64) -> f64 {
    if x >= 0.0 { 1.0 / (1.0 + (-x).exp()) } else { x.exp() / (1.0 + x.exp()) }
}

fn softplus_ref(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn check32(name: &str, bound: u64, lo: f32, hi: f32, kernel: fn(&mut [f32]), reference: fn(f64) -> f64) {
    let (ulps, at) = worst32(&samples32(lo, hi), kernel, reference);
    println!("f32 {name}: at most {ulps} ulp (at x = {at:e})");
    assert!(ulps <= bound, "f32 {name}: {ulps} ulp at x = {at:e}, bound {bound}");
}

fn check64(name: &str, bound: u64, lo: f64, hi: f64, kernel: fn(&mut [f64]), reference: fn(f64) -> f64) {
    let (ulps, at) = worst64(&samples64(lo, hi), kernel, reference);
    println!("f64 {name}: at most {ulps} ulp (at x = {at:e})");
    assert!(ulps <= bound, "f64 {name}: {ulps} ulp at x = {at:e}, bound {bound}");
}

#[test]
fn exp_is_within_its_bound() {
    check32("exp", 1, -104.0, 89.0, vmath::exp_in_place, f64::exp);
    check64("exp", 1, -746.0, 710.0, vmath::exp_in_place, f64::exp);
}

#[test]
fn ln_1p_is_within_its_bound() {
    check32("ln_1p", 1, -1.0, 4.0, vmath::ln_1p_in_place, f64::ln_1p);
    check32("ln_1p near 0", 1, -1e-3, 1e-3, vmath::ln_1p_in_place, f64::ln_1p);
    check64("ln_1p", 1, -1.0, 4.0, vmath::ln_1p_in_place, f64::ln_1p);
    check64("ln_1p near 0", 1, -1e-3, 1e-3, vmath::ln_1p_in_place, f64::ln_1p);
}

#[test]
fn sigmoid_is_within_its_bound() {
    check32("sigmoid", 2, -120.0, 120.0, vmath::sigmoid_in_place, sigmoid_ref);
    check64("sigmoid", 2, -750.0, 750.0, vmath::sigmoid_in_place, sigmoid_ref);
}

#[test]
fn softplus_is_within_its_bound() {
    check32("softplus", 2, -120.0, 120.0, vmath::softplus_in_place, softplus_ref);
    check64("softplus", 2, -750.0, 750.0, vmath::softplus_in_place, softplus_ref);
}

/// The special values are libm's, exactly.
#[test]
fn special_values_are_libms() {
    let inf = f32::INFINITY;
    assert_eq!(vmath::exp_f32(inf), inf);
    assert_eq!(vmath::exp_f32(-inf), 0.0);
    assert_eq!(vmath::exp_f32(89.0), inf);
    assert_eq!(vmath::exp_f32(-104.0), 0.0);
    assert!(vmath::exp_f32(f32::NAN).is_nan());
    assert_eq!(vmath::ln_1p_f32(inf), inf);
    assert_eq!(vmath::ln_1p_f32(-1.0), -inf);
    assert!(vmath::ln_1p_f32(-1.5).is_nan() && vmath::ln_1p_f32(-inf).is_nan());
    assert!(vmath::ln_1p_f32(-0.0).is_sign_negative());
    assert_eq!((vmath::sigmoid_f32(inf), vmath::sigmoid_f32(-inf)), (1.0, 0.0));
    assert_eq!((vmath::softplus_f32(inf), vmath::softplus_f32(-inf)), (inf, 0.0));
    let inf = f64::INFINITY;
    assert_eq!(vmath::exp_f64(inf), inf);
    assert_eq!(vmath::exp_f64(-inf), 0.0);
    assert!(vmath::exp_f64(f64::NAN).is_nan());
    assert_eq!(vmath::ln_1p_f64(inf), inf);
    assert_eq!(vmath::ln_1p_f64(-1.0), -inf);
    assert!(vmath::ln_1p_f64(-1.5).is_nan());
    assert!(vmath::ln_1p_f64(-0.0).is_sign_negative());
    assert_eq!((vmath::sigmoid_f64(inf), vmath::sigmoid_f64(-inf)), (1.0, 0.0));
    assert_eq!((vmath::softplus_f64(inf), vmath::softplus_f64(-inf)), (inf, 0.0));
    assert!(vmath::sigmoid_f32(f32::NAN).is_nan() && vmath::softplus_f32(f32::NAN).is_nan());
    assert!(vmath::sigmoid_f64(f64::NAN).is_nan() && vmath::softplus_f64(f64::NAN).is_nan());
}

/// Bit patterns, so that proptest reaches every exponent, NaNs and infinities.
fn any_f32() -> impl Strategy<Value = f32> {
    any::<u32>().prop_map(f32::from_bits)
}

fn any_f64() -> impl Strategy<Value = f64> {
    any::<u64>().prop_map(f64::from_bits)
}

fn same32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn same64(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// A slice kernel and the scalar function it maps.
type Kernel<T> = (fn(&mut [T]), fn(T) -> T);

proptest! {
    /// The slice kernels (unrolled over arrays, any length and tail) give the
    /// scalar functions' results bit for bit; the fused sigmoid-softplus
    /// gives the separate functions' results bit for bit.
    #[test]
    fn slices_and_fusion_match_the_scalar_functions(xs in prop::collection::vec(any_f32(), 0..40),
                                                    ys in prop::collection::vec(any_f64(), 0..40)) {
        let kernels32: [Kernel<f32>; 4] = [
            (vmath::exp_in_place, vmath::exp_f32),
            (vmath::ln_1p_in_place, vmath::ln_1p_f32),
            (vmath::sigmoid_in_place, vmath::sigmoid_f32),
            (vmath::softplus_in_place, vmath::softplus_f32),
        ];
        for (kernel, scalar) in kernels32 {
            let mut v = xs.clone();
            kernel(&mut v);
            prop_assert!(v.iter().zip(&xs).all(|(&g, &x)| same32(g, scalar(x))));
        }
        let kernels64: [Kernel<f64>; 4] = [
            (vmath::exp_in_place, vmath::exp_f64),
            (vmath::ln_1p_in_place, vmath::ln_1p_f64),
            (vmath::sigmoid_in_place, vmath::sigmoid_f64),
            (vmath::softplus_in_place, vmath::softplus_f64),
        ];
        for (kernel, scalar) in kernels64 {
            let mut v = ys.clone();
            kernel(&mut v);
            prop_assert!(v.iter().zip(&ys).all(|(&g, &y)| same64(g, scalar(y))));
        }
        for &x in &xs {
            let (s, l) = x.vlogistic();
            prop_assert!(same32(s, x.vsigmoid()) && same32(x.max(0.0) + l, x.vsoftplus()));
        }
        for &y in &ys {
            let (s, l) = y.vlogistic();
            prop_assert!(same64(s, y.vsigmoid()) && same64(y.max(0.0) + l, y.vsoftplus()));
        }
    }
}
