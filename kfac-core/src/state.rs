//! Saving and restoring curvature state (checkpoints), and the health report.
//!
//! [`CurvatureBlock::state`](crate::CurvatureBlock::state) captures
//! everything a block needs to continue exactly where it stopped: the
//! running statistics with their accumulated weights (and any pending,
//! uncommitted sums), the cache (eigenbases, eigenvalues, inverses), the
//! damping and the block's counters. It is a plain value: named arrays and
//! named `f64` scalars, with the block's kind and shape, so that any
//! container format can store it (`kfac-nn` writes safetensors).
//! [`CurvatureBlock::restored`](crate::CurvatureBlock::restored) checks a
//! state completely (kind, shape, every name, every dimension, finiteness,
//! ranges) before it builds anything, and returns a new block: the block it
//! is called on is never left half restored.
//!
//! Restoring is exact: a block restored from its own state gives bit for bit
//! the same results as the original, because the stored arrays are the
//! block's own (nothing is recomputed) and `f64` scalars hold `f32` and
//! `f64` values exactly.

use std::collections::BTreeMap;

use ndarray::{Array1, Array2, ArrayD};

use crate::average::MovingAverage;
use crate::damping::{Damping, PiRule};
use crate::error::{Error, Result};
use crate::scalar::Real;
use crate::shape::LayerShape;

/// The complete state of one curvature block; see the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BlockState<T> {
    /// The block's kind: `"kfac-eigen"`, `"kfac-inverse"`, `"ekfac"`,
    /// `"diagonal"` or `"dense"`.
    pub kind: String,
    /// The layer's shape.
    pub shape: LayerShape,
    /// Named arrays (matrices and vectors).
    pub tensors: BTreeMap<String, ArrayD<T>>,
    /// Named numbers: weights of the running averages, damping, counters.
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite::map"))]
    pub scalars: BTreeMap<String, f64>,
}

impl<T: Real> BlockState<T> {
    /// An empty state of a block of kind `kind` (the name its `restored` checks) and shape `shape`.
    pub fn new(kind: &str, shape: LayerShape) -> Self {
        Self { kind: kind.to_string(), shape, tensors: BTreeMap::new(), scalars: BTreeMap::new() }
    }

    /// Stores the matrix `m` under `name`.
    pub fn matrix(&mut self, name: &str, m: &Array2<T>) {
        self.tensors.insert(name.to_string(), m.clone().into_dyn());
    }

    /// Stores the vector `v` under `name`.
    pub fn vector(&mut self, name: &str, v: &Array1<T>) {
        self.tensors.insert(name.to_string(), v.clone().into_dyn());
    }

    /// Stores the number `v` under `name` (an `f64` holds any `f32` or `f64` exactly).
    pub fn scalar(&mut self, name: &str, v: f64) {
        self.scalars.insert(name.to_string(), v);
    }

    /// A running average: its value and weight, and the pending sums when a
    /// step is half accumulated.
    pub fn average(&mut self, prefix: &str, avg: &MovingAverage<T>) {
        self.matrix(prefix, &avg.value().to_owned());
        self.scalar(&format!("{prefix}.weight"), avg.weight());
        if avg.pending_count() > 0.0 {
            self.matrix(&format!("{prefix}.pending"), &avg.pending().to_owned());
            self.scalar(&format!("{prefix}.pending_count"), avg.pending_count());
        }
    }

    /// `damping.kind` (0: Tikhonov, 1: factored with the trace rule, 2:
    /// factored with π = 1) and `damping.lambda`; nothing for `None`.
    pub fn damping(&mut self, damping: Option<Damping>) {
        if let Some(d) = damping {
            let kind = match d {
                Damping::Tikhonov { .. } => 0.0,
                Damping::Factored { pi: PiRule::Trace, .. } => 1.0,
                Damping::Factored { pi: PiRule::One, .. } => 2.0,
            };
            self.scalar("damping.kind", kind);
            self.scalar("damping.lambda", d.lambda());
        }
    }

    /// The counters of [`Counters`], as `count.*` scalars.
    pub fn counters(&mut self, c: &Counters) {
        self.scalar("count.refreshes", c.refreshes as f64);
        self.scalar("count.clamped", c.clamped as f64);
        self.scalar("count.f64_retries", c.f64_retries as f64);
        // Written only when there were some, so that the states of blocks
        // that never fell back are those of earlier versions.
        if c.eigen_fallbacks > 0 {
            self.scalar("count.eigen_fallbacks", c.eigen_fallbacks as f64);
        }
    }

    /// A reader that checks kind and shape, and then every entry it is asked
    /// for; [`StateReader::finish`] refuses entries nobody asked for.
    pub fn reader<'a>(&'a self, block: &'a str, kind: &str, shape: LayerShape) -> Result<StateReader<'a, T>> {
        let r = StateReader { state: self, block, used: std::cell::RefCell::new(Vec::new()) };
        if self.kind != kind {
            return Err(r.invalid(format!("the state is of a `{}` block, this block is `{kind}`", self.kind)));
        }
        if self.shape != shape {
            return Err(
                r.invalid(format!("the state is of a layer of shape {:?}, this layer is {:?}", self.shape, shape))
            );
        }
        Ok(r)
    }
}

