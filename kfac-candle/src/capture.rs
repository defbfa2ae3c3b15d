//! The capture without hooks: a zero variable $\varepsilon$ added to a
//! layer's pre-activation $z$.
//!
//! candle keeps the gradients of its variables only, and has no module
//! hooks. A layer wrapper returns $z + \varepsilon$ with $\varepsilon = 0$ a fresh
//! [`Var`] shaped like $z$: the forward value does not change, no parameter
//! gradient changes, and $\partial L / \partial \varepsilon = \partial L / \partial z$,
//! which `GradStore::get(ε)` returns. The wrapper also keeps its input,
//! detached from the graph (candle's `detach` shares the storage: no copy).
//! candle's backward pass does not consume the graph, so one forward pass
//! serves two backward passes (the data loss and the sampled loss of the
//! true Fisher), each with its own $\varepsilon$ gradients.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Tensor, Var};

/// What one forward pass of a layer left for the statistics.
#[derive(Debug, Clone)]
pub struct Tap {
    /// The layer's input, detached from the graph.
    pub input: Tensor,
    /// The zero variable added to the pre-activation.
    pub eps: Var,
}

/// A layer's capture switch and its last tap.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    on: AtomicBool,
    tap: Mutex<Option<Tap>>,
}

impl Capture {
    /// $z + \varepsilon$ (and the tap kept) when the capture is on, else `z`.
    pub fn record(&self, input: &Tensor, z: Tensor) -> candle_core::Result<Tensor> {
        if !self.on.load(Ordering::Relaxed) {
            return Ok(z);
        }
        let eps = Var::zeros(z.shape(), z.dtype(), z.device())?;
        let out = z.add(eps.as_tensor())?;
        let tap = Tap { input: input.detach(), eps };
        *self.tap.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tap);
        Ok(out)
    }

    /// Turns the capture on or off; turning it on forgets the last tap.
    pub fn set(&self, on: bool) {
        if on {
            self.take();
        }
        self.on.store(on, Ordering::Relaxed);
    }

    /// The last tap, if a forward pass with the capture on left one.
    pub fn take(&self) -> Option<Tap> {
        self.tap.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}
