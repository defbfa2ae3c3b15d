//! K-FAC-reduce over $R$ positions (Eschenhagen et al., 2023).
//!
//! The positions of each example are pooled first: the inputs averaged,
//! $\hat a_n = \frac1R\sum_r \bar a_{n,r}$ (the bias entry stays 1), and the
//! gradients summed, $\hat u_n = \sum_r u_{n,r}$; then
//! $A = \frac1N \sum_n \hat a_n \hat a_n^\top$ and
//! $B = c\sum_n \hat u_n \hat u_n^\top$: $N$ outer products instead of
//! expand's $NR$. Exact for deep linear networks that pool the positions
//! (sum or mean) before a per-example loss.

use ndarray::{Array2, ArrayView2, Axis, CowArray};

use super::{FactorRows, b_alpha};
use crate::scalar::Real;
use crate::shape::LayerBatch;

/// The $N$ pooled rows $\hat a_n$ and $\hat u_n$.
pub(super) fn factor_rows<'a, T: Real>(batch: &LayerBatch<'a, T>) -> FactorRows<'a, T> {
    let (a_hat, u_hat) = batch.reduced();
    FactorRows {
        inputs: CowArray::from(a_hat),
        a_scale: None,
        grads: CowArray::from(u_hat),
        b_alpha: b_alpha(batch),
        examples: batch.len(),
    }
}

impl<T: Real> LayerBatch<'_, T> {
    /// The pooled batch of [`Sharing::Reduce`](super::Sharing::Reduce):
    /// $\hat a_n = \frac1R\sum_r a_{n,r}$ ($N \times d_\text{in}$) and
    /// $\hat u_n = \sum_r$ rows of `grads` ($N \times d_\text{out}$, still
    /// scaled as `scale` says), summed in position order.
    pub fn reduced(&self) -> (Array2<T>, Array2<T>) {
        let r = self.positions.max(1);
        let inv = T::one() / T::from_usize(r).unwrap_or(T::one());
        let mut a = sum_positions(self.inputs, r);
        a.mapv_inplace(|x| x * inv);
        (a, sum_positions(self.grads, r))
    }
}

/// The sums of consecutive groups of `r` rows, in row order.
fn sum_positions<T: Real>(x: ArrayView2<'_, T>, r: usize) -> Array2<T> {
    let mut out = Array2::zeros((x.nrows() / r, x.ncols()));
    for (mut o, chunk) in out.outer_iter_mut().zip(x.axis_chunks_iter(Axis(0), r)) {
        for row in chunk.outer_iter() {
            o += &row;
        }
    }
    out
}
