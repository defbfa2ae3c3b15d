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

mod dense;
mod diagonal;
mod ekfac;
mod kfac;

pub use dense::DenseBlock;
pub use diagonal::DiagonalBlock;
pub use ekfac::EkfacBlock;
pub use kfac::{KfacBlock, KfacMethod};

use std::fmt::Debug;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

use crate::damping::Damping;
use crate::error::{Error, Result};
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape, check_finite, check_shape};

/// The largest side of a dense matrix that [`CurvatureBlock::to_dense`] and
/// [`DenseBlock`] will build (4096: 128 MiB in `f64`).
pub const DENSE_LIMIT: usize = 4096;

/// Which block to build; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    /// with decay `decay` (see [`MovingAverage`](crate::MovingAverage)).
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
}

pub(crate) fn bytes<T>(a: &Array2<T>) -> usize {
    a.len() * std::mem::size_of::<T>()
}

pub(crate) fn bytes1<T>(a: &Array1<T>) -> usize {
    a.len() * std::mem::size_of::<T>()
}

pub(crate) fn lin_err(block: &str) -> impl Fn(crate::LinAlgError) -> Error + '_ {
    move |source| Error::LinAlg { block: block.to_string(), source }
}

pub(crate) fn dec_err<'a>(block: &'a str, what: &'static str) -> impl Fn(crate::LinAlgError) -> Error + 'a {
    move |source| Error::Decomposition { block: block.to_string(), what, source }
}

/// The $\lambda$ of a Tikhonov damping; any other damping is an
/// [`Error::UnsupportedDamping`] of `block`, for the reason `why`.
pub(crate) fn tikhonov_only(block: &str, damping: Damping, why: &'static str) -> Result<f64> {
    damping.validate()?;
    match damping {
        Damping::Tikhonov { lambda } => Ok(lambda),
        Damping::Factored { .. } => {
            Err(Error::UnsupportedDamping { block: block.to_string(), damping: damping.to_string(), why })
        }
    }
}

pub(crate) fn not_ready(block: &str) -> Error {
    Error::NotReady { block: block.to_string(), what: "the cache is not built" }
}

/// Checks a gradient-shaped operand.
pub(crate) fn check_operand<T: Real>(block: &str, shape: LayerShape, v: &ArrayView2<'_, T>) -> Result<()> {
    check_shape(block, "gradient", v.dim(), shape.param_dims())?;
    check_finite(block, "gradient", v.view())
}

pub(crate) fn check_dense_size(block: &str, dim: usize) -> Result<()> {
    if dim > DENSE_LIMIT { Err(Error::TooLarge { block: block.to_string(), dim, limit: DENSE_LIMIT }) } else { Ok(()) }
}

/// The mean of the diagonal, $\operatorname{tr}(M)/\dim M$.
pub(crate) fn mean_diag<T: Real>(m: ArrayView2<'_, T>) -> T {
    let n = m.nrows().max(1);
    m.diag().sum() / T::from_usize(n).unwrap_or(T::one())
}

/// $U_B^\top V U_A$: `v` expressed in the Kronecker eigenbasis.
pub(crate) fn to_basis<T: Real>(
    la: &dyn LinAlg<T>,
    ub: ArrayView2<'_, T>,
    ua: ArrayView2<'_, T>,
    v: ArrayView2<'_, T>,
) -> std::result::Result<Array2<T>, crate::LinAlgError> {
    la.kron_matvec(ua.t(), ub.t(), v)
}

/// $U_B T U_A^\top$: back from the Kronecker eigenbasis.
pub(crate) fn from_basis<T: Real>(
    la: &dyn LinAlg<T>,
    ub: ArrayView2<'_, T>,
    ua: ArrayView2<'_, T>,
    t: ArrayView2<'_, T>,
) -> std::result::Result<Array2<T>, crate::LinAlgError> {
    la.kron_matvec(ua, ub, t)
}

/// Dense $C \otimes D$ (diagnostics and tests only).
pub(crate) fn kron_dense<T: Real>(c: ArrayView2<'_, T>, d: ArrayView2<'_, T>) -> Array2<T> {
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
pub(crate) fn dense_in_basis<T: Real>(
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

/// Clamps eigenvalues below zero (round-off on a PSD factor) to zero.
pub(crate) fn clamp_nonneg<T: Real>(s: &mut Array1<T>) {
    s.mapv_inplace(|x| if x > T::zero() { x } else { T::zero() });
}

pub(crate) fn outer_plus<T: Real>(sb: ArrayView1<'_, T>, sa: ArrayView1<'_, T>, db: T, da: T) -> Array2<T> {
    Array2::from_shape_fn((sb.len(), sa.len()), |(i, j)| (sb[i] + db) * (sa[j] + da))
}
