//! The [faer](https://docs.rs/faer) backend of [`kfac_core::LinAlg`].
//!
//! [`Faer`] implements [`LinAlg<f32>`](LinAlg) and [`LinAlg<f64>`](LinAlg) with
//! faer's low-level kernels, each called with the parallelism the [`Faer`]
//! value was built with (never faer's global setting):
//!
//! | operation | faer call |
//! |---|---|
//! | [`gemm`](LinAlg::gemm) | [`faer::linalg::matmul::matmul`] |
//! | [`gram`](LinAlg::gram) | [`faer::linalg::matmul::triangular::matmul`], lower triangle only, then mirrored |
//! | [`eigh`](LinAlg::eigh) | [`faer::linalg::evd::self_adjoint_evd`] |
//! | [`spd_inverse`](LinAlg::spd_inverse) | [`llt::factor::cholesky_in_place`] and [`llt::inverse::inverse`] |
//!
//! [`ndarray`] operands are viewed as faer matrices without copying, whatever
//! their strides (row-major, column-major, sliced, negative strides). The
//! eigenvectors come back column-major (as faer computes them, no copy);
//! inverses row-major.
//!
//! # Example
//!
//! ```
//! use kfac_core::LinAlg;
//! use kfac_linalg_faer::Faer;
//! use ndarray::array;
//!
//! let backend = Faer::sequential();
//! let la: &dyn LinAlg<f64> = &backend;
//!
//! // A = U diag(s) U^T with s in nondecreasing order.
//! let a = array![[2.0, 1.0], [1.0, 2.0]];
//! let eig = la.eigh(a.view())?;
//! assert!((eig.values[0] - 1.0).abs() < 1e-12);
//! assert!((eig.values[1] - 3.0).abs() < 1e-12);
//!
//! // (C ⊗ D) vec(X) = vec(D X C^T), without forming C ⊗ D.
//! let c = array![[1.0, 0.0], [0.0, 2.0]];
//! let d = array![[3.0]];
//! let x = array![[1.0, 1.0]];
//! let y = la.kron_matvec(c.view(), d.view(), x.view())?;
//! assert_eq!(y, array![[3.0, 6.0]]);
//! # Ok::<(), kfac_core::LinAlgError>(())
//! ```
//!
//! # Parallelism
//!
//! faer's rayon mode runs on the rayon thread pool the call is made from, so
//! [`Faer::new`] (the default) uses all threads of that pool, and
//! `pool.install(|| ...)` confines it. Use [`Faer::sequential`] when an outer
//! level (layers, batch shards) is already parallel: nesting both only adds
//! overhead. For small matrices (side below a few hundred) one thread is
//! usually faster than two.

// This crate's README, compiled and run as a doctest so that its example
// cannot rot. Only doctests see this item.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

use std::num::NonZeroUsize;

use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::cholesky::llt;
use faer::linalg::evd::{self, ComputeEigenvectors, EvdError};
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Col, Mat, MatMut, MatRef, Par};
use kfac_core::linalg::{check_square_finite, gemm_trivial, mirror_lower_to_upper, scale_by_beta};
use kfac_core::{LinAlg, LinAlgError, Real, SymEig};
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, ShapeBuilder};

/// Products with fewer multiply-adds than this run on one thread.
const SMALL_PRODUCT: f64 = 96.0 * 96.0 * 96.0;
/// Decompositions of matrices with a side below this run on one thread.
pub const SMALL_DECOMPOSITION: usize = 192;

/// How many threads a [`Faer`] backend asks faer for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
enum Threads {
    /// All threads of the rayon pool current at the time of the call.
    #[default]
    Pool,
    /// One thread, no rayon.
    Sequential,
    /// A fixed number (at least 2) of rayon threads.
    Fixed(NonZeroUsize),
}

/// The faer backend: dense linear algebra with faer's kernels.
///
/// The value carries the parallelism of every operation (see
/// [`Faer::par`]); faer's global parallelism setting is never read or
/// changed. The default is [`Faer::new`]: all threads of the current rayon
/// pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faer {
    threads: Threads,
}

impl Faer {
    /// A backend that runs faer on all threads of the rayon pool from which
    /// each operation is called ([`Par::rayon`]`(0)`, resolved at every
    /// call). Same as [`Faer::default`].
    #[must_use]
    pub const fn new() -> Self {
        Self { threads: Threads::Pool }
    }

