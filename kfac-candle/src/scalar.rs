//! The precisions: `f32` and `f64`, as kfac-core and as candle see them.

use candle_core::{DType, WithDType};
use kfac_core::{LinAlg, Real};
use kfac_linalg_faer::Faer;

/// A floating-point type both kfac-core ([`Real`]) and candle
/// ([`WithDType`]) compute in: `f32` or `f64`.
pub trait Scalar: Real + WithDType {
    /// candle's name of the type.
    const CANDLE: DType;

    /// The linear-algebra backend of the optimizer: faer
    /// ([`kfac_linalg_faer::Faer::new`], parallel over the rayon pool; its
    /// results do not depend on the thread count).
    fn linalg() -> Box<dyn LinAlg<Self>>;
}

impl Scalar for f32 {
    const CANDLE: DType = DType::F32;

    fn linalg() -> Box<dyn LinAlg<Self>> {
        Box::new(Faer::new())
    }
}

impl Scalar for f64 {
    const CANDLE: DType = DType::F64;

    fn linalg() -> Box<dyn LinAlg<Self>> {
        Box::new(Faer::new())
    }
}
