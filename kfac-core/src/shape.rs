//! Layer shapes, batches of layer statistics, and the `vec` convention.
//!
//! # Conventions
//! A dense layer computes $s = W a + b$ with $W \in \mathbb{R}^{d_\text{out}\times d_\text{in}}$.
//! Its parameters are kept as one matrix $\bar W = [W \mid b]$ of shape
//! $d_\text{out} \times (d_\text{in} + 1)$, the bias as the **last column**, and
//! the layer input is extended to $\bar a = (a, 1)$. Without a bias, $\bar W = W$
//! and $\bar a = a$. Every gradient, update and preconditioned gradient in this
//! crate has the shape of $\bar W$ ([`LayerShape::param_dims`]).
//!
//! $\operatorname{vec}$ stacks the **columns** of a matrix. With that ordering the
//! per-example gradient is $\operatorname{vec}(g \bar a^\top) = \bar a \otimes g$, so the
//! layer's Fisher block is $E[\bar a \bar a^\top \otimes g g^\top] \approx A \otimes B$
//! with $A$ the input factor first, as in Martens & Grosse (2015). Dense
//! matrices returned by the blocks ([`CurvatureBlock::to_dense`](crate::CurvatureBlock::to_dense))
//! are indexed in that order: entry $j\,d_\text{out} + i$ of $\operatorname{vec}(\bar W)$ is
//! $\bar W_{ij}$.
//!
//! # Scaling
//! The training loss is the **mean** over the batch, $L = \frac1N \sum_n \ell_n$.
//! The statistics are expectations over examples,
//! $A = \frac1N \sum_n \bar a_n \bar a_n^\top$ and $B = \frac1N \sum_n g_n g_n^\top$, where
//! $g_n = \partial \ell_n / \partial s_n$ is the **per-example** gradient. So $B$ does
//! not shrink as the batch grows, and the weight gradient of $L$ is
//! $\nabla_{\bar W} L = \frac1N \sum_n g_n \bar a_n^\top$.
//!
//! Backpropagating the mean loss gives $g_n / N$ instead; say so with
//! [`GradScale::MeanLoss`] and the factor is undone. Feeding a batch twice,
//! or in two halves within one step, leaves the statistics unchanged.
//!
//! # Weight sharing
//! A layer that applies its weights at several positions of each example
//! (a convolution, a sequence layer) says so in its [`LayerBatch`]
//! ([`LayerBatch::shared`]); the approximations and their scaling are in
//! [`crate::statistics`].

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

use crate::error::{Error, Result};
use crate::scalar::Real;
pub use crate::statistics::{Normalization, Sharing};

/// The shape of a dense layer's parameter matrix $\bar W = [W \mid b]$.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LayerShape {
    /// Number of inputs $d_\text{in}$ (without the bias).
    pub d_in: usize,
    /// Number of outputs $d_\text{out}$.
    pub d_out: usize,
    /// Whether the layer has a bias (an appended constant input 1).
    pub bias: bool,
}

impl LayerShape {
    /// A layer with a bias.
    pub fn new(d_in: usize, d_out: usize) -> Self {
        Self { d_in, d_out, bias: true }
    }

    /// A layer without a bias.
    pub fn without_bias(d_in: usize, d_out: usize) -> Self {
        Self { d_in, d_out, bias: false }
    }

    /// Side of the input factor $A$: $d_\text{in} + 1$ with a bias, else $d_\text{in}$.
    pub fn a_dim(&self) -> usize {
        self.d_in + usize::from(self.bias)
    }

    /// Side of the output-gradient factor $B$: $d_\text{out}$.
    pub fn b_dim(&self) -> usize {
        self.d_out
    }

    /// Shape of $\bar W$ and of every gradient: $(d_\text{out}, \dim A)$.
    pub fn param_dims(&self) -> (usize, usize) {
        (self.d_out, self.a_dim())
    }

    /// Number of parameters, $d_\text{out} \dim A$, the side of the Fisher block.
    pub fn num_params(&self) -> usize {
        self.d_out * self.a_dim()
    }

    /// Joins a weight gradient ($d_\text{out} \times d_\text{in}$) and a bias
    /// gradient ($d_\text{out}$) into the $\bar W$ layout.
    pub fn join<T: Real>(&self, weight: ArrayView2<'_, T>, bias: Option<ArrayView1<'_, T>>) -> Result<Array2<T>> {
        check_shape("join", "weight", weight.dim(), (self.d_out, self.d_in))?;
        let mut out = Array2::zeros(self.param_dims());
        out.slice_mut(ndarray::s![.., ..self.d_in]).assign(&weight);
        match (self.bias, bias) {
            (true, Some(b)) => {
                check_shape("join", "bias", (b.len(), 1), (self.d_out, 1))?;
                out.column_mut(self.d_in).assign(&b);
            }
            (false, None) => {}
            (true, None) | (false, Some(_)) => {
                return Err(Error::InvalidConfig {
                    what: "bias",
                    value: format!("{:?}", bias.map(|b| b.len())),
                    why: "a bias gradient must be given exactly when the layer has a bias",
                });
            }
        }
        Ok(out)
    }