    /// A single-threaded backend ([`Par::Seq`]).
    #[must_use]
    pub const fn sequential() -> Self {
        Self { threads: Threads::Sequential }
    }

    /// A backend that uses `n` threads of the current rayon pool; `n <= 1`
    /// gives the sequential backend.
    #[must_use]
    pub const fn with_threads(n: usize) -> Self {
        match NonZeroUsize::new(n) {
            Some(n) if n.get() > 1 => Self { threads: Threads::Fixed(n) },
            _ => Self::sequential(),
        }
    }

    /// The parallelism of a product of `m x k` by `k x n`: sequential below
    /// about $96^3$ multiply-adds, where a second thread costs more than it
    /// brings on this kind of machine (a 64² product: 10 µs on one thread,
    /// 17 µs on two).
    fn par_for_product(&self, m: usize, n: usize, k: usize) -> Par {
        if (m as f64) * (n as f64) * (k as f64) < SMALL_PRODUCT { Par::Seq } else { self.par() }
    }

    /// The parallelism of a decomposition of side `n`: sequential below
    /// [`SMALL_DECOMPOSITION`] (n = 128: eigh 1.2 ms on one thread, 2.2 ms on two).
    fn par_for_decomposition(&self, n: usize) -> Par {
        if n < SMALL_DECOMPOSITION { Par::Seq } else { self.par() }
    }

    /// The faer parallelism of an operation on large operands; smaller ones
    /// run sequentially whatever the setting (see [`SMALL_DECOMPOSITION`]).
    #[must_use]
    pub fn par(&self) -> Par {
        match self.threads {
            Threads::Pool => Par::rayon(0),
            Threads::Sequential => Par::Seq,
            Threads::Fixed(n) => Par::Rayon(n),
        }
    }
}

/// Views an ndarray view as a faer matrix, without copying.
fn faer_ref<'a, T>(a: ArrayView2<'a, T>) -> MatRef<'a, T> {
    let (m, n) = a.dim();
    let (rs, cs) = (a.strides()[0], a.strides()[1]);
    // SAFETY: the pointer, shape and strides (in elements, possibly negative
    // or zero) describe exactly the elements of a live `ArrayView2<'a, T>`:
    // all inside one allocation, initialised, and not written through any
    // other path for `'a` since the view borrows them immutably. ndarray's
    // pointer is non-null and aligned even for an empty view.
    unsafe { MatRef::from_raw_parts(a.as_ptr(), m, n, rs, cs) }
}

/// Views a mutable ndarray view as a mutable faer matrix, without copying.
fn faer_mut<'a, T>(mut a: ArrayViewMut2<'a, T>) -> MatMut<'a, T> {
    let (m, n) = a.dim();
    let (rs, cs) = (a.strides()[0], a.strides()[1]);
    // SAFETY: as in `faer_ref`, and the view is consumed, so the exclusive
    // borrow of its elements passes to the returned `MatMut<'a, T>`. A
    // mutable ndarray view never addresses one element twice (a zero stride
    // only occurs on an axis of length at most 1).
    unsafe { MatMut::from_raw_parts_mut(a.as_mut_ptr(), m, n, rs, cs) }
}

/// Prepares `c` for an accumulating product and returns faer's mode: the
/// product then gives $\alpha A B + \beta C$.
fn accum_for<T: Real>(c: &mut ArrayViewMut2<'_, T>, beta: T) -> Accum {
    if beta == T::zero() {
        Accum::Replace
    } else {
        scale_by_beta(c, beta);
        Accum::Add
    }
}

/// Maps faer's Cholesky failure to the backend error.
fn llt_error(e: llt::factor::LltError) -> LinAlgError {
    match e {
        llt::factor::LltError::NonPositivePivot { index } => LinAlgError::NotPositiveDefinite { index },
    }
}

/// The Cholesky factor (lower triangle, column-major) of the lower triangle
/// of `a`, which the caller checked to be square and finite.
fn cholesky<T: Real + faer::traits::RealField>(
    a: ArrayView2<'_, T>,
    par: Par,
    stack: &mut MemStack,
) -> Result<Mat<T>, LinAlgError> {
    let n = a.nrows();
    let mut l = Mat::<T>::zeros(n, n);
    l.as_mut().copy_from_triangular_lower(faer_ref(a));
    llt::factor::cholesky_in_place(
        l.as_mut(),
        llt::factor::LltRegularization::default(),
        par,
        stack,
        Default::default(),
    )
    .map_err(llt_error)?;
    Ok(l)
}

