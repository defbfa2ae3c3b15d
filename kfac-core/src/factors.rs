//! The Kronecker factors $A$ and $B$ of a dense layer.
//!
//! $$ A = E\left[\bar a \bar a^\top\right] \in \mathbb{R}^{\dim A \times \dim A}, \qquad
//!    B = E\left[g g^\top\right] \in \mathbb{R}^{d_\text{out} \times d_\text{out}} ,$$
//! with $\bar a$ the layer input with a 1 appended when the layer has a bias and
//! $g$ the per-example gradient of the loss with respect to the layer's
//! pre-activations (Martens & Grosse, 2015, §3). Each is a
//! [`MovingAverage`] over steps; the scaling conventions are those of the
//! [`shape`](crate::shape) module.
//!
//! The bias column is never materialised: with $X$ the $N \times d_\text{in}$
//! inputs, $\sum_n \bar a_n \bar a_n^\top = \begin{pmatrix} X^\top X & X^\top \mathbf 1 \\
//! \mathbf 1^\top X & N \end{pmatrix}$. Layers that share their weights over
//! positions use the expand or reduce factors of [`crate::statistics`].

use ndarray::{ArrayView2, Axis, s};

use crate::average::MovingAverage;
use crate::error::{Error, Result};
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape};
use crate::statistics::FactorRows;

/// The pair of running Kronecker factors of one layer.
#[derive(Debug, Clone)]
pub struct KroneckerFactors<T> {
    shape: LayerShape,
    a: MovingAverage<T>,
    b: MovingAverage<T>,
}

impl<T: Real> KroneckerFactors<T> {
    /// Zero factors for a layer of this shape.
    pub fn new(shape: LayerShape) -> Self {
        Self {
            shape,
            a: MovingAverage::zeros(shape.a_dim(), shape.a_dim()),
            b: MovingAverage::zeros(shape.b_dim(), shape.b_dim()),
        }
    }

    /// The layer's shape.
    pub fn shape(&self) -> LayerShape {
        self.shape
    }

    /// The input factor $A$ ($\dim A \times \dim A$).
    pub fn a(&self) -> ArrayView2<'_, T> {
        self.a.value()
    }

    /// The output-gradient factor $B$ ($d_\text{out} \times d_\text{out}$).
    pub fn b(&self) -> ArrayView2<'_, T> {
        self.b.value()
    }

    /// The moving average behind $A$.
    pub fn a_average(&self) -> &MovingAverage<T> {
        &self.a
    }

    /// The moving average behind $B$.
    pub fn b_average(&self) -> &MovingAverage<T> {
        &self.b
    }

    /// Both moving averages, $A$'s then $B$'s (to reduce their pending
    /// sums across processes, [`crate::comm`]).
    pub fn averages_mut(&mut self) -> [&mut MovingAverage<T>; 2] {
        [&mut self.a, &mut self.b]
    }

    /// Whether a step has been committed.
    pub fn is_initialised(&self) -> bool {
        self.a.is_initialised()
    }

    /// Adds a batch's sums to the pending step: $\sum_n \bar a_n \bar a_n^\top$
    /// and $\sum_n g_n g_n^\top$ for a dense layer, or with weight sharing
    /// those of the batch's approximation, expand or reduce
    /// ([`LayerBatch::factor_rows`], [`crate::statistics`]), counted as $N$
    /// examples. `block` names the owner in errors.
    pub fn accumulate(&mut self, la: &dyn LinAlg<T>, batch: &LayerBatch<'_, T>, block: &str) -> Result<()> {
        batch.validate(block, self.shape)?;
        self.add_rows(la, &batch.factor_rows(), block)
    }

    /// $A \mathrel{+}= s_A \sum \bar x \bar x^\top$ over the input rows and
    /// $B \mathrel{+}= \beta\, G^\top G$, both counted as `rows.examples`.
    fn add_rows(&mut self, la: &dyn LinAlg<T>, rows: &FactorRows<'_, T>, block: &str) -> Result<()> {
        let (inputs, grads, a_scale) = (rows.inputs.view(), rows.grads.view(), rows.a_scale);
        let n = rows.examples;
        let d_in = self.shape.d_in;
        let lin = |source| Error::LinAlg { block: block.to_string(), source };
        let scale = a_scale.unwrap_or(T::one());
        {
            let mut pa = self.a.pending_mut();
            la.gram(scale, inputs, T::one(), pa.slice_mut(s![..d_in, ..d_in])).map_err(lin)?;
            if self.shape.bias {
                let mut col = inputs.sum_axis(Axis(0));
                if a_scale.is_some() {
                    col.mapv_inplace(|x| x * scale);
                }
                for i in 0..d_in {
                    pa[(i, d_in)] += col[i];
                    pa[(d_in, i)] += col[i];
                }
                pa[(d_in, d_in)] += T::from_usize(inputs.nrows()).unwrap_or(T::zero()) * scale;
            }
        }
        self.a.add_count(n);
        la.gram(rows.b_alpha, grads, T::one(), self.b.pending_mut()).map_err(lin)?;
        self.b.add_count(n);
        Ok(())
    }

    /// Ends the step: folds the pending sums into both averages.
    ///
    /// # Errors
    ///
    /// [`Error::NonFinite`] if either pending sum holds a non-finite value
    /// (an overflow): both are dropped and the factors are unchanged.
    pub fn commit(&mut self, decay: f64) -> Result<bool> {
        if !(self.a.pending_is_finite() && self.b.pending_is_finite()) {
            self.discard_pending();
            return Err(Error::NonFinite { block: "Kronecker factors".into(), what: "the step's summed statistics" });
        }
        let a = self.a.commit(decay)?;
        let b = self.b.commit(decay)?;
        Ok(a && b)
    }

    /// Drops the pending step's sums of both factors.
    pub fn discard_pending(&mut self) {
        self.a.discard_pending();
        self.b.discard_pending();
    }

    /// [`accumulate`](Self::accumulate) then [`commit`](Self::commit).
    pub fn update(&mut self, la: &dyn LinAlg<T>, batch: &LayerBatch<'_, T>, decay: f64, block: &str) -> Result<()> {
        self.accumulate(la, batch, block)?;
        self.commit(decay)?;
        Ok(())
    }

    /// Factors from their averages (restoring a checkpoint; the caller checks
    /// the dimensions).
    pub fn from_parts(shape: LayerShape, a: MovingAverage<T>, b: MovingAverage<T>) -> Self {
        Self { shape, a, b }
    }

    /// Bytes held by both averages.
    pub fn memory_bytes(&self) -> usize {
        self.a.memory_bytes() + self.b.memory_bytes()
    }
}