    /// Splits a matrix in the $\bar W$ layout into weight and (if any) bias.
    pub fn split<T: Real>(&self, w_bar: ArrayView2<'_, T>) -> Result<(Array2<T>, Option<Array1<T>>)> {
        check_shape("split", "matrix", w_bar.dim(), self.param_dims())?;
        let w = w_bar.slice(ndarray::s![.., ..self.d_in]).to_owned();
        let b = self.bias.then(|| w_bar.column(self.d_in).to_owned());
        Ok((w, b))
    }
}

/// [`Error::ShapeMismatch`] naming `block` and `what` unless `found` is `expected`.
pub fn check_shape(block: &str, what: &'static str, found: (usize, usize), expected: (usize, usize)) -> Result<()> {
    if found != expected {
        return Err(Error::ShapeMismatch { block: block.to_string(), what, expected, found });
    }
    Ok(())
}

/// [`Error::NonFinite`] naming `block` and `what` if `x` holds a NaN or an infinity.
pub fn check_finite<T: Real>(block: &str, what: &'static str, x: ArrayView2<'_, T>) -> Result<()> {
    if x.iter().all(|v| v.is_finite()) { Ok(()) } else { Err(Error::NonFinite { block: block.to_string(), what }) }
}

/// How the pre-activation gradients of a [`LayerBatch`] are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum GradScale {
    /// Each row is the gradient of its example's **unscaled** loss: $g_n$, or
    /// $u_{n,r}$ with weight sharing.
    #[default]
    PerExample,
    /// Each row is the gradient of the training loss $L = c\sum\ell$ over a
    /// batch of `batch_size` examples, as backpropagating $L$ gives it:
    /// $c\,g_n$ ($g_n / N$ for the default mean over examples; $u_{n,r}/(NR)$
    /// for a mean over positions, [`Normalization`]). The rows are divided by
    /// $c$. When a batch is fed in several chunks, `batch_size` is the size of
    /// the whole batch.
    MeanLoss {
        /// $N$, the size of the batch the loss was taken over.
        batch_size: usize,
    },
}

/// One batch of a layer's statistics: its inputs and the gradients of the
/// loss with respect to its pre-activations.
///
/// `inputs` is $NR \times d_\text{in}$ (without the bias column: the block
/// appends the constant 1 itself, without copying), `grads` is
/// $NR \times d_\text{out}$. Rows are examples ($R = 1$), or example $n$'s
/// position $r$ at row $nR + r$ with weight sharing. See the
/// [module docs](self) for the scaling and the approximations.
#[derive(Debug, Clone)]
pub struct LayerBatch<'a, T> {
    /// The layer inputs $a_n$ (or $a_{n,r}$), one per row.
    pub inputs: ArrayView2<'a, T>,
    /// The pre-activation gradients, one per row, scaled as `scale` says.
    pub grads: ArrayView2<'a, T>,
    /// How `grads` is scaled.
    pub scale: GradScale,
    /// $R$, the positions of each example ($\ge 1$; 1 for a dense layer).
    pub positions: usize,
    /// Expand or reduce (irrelevant when $R = 1$).
    pub sharing: Sharing,
    /// The loss's normalisation $c$.
    pub normalization: Normalization,
}

impl<'a, T: Real> LayerBatch<'a, T> {
    /// A batch of per-example gradients ([`GradScale::PerExample`]), one
    /// row per example.
    pub fn new(inputs: ArrayView2<'a, T>, grads: ArrayView2<'a, T>) -> Self {
        Self {
            inputs,
            grads,
            scale: GradScale::PerExample,
            positions: 1,
            sharing: Sharing::Expand,
            normalization: Normalization::MeanOverExamples,
        }
    }

    /// A batch whose gradients come from backpropagating the mean loss over
    /// these `N = inputs.nrows()` examples ([`GradScale::MeanLoss`]).
    pub fn from_mean_loss(inputs: ArrayView2<'a, T>, grads: ArrayView2<'a, T>) -> Self {
        Self { scale: GradScale::MeanLoss { batch_size: inputs.nrows() }, ..Self::new(inputs, grads) }
    }

    /// A layer that shares its weights over `positions` positions of each
    /// example: rows $nR + r$, per-example (unscaled) gradients,
    /// [`Sharing::Expand`], [`Normalization::MeanOverExamples`]; change them
    /// with the `with_` methods.
    pub fn shared(inputs: ArrayView2<'a, T>, grads: ArrayView2<'a, T>, positions: usize) -> Self {
        Self { positions, ..Self::new(inputs, grads) }
    }