/// Counters a block keeps for its [`BlockHealth`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Cache rebuilds.
    pub refreshes: usize,
    /// Eigenvalues clamped to zero.
    pub clamped: usize,
    /// `f32` decompositions redone in `f64`.
    pub f64_retries: usize,
    /// Damped factors inverted through their eigendecomposition.
    pub eigen_fallbacks: usize,
}

/// Reads a [`BlockState`], checking each entry (for [`CurvatureBlock::restored`](crate::CurvatureBlock::restored)).
#[derive(Debug)]
pub struct StateReader<'a, T> {
    state: &'a BlockState<T>,
    block: &'a str,
    used: std::cell::RefCell<Vec<String>>,
}

impl<T: Real> StateReader<'_, T> {
    fn invalid(&self, why: String) -> Error {
        Error::InvalidState { block: self.block.to_string(), why }
    }

    /// Whether the state has a tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.state.tensors.contains_key(name)
    }

    fn tensor(&self, name: &str, dims: &[usize]) -> Result<ArrayD<T>> {
        let t = self.state.tensors.get(name).ok_or_else(|| self.invalid(format!("`{name}` is missing")))?;
        if t.shape() != dims {
            return Err(self.invalid(format!("`{name}` has shape {:?}, expected {dims:?}", t.shape())));
        }
        if !t.iter().all(|x| x.is_finite()) {
            return Err(self.invalid(format!("`{name}` contains a non-finite value")));
        }
        self.used.borrow_mut().push(name.to_string());
        Ok(t.clone())
    }

    /// The matrix `name`, which must be `rows x cols` and finite.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<T>> {
        self.tensor(name, &[rows, cols])?
            .into_dimensionality()
            .map_err(|_| self.invalid(format!("`{name}` is not a matrix")))
    }

    /// The vector `name`, which must have `len` finite entries.
    pub fn vector(&self, name: &str, len: usize) -> Result<Array1<T>> {
        self.tensor(name, &[len])?.into_dimensionality().map_err(|_| self.invalid(format!("`{name}` is not a vector")))
    }

    /// The finite number `name`.
    pub fn scalar(&self, name: &str) -> Result<f64> {
        let v = *self.state.scalars.get(name).ok_or_else(|| self.invalid(format!("`{name}` is missing")))?;
        if !v.is_finite() {
            return Err(self.invalid(format!("`{name}` = {v} is not finite")));
        }
        self.used.borrow_mut().push(name.to_string());
        Ok(v)
    }

    /// A scalar that must be a value of `T` (it was stored from one).
    pub fn real(&self, name: &str) -> Result<T> {
        let v = self.scalar(name)?;
        let t = T::from_f64_lossy(v);
        if t.to_f64_exact() != v {
            return Err(self.invalid(format!("`{name}` = {v} is not a value of the block's precision")));
        }
        Ok(t)
    }

    /// The number `name`, which must be a count (a whole number from 0 to $9 \cdot 10^{15}$).
    pub fn count(&self, name: &str) -> Result<usize> {
        let v = self.scalar(name)?;
        if v < 0.0 || v.fract() != 0.0 || v > 9.0e15 {
            return Err(self.invalid(format!("`{name}` = {v} is not a count")));
        }
        Ok(v as usize)
    }

    /// The running average stored by [`BlockState::average`] under `prefix`, `rows x cols`, with a weight at least 0.
    pub fn average(&self, prefix: &str, rows: usize, cols: usize) -> Result<MovingAverage<T>> {
        let value = self.matrix(prefix, rows, cols)?;
        let weight = self.scalar(&format!("{prefix}.weight"))?;
        if weight < 0.0 {
            return Err(self.invalid(format!("`{prefix}.weight` = {weight} is negative")));
        }
        let pending_name = format!("{prefix}.pending");
        let (pending, count) = if self.has(&pending_name) {
            let p = self.matrix(&pending_name, rows, cols)?;
            let c = self.count(&format!("{prefix}.pending_count"))?;
            (p, c as f64)
        } else {
            (Array2::zeros((rows, cols)), 0.0)
        };
        Ok(MovingAverage::from_parts(value, weight, pending, count))
    }

    /// The damping stored by [`BlockState::damping`], checked; `None` if there is none.
    pub fn damping(&self) -> Result<Option<Damping>> {
        if !self.state.scalars.contains_key("damping.kind") {
            return Ok(None);
        }
        let lambda = self.scalar("damping.lambda")?;
        let d = match self.scalar("damping.kind")? {
            0.0 => Damping::Tikhonov { lambda },
            1.0 => Damping::Factored { lambda, pi: PiRule::Trace },
            2.0 => Damping::Factored { lambda, pi: PiRule::One },
            k => return Err(self.invalid(format!("`damping.kind` = {k} is not a damping kind"))),
        };
        d.validate().map_err(|e| self.invalid(e.to_string()))?;
        Ok(Some(d))
    }

    /// The counters stored by [`BlockState::counters`].
    pub fn counters(&self) -> Result<Counters> {
        Ok(Counters {
            refreshes: self.count("count.refreshes")?,
            clamped: self.count("count.clamped")?,
            f64_retries: self.count("count.f64_retries")?,
            eigen_fallbacks: if self.state.scalars.contains_key("count.eigen_fallbacks") {
                self.count("count.eigen_fallbacks")?
            } else {
                0
            },
        })
    }

    /// Fails if the state holds an entry that was not read.
    pub fn finish(self) -> Result<()> {
        let used = self.used.borrow();
        let unknown =
            self.state.tensors.keys().chain(self.state.scalars.keys()).find(|k| !used.iter().any(|u| u == *k));
        match unknown {
            Some(k) => Err(self.invalid(format!("unexpected entry `{k}`"))),
            None => Ok(()),
        }
    }
}

