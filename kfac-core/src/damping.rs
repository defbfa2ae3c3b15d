//! Damping and hyperparameter schedules.
//!
//! K-FAC inverts an estimate $\hat F$ of the Fisher that is singular or badly
//! conditioned, and whose quadratic model is trusted only near the current
//! point. Damping adds a multiple of the identity (Martens & Grosse, 2015, §6).
//!
//! - [`Damping::Tikhonov`]: the whole block, $(\hat F + \lambda I)^{-1}$. For K-FAC
//!   this is exact in the eigenbasis, $\hat F + \lambda I = (U_A \otimes U_B)
//!   \operatorname{diag}(\operatorname{vec}(s_B s_A^\top) + \lambda) (U_A \otimes U_B)^\top$,
//!   so preconditioning divides by $s_B s_A^\top + \lambda$ elementwise. For EKFAC
//!   it divides by $S + \lambda$ (George et al., 2018, §3.2). It needs an
//!   eigendecomposition: the Cholesky path of K-FAC does not support it.
//! - [`Damping::Factored`]: factored Tikhonov (Martens & Grosse, §6.3),
//!   $(A + \pi\sqrt{\lambda}\, I) \otimes (B + \tfrac{1}{\pi}\sqrt{\lambda}\, I)$, which
//!   stays a Kronecker product and so works with the Cholesky path. The
//!   $\pi$ correction balances the two factors:
//!   $$\pi^2 = \frac{\operatorname{tr}(A)/\dim A}{\operatorname{tr}(B)/\dim B},$$
//!   ([`PiRule::Trace`]); [`PiRule::One`] takes $\pi = 1$. When a trace is zero
//!   (an all-zero factor) $\pi = 1$.
//!
//! Damping enters only when a block is preconditioned or multiplied; the
//! statistics themselves are never damped. [`Schedule`] makes any
//! hyperparameter a constant or a function of the step.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::scalar::Real;

/// How $\pi$ is chosen in [`Damping::Factored`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum PiRule {
    /// $\pi^2 = (\operatorname{tr}A/\dim A) / (\operatorname{tr}B/\dim B)$ (Martens & Grosse, eq. 8 ff.).
    #[default]
    Trace,
    /// $\pi = 1$.
    One,
}

/// The damping of a curvature block, at one step; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum Damping {
    /// $(\hat F + \lambda I)^{-1}$, exact on the whole block.
    Tikhonov {
        /// $\lambda \ge 0$.
        lambda: f64,
    },
    /// $\big((A + \pi\sqrt\lambda I) \otimes (B + \sqrt\lambda/\pi\, I)\big)^{-1}$.
    Factored {
        /// $\lambda \ge 0$.
        lambda: f64,
        /// How $\pi$ is chosen.
        pi: PiRule,
    },
}

impl Damping {
    /// Tikhonov damping of the whole block.
    pub fn tikhonov(lambda: f64) -> Self {
        Self::Tikhonov { lambda }
    }

    /// Factored Tikhonov damping with the trace $\pi$ correction.
    pub fn factored(lambda: f64) -> Self {
        Self::Factored { lambda, pi: PiRule::Trace }
    }

    /// $\lambda$.
    pub fn lambda(&self) -> f64 {
        match *self {
            Self::Tikhonov { lambda } | Self::Factored { lambda, .. } => lambda,
        }
    }