    /// The same batch with the approximation `sharing`.
    pub fn with_sharing(self, sharing: Sharing) -> Self {
        Self { sharing, ..self }
    }

    /// The same batch with the loss's normalisation `normalization`.
    pub fn with_normalization(self, normalization: Normalization) -> Self {
        Self { normalization, ..self }
    }

    /// The same batch with its gradients scaled as `scale` says.
    pub fn with_scale(self, scale: GradScale) -> Self {
        Self { scale, ..self }
    }

    /// Number of examples $N$ (rows over positions).
    pub fn len(&self) -> usize {
        self.inputs.nrows() / self.positions.max(1)
    }

    /// Number of rows, $NR$.
    pub fn rows(&self) -> usize {
        self.inputs.nrows()
    }

    /// Whether the batch has no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The factor that turns a row of `grads` into $u$: 1 for per-example
    /// rows, $1/c$ for gradients of the loss ($N$, $NR$ or 1, with $N$ the
    /// loss's batch size).
    pub fn grad_multiplier(&self) -> T {
        match (self.scale, self.normalization) {
            (GradScale::PerExample, _) | (GradScale::MeanLoss { .. }, Normalization::Sum { .. }) => T::one(),
            (GradScale::MeanLoss { batch_size }, Normalization::MeanOverExamples) => {
                T::from_usize(batch_size).unwrap_or(T::one())
            }
            (GradScale::MeanLoss { batch_size }, Normalization::MeanOverPositions) => {
                T::from_usize(batch_size * self.positions.max(1)).unwrap_or(T::one())
            }
        }
    }

    /// $cN$, the weight of the per-example statistics of the gradients in
    /// $B$, the dense and diagonal blocks and EKFAC's scalings (their running
    /// averages take means over examples): 1 for a mean over examples,
    /// $1/R$ for a mean over positions, $N$ (the loss's batch size) for a sum.
    pub fn normalization_weight(&self) -> T {
        match self.normalization {
            Normalization::MeanOverExamples => T::one(),
            Normalization::MeanOverPositions => T::one() / T::from_usize(self.positions.max(1)).unwrap_or(T::one()),
            Normalization::Sum { batch_size } => T::from_usize(batch_size).unwrap_or(T::one()),
        }
    }

    /// Checks shapes (against `shape`), the positions, emptiness and
    /// finiteness.
    pub fn validate(&self, block: &str, shape: LayerShape) -> Result<()> {
        let rows = self.inputs.nrows();
        if rows == 0 {
            return Err(Error::EmptyBatch { block: block.to_string(), what: "inputs" });
        }
        if self.positions == 0 || !rows.is_multiple_of(self.positions) {
            return Err(Error::InvalidConfig {
                what: "LayerBatch::positions",
                value: format!("{} positions for {rows} rows", self.positions),
                why: "the rows must be whole examples: a positive number of positions that divides the rows",
            });
        }
        check_shape(block, "inputs", self.inputs.dim(), (rows, shape.d_in))?;
        check_shape(block, "grads", self.grads.dim(), (rows, shape.d_out))?;
        for (what, n) in [
            (
                "GradScale::MeanLoss::batch_size",
                if let GradScale::MeanLoss { batch_size } = self.scale { batch_size } else { 1 },
            ),
            (
                "Normalization::Sum::batch_size",
                if let Normalization::Sum { batch_size } = self.normalization { batch_size } else { 1 },
            ),
        ] {
            if n == 0 {
                return Err(Error::InvalidConfig { what, value: "0".into(), why: "must be positive" });
            }
        }
        check_finite(block, "inputs", self.inputs)?;
        check_finite(block, "grads", self.grads)?;
        Ok(())
    }
}

/// $\operatorname{vec}(X)$: the columns of `x` stacked into one vector.
pub fn vec_col_major<T: Real>(x: ArrayView2<'_, T>) -> Array1<T> {
    x.t().iter().copied().collect()
}

/// The inverse of [`vec_col_major`]: a `rows x cols` matrix whose columns are
/// consecutive pieces of `v`. Fails if `v.len() != rows * cols`.
pub fn unvec_col_major<T: Real>(v: ArrayView1<'_, T>, rows: usize, cols: usize) -> Result<Array2<T>> {
    check_shape("unvec", "vector", (v.len(), 1), (rows * cols, 1))?;
    let t = Array2::from_shape_vec((cols, rows), v.to_vec()).map_err(|_| Error::ShapeMismatch {
        block: "unvec".into(),
        what: "vector",
        expected: (rows * cols, 1),
        found: (v.len(), 1),
    })?;
    Ok(t.reversed_axes().as_standard_layout().into_owned())
}
