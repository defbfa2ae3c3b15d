//! The precisions: `f32` and `f64`, as kfac-core and as candle see them.

use candle_core::{DType, WithDType};
use kfac_core::Real;

/// A floating-point type both kfac-core ([`Real`]) and candle
/// ([`WithDType`]) compute in: `f32` or `f64`.
pub trait Scalar: Real + WithDType {
    /// candle's name of the type.
    const CANDLE: DType;
}

impl Scalar for f32 {
    const CANDLE: DType = DType::F32;
}

impl Scalar for f64 {
    const CANDLE: DType = DType::F64;
}
