//! Curvature blocks: one layer's block of the Fisher, its estimate and its
//! damped inverse, behind one trait.
//!
//! | block | estimate of the layer's Fisher block $F$ | statistics | cache |
//! |---|---|---|---|
//! | [`KfacBlock`] | $A \otimes B$ | $A$, $B$ | eigenbases or inverses of $A$, $B$ |
//! | [`EkfacBlock`] | $(U_A \otimes U_B) \operatorname{diag}(\operatorname{vec} S)(U_A \otimes U_B)^\top$ | $A$, $B$, $S$ | eigenbases of $A$, $B$ |
//! | [`DiagonalBlock`] | $\operatorname{diag}(F)$ | $E[(\bar a \odot \bar a) \otimes (g \odot g)]$ | none |
//! | [`DenseBlock`] | $F$ itself | $E[(\bar a \otimes g)(\bar a \otimes g)^\top]$ | damped inverse |
//!
//! # The life of a block in one step
//! 1. [`CurvatureBlock::update_statistics`] (or several
//!    [`accumulate`](CurvatureBlock::accumulate) calls, then
//!    [`commit`](CurvatureBlock::commit)) folds the step's examples into the
//!    running statistics.
//! 2. Every few steps, [`CurvatureBlock::refresh`] rebuilds the cache
//!    (eigendecompositions or inverses) from the statistics, with a damping.
//! 3. [`CurvatureBlock::update_scalings`] then updates statistics that live in
//!    the cached basis (EKFAC's $S$; a no-op for the other blocks). It comes
//!    after the refresh so that a fresh eigenbasis gets this step's scalings.
//! 4. [`CurvatureBlock::precondition`] applies $(\hat F + \text{damping})^{-1}$
//!    to the gradient.
//!
//! [`Preconditioner`](crate::Preconditioner) runs this sequence for a stack
//! of layers. All gradients are in the $\bar W$ layout of [`crate::shape`].
//!
//! # Writing a block of your own
//! What a block estimates from (the layer kind: dense, expand, reduce,
//! convolution) is apart from what it does with it: the kinds are in
//! [`crate::statistics`], one file each, and the blocks here never look at
//! the kind. A block is one file: a type that implements
//! [`CurvatureBlock`], handed to
//! [`Preconditioner::from_blocks`](crate::Preconditioner::from_blocks)
//! beside the built-in ones (a different block per layer is fine). Every
//! kind arrives as a [`LayerBatch`]:
//! [`KroneckerFactors`](crate::KroneckerFactors) keeps $A$ and $B$ of any of
//! them ([`LayerBatch::factor_rows`]), [`LayerBatch::example_gradient`] and
//! [`LayerBatch::per_example_gradients`] give the per-example gradients. The
//! helpers below are what the built-in blocks use: the safeguarded
//! decompositions ([`safe_eigh`], [`safe_spd_inverse`]), factored damping
//! ([`factored_damped`]), the Kronecker eigenbasis ([`to_basis`],
//! [`from_basis`]), dense checks for tests ([`kron_dense`],
//! [`dense_in_basis`]), and the state's builders and reader
//! ([`BlockState`], [`StateReader`](crate::state::StateReader),
//! [`Counters`]). `CONTRIBUTING.md` has the recipe.

mod dense;
mod diagonal;
mod ekfac;
mod kfac;

pub use dense::DenseBlock;
pub use diagonal::DiagonalBlock;
pub use ekfac::{EkfacBlock, projected_squares};
pub use kfac::{KfacBlock, KfacMethod};

use std::fmt::Debug;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

use crate::average::MovingAverage;
use crate::damping::Damping;
use crate::error::{Error, Result};
use crate::linalg::LinAlg;
use crate::linalg::SymEig;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape, check_finite, check_shape};
use crate::state::{BlockHealth, BlockState, Counters};

/// The largest side of a dense matrix that [`CurvatureBlock::to_dense`] and
/// [`DenseBlock`] will build (4096: 128 MiB in `f64`).
pub const DENSE_LIMIT: usize = 4096;

