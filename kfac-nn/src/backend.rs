//! Choosing a linear-algebra backend at run time, and the scalar types.

use kfac::{LinAlg, Real};

use crate::error::{Error, Result};

/// The backends compiled in (cargo features `faer`, `nalgebra`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `kfac-linalg-faer`: multithreaded (the default).
    Faer,
    /// `kfac-linalg-nalgebra`: single-threaded.
    Nalgebra,
}

impl Backend {
    /// The backend's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Faer => "faer",
            Self::Nalgebra => "nalgebra",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `f32` or `f64`, with a constructor for the backends.
pub trait Scalar: Real {
    /// The backend `kind`; `parallel` says whether it may use the threads of
    /// the current rayon pool (else it runs sequentially).
    fn backend(kind: Backend, parallel: bool) -> Result<Box<dyn LinAlg<Self>>>;
}

macro_rules! impl_scalar {
    ($t:ty) => {
        impl Scalar for $t {
            #[allow(unreachable_code, unused_variables)]
            fn backend(kind: Backend, parallel: bool) -> Result<Box<dyn LinAlg<Self>>> {
                match kind {
                    #[cfg(feature = "faer")]
                    Backend::Faer => Ok(Box::new(if parallel { kfac::Faer::new() } else { kfac::Faer::sequential() })),
                    #[cfg(feature = "nalgebra")]
                    Backend::Nalgebra => Ok(Box::new(kfac::Nalgebra)),
                    #[allow(unreachable_patterns)]
                    other => Err(Error::Config {
                        what: "backend",
                        value: other.name().into(),
                        why: format!("not compiled in; rebuild with `--features {}`", other.name()),
                    }),
                }
            }
        }
    };
}
impl_scalar!(f32);
impl_scalar!(f64);

/// The sequential backend used inside parallel shards: faer if compiled in.
pub(crate) fn sequential<T: Scalar>() -> Result<Box<dyn LinAlg<T>>> {
    let kind = if cfg!(feature = "faer") { Backend::Faer } else { Backend::Nalgebra };
    T::backend(kind, false)
}
