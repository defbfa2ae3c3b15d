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

impl Default for Backend {
    /// faer when its feature is compiled in, else nalgebra.
    fn default() -> Self {
        if cfg!(feature = "faer") { Self::Faer } else { Self::Nalgebra }
    }
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
pub trait Scalar: Real + serde::Serialize + for<'de> serde::Deserialize<'de> {
    /// The backend `kind`; `parallel` says whether it may use the threads of
    /// the current rayon pool (else it runs sequentially).
    fn backend(kind: Backend, parallel: bool) -> Result<Box<dyn LinAlg<Self>>>;

    /// $\tanh$, as fast as the precision allows: for `f64` the standard
    /// library's; for `f32` a rational approximation ([`tanh_f32`]), about ten
    /// times faster than `f32::tanh` and within 3 units in the last place.
    fn tanh_fast(self) -> Self;
}

/// $\tanh$ in `f32` by an odd rational minimax approximation of degrees
/// 13/6 on $[-7.9, 7.9]$ (outside, $\tanh$ rounds to $\pm 1$ in `f32`); the
/// coefficients are those published with Eigen's vectorised `ptanh`. The
/// polynomial evaluation vectorises, unlike the libm call. (Plain `a * b + c`,
/// not `mul_add`: without FMA in the target features `mul_add` is a slow
/// library call.)
#[inline]
#[allow(clippy::excessive_precision)]
pub fn tanh_f32(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    // No branch for small |x| (the quotient is then x times 1 - 1.3e-7), so
    // that loops over slices vectorise.
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = x2 * -2.760_768_5e-16 + 2.000_187_9e-13;
    p = x2 * p + -8.604_671_5e-11;
    p = x2 * p + 5.122_297e-8;
    p = x2 * p + 1.485_722_4e-5;
    p = x2 * p + 6.372_619_3e-4;
    p = x2 * p + 4.893_524_6e-3;
    p *= x;
    let mut q = x2 * 1.198_258_4e-6 + 1.185_347_1e-4;
    q = x2 * q + 2.268_434_6e-3;
    q = x2 * q + 4.893_525e-3;
    p / q
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

            #[inline]
            fn tanh_fast(self) -> Self {
                tanh_impl(self)
            }
        }
    };
}

#[inline]
fn tanh_impl<T: TanhImpl>(x: T) -> T {
    x.tanh_impl()
}

trait TanhImpl {
    fn tanh_impl(self) -> Self;
}
impl TanhImpl for f32 {
    #[inline]
    fn tanh_impl(self) -> Self {
        tanh_f32(self)
    }
}
impl TanhImpl for f64 {
    #[inline]
    fn tanh_impl(self) -> Self {
        self.tanh()
    }
}
impl_scalar!(f32);
impl_scalar!(f64);
