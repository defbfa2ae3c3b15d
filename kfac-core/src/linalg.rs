//! The linear-algebra interface that backends implement.
//!
//! Everything the curvature blocks need from dense linear algebra goes through
//! [`LinAlg`]: general products, the Gram matrix of a batch, the symmetric
//! eigendecomposition and the Cholesky-based SPD inverse. Operands
//! are [`ndarray`] views of any layout (row-major, column-major, transposed or
//! strided); a backend views them in its own types without copying where it
//! can. No backend type appears here, so a block is written once and runs on
//! any backend (`kfac-linalg-faer`, `kfac-linalg-nalgebra`, or your own).
//!
//! The trait is object safe: blocks take `&dyn LinAlg<T>`.
//!
//! # The Kronecker matvec
//! With $\operatorname{vec}$ the column-major stacking of a matrix,
//! $$(C \otimes D)\operatorname{vec}(X) = \operatorname{vec}(D X C^\top),$$
//! for $C \in \mathbb{R}^{p\times p}$, $D \in \mathbb{R}^{q \times q}$ and
//! $X \in \mathbb{R}^{q \times p}$. [`LinAlg::kron_matvec`] computes the right-hand
//! side with two products, $O(pq(p+q))$ work instead of the $O(p^2q^2)$ of
//! forming $C \otimes D$, which this crate never does outside its tests.

use std::fmt::Debug;

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2};

use crate::error::LinAlgError;
use crate::scalar::Real;

/// A symmetric eigendecomposition $A = U \operatorname{diag}(s) U^\top$.
#[derive(Debug, Clone, PartialEq)]
pub struct SymEig<T> {
    /// The eigenvalues $s$, in nondecreasing order.
    pub values: Array1<T>,
    /// The orthonormal eigenvectors $U$, as columns, in the order of `values`.
    pub vectors: Array2<T>,
}

/// Dense linear algebra over real scalars `T`, implemented by a backend.
///
/// Contract, checked by the conformance suite in `kfac-core/tests/`:
/// - Shapes are checked: an operation on operands that do not fit returns
///   [`LinAlgError::ShapeMismatch`] or [`LinAlgError::NotSquare`], never panics.
/// - Decompositions check their input for NaN and infinities first and
///   return [`LinAlgError::NonFinite`].
/// - As in BLAS, with `beta == 0` the previous content of the output is
///   ignored (a NaN there does not propagate), and with `alpha == 0` the
///   operands `a`, `b` are not read.
/// - Arrays returned by the decompositions may have any memory layout.
/// - Parallelism is a property of the backend value (e.g. a thread count
///   given at construction), never a global setting changed behind the
///   caller's back.
pub trait LinAlg<T: Real>: Send + Sync + Debug {
    /// A short name of the backend (`"faer"`, `"nalgebra"`).
    fn name(&self) -> &'static str;

    /// General product $C \leftarrow \alpha A B + \beta C$.
    ///
    /// `a` is $m \times k$, `b` is $k \times n$, `c` is $m \times n$. Pass
    /// `x.t()` to multiply by a transpose: views of any stride are accepted.
    fn gemm(
        &self,
        alpha: T,
        a: ArrayView2<'_, T>,
        b: ArrayView2<'_, T>,
        beta: T,
        c: ArrayViewMut2<'_, T>,
    ) -> Result<(), LinAlgError>;

    /// The Gram matrix of a batch, $C \leftarrow \alpha X^\top X + \beta C$.
    ///
    /// `x` is $N \times d$ (one example per row), `c` is $d \times d$ and
    /// receives the full symmetric result (both triangles). With `beta != 0`
    /// the previous `c` must be symmetric: a backend may read only its lower
    /// triangle. The default computes it with [`LinAlg::gemm`]; backends may
    /// exploit the symmetry.
    fn gram(&self, alpha: T, x: ArrayView2<'_, T>, beta: T, c: ArrayViewMut2<'_, T>) -> Result<(), LinAlgError> {
        self.gemm(alpha, x.t(), x, beta, c)
    }

