//! The [nalgebra](https://docs.rs/nalgebra) backend of [`kfac_core::LinAlg`].
//!
//! [`Nalgebra`] implements [`LinAlg<f32>`](LinAlg) and [`LinAlg<f64>`](LinAlg)
//! in pure Rust with nalgebra's dense routines:
//!
//! | operation | nalgebra call |
//! |---|---|
//! | [`gemm`](LinAlg::gemm) | [`Matrix::gemm`](nalgebra::Matrix::gemm) (the `matrixmultiply` kernels) |
//! | [`gram`](LinAlg::gram) | the same, lower triangle mirrored onto the upper one |
//! | [`eigh`](LinAlg::eigh) | [`SymmetricEigen::try_new`], eigenpairs then sorted |
//! | [`spd_inverse`](LinAlg::spd_inverse) | [`Cholesky`] and [`Cholesky::inverse`] |
//!
//! Contiguous [`ndarray`] operands (row-major or column-major) are viewed as
//! nalgebra matrices without copying (a row-major array is a column-major
//! matrix with swapped strides); other layouts (sliced, negative strides)
//! are copied first. The decompositions always work on a copy, as nalgebra's
//! decompositions consume their input. Arrays returned by the decompositions
//! are in standard (row-major) layout.
//!
//! Everything runs on the calling thread. This backend is the portable
//! reference; for speed on large matrices use `kfac-linalg-faer`.
//!
//! # Example
//!
//! ```
//! use kfac_core::LinAlg;
//! use kfac_linalg_nalgebra::Nalgebra;
//! use ndarray::array;
//!
//! let la: &dyn LinAlg<f64> = &Nalgebra::new();
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

// This crate's README, compiled and run as a doctest so that its example
// cannot rot. Only doctests see this item.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

use std::cmp::Ordering;

use kfac_core::linalg::{check_square_finite, gemm_trivial, mirror_lower_to_upper};
use kfac_core::{LinAlg, LinAlgError, Real, SymEig};
use nalgebra::{Cholesky, DMatrix, Dyn, MatrixView, MatrixViewMut, RealField, SymmetricEigen};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2};

/// The nalgebra backend: dense linear algebra in pure Rust, single-threaded.
///
/// It has no settings: use the unit value `Nalgebra`, [`Nalgebra::new`] or
/// [`Nalgebra::default`], all the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Nalgebra;

impl Nalgebra {
    /// The backend, same as the unit value `Nalgebra`.
    #[must_use]
    pub const fn new() -> Self {
        Self
    }
}

/// A nalgebra view with run-time strides, the one view type used here.
type View<'a, T> = MatrixView<'a, T, Dyn, Dyn, Dyn, Dyn>;
/// The mutable counterpart of [`View`].
type ViewMut<'a, T> = MatrixViewMut<'a, T, Dyn, Dyn, Dyn, Dyn>;

/// An ndarray view made available to nalgebra: borrowed when its elements
/// are contiguous, copied otherwise.
enum Operand<'a, T: nalgebra::Scalar> {
    /// Contiguous elements with the (row, column) strides that address them.
    Borrowed { data: &'a [T], shape: (usize, usize), strides: (usize, usize) },
    /// A column-major copy.
    Copied(DMatrix<T>),
}

impl<'a, T: Real + nalgebra::Scalar> Operand<'a, T> {
    fn new(a: ArrayView2<'a, T>) -> Self {
        let (m, n) = a.dim();
        if let Some(data) = a.to_slice() {
            // Row-major: the column-major view of the transpose, strides swapped.
            Self::Borrowed { data, shape: (m, n), strides: (n, 1) }
        } else if let Some(data) = a.reversed_axes().to_slice() {
            Self::Borrowed { data, shape: (m, n), strides: (1, m) }
        } else {
            Self::Copied(DMatrix::from_fn(m, n, |i, j| a[[i, j]]))
        }
    }

    /// The elements, the shape and the (row, column) strides.
    fn parts(&self) -> (&[T], (usize, usize), (usize, usize)) {
        match self {
            Self::Borrowed { data, shape, strides } => (data, *shape, *strides),
            Self::Copied(a) => (a.as_slice(), a.shape(), (1, a.nrows())),
        }
    }

