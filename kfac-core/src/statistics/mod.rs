//! What a layer's batch contributes to its curvature statistics: one file
//! per layer kind.
//!
//! The blocks ([`crate::blocks`]) invert and apply a layer's curvature;
//! what they estimate it from depends on how the layer uses its weights,
//! and that is here:
//!
//! | kind | file | a [`LayerBatch`] with |
//! |---|---|---|
//! | a dense layer, one row per example | [`dense`] | [`LayerBatch::new`], $R = 1$ |
//! | K-FAC-expand over $R$ positions | [`expand`] | [`LayerBatch::shared`], [`Sharing::Expand`] |
//! | K-FAC-reduce over $R$ positions | [`reduce`] | [`LayerBatch::shared`], [`Sharing::Reduce`] |
//! | a 2-D convolution (KFC: expand over the output locations) | [`conv`] | [`LayerBatch::shared`] of [`conv::im2col`]'s patches |
//!
//! Every kind gives the blocks two things: the rows that its Kronecker
//! factors sum ([`LayerBatch::factor_rows`]), and the per-example gradients
//! ([`LayerBatch::example_gradient`]) that EKFAC's scalings, the diagonal
//! and the dense block use. A new kind is a file here with those two
//! functions, a case in the dispatch below, and the constructor that
//! selects it (the recipe is in `CONTRIBUTING.md`).
//!
//! # Weight sharing
//! A layer may apply its weights at $R$ positions of each example: the
//! tokens of a sequence, or the $|T|$ output locations of a convolution
//! (whose inputs are then the patches, [`conv::im2col`]). Example $n$ at
//! position $r$ has the input $\bar a_{n,r}$ and the gradient $u_{n,r}$ of
//! the example's **unscaled** loss $\ell_n$ with respect to the
//! pre-activation $s_{n,r}$; its gradient is
//! $U_n = \sum_r u_{n,r} \bar a_{n,r}^\top$ and the exact Fisher block is
//! $$ F = c \sum_n \operatorname{vec}(U_n)\operatorname{vec}(U_n)^\top ,$$
//! with $c$ the loss's normalisation ([`Normalization`]): $1/N$ for a mean
//! over examples (the default), $1/(NR)$ for a mean over every position,
//! $1$ for a sum. A [`LayerBatch`] holds the $NR$ rows example by example
//! (row $nR + r$) and says $R$ ([`LayerBatch::positions`]). The two
//! Kronecker approximations of Eschenhagen et al. (2023) ([`Sharing`]):
//!
//! | | $A$ | $B$ |
//! |---|---|---|
//! | expand | $\frac{1}{NR}\sum_{n,r} \bar a_{n,r}\bar a_{n,r}^\top$ | $c\sum_{n,r} u_{n,r}u_{n,r}^\top$ |
//! | reduce | $\frac1N \sum_n \hat a_n \hat a_n^\top$, $\hat a_n = \frac1R\sum_r \bar a_{n,r}$ | $c\sum_n \hat u_n \hat u_n^\top$, $\hat u_n = \sum_r u_{n,r}$ |
//!
//! For a convolution, expand is KFC (Grosse & Martens, 2016):
//! $A \otimes B = |T|\,E[\bar p \bar p^\top] \otimes E[\partial s\,\partial s^\top]$ with $c = 1/N$,
//! normalised by the number of **output** locations. EKFAC's scalings, the
//! dense and the diagonal blocks use the per-example gradient $U_n$ itself
//! (summed over positions first, then projected or squared), whichever
//! approximation the factors use:
//! $S = c \sum_n (U_B^\top U_n U_A)^{\odot 2}$. With $R = 1$ both
//! approximations are the dense convention of [`crate::shape`], bit for bit.
//!
//! The running averages are means over examples: a batch adds its sums
//! and counts $N$ examples, so that $A$, and $B$ times $1/(cN)$, are
//! means. $B$'s rows are weighted by $cN$
//! ([`LayerBatch::normalization_weight`]): 1 for a mean over examples,
//! $1/R$ for a mean over positions, $N$ for a sum.
//!
//! Expand is exact for deep linear networks whose loss has a term per
//! position (a sequence model's per-token loss); reduce for those that
//! pool the positions (sum or mean) before a per-example loss. Which to
//! choose otherwise, and what each costs, is in the guide's page on shared
//! weights (`docs/guide/06-shared-weights.md`).

pub mod conv;
pub mod dense;
pub mod expand;
pub mod reduce;

use ndarray::{Array2, ArrayView2, CowArray, Ix2};

use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape, vec_col_major};

/// How a layer shares its weights over positions: which Kronecker
/// approximation its factors use (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum Sharing {
    /// K-FAC-expand: every position is an example of its own (KFC for
    /// convolutions). Exact for deep linear networks whose loss has a term
    /// per position.
    #[default]
    Expand,
    /// K-FAC-reduce: the positions of an example are summed (gradients) and
    /// averaged (inputs) first. Exact for deep linear networks that pool
    /// over positions before a per-example loss; needs $N$ outer products
    /// instead of $NR$.
    Reduce,
}

