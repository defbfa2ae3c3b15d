//! A dense layer: one row per example ($R = 1$).
//!
//! $A \mathrel{+}= \sum_n \bar a_n \bar a_n^\top$ and
//! $B \mathrel{+}= m^2 cN \sum_n g_n g_n^\top$ over the batch's rows, as
//! given; the per-example gradient is $\bar a_n \otimes m\, g_n$. This is the
//! convention of Martens & Grosse (2015), [`crate::shape`].

use ndarray::{Array2, CowArray};

use super::{FactorRows, b_alpha};
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape};

/// The rows of a dense batch: its own, unscaled inputs and gradients.
pub(super) fn factor_rows<'a, T: Real>(batch: &LayerBatch<'a, T>) -> FactorRows<'a, T> {
    FactorRows {
        inputs: CowArray::from(batch.inputs),
        a_scale: None,
        grads: CowArray::from(batch.grads),
        b_alpha: b_alpha(batch),
        examples: batch.len(),
    }
}

/// The rows $\operatorname{vec}(m\, g_n \bar a_n^\top) = \bar a_n \otimes m\, g_n$.
pub(super) fn per_example_gradients<T: Real>(batch: &LayerBatch<'_, T>, shape: LayerShape) -> Array2<T> {
    let (d_out, a_dim) = shape.param_dims();
    let mut j = Array2::zeros((batch.len(), d_out * a_dim));
    let m = batch.grad_multiplier();
    for (mut out, (a, g)) in j.outer_iter_mut().zip(batch.inputs.outer_iter().zip(batch.grads.outer_iter())) {
        for c in 0..a_dim {
            let ac = if c < shape.d_in { a[c] } else { T::one() };
            for r in 0..d_out {
                out[c * d_out + r] = ac * g[r] * m;
            }
        }
    }
    j
}