fn cholesky_scratch<T: faer::traits::RealField>(n: usize, par: Par) -> StackReq {
    llt::factor::cholesky_in_place_scratch::<T>(n, par, Default::default())
}

impl Faer {
    /// [`LinAlg::gram`] through faer's triangular product: the lower
    /// triangle only, then mirrored.
    fn gram_triangular<T: Real + faer::traits::RealField>(
        &self,
        alpha: T,
        x: ArrayView2<'_, T>,
        beta: T,
        mut c: ArrayViewMut2<'_, T>,
    ) -> Result<(), LinAlgError> {
        if gemm_trivial(alpha, &x.t(), &x, beta, &mut c)? {
            return Ok(());
        }
        let accum = accum_for(&mut c, beta);
        triangular::matmul(
            faer_mut(c.view_mut()),
            BlockStructure::TriangularLower,
            accum,
            faer_ref(x.t()),
            BlockStructure::Rectangular,
            faer_ref(x),
            BlockStructure::Rectangular,
            alpha,
            self.par_for_product(x.ncols(), x.ncols(), x.nrows()),
        );
        mirror_lower_to_upper(c);
        Ok(())
    }

    /// [`LinAlg::gram`] through the full product, lower triangle mirrored:
    /// the alternative `gram_triangular` is measured against.
    #[cfg(test)]
    fn gram_full<T: Real + faer::traits::RealField>(
        &self,
        alpha: T,
        x: ArrayView2<'_, T>,
        beta: T,
        mut c: ArrayViewMut2<'_, T>,
    ) -> Result<(), LinAlgError> {
        self.gemm(alpha, x.t(), x, beta, c.view_mut())?;
        mirror_lower_to_upper(c);
        Ok(())
    }
}

impl<T> LinAlg<T> for Faer
where
    T: Real + faer::traits::RealField,
{
    fn name(&self) -> &'static str {
        "faer"
    }

    /// The sequential backend, unless this one is already sequential: faer's
    /// symmetric eigensolver runs as fast on one thread as on two at
    /// $d = 1000$ here (`cargo run --release -p kfac-bench --example
    /// block_phases`), so blocks are better refreshed side by side.
    fn concurrent_decompositions(&self) -> Option<&dyn LinAlg<T>> {
        LinAlg::<T>::sequential(self)
    }

    /// [`Faer::sequential`], unless this backend is already sequential.
    fn sequential(&self) -> Option<&dyn LinAlg<T>> {
        static SEQUENTIAL: Faer = Faer::sequential();
        match self.threads {
            Threads::Sequential => None,
            _ => Some(&SEQUENTIAL),
        }
    }

    /// The same backend (same threads) in `f64`.
    fn f64_backend(&self) -> Option<&dyn LinAlg<f64>> {
        Some(self)
    }

    /// $C \leftarrow \alpha A B + \beta C$ with [`faer::linalg::matmul::matmul`].
    ///
    /// As in BLAS, `alpha == 0` (or an inner dimension of 0) gives
    /// $\beta C$ without reading `a` and `b`, and `beta == 0` never reads `c`.
    fn gemm(
        &self,
        alpha: T,
        a: ArrayView2<'_, T>,
        b: ArrayView2<'_, T>,
        beta: T,
        mut c: ArrayViewMut2<'_, T>,
    ) -> Result<(), LinAlgError> {
        if gemm_trivial(alpha, &a, &b, beta, &mut c)? {
            return Ok(());
        }
        let accum = accum_for(&mut c, beta);
        let par = self.par_for_product(a.nrows(), b.ncols(), a.ncols());
        faer::linalg::matmul::matmul(faer_mut(c), accum, faer_ref(a), faer_ref(b), alpha, par);
        Ok(())
    }

    /// $C \leftarrow \alpha X^\top X + \beta C$, computing only the lower
    /// triangle with faer's triangular product and mirroring it, so the
    /// result is exactly symmetric.
    ///
    /// With `beta != 0` the previous `c` is taken to be symmetric: only its
    /// lower triangle is read.
    fn gram(&self, alpha: T, x: ArrayView2<'_, T>, beta: T, c: ArrayViewMut2<'_, T>) -> Result<(), LinAlgError> {
        // Half the flops of the full product: 1.64 times faster for
        // N = 1000, d = 784 (`cargo bench -p kfac-bench --bench linalg -- gram`).
        self.gram_triangular(alpha, x, beta, c)
    }

    /// Eigendecomposition with [`faer::linalg::evd::self_adjoint_evd`], which
    /// reads the lower triangle only and sorts the eigenvalues.
    fn eigh(&self, a: ArrayView2<'_, T>) -> Result<SymEig<T>, LinAlgError> {
        check_square_finite("eigh", &a)?;
        let n = a.nrows();
        if n == 0 {
            return Ok(SymEig { values: Array1::zeros(0), vectors: Array2::zeros((0, 0)) });
        }
        let par = self.par_for_decomposition(n);
        let mut s = Col::<T>::zeros(n);
        // Column-major, as faer prefers for the eigenvectors.
        let mut u = Array2::<T>::zeros((n, n).f());
        let req = evd::self_adjoint_evd_scratch::<T>(n, ComputeEigenvectors::Yes, par, Default::default());
        let mut buf = MemBuffer::new(req);
        evd::self_adjoint_evd(
            faer_ref(a),
            s.as_mut().as_diagonal_mut(),
            Some(faer_mut(u.view_mut())),
            par,
            MemStack::new(&mut buf),
            Default::default(),
        )
        .map_err(|e| match e {
            EvdError::NoConvergence => LinAlgError::NoConvergence { op: "eigh" },
        })?;
        // Never hand out NaN as a decomposition.
        if !(s.iter().all(|x| x.is_finite()) && u.iter().all(|x| x.is_finite())) {
            return Err(LinAlgError::NoConvergence { op: "eigh" });
        }
        Ok(SymEig { values: s.iter().copied().collect(), vectors: u })
    }

    /// Inverse through the Cholesky factor $L$ ($A = L L^\top$):
    /// $A^{-1} = L^{-\top} L^{-1}$, lower triangle computed by faer, then
    /// mirrored.
    fn spd_inverse(&self, a: ArrayView2<'_, T>) -> Result<Array2<T>, LinAlgError> {
        check_square_finite("spd_inverse", &a)?;
        let n = a.nrows();
        let par = self.par_for_decomposition(n);
        let req = cholesky_scratch::<T>(n, par).or(llt::inverse::inverse_scratch::<T>(n, par));
        let mut buf = MemBuffer::new(req);
        let stack = MemStack::new(&mut buf);
        let l = cholesky(a, par, stack)?;
        let mut inv = Array2::<T>::zeros((n, n));
        // The transposed view of a row-major array is column-major, which
        // faer prefers; the result is symmetric, so writing it through the
        // transposed view stores the same matrix.
        let mut inv_t = inv.view_mut().reversed_axes();
        llt::inverse::inverse(faer_mut(inv_t.view_mut()), l.as_ref(), par, stack);
        mirror_lower_to_upper(inv_t);
        Ok(inv)
    }
}