    /// Checks that $\lambda$ is finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        let l = self.lambda();
        if l.is_finite() && l >= 0.0 {
            Ok(())
        } else {
            Err(Error::InvalidConfig {
                what: "damping lambda",
                value: l.to_string(),
                why: "must be finite and non-negative",
            })
        }
    }

    /// The additive terms $(\delta_A, \delta_B) = (\pi\sqrt\lambda, \sqrt\lambda/\pi)$ of
    /// factored damping, given the factors' mean diagonals
    /// $\operatorname{tr}(A)/\dim A$ and $\operatorname{tr}(B)/\dim B$.
    /// `None` for Tikhonov damping.
    pub fn factored_terms<T: Real>(&self, mean_diag_a: T, mean_diag_b: T) -> Option<(T, T)> {
        match *self {
            Self::Tikhonov { .. } => None,
            Self::Factored { lambda, pi } => {
                let sqrt_l = lambda.sqrt();
                let (ta, tb) = (mean_diag_a.to_f64_exact(), mean_diag_b.to_f64_exact());
                let pi = match pi {
                    PiRule::One => 1.0,
                    PiRule::Trace if ta > 0.0 && tb > 0.0 && (ta / tb).is_finite() => (ta / tb).sqrt(),
                    PiRule::Trace => 1.0,
                };
                Some((T::from_f64_lossy(pi * sqrt_l), T::from_f64_lossy(sqrt_l / pi)))
            }
        }
    }
}

impl fmt::Display for Damping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tikhonov { lambda } => write!(f, "Tikhonov(lambda = {lambda})"),
            Self::Factored { lambda, pi } => write!(f, "Factored(lambda = {lambda}, pi = {pi:?})"),
        }
    }
}

/// Which kind of damping a [`DampingSchedule`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum DampingKind {
    /// [`Damping::Tikhonov`].
    #[default]
    Tikhonov,
    /// [`Damping::Factored`] with the given $\pi$ rule.
    Factored(PiRule),
}

/// A damping kind with a $\lambda$ that may change with the step.
#[derive(Debug, Clone)]
pub struct DampingSchedule {
    /// The kind of damping.
    pub kind: DampingKind,
    /// $\lambda$ as a function of the step.
    pub lambda: Schedule,
}

impl DampingSchedule {
    /// Tikhonov damping with $\lambda$ a constant or a [`Schedule`].
    pub fn tikhonov(lambda: impl Into<Schedule>) -> Self {
        Self { kind: DampingKind::Tikhonov, lambda: lambda.into() }
    }

    /// Factored damping with the trace $\pi$ and $\lambda$ a constant or a [`Schedule`].
    pub fn factored(lambda: impl Into<Schedule>) -> Self {
        Self { kind: DampingKind::Factored(PiRule::Trace), lambda: lambda.into() }
    }

    /// The damping at `step`.
    pub fn at(&self, step: usize) -> Result<Damping> {
        let lambda = self.lambda.at(step);
        let d = match self.kind {
            DampingKind::Tikhonov => Damping::Tikhonov { lambda },
            DampingKind::Factored(pi) => Damping::Factored { lambda, pi },
        };
        d.validate()?;
        Ok(d)
    }
}

/// A hyperparameter: a constant, or a function of the step (counted from 0).
///
/// ```
/// use kfac_core::Schedule;
/// let constant = Schedule::from(1e-3);
/// let decaying = Schedule::function(|step| 1e-1 * 0.99f64.powi(step as i32));
/// assert_eq!(constant.at(100), 1e-3);
/// assert!(decaying.at(10) < decaying.at(0));
/// ```
#[derive(Clone)]
pub enum Schedule {
    /// The same value at every step.
    Constant(f64),
    /// A value computed from the step.
    Function(Arc<dyn Fn(usize) -> f64 + Send + Sync>),
}

impl Schedule {
    /// A schedule from a closure.
    pub fn function(f: impl Fn(usize) -> f64 + Send + Sync + 'static) -> Self {
        Self::Function(Arc::new(f))
    }

    /// The value at `step`.
    pub fn at(&self, step: usize) -> f64 {
        match self {
            Self::Constant(v) => *v,
            Self::Function(f) => f(step),
        }
    }
}

impl From<f64> for Schedule {
    fn from(v: f64) -> Self {
        Self::Constant(v)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Constant(v) => write!(f, "Constant({v})"),
            Self::Function(_) => write!(f, "Function(..)"),
        }
    }
}