/// The loss's normalisation $c$ in $L = c\sum \ell$ (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum Normalization {
    /// $c = 1/N$: a mean over examples, each example's loss summing its
    /// positions (the default; the only one without weight sharing).
    #[default]
    MeanOverExamples,
    /// $c = 1/(NR)$: a mean over every position of every example (a
    /// framework's `mean` over a sequence's tokens or an image's pixels).
    MeanOverPositions,
    /// $c = 1$: a sum over the batch of `batch_size` examples (the whole
    /// batch, when it is fed in chunks).
    Sum {
        /// $N$, the size of the batch the loss was summed over.
        batch_size: usize,
    },
}

/// The rows a batch adds to its Kronecker factors:
/// $A \mathrel{+}= s_A \sum_i \bar x_i \bar x_i^\top$ over the rows $x_i$ of
/// `inputs` (with the bias entry 1 appended) and
/// $B \mathrel{+}= \beta \sum_i y_i y_i^\top$ over the rows of `grads`, both
/// counted as `examples` examples.
#[derive(Debug, Clone)]
pub struct FactorRows<'a, T> {
    /// The rows of $A$'s sum, without the bias column.
    pub inputs: CowArray<'a, T, Ix2>,
    /// $s_A$; `None` is exactly 1 (the rows are not multiplied at all).
    pub a_scale: Option<T>,
    /// The rows of $B$'s sum.
    pub grads: CowArray<'a, T, Ix2>,
    /// $\beta$.
    pub b_alpha: T,
    /// The examples the sums count, $N$.
    pub examples: usize,
}

impl<'a, T: Real> LayerBatch<'a, T> {
    /// The rows this batch's kind adds to the Kronecker factors (see the
    /// [module docs](self)).
    pub fn factor_rows(&self) -> FactorRows<'a, T> {
        match (self.positions > 1, self.sharing) {
            (false, _) => dense::factor_rows(self),
            (true, Sharing::Expand) => expand::factor_rows(self),
            (true, Sharing::Reduce) => reduce::factor_rows(self),
        }
    }

    /// Example $n$'s gradient $U_n = \sum_r u_{n,r} \bar a_{n,r}^\top$ in the
    /// $\bar W$ layout ($d_\text{out} \times \dim A$), with the rows of `grads`
    /// turned into $u$ ([`grad_multiplier`](Self::grad_multiplier)); not
    /// weighted by the normalisation. The same for expand and reduce.
    pub fn example_gradient(&self, n: usize, shape: LayerShape) -> Array2<T> {
        let r = self.positions.max(1);
        let rows = ndarray::s![n * r..(n + 1) * r, ..];
        example_gradient_of(self.inputs.slice(rows), self.grads.slice(rows), self.grad_multiplier(), shape)
    }

    /// The per-example gradients $\operatorname{vec}(U_n)$ as rows of an
    /// $N \times (d_\text{out} \dim A)$ matrix, in the `vec` order of
    /// [`crate::shape`] (for $R = 1$, $\bar a_n \otimes g_n$). Materialises
    /// $N \times$ the parameter count: meant for small layers (the dense block
    /// and tests). Not weighted by the normalisation.
    pub fn per_example_gradients(&self, shape: LayerShape) -> Array2<T> {
        if self.positions <= 1 {
            return dense::per_example_gradients(self, shape);
        }
        let (d_out, a_dim) = shape.param_dims();
        let mut j = Array2::zeros((self.len(), d_out * a_dim));
        for (i, mut out) in j.outer_iter_mut().enumerate() {
            out.assign(&vec_col_major(self.example_gradient(i, shape).view()));
        }
        j
    }
}

/// $m\, G^\top \bar X$ in the $\bar W$ layout: the gradient of one example
/// whose positions are the rows of `inputs` and `grads`.
fn example_gradient_of<T: Real>(
    inputs: ArrayView2<'_, T>,
    grads: ArrayView2<'_, T>,
    m: T,
    shape: LayerShape,
) -> Array2<T> {
    let mut u = Array2::zeros(shape.param_dims());
    ndarray::linalg::general_mat_mul(
        m,
        &grads.t(),
        &inputs,
        T::zero(),
        &mut u.slice_mut(ndarray::s![.., ..shape.d_in]),
    );
    if shape.bias {
        let col = grads.sum_axis(ndarray::Axis(0));
        u.column_mut(shape.d_in).zip_mut_with(&col, |o, &c| *o = m * c);
    }
    u
}

/// $\beta = m^2 \cdot cN$: the weight of $B$'s rows, $m$ the
/// [`grad_multiplier`](LayerBatch::grad_multiplier).
fn b_alpha<T: Real>(batch: &LayerBatch<'_, T>) -> T {
    let m = batch.grad_multiplier();
    m * m * batch.normalization_weight()
}