    /// Symmetric eigendecomposition of `a`, eigenvalues in nondecreasing
    /// order. `a` must be symmetric; only its lower triangle is read.
    fn eigh(&self, a: ArrayView2<'_, T>) -> Result<SymEig<T>, LinAlgError>;

    /// The inverse of a symmetric positive definite matrix, through its
    /// Cholesky factorisation. Only the lower triangle of `a` is read; the
    /// result is symmetric (both triangles filled).
    fn spd_inverse(&self, a: ArrayView2<'_, T>) -> Result<Array2<T>, LinAlgError>;

    /// The backend for decompositions run side by side, one block per
    /// thread of the rayon pool ([`Preconditioner::update`](crate::Preconditioner::update)
    /// refreshes the blocks this way), or `None` to refresh them one after
    /// the other with `self`.
    ///
    /// A backend whose decompositions gain little from extra threads (faer's
    /// symmetric eigensolver: one thread is as fast as two at $d = 1000$ on
    /// the benchmark machine) returns its sequential form; a single-threaded
    /// backend returns itself. Results must not depend on which blocks share
    /// a thread: the decomposition of a matrix is the same whatever runs
    /// beside it. The default is `None`.
    fn concurrent_decompositions(&self) -> Option<&dyn LinAlg<T>> {
        None
    }

    /// The same backend without threads of its own, for callers that run
    /// it in parallel at an outer level (batch shards, one block per
    /// thread), or `None` when this backend never uses threads itself (the
    /// caller then uses `self`). A backend with internal parallelism should
    /// return its sequential form. The default is `None`.
    fn sequential(&self) -> Option<&dyn LinAlg<T>> {
        None
    }

    /// The same backend in `f64`, if it has one. Blocks in `f32` redo a
    /// decomposition that fails (or returns a non-finite result) in `f64`
    /// through it, and count the retry in their
    /// [`BlockHealth`](crate::BlockHealth). The default is `None`.
    fn f64_backend(&self) -> Option<&dyn LinAlg<f64>> {
        None
    }

    /// $A B$ into a new (row-major) array.
    fn matmul(&self, a: ArrayView2<'_, T>, b: ArrayView2<'_, T>) -> Result<Array2<T>, LinAlgError> {
        let mut c = Array2::zeros((a.nrows(), b.ncols()));
        self.gemm(T::one(), a, b, T::zero(), c.view_mut())?;
        Ok(c)
    }

    /// The Kronecker matvec $(C \otimes D)\operatorname{vec}(X) = \operatorname{vec}(D X C^\top)$,
    /// returned as the matrix $D X C^\top$ ($q \times p$).
    ///
    /// `c` is $p \times p$, `d` is $q \times q$, `x` is $q \times p$. In K-FAC
    /// terms, with $A$ the input factor and $B$ the output-gradient factor of
    /// a layer whose weight gradient is $V$ ($d_\text{out} \times d_\text{in}$),
    /// $(A^{-1} \otimes B^{-1})\operatorname{vec}(V) = \operatorname{vec}(B^{-1} V A^{-1})$.
    fn kron_matvec(
        &self,
        c: ArrayView2<'_, T>,
        d: ArrayView2<'_, T>,
        x: ArrayView2<'_, T>,
    ) -> Result<Array2<T>, LinAlgError> {
        let (q, p) = x.dim();
        if c.dim() != (p, p) || d.dim() != (q, q) {
            return Err(LinAlgError::ShapeMismatch {
                op: "kron_matvec",
                detail: format!(
                    "C is {:?}, D is {:?}, X is {:?}; need C p x p, D q x q, X q x p",
                    c.dim(),
                    d.dim(),
                    x.dim()
                ),
            });
        }
        let dx = self.matmul(d, x)?;
        self.matmul(dx.view(), c.t())
    }
}

/// Checks the shapes of $C \leftarrow \alpha A B + \beta C$; for backends.
pub fn check_gemm_shapes<T>(
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    c: &ArrayViewMut2<'_, T>,
) -> Result<(), LinAlgError> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    if k != k2 || c.dim() != (m, n) {
        return Err(LinAlgError::ShapeMismatch {
            op: "gemm",
            detail: format!("A is {:?}, B is {:?}, C is {:?}", a.dim(), b.dim(), c.dim()),
        });
    }
    Ok(())
}

/// Checks that `a` is square and finite before a decomposition; for backends.
pub fn check_square_finite<T: Real>(op: &'static str, a: &ArrayView2<'_, T>) -> Result<(), LinAlgError> {
    let (rows, cols) = a.dim();
    if rows != cols {
        return Err(LinAlgError::NotSquare { op, rows, cols });
    }
    if !a.iter().all(|x| x.is_finite()) {
        return Err(LinAlgError::NonFinite { op });
    }
    Ok(())
}

/// The cases of $C \leftarrow \alpha A B + \beta C$ that need no product: checks
/// the shapes, then, if `c` is empty, the inner dimension is 0 or
/// `alpha == 0`, sets $C \leftarrow \beta C$ (without reading `a`, `b`) and
/// returns `Ok(true)`. Otherwise returns `Ok(false)` and the backend
/// computes the product. For backends.
pub fn gemm_trivial<T: Real>(
    alpha: T,
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    beta: T,
    c: &mut ArrayViewMut2<'_, T>,
) -> Result<bool, LinAlgError> {
    check_gemm_shapes(a, b, c)?;
    if c.is_empty() {
        return Ok(true);
    }
    if a.ncols() == 0 || alpha == T::zero() {
        scale_by_beta(c, beta);
        return Ok(true);
    }
    Ok(false)
}

/// $C \leftarrow \beta C$, where $\beta = 0$ overwrites (a NaN in `c` does not
/// propagate). For backends.
pub fn scale_by_beta<T: Real>(c: &mut ArrayViewMut2<'_, T>, beta: T) {
    if beta == T::zero() {
        c.fill(T::zero());
    } else if beta != T::one() {
        c.map_inplace(|x| *x *= beta);
    }
}

/// Copies the strict lower triangle of the square `c` onto its upper one.
/// For backends whose symmetric products fill one triangle.
pub fn mirror_lower_to_upper<T: Real>(mut c: ArrayViewMut2<'_, T>) {
    let n = c.nrows();
    for i in 0..n.saturating_sub(1) {
        let (mut row, col) = c.multi_slice_mut((ndarray::s![i, i + 1..], ndarray::s![i + 1.., i]));
        row.assign(&col);
    }
}
