//! Moving averages that remember their accumulated weight.
//!
//! A statistic $X$ (a factor, EKFAC's scalings, a dense Fisher) is estimated
//! once per step from that step's examples and folded into a running average
//! with decay $\varepsilon \in [0, 1]$:
//! $$ w_t = \varepsilon\, w_{t-1} + 1, \qquad
//!    \bar X_t = \frac{\varepsilon\, w_{t-1}}{w_t}\, \bar X_{t-1} + \frac{1}{w_t}\, \hat X_t ,$$
//! with $w_0 = 0$. This is the exponential average normalised by its total
//! weight: the first step's estimate is taken as is (no bias towards the
//! initial zero, unlike a plain exponential average), and $\varepsilon = 1$ gives
//! the arithmetic mean of all steps.
//!
//! Within a step, examples may arrive in several chunks: [`MovingAverage::pending_mut`]
//! sums them and [`MovingAverage::commit`] divides by the number of examples,
//! so $\hat X_t$ is the mean over the step's examples whatever the chunking.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::error::{Error, Result};
use crate::scalar::Real;

/// A running average of a matrix statistic; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct MovingAverage<T> {
    value: Array2<T>,
    weight: f64,
    pending: Array2<T>,
    pending_count: f64,
}

impl<T: Real> MovingAverage<T> {
    /// An empty average of `rows x cols` matrices (value zero, weight zero).
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            value: Array2::zeros((rows, cols)),
            weight: 0.0,
            pending: Array2::zeros((rows, cols)),
            pending_count: 0.0,
        }
    }

    /// The current average $\bar X_t$ (zero before the first commit).
    pub fn value(&self) -> ArrayView2<'_, T> {
        self.value.view()
    }

    /// The accumulated weight $w_t$; zero until the first commit.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Whether at least one step has been committed.
    pub fn is_initialised(&self) -> bool {
        self.weight > 0.0
    }

    /// Examples summed into the pending step so far.
    pub fn pending_count(&self) -> f64 {
        self.pending_count
    }

    /// The sum of the pending step's per-example statistics, to add a chunk
    /// to; call [`MovingAverage::add_count`] with the chunk's size.
    pub fn pending_mut(&mut self) -> ArrayViewMut2<'_, T> {
        self.pending.view_mut()
    }

    /// The sum of the pending step's per-example statistics.
    pub fn pending(&self) -> ArrayView2<'_, T> {
        self.pending.view()
    }

    /// An average from its parts (restoring a checkpoint; the caller checks them).
    pub fn from_parts(value: Array2<T>, weight: f64, pending: Array2<T>, pending_count: f64) -> Self {
        Self { value, weight, pending, pending_count }
    }

    /// Whether every pending sum is finite.
    pub fn pending_is_finite(&self) -> bool {
        self.pending.iter().all(|x| x.is_finite())
    }

    /// Sets the number of examples of the pending step (after the pending
    /// sums of several processes were added together, [`crate::comm`]).
    pub fn set_pending_count(&mut self, count: f64) {
        self.pending_count = count;
    }

    /// Drops the pending step's sums.
    pub fn discard_pending(&mut self) {
        self.pending.fill(T::zero());
        self.pending_count = 0.0;
    }

    /// Records that `n` more examples were summed into the pending step.
    pub fn add_count(&mut self, n: usize) {
        self.pending_count += n as f64;
    }

    /// Ends the step: $\hat X_t$ = pending sum / pending count is folded into
    /// the average with decay `decay`. Returns `false` (and changes nothing)
    /// when no example is pending.
    ///
    /// # Errors
    ///
    /// [`Error::NonFinite`] if the pending sum holds a non-finite value (an
    /// overflow, or non-finite data added through [`pending_mut`](Self::pending_mut)):
    /// the pending step is then dropped and the average is unchanged.
    pub fn commit(&mut self, decay: f64) -> Result<bool> {
        check_decay(decay)?;
        if self.pending_count == 0.0 {
            return Ok(false);
        }
        if !self.pending_is_finite() {
            self.discard_pending();
            return Err(Error::NonFinite { block: "moving average".into(), what: "the step's summed statistics" });
        }
        let new_weight = decay * self.weight + 1.0;
        let keep = T::from_f64_lossy(decay * self.weight / new_weight);
        let add = T::from_f64_lossy(1.0 / (new_weight * self.pending_count));
        ndarray::Zip::from(&mut self.value).and(&self.pending).for_each(|v, &p| *v = keep * *v + add * p);
        self.weight = new_weight;
        self.pending.fill(T::zero());
        self.pending_count = 0.0;
        Ok(true)
    }

    /// Replaces the average by `value` with weight zero, so that the next
    /// commit overwrites it; drops any pending sum.
    pub fn reset_to(&mut self, value: Array2<T>) {
        debug_assert_eq!(value.dim(), self.value.dim());
        self.value = value;
        self.weight = 0.0;
        self.pending.fill(T::zero());
        self.pending_count = 0.0;
    }

    /// Bytes held (the average and the pending sum).
    pub fn memory_bytes(&self) -> usize {
        (self.value.len() + self.pending.len()) * std::mem::size_of::<T>()
    }
}

/// Checks that a decay lies in $[0, 1]$ ([`Error::InvalidConfig`] otherwise).
pub fn check_decay(decay: f64) -> Result<()> {
    if (0.0..=1.0).contains(&decay) {
        Ok(())
    } else {
        Err(Error::InvalidConfig { what: "decay", value: decay.to_string(), why: "must lie in [0, 1]" })
    }
}