#[cfg(test)]
mod tests {
    //! The `LinAlg` contract is checked in `kfac-core/tests/linalg.rs` and
    //! `kfac-core/tests/conformance.rs` for every backend; here only what is
    //! particular to this one.
    use super::*;
    use kfac_core::{LinAlg, Real};
    use ndarray::Array2;

    fn random<T: Real>(m: usize, n: usize, seed: u64) -> Array2<T> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D;
        Array2::from_shape_simple_fn((m, n), || {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            T::from_f64_lossy((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        })
    }

    /// The triangular Gram product equals the full one.
    #[test]
    fn gram_triangular_equals_full() {
        for la in [Faer::sequential(), Faer::with_threads(2)] {
            let x = random::<f64>(37, 19, 3);
            let mut tri = Array2::zeros((19, 19));
            let mut full = Array2::zeros((19, 19));
            la.gram_triangular(1.0, x.view(), 0.0, tri.view_mut()).unwrap();
            la.gram_full(1.0, x.view(), 0.0, full.view_mut()).unwrap();
            let err = (&tri - &full).iter().fold(0.0f64, |m, e| m.max(e.abs()));
            assert!(err <= 64.0 * 37.0 * f64::EPSILON, "{err}");
        }
    }

    #[test]
    fn constructors() {
        assert_eq!(Faer::default(), Faer::new());
        assert_eq!(Faer::with_threads(0).par(), Par::Seq);
        assert_eq!(Faer::with_threads(1), Faer::sequential());
        assert_eq!(Faer::with_threads(3).par(), Par::rayon(3));
        assert_eq!(Faer::new().par(), Par::rayon(0));
        assert_eq!(LinAlg::<f32>::name(&Faer::new()), "faer");
    }
}