/// What a block's numbers look like: the health report of one layer.
///
/// Eigenvalues are those of the undamped curvature estimate: the products
/// $s_{B,i} s_{A,j}$ for K-FAC's eigen path, the scalings $S$ for EKFAC, the
/// entries for the diagonal block. The Cholesky path of K-FAC and the dense
/// block do not compute eigenvalues and report `None`.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BlockHealth {
    /// The block's name.
    pub name: String,
    /// Smallest eigenvalue of the curvature estimate (after clamping).
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite::option"))]
    pub min_eigenvalue: Option<f64>,
    /// Largest eigenvalue of the curvature estimate.
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite::option"))]
    pub max_eigenvalue: Option<f64>,
    /// Condition number of the damped estimate,
    /// $(\lambda_\text{max} + \lambda) / (\lambda_\text{min} + \lambda)$
    /// (infinite when both the smallest eigenvalue and the damping are 0).
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite::option"))]
    pub condition: Option<f64>,
    /// The damping $\lambda$ in use.
    #[cfg_attr(feature = "serde", serde(with = "crate::nonfinite::option"))]
    pub damping: Option<f64>,
    /// Cache rebuilds so far.
    pub refreshes: usize,
    /// Eigenvalues of the factors found below zero (round-off) and clamped
    /// to zero, summed over refreshes (for the tridiagonal chain, also the
    /// generalised eigenvalues $t$ of its conditional covariances).
    pub clamped_eigenvalues: usize,
    /// `f32` decompositions that failed and were redone in `f64`.
    pub f64_retries: usize,
    /// Statistics updates skipped because their batch or their sums were
    /// not finite (filled in by the [`Preconditioner`](crate::Preconditioner)).
    pub skipped_updates: usize,
    /// Refreshes at which this layer's link of a
    /// [`TridiagonalKfac`](crate::TridiagonalKfac) chain fell back to
    /// block-diagonal because its conditional covariance was not numerically
    /// positive definite; always 0 for the block-diagonal structure.
    pub fallbacks: usize,
    /// Damped factors whose Cholesky inverse failed, in `f32` and in `f64`
    /// (numerically singular: their round-off exceeded the damping), and
    /// that were inverted through their eigendecomposition instead, with
    /// the eigenvalues raised to the damping (K-FAC's Cholesky path).
    pub eigen_fallbacks: usize,
}

impl BlockHealth {
    /// A report with the eigenvalue range `range` of the undamped estimate
    /// and damping `lambda`.
    pub fn with_spectrum(name: &str, range: Option<(f64, f64)>, lambda: Option<f64>, c: Counters) -> Self {
        let (min, max) = match range {
            Some((lo, hi)) => (Some(lo), Some(hi)),
            None => (None, None),
        };
        let condition = match (range, lambda) {
            (Some((lo, hi)), Some(l)) => Some(if lo + l > 0.0 { (hi + l) / (lo + l) } else { f64::INFINITY }),
            _ => None,
        };
        Self {
            name: name.to_string(),
            min_eigenvalue: min,
            max_eigenvalue: max,
            condition,
            damping: lambda,
            refreshes: c.refreshes,
            clamped_eigenvalues: c.clamped,
            f64_retries: c.f64_retries,
            skipped_updates: 0,
            fallbacks: 0,
            eigen_fallbacks: c.eigen_fallbacks,
        }
    }
}

/// The smallest and largest entry of `values` as `f64` (`None` if empty).
pub fn range<'a, T: Real + 'a>(values: impl IntoIterator<Item = &'a T>) -> Option<(f64, f64)> {
    values.into_iter().fold(None, |acc, &v| {
        let v = v.to_f64_exact();
        Some(match acc {
            None => (v, v),
            Some((lo, hi)) => (lo.min(v), hi.max(v)),
        })
    })
}
