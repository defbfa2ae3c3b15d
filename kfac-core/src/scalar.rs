//! The floating-point types the crate works in.

use std::fmt::{Debug, Display};
use std::iter::Sum;

use ndarray::{LinalgScalar, ScalarOperand};
use num_traits::{Float, FromPrimitive, NumAssign};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A real floating-point scalar: `f32` or `f64`.
///
/// The trait is sealed: the backends implement their decompositions for exactly
/// these two types, and the tolerances in the tests are derived from
/// [`Real::EPSILON`].
pub trait Real:
    sealed::Sealed
    + crate::comm::Element
    + Float
    + FromPrimitive
    + NumAssign
    + LinalgScalar
    + ScalarOperand
    + Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + crate::vmath::Vmath
    + 'static
{
    /// Machine epsilon of the type.
    const EPSILON: Self;
    /// Name of the type (`"f32"` or `"f64"`), for messages and reports.
    const NAME: &'static str;

    /// Converts from `f64`, rounding to nearest.
    fn from_f64_lossy(x: f64) -> Self;
    /// Converts to `f64` exactly.
    fn to_f64_exact(self) -> f64;
}

impl Real for f32 {
    const EPSILON: Self = f32::EPSILON;
    const NAME: &'static str = "f32";
    #[inline]
    fn from_f64_lossy(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn to_f64_exact(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    const EPSILON: Self = f64::EPSILON;
    const NAME: &'static str = "f64";
    #[inline]
    fn from_f64_lossy(x: f64) -> Self {
        x
    }
    #[inline]
    fn to_f64_exact(self) -> f64 {
        self
    }
}