    /// Whether consecutive rows are adjacent in memory (column-major).
    fn unit_row_stride(&self) -> bool {
        self.parts().2.0 == 1
    }

    /// Whether consecutive columns are adjacent in memory (row-major).
    fn unit_col_stride(&self) -> bool {
        self.parts().2.1 == 1
    }

    /// The matrix, viewed.
    fn view(&self) -> View<'_, T> {
        let (data, (m, n), (rs, cs)) = self.parts();
        View::from_slice_with_strides(data, m, n, rs, cs)
    }

    /// Its transpose, viewed.
    fn view_t(&self) -> View<'_, T> {
        let (data, (m, n), (rs, cs)) = self.parts();
        View::from_slice_with_strides(data, n, m, cs, rs)
    }

    /// An owned column-major copy.
    fn into_owned(self) -> DMatrix<T> {
        match self {
            Self::Copied(a) => a,
            borrowed => borrowed.view().clone_owned(),
        }
    }
}

/// Runs `f` on `c` viewed as a nalgebra matrix: in place when `c` is
/// contiguous, otherwise on a copy that is written back. With `read ==
/// false` the copy starts from zeros instead of the content of `c`.
fn with_view_mut<T: Real + nalgebra::Scalar>(
    mut c: ArrayViewMut2<'_, T>,
    read: bool,
    f: impl FnOnce(&mut ViewMut<'_, T>),
) {
    let (m, n) = c.dim();
    if let Some(data) = c.as_slice_mut() {
        f(&mut ViewMut::from_slice_with_strides_mut(data, m, n, n, 1));
        return;
    }
    let mut ct = c.view_mut().reversed_axes();
    if let Some(data) = ct.as_slice_mut() {
        f(&mut ViewMut::from_slice_with_strides_mut(data, m, n, 1, m));
        return;
    }
    let mut tmp = if read { DMatrix::from_fn(m, n, |i, j| c[[i, j]]) } else { DMatrix::zeros(m, n) };
    f(&mut ViewMut::from_slice_with_strides_mut(tmp.as_mut_slice(), m, n, 1, m));
    let tmp = tmp.as_slice();
    c.indexed_iter_mut().for_each(|((i, j), x)| *x = tmp[i + j * m]);
}

/// A column-major nalgebra matrix as a standard-layout array.
fn to_array<T: Real + nalgebra::Scalar>(a: &DMatrix<T>) -> Array2<T> {
    let (m, n) = a.shape();
    let data = a.as_slice();
    Array2::from_shape_fn((m, n), |(i, j)| data[i + j * m])
}

/// The Cholesky factorisation of the lower triangle of `a`, which the caller
/// checked to be square and finite.
///
/// nalgebra's checked constructor only says whether it failed, so this runs
/// the same left-looking algorithm unchecked and finds the first pivot
/// $\ell_{jj} = \sqrt{d_j}$ that is not positive (NaN for $d_j < 0$, zero for
/// $d_j = 0$): exactly where [`Cholesky::new`] would have stopped, reported
/// as [`LinAlgError::NotPositiveDefinite`] with `index` $= j$.
/// `max(m, |x|)` (spelled out: nalgebra's and num-traits' `max`/`abs` clash).
fn num_traits_max<T: Real>(m: T, x: T) -> T {
    let ax = if x < T::zero() { -x } else { x };
    if ax > m { ax } else { m }
}

/// Why [`eigh_scaled`] gave no decomposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EighFailure {
    /// nalgebra's iteration stopped at its limit.
    NotConverged,
    /// It returned a number that is not finite.
    NonFinite,
}

