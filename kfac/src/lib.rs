//! K-FAC and EKFAC for Rust: [`kfac_core`] with a linear-algebra backend
//! chosen by cargo feature.
//!
//! | feature | backend | notes |
//! |---|---|---|
//! | `faer` (default) | [`Faer`] | multithreaded; eigendecomposition on par with LAPACK |
//! | `nalgebra` | [`Nalgebra`] | pure Rust, single-threaded decompositions |
//!
//! [`DefaultBackend`] is faer when its feature is on, else nalgebra; enable at
//! least one. Everything in `kfac-core` is re-exported at the root.
//!
//! ```
//! use kfac::{DefaultBackend, Damping, KfacBlock, KfacMethod, CurvatureBlock, LayerBatch, LayerShape};
//! use ndarray::Array2;
//!
//! let la = DefaultBackend::default();
//! let shape = LayerShape::new(3, 2);
//! let x = Array2::from_shape_fn((8, 3), |(i, j)| ((i + 2 * j) as f64).sin());
//! let g = Array2::from_shape_fn((8, 2), |(i, j)| ((3 * i + j) as f64).cos());
//! let mut block = KfacBlock::new("layer", shape, KfacMethod::Eigen);
//! block.update_statistics(&la, &LayerBatch::new(x.view(), g.view()), 0.95)?;
//! block.refresh(&la, Damping::tikhonov(1e-2))?;
//! let grad = Array2::ones(shape.param_dims());
//! let step = block.precondition(&la, grad.view())?;
//! let back = block.multiply(&la, step.view())?;
//! assert!((&back - &grad).iter().all(|e| e.abs() < 1e-8));
//! # Ok::<(), kfac::Error>(())
//! ```

pub use kfac_core::*;
/// The array crate of the API, re-exported so that callers use the same version.
pub use ndarray;

#[cfg(feature = "faer")]
pub use kfac_linalg_faer::Faer;
#[cfg(feature = "nalgebra")]
pub use kfac_linalg_nalgebra::Nalgebra;

/// The backend used when none is named: faer if the `faer` feature is on.
#[cfg(feature = "faer")]
pub type DefaultBackend = Faer;
/// The backend used when none is named: nalgebra (the `faer` feature is off).
#[cfg(all(not(feature = "faer"), feature = "nalgebra"))]
pub type DefaultBackend = Nalgebra;

// The Rust code blocks of the repository's README and of this crate's README,
// compiled and run as doctests (`cargo test -p kfac --doc`), so that they
// cannot rot. Only doctests see these items.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;

#[cfg(not(any(feature = "faer", feature = "nalgebra")))]
compile_error!("kfac: enable at least one backend feature, `faer` (default) or `nalgebra`");

#[cfg(test)]
mod tests {
    #[test]
    fn default_backend_matches_features() {
        let la = super::DefaultBackend::default();
        let name = <super::DefaultBackend as kfac_core::LinAlg<f64>>::name(&la);
        assert_eq!(name, if cfg!(feature = "faer") { "faer" } else { "nalgebra" });
    }
}