/// Which block to build; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum BlockKind {
    /// [`KfacBlock`] with the given inversion method.
    Kfac(KfacMethod),
    /// [`EkfacBlock`].
    #[default]
    Ekfac,
    /// [`DiagonalBlock`].
    Diagonal,
    /// [`DenseBlock`] (small layers only).
    Dense,
}

impl BlockKind {
    /// A new block of this kind for a layer of shape `shape`.
    pub fn build<T: Real>(self, name: impl Into<String>, shape: LayerShape) -> Result<Box<dyn CurvatureBlock<T>>> {
        let name = name.into();
        Ok(match self {
            Self::Kfac(method) => Box::new(KfacBlock::new(name, shape, method)),
            Self::Ekfac => Box::new(EkfacBlock::new(name, shape)),
            Self::Diagonal => Box::new(DiagonalBlock::new(name, shape)),
            Self::Dense => Box::new(DenseBlock::new(name, shape)?),
        })
    }
}

/// One layer's curvature estimate; see the [module docs](self) for the order
/// of calls in a step.
pub trait CurvatureBlock<T: Real>: Send + Sync + Debug {
    /// The block's name, used in errors.
    fn name(&self) -> &str;

    /// The layer's shape.
    fn shape(&self) -> LayerShape;

    /// Adds a batch (or a chunk of one) to the pending step's statistics.
    fn accumulate(&mut self, la: &dyn LinAlg<T>, batch: &LayerBatch<'_, T>) -> Result<()>;

    /// Ends the step: folds the pending statistics into the running averages
    /// with decay `decay` (see [`MovingAverage`]).
    fn commit(&mut self, decay: f64) -> Result<()>;

    /// [`accumulate`](Self::accumulate) then [`commit`](Self::commit).
    fn update_statistics(&mut self, la: &dyn LinAlg<T>, batch: &LayerBatch<'_, T>, decay: f64) -> Result<()> {
        self.accumulate(la, batch)?;
        self.commit(decay)
    }

    /// Whether the block keeps statistics in its cached basis (EKFAC's $S$),
    /// updated by [`update_scalings`](Self::update_scalings). `false` by default.
    fn has_scalings(&self) -> bool {
        false
    }

    /// Adds a batch to statistics that live in the cached basis (EKFAC's $S$).
    /// A no-op by default.
    fn accumulate_scalings(&mut self, _la: &dyn LinAlg<T>, _batch: &LayerBatch<'_, T>) -> Result<()> {
        Ok(())
    }

    /// Ends the step for the scalings. A no-op by default.
    fn commit_scalings(&mut self, _decay: f64) -> Result<()> {
        Ok(())
    }

    /// [`accumulate_scalings`](Self::accumulate_scalings) then
    /// [`commit_scalings`](Self::commit_scalings).
    fn update_scalings(&mut self, la: &dyn LinAlg<T>, batch: &LayerBatch<'_, T>, decay: f64) -> Result<()> {
        self.accumulate_scalings(la, batch)?;
        self.commit_scalings(decay)
    }

    /// The running averages [`accumulate`](Self::accumulate) adds to, in a
    /// fixed order: a data-parallel step adds their pending sums and counts
    /// over the processes before [`commit`](Self::commit) ([`crate::comm`]).
    /// Empty by default: such a block cannot be trained data-parallel.
    fn statistics_mut(&mut self) -> Vec<&mut MovingAverage<T>> {
        Vec::new()
    }

    /// As [`statistics_mut`](Self::statistics_mut), for the averages of
    /// [`accumulate_scalings`](Self::accumulate_scalings). Empty by default.
    fn scalings_mut(&mut self) -> Vec<&mut MovingAverage<T>> {
        Vec::new()
    }

    /// Rebuilds the cache (eigenbases, inverses) from the current statistics
    /// and sets the damping.
    fn refresh(&mut self, la: &dyn LinAlg<T>, damping: Damping) -> Result<()>;

    /// Changes the damping. Blocks whose cache does not depend on it (the
    /// eigen paths, EKFAC, diagonal) only store it; the others rebuild their
    /// cache from the current statistics.
    fn set_damping(&mut self, la: &dyn LinAlg<T>, damping: Damping) -> Result<()>;

    /// The damping in use, once the block has been refreshed.
    fn damping(&self) -> Option<Damping>;

    /// Whether the cache is built ([`precondition`](Self::precondition) and
    /// [`multiply`](Self::multiply) work).
    fn is_ready(&self) -> bool;

    /// The damped curvature's inverse applied to `grad`
    /// ($d_\text{out} \times \dim A$): $\operatorname{unvec}\big((\hat F + \text{damping})^{-1} \operatorname{vec}(\text{grad})\big)$.
    fn precondition(&self, la: &dyn LinAlg<T>, grad: ArrayView2<'_, T>) -> Result<Array2<T>>;

    /// The damped curvature applied to `v`, the inverse of
    /// [`precondition`](Self::precondition), computed from the same cache.
    fn multiply(&self, la: &dyn LinAlg<T>, v: ArrayView2<'_, T>) -> Result<Array2<T>>;

    /// The undamped curvature estimate as a dense
    /// $d_\text{out}\dim A \times d_\text{out}\dim A$ matrix in the `vec` order of
    /// [`crate::shape`]. For small layers (tests, diagnostics): fails with
    /// [`Error::TooLarge`] beyond [`DENSE_LIMIT`].
    fn to_dense(&self, la: &dyn LinAlg<T>) -> Result<Array2<T>>;

    /// Bytes held by statistics and cache.
    fn memory_bytes(&self) -> usize;

    /// The block's complete state, to save in a checkpoint; see
    /// [`crate::state`].
    fn state(&self) -> BlockState<T>;

    /// A new block holding `state`, which is checked completely first (kind,
    /// shape, names, dimensions, finiteness, ranges). `self` is unchanged;
    /// its name is kept.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] naming what does not fit.
    fn restored(&self, state: &BlockState<T>) -> Result<Box<dyn CurvatureBlock<T>>>;

    /// The block's health report (eigenvalue range, conditioning, damping,
    /// counters of the safeguards); see [`BlockHealth`].
    fn health(&self) -> BlockHealth;
}

/// Bytes held by a matrix.
pub fn bytes<T>(a: &Array2<T>) -> usize {
    a.len() * std::mem::size_of::<T>()
}

/// Bytes held by a vector.
pub fn bytes1<T>(a: &Array1<T>) -> usize {
    a.len() * std::mem::size_of::<T>()
}

/// Wraps a backend error as [`Error::LinAlg`] of `block`.
pub fn lin_err(block: &str) -> impl Fn(crate::LinAlgError) -> Error + '_ {
    move |source| Error::LinAlg { block: block.to_string(), source }
}

/// Wraps a backend error as [`Error::Decomposition`] of the matrix `what` of `block`.
pub fn dec_err<'a>(block: &'a str, what: &'static str) -> impl Fn(crate::LinAlgError) -> Error + 'a {
    move |source| Error::Decomposition { block: block.to_string(), what, source }
}

/// The $\lambda$ of a Tikhonov damping; any other damping is an
/// [`Error::UnsupportedDamping`] of `block`, for the reason `why`.
pub fn tikhonov_only(block: &str, damping: Damping, why: &'static str) -> Result<f64> {
    damping.validate()?;
    match damping {
        Damping::Tikhonov { lambda } => Ok(lambda),
        Damping::Factored { .. } => {
            Err(Error::UnsupportedDamping { block: block.to_string(), damping: damping.to_string(), why })
        }
    }
}

/// The error of a block asked to precondition before its cache is built.
pub fn not_ready(block: &str) -> Error {
    Error::NotReady { block: block.to_string(), what: "the cache is not built" }
}

/// Checks a gradient-shaped operand.
pub fn check_operand<T: Real>(block: &str, shape: LayerShape, v: &ArrayView2<'_, T>) -> Result<()> {
    check_shape(block, "gradient", v.dim(), shape.param_dims())?;
    check_finite(block, "gradient", v.view())
}

/// Refuses a dense matrix of side `dim` beyond [`DENSE_LIMIT`].
///
/// # Errors
///
/// [`Error::TooLarge`].
pub fn check_dense_size(block: &str, dim: usize) -> Result<()> {
    if dim > DENSE_LIMIT { Err(Error::TooLarge { block: block.to_string(), dim, limit: DENSE_LIMIT }) } else { Ok(()) }
}

/// The mean of the diagonal, $\operatorname{tr}(M)/\dim M$.
pub fn mean_diag<T: Real>(m: ArrayView2<'_, T>) -> T {
    let n = m.nrows().max(1);
    m.diag().sum() / T::from_usize(n).unwrap_or(T::one())
}

/// The factors with factored damping added to their diagonals,
/// $(A + \pi\sqrt\lambda\, I,\; B + \sqrt\lambda/\pi\, I)$; `None` for a damping that is
/// not factored.
pub fn factored_damped<T: Real>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    damping: Damping,
) -> Option<(Array2<T>, Array2<T>)> {
    let (da, db) = damping.factored_terms(mean_diag(a), mean_diag(b))?;
    let mut a_damped = a.to_owned();
    a_damped.diag_mut().mapv_inplace(|x| x + da);
    let mut b_damped = b.to_owned();
    b_damped.diag_mut().mapv_inplace(|x| x + db);
    Some((a_damped, b_damped))
}

/// $U_B^\top V U_A$: `v` expressed in the Kronecker eigenbasis.
pub fn to_basis<T: Real>(
    la: &dyn LinAlg<T>,
    ub: ArrayView2<'_, T>,
    ua: ArrayView2<'_, T>,
    v: ArrayView2<'_, T>,
) -> std::result::Result<Array2<T>, crate::LinAlgError> {
    la.kron_matvec(ua.t(), ub.t(), v)
}

/// $U_B T U_A^\top$: back from the Kronecker eigenbasis.
pub fn from_basis<T: Real>(
    la: &dyn LinAlg<T>,
    ub: ArrayView2<'_, T>,
    ua: ArrayView2<'_, T>,
    t: ArrayView2<'_, T>,
) -> std::result::Result<Array2<T>, crate::LinAlgError> {
    la.kron_matvec(ua, ub, t)
}

/// Dense $C \otimes D$ (diagnostics and tests only).
pub fn kron_dense<T: Real>(c: ArrayView2<'_, T>, d: ArrayView2<'_, T>) -> Array2<T> {
    let (p, q) = (c.nrows(), d.nrows());
    let mut out = Array2::zeros((p * q, p * q));
    for i in 0..p {
        for j in 0..p {
            let cij = c[(i, j)];
            if cij == T::zero() {
                continue;
            }
            out.slice_mut(ndarray::s![i * q..(i + 1) * q, j * q..(j + 1) * q]).zip_mut_with(&d, |o, &x| *o = cij * x);
        }
    }
    out
}

/// $\operatorname{diag}(\operatorname{vec} S)$ conjugated by $U_A \otimes U_B$ (diagnostics).
pub fn dense_in_basis<T: Real>(
    la: &dyn LinAlg<T>,
    ua: ArrayView2<'_, T>,
    ub: ArrayView2<'_, T>,
    s: ArrayView2<'_, T>,
) -> std::result::Result<Array2<T>, crate::LinAlgError> {
    let q = kron_dense(ua, ub);
    let sv: Array1<T> = crate::shape::vec_col_major(s);
    let mut qs = q.clone();
    for (mut col, &w) in qs.columns_mut().into_iter().zip(sv.iter()) {
        col.mapv_inplace(|x| x * w);
    }
    la.matmul(qs.view(), q.t())
}

/// Clamps eigenvalues below zero (round-off on a PSD factor) to zero and
/// returns how many there were.
pub fn clamp_nonneg<T: Real>(s: &mut Array1<T>) -> usize {
    let negative = s.iter().filter(|&&x| x < T::zero()).count();
    s.mapv_inplace(|x| if x > T::zero() { x } else { T::zero() });
    negative
}

fn is_f32<T>() -> bool {
    std::mem::size_of::<T>() < std::mem::size_of::<f64>()
}

/// `None` when `m` is exactly symmetric (the Gram products mirror their
/// lower triangle), $\tfrac12(M + M^\top)$ otherwise.
fn symmetrised<T: Real>(m: ArrayView2<'_, T>) -> Option<Array2<T>> {
    let n = m.nrows();
    if (0..n).all(|i| (0..i).all(|j| m[(i, j)] == m[(j, i)])) {
        return None;
    }
    let half = T::from_f64_lossy(0.5);
    Some(Array2::from_shape_fn((n, n), |(i, j)| half * (m[(i, j)] + m[(j, i)])))
}

/// The eigendecomposition of the factor `what` of `block`, with the
/// safeguards: a non-finite factor is refused before the decomposition; the
/// input is made exactly symmetric; an `f32` decomposition that fails or
/// returns non-finite values is redone in `f64` when the backend has an
/// `f64` twin (counted in `counters`); eigenvalues below zero are clamped
/// (counted).
pub fn safe_eigh<T: Real>(
    la: &dyn LinAlg<T>,
    m: ArrayView2<'_, T>,
    block: &str,
    what: &'static str,
    counters: &mut Counters,
) -> Result<SymEig<T>> {
    check_finite(block, what, m)?;
    let owned = symmetrised(m);
    let sym = owned.as_ref().map_or(m, |s| s.view());
    let finite = |e: &SymEig<T>| e.values.iter().chain(e.vectors.iter()).all(|x| x.is_finite());
    let first = match la.eigh(sym.view()) {
        Ok(e) if finite(&e) => Ok(e),
        Ok(_) => Err(crate::LinAlgError::NonFinite { op: "eigh (output)" }),
        Err(e) => Err(e),
    };
    let mut eig = match (first, is_f32::<T>(), la.f64_backend()) {
        (Ok(e), _, _) => e,
        (Err(_), true, Some(la64)) => {
            let wide = sym.mapv(|x| x.to_f64_exact());
            let e = la64.eigh(wide.view()).map_err(dec_err(block, what))?;
            counters.f64_retries += 1;
            SymEig { values: e.values.mapv(T::from_f64_lossy), vectors: e.vectors.mapv(T::from_f64_lossy) }
        }
        (Err(e), _, _) => return Err(dec_err(block, what)(e)),
    };
    if !finite(&eig) {
        return Err(dec_err(block, what)(crate::LinAlgError::NonFinite { op: "eigh (output)" }));
    }
    counters.clamped += clamp_nonneg(&mut eig.values);
    Ok(eig)
}

/// The inverse of the SPD matrix `m` (a damped factor or block), with the
/// safeguards of [`safe_eigh`]: finiteness checked first, an `f32` failure
/// redone in `f64`.
pub fn safe_spd_inverse<T: Real>(
    la: &dyn LinAlg<T>,
    m: ArrayView2<'_, T>,
    block: &str,
    what: &'static str,
    counters: &mut Counters,
) -> Result<Array2<T>> {
    check_finite(block, what, m)?;
    let owned = symmetrised(m);
    let sym = owned.as_ref().map_or(m, |s| s.view());
    let first = match la.spd_inverse(sym.view()) {
        Ok(inv) if inv.iter().all(|x| x.is_finite()) => Ok(inv),
        Ok(_) => Err(crate::LinAlgError::NonFinite { op: "spd_inverse (output)" }),
        Err(e) => Err(e),
    };
    match (first, is_f32::<T>(), la.f64_backend()) {
        (Ok(inv), _, _) => Ok(inv),
        (Err(_), true, Some(la64)) => {
            let wide = sym.mapv(|x| x.to_f64_exact());
            let inv = la64.spd_inverse(wide.view()).map_err(dec_err(block, what))?;
            let inv = inv.mapv(T::from_f64_lossy);
            if !inv.iter().all(|x| x.is_finite()) {
                return Err(dec_err(block, what)(crate::LinAlgError::NonFinite { op: "spd_inverse (output)" }));
            }
            counters.f64_retries += 1;
            Ok(inv)
        }
        (Err(e), _, _) => Err(dec_err(block, what)(e)),
    }
}

/// The inverse of a damped factor $M = F + \delta I$ ($F$ positive
/// semi-definite, $\delta$ = `floor`, `damped` = $M$ as rounded): by
/// Cholesky of $M$, with the safeguards of [`safe_spd_inverse`]. When that
/// fails even in `f64`, $M$ is numerically singular (the round-off of $F$,
/// about $\epsilon \lVert F \rVert$, exceeds $\delta$, which may even be
/// lost when added in `f32`), and the inverse comes from the
/// eigendecomposition of $F$ itself (in `f64` when the backend has an `f64`
/// twin), its eigenvalues clamped at zero and then damped:
/// $(U \operatorname{diag}(\max(s, 0) + \delta) U^\top)^{-1}$, the exact
/// damped inverse of the nearest positive semi-definite factor. That
/// fallback is counted in `counters.eigen_fallbacks`, and the matrix it
/// inverts is returned beside the inverse (so that `multiply` stays its
/// inverse). With $\delta \le 0$ there is no floor, and the Cholesky error
/// is returned.
pub fn damped_inverse<T: Real>(
    la: &dyn LinAlg<T>,
    factor: ArrayView2<'_, T>,
    damped: ArrayView2<'_, T>,
    floor: T,
    block: &str,
    what: &'static str,
    counters: &mut Counters,
) -> Result<(Array2<T>, Option<Array2<T>>)> {
    let error = match safe_spd_inverse(la, damped, block, what, counters) {
        Ok(inv) => return Ok((inv, None)),
        Err(e @ Error::NonFinite { .. }) => return Err(e),
        Err(e) => e,
    };
    let floor = floor.to_f64_exact();
    if floor.is_nan() || floor <= 0.0 {
        return Err(error);
    }
    check_finite(block, what, factor)?;
    let owned = symmetrised(factor);
    let sym = owned.as_ref().map_or(factor, |s| s.view());
    let eig = match la.f64_backend() {
        Some(la64) => la64.eigh(sym.mapv(|x| x.to_f64_exact()).view()).map_err(dec_err(block, what))?,
        None => {
            let e = la.eigh(sym).map_err(dec_err(block, what))?;
            SymEig { values: e.values.mapv(|x| x.to_f64_exact()), vectors: e.vectors.mapv(|x| x.to_f64_exact()) }
        }
    };
    let s = eig.values.mapv(|x| x.max(0.0) + floor);
    let u = &eig.vectors;
    let scaled = |w: &Array1<f64>| u * &w.view().insert_axis(ndarray::Axis(0));
    let inverse = scaled(&s.mapv(|x| 1.0 / x)).dot(&u.t()).mapv(T::from_f64_lossy);
    let repaired = scaled(&s).dot(&u.t()).mapv(T::from_f64_lossy);
    if !inverse.iter().chain(repaired.iter()).all(|x| x.is_finite()) {
        return Err(error);
    }
    counters.eigen_fallbacks += 1;
    Ok((inverse, Some(repaired)))
}

/// $(s_B + \delta_B)(s_A + \delta_A)^\top$: the eigenvalues of a factored-damped Kronecker product.
pub fn outer_plus<T: Real>(sb: ArrayView1<'_, T>, sa: ArrayView1<'_, T>, db: T, da: T) -> Array2<T> {
    Array2::from_shape_fn((sb.len(), sa.len()), |(i, j)| (sb[i] + db) * (sa[j] + da))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetrised_leaves_symmetric_matrices_alone_and_averages_the_rest() {
        let s = ndarray::array![[2.0, 1.0], [1.0, 3.0]];
        assert!(symmetrised(s.view()).is_none());
        let a = ndarray::array![[2.0, 1.0], [1.5, 3.0]];
        let fixed = symmetrised(a.view()).unwrap();
        assert_eq!(fixed, ndarray::array![[2.0, 1.25], [1.25, 3.0]]);
    }

    #[test]
    fn clamping_counts_the_negative_eigenvalues() {
        let mut s = ndarray::array![-1e-12, 0.0, 2.0, -3e-9];
        assert_eq!(clamp_nonneg(&mut s), 2);
        assert_eq!(s, ndarray::array![0.0, 0.0, 2.0, 0.0]);
    }
}