/// The eigendecomposition of `a / scale + shift I`, eigenvalues shifted and
/// scaled back and sorted.
fn eigh_scaled<T: Real + RealField>(
    a: ArrayView2<'_, T>,
    scale: T,
    shift: T,
    n: usize,
) -> Result<SymEig<T>, EighFailure> {
    let mut m = Operand::new(a).into_owned();
    m.fill_upper_triangle_with_lower_triangle();
    m.apply(|x| *x /= scale);
    if shift != T::zero() {
        for i in 0..n {
            m[(i, i)] += shift;
        }
    }
    let eig = SymmetricEigen::try_new(m, <T as Real>::EPSILON, EIGH_SWEEPS_PER_EIGENVALUE * n)
        .ok_or(EighFailure::NotConverged)?;
    let (values, vectors) = (eig.eigenvalues, eig.eigenvectors);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| values[i].to_f64_exact().total_cmp(&values[j].to_f64_exact()));
    let data = vectors.as_slice();
    let mut sorted = Array2::<T>::zeros((n, n));
    for (mut dst, &src) in sorted.columns_mut().into_iter().zip(&order) {
        dst.assign(&ArrayView1::from(&data[src * n..(src + 1) * n]));
    }
    let values: Array1<T> = order.iter().map(|&i| (values[i] - shift) * scale).collect();
    orthonormalise(&values, &mut sorted);
    let result = SymEig { values, vectors: sorted };
    if result.values.iter().chain(result.vectors.iter()).all(|x| x.is_finite()) {
        Ok(result)
    } else {
        Err(EighFailure::NonFinite)
    }
}

/// The shift that moves the spectrum of `a / scale` away from zero:
/// twice its largest absolute row sum $R$, a bound on its spectral radius,
/// so that the eigenvalues of `a / scale + 2R I` lie in $[R, 3R]$ with
/// $R \ge 1$.
fn spectral_shift(a: ArrayView2<'_, f64>, scale: f64) -> f64 {
    let n = a.nrows();
    let at = |i: usize, j: usize| if j <= i { a[(i, j)] } else { a[(j, i)] };
    let r = (0..n).map(|i| (0..n).map(|j| (at(i, j) / scale).abs()).sum::<f64>()).fold(0.0, f64::max);
    2.0 * r.max(1.0)
}

/// Makes the eigenvectors orthonormal again when nalgebra's are not.
///
/// On rank-deficient matrices (a cluster of eigenvalues at zero, as in the
/// Kronecker factors of a small batch) nalgebra's `f32` `SymmetricEigen`
/// can return eigenvectors that reproduce $A$ but are far from orthogonal:
/// $\lVert U^\top U - I \rVert_{\max} = 0.06$ was seen on a rank-one
/// $5 \times 5$ factor, which made K-FAC's eigen path 1 % wrong. When
/// $\lVert U^\top U - I \rVert_{\max}$ exceeds $64 n \epsilon$, the columns are
/// re-orthonormalised by modified Gram–Schmidt, run twice, in order of
/// decreasing $|s|$. The well-separated, large eigenpairs are then kept,
/// and only the cluster's vectors, where the loss of orthogonality lives,
/// are changed within the cluster's span; $A = U S U^\top$ still holds to
/// the size of the clustered eigenvalues.
fn orthonormalise<T: Real>(values: &Array1<T>, u: &mut Array2<T>) {
    let n = u.ncols();
    let tol = T::from_f64_lossy(64.0 * n as f64) * <T as Real>::EPSILON;
    let gram = u.t().dot(u);
    let off = gram.indexed_iter().fold(T::zero(), |m, ((i, j), &g)| {
        let e = if i == j { (g - T::one()).abs() } else { g.abs() };
        num_traits_max(m, e)
    });
    if off <= tol {
        return;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| values[j].abs().to_f64_exact().total_cmp(&values[i].abs().to_f64_exact()));
    for (k, &j) in order.iter().enumerate() {
        let mut v = u.column(j).to_owned();
        for _ in 0..2 {
            for &i in &order[..k] {
                let ui = u.column(i);
                let proj = ui.dot(&v);
                v.scaled_add(-proj, &ui);
            }
        }
        let mut norm = v.dot(&v).sqrt();
        if norm < T::from_f64_lossy(0.5) {
            // The vector was (nearly) in the span of the ones before it:
            // take the unit vector least covered by them instead.
            let covered = |m: usize| order[..k].iter().map(|&i| u[(m, i)] * u[(m, i)]).fold(T::zero(), |a, b| a + b);
            let m =
                (0..n).min_by(|&a, &b| covered(a).to_f64_exact().total_cmp(&covered(b).to_f64_exact())).unwrap_or(0);
            v.fill(T::zero());
            v[m] = T::one();
            for _ in 0..2 {
                for &i in &order[..k] {
                    let ui = u.column(i);
                    let proj = ui.dot(&v);
                    v.scaled_add(-proj, &ui);
                }
            }
            norm = v.dot(&v).sqrt();
        }
        v.mapv_inplace(|x| x / norm);
        u.column_mut(j).assign(&v);
    }
}

