//! K-FAC-expand over $R$ positions (Eschenhagen et al., 2023), and KFC for
//! convolutions (Grosse & Martens, 2016).
//!
//! Every position is an example of its own:
//! $A = \frac{1}{NR}\sum_{n,r} \bar a_{n,r}\bar a_{n,r}^\top$ and
//! $B = c\sum_{n,r} u_{n,r}u_{n,r}^\top$. The batch adds the $NR$ rows, $A$'s
//! scaled by $1/R$, counted as $N$ examples; the running average divides
//! by $N$. Exact (with $c = 1/N$) for deep linear networks with a loss term
//! per position.

use ndarray::CowArray;

use super::{FactorRows, b_alpha};
use crate::scalar::Real;
use crate::shape::LayerBatch;

/// The $NR$ rows as given, $A$'s weighted by $1/R$.
pub(super) fn factor_rows<'a, T: Real>(batch: &LayerBatch<'a, T>) -> FactorRows<'a, T> {
    let inv_r = T::one() / T::from_usize(batch.positions).unwrap_or(T::one());
    FactorRows {
        inputs: CowArray::from(batch.inputs),
        a_scale: Some(inv_r),
        grads: CowArray::from(batch.grads),
        b_alpha: b_alpha(batch),
        examples: batch.len(),
    }
}
