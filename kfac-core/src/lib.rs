//! kfac-core (work in progress)
pub mod error;
pub mod linalg;
pub mod scalar;

pub use error::{Error, LinAlgError, Result};
pub use linalg::{LinAlg, SymEig};
pub use scalar::Real;