fn cholesky<T: Real + RealField>(a: ArrayView2<'_, T>) -> Result<Cholesky<T, Dyn>, LinAlgError> {
    let chol = Cholesky::new_unchecked(Operand::new(a).into_owned());
    let l = chol.l_dirty();
    match (0..l.nrows()).find(|&j| l[(j, j)].partial_cmp(&T::zero()) != Some(Ordering::Greater)) {
        Some(index) => Err(LinAlgError::NotPositiveDefinite { index }),
        None => Ok(chol),
    }
}

/// The QR sweeps nalgebra may spend per eigenvalue before
/// [`LinAlg::eigh`] gives up with [`LinAlgError::NoConvergence`] (the limit
/// LAPACK's `dsteqr` uses).
const EIGH_SWEEPS_PER_EIGENVALUE: usize = 30;

impl<T> LinAlg<T> for Nalgebra
where
    T: Real + RealField,
{
    fn name(&self) -> &'static str {
        "nalgebra"
    }

    /// Itself: the backend is single-threaded, so blocks are refreshed side
    /// by side on the rayon pool.
    fn concurrent_decompositions(&self) -> Option<&dyn LinAlg<T>> {
        Some(self)
    }

    /// The same backend in `f64`.
    fn f64_backend(&self) -> Option<&dyn LinAlg<f64>> {
        Some(self)
    }

    /// $C \leftarrow \alpha A B + \beta C$ with [`Matrix::gemm`](nalgebra::Matrix::gemm).
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
        // nalgebra 0.35's fallback for products with a side of at most 5
        // (`gemv`, then `axcpy`) indexes out of bounds when the left factor
        // has a row stride other than 1, so the left factor is always
        // column-major: A itself, or Bᵀ in Cᵀ = Bᵀ Aᵀ, or else a copy of A.
        let (a, b) = (Operand::new(a), Operand::new(b));
        let read = beta != T::zero();
        if !a.unit_row_stride() && b.unit_col_stride() {
            with_view_mut(c.reversed_axes(), read, |ct| {
                ct.gemm(alpha, &b.view_t(), &a.view_t(), beta);
            });
            return Ok(());
        }
        let a = if a.unit_row_stride() { a } else { Operand::Copied(a.into_owned()) };
        with_view_mut(c, read, |c| {
            c.gemm(alpha, &a.view(), &b.view(), beta);
        });
        Ok(())
    }

    /// $C \leftarrow \alpha X^\top X + \beta C$: the full product, then the
    /// lower triangle mirrored so that the result is exactly symmetric.
    fn gram(&self, alpha: T, x: ArrayView2<'_, T>, beta: T, mut c: ArrayViewMut2<'_, T>) -> Result<(), LinAlgError> {
        self.gemm(alpha, x.t(), x, beta, c.view_mut())?;
        mirror_lower_to_upper(c);
        Ok(())
    }

    /// Eigendecomposition with [`SymmetricEigen::try_new`] of the matrix
    /// symmetrised from the lower triangle of `a`; nalgebra returns the
    /// eigenpairs unsorted, they are sorted here (stably) by eigenvalue.
    ///
    /// nalgebra's QR iteration splits the tridiagonal matrix at an
    /// off-diagonal entry $e$ only when $|e| \le \epsilon(|d_m| + |d_n|)$,
    /// relative to its two diagonal neighbours. In a cluster of
    /// (numerically) zero eigenvalues, as in the input factor of MNIST
    /// (305 of its 785 pixels are always blank, and a batch of 64 examples
    /// leaves a rank of at most 65), those neighbours are near zero, so the
    /// test is not met before $e$ underflows; its Givens rotations compute
    /// $\sqrt{x^2 + y^2}$ without scaling, so they then divide zero by zero
    /// and the result is NaN (or the iteration runs to its limit). So a
    /// decomposition that does not converge or is not finite is redone in
    /// `f64` (from `f32`), and then in `f64` on $A/s + 2R\,I$, with $s$ the
    /// largest entry and $R \ge 1$ the largest absolute row sum of $A/s$: its
    /// eigenvalues lie in $[R, 3R]$, so the test becomes one relative to
    /// $\lVert A \rVert$, the backward-stable criterion of LAPACK, and
    /// $2R$ is subtracted from the eigenvalues afterwards (their error is
    /// then about $3R\epsilon s$, a few times $\epsilon \lVert A \rVert$).
    /// A decomposition that succeeds at the first try is left as it was.
    fn eigh(&self, a: ArrayView2<'_, T>) -> Result<SymEig<T>, LinAlgError> {
        check_square_finite("eigh", &a)?;
        let n = a.nrows();
        if n == 0 {
            return Ok(SymEig { values: Array1::zeros(0), vectors: Array2::zeros((0, 0)) });
        }
        // Scale to unit largest entry first: on f32 Kronecker factors with
        // entries around 1e-8, nalgebra's iteration produced NaN
        // eigenvectors (seen on the digits classifier). The eigenvectors do
        // not change; the eigenvalues are scaled back.
        // Only the lower triangle is read (the contract).
        let scale = a.indexed_iter().filter(|((i, j), _)| j <= i).fold(T::zero(), |m, (_, &x)| num_traits_max(m, x));
        if scale == T::zero() {
            return Ok(SymEig { values: Array1::zeros(n), vectors: Array2::eye(n) });
        }
        let is_f64 = <T as Real>::NAME == "f64";
        match eigh_scaled(a, scale, T::zero(), n) {
            Ok(result) => return Ok(result),
            // In f32 the caller may redo it in f64 (kfac-core does, and
            // counts it).
            Err(EighFailure::NotConverged) if !is_f64 => return Err(LinAlgError::NoConvergence { op: "eigh" }),
            Err(_) => {}
        }
        // Not finite (f32): redo it in f64, once. Then, or in f64 when it
        // did not converge or was not finite, with the spectrum shifted
        // away from zero (see [`spectral_shift`]).
        let wide = a.mapv(T::to_f64_exact);
        let wide_scale = scale.to_f64_exact();
        let narrow = |r: SymEig<f64>| SymEig {
            values: r.values.mapv(T::from_f64_lossy),
            vectors: r.vectors.mapv(T::from_f64_lossy),
        };
        if !is_f64 && let Ok(r) = eigh_scaled(wide.view(), wide_scale, 0.0, n) {
            return Ok(narrow(r));
        }
        let shift = spectral_shift(wide.view(), wide_scale);
        eigh_scaled(wide.view(), wide_scale, shift, n)
            .map(narrow)
            .map_err(|_| LinAlgError::NoConvergence { op: "eigh" })
    }

    /// Inverse through the Cholesky factor with [`Cholesky::inverse`], lower
    /// triangle mirrored so that the result is exactly symmetric.
    fn spd_inverse(&self, a: ArrayView2<'_, T>) -> Result<Array2<T>, LinAlgError> {
        check_square_finite("spd_inverse", &a)?;
        let mut inv = cholesky(a)?.inverse();
        inv.fill_upper_triangle_with_lower_triangle();
        Ok(to_array(&inv))
    }
}

#[cfg(test)]
mod tests {
    //! The `LinAlg` contract is checked in `kfac-core/tests/linalg.rs` and
    //! `kfac-core/tests/conformance.rs` for every backend; here only what is
    //! particular to this one.
    use super::*;
    use kfac_core::LinAlg;

    #[test]
    fn constructors() {
        assert_eq!(<Nalgebra as Default>::default(), Nalgebra::new());
        assert_eq!(Nalgebra, Nalgebra::new());
        assert_eq!(LinAlg::<f64>::name(&Nalgebra::new()), "nalgebra");
    }
}
