//! The diagonal block: a baseline that keeps only $\operatorname{diag}(F)$.

use ndarray::{Array2, ArrayView2, Axis, Zip, s};

use super::{CurvatureBlock, check_dense_size, check_operand, lin_err, not_ready, tikhonov_only};
use crate::average::MovingAverage;
use crate::damping::Damping;
use crate::error::{Error, Result};
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape};
use crate::state::{BlockHealth, BlockState, Counters, range};

/// The diagonal of the layer's Fisher block, as a baseline.
///
/// $$ D = E\big[(g_n \odot g_n)(\bar a_n \odot \bar a_n)^\top\big]
///      = \frac1N (G^{\odot 2})^\top \bar A^{\odot 2} \in \mathbb{R}^{d_\text{out}\times\dim A},$$
/// (with weight sharing $c\sum_n U_n^{\odot 2}$, the per-example gradients summed
/// over positions first), the exact diagonal of $F$ arranged like $\bar W$ (the "diagonal Fisher" of
/// e.g. Adam-like methods, without the square root). Preconditioning divides
/// elementwise by $D + \lambda$; only [`Damping::Tikhonov`] is supported.
#[derive(Debug, Clone)]
pub struct DiagonalBlock<T> {
    name: String,
    shape: LayerShape,
    diag: MovingAverage<T>,
    lambda: Option<f64>,
}

impl<T: Real> DiagonalBlock<T> {
    /// A new block with zero statistics.
    pub fn new(name: impl Into<String>, shape: LayerShape) -> Self {
        let (r, c) = shape.param_dims();
        Self { name: name.into(), shape, diag: MovingAverage::zeros(r, c), lambda: None }
    }

    /// The running diagonal $D$ in the $\bar W$ layout.
    pub fn diagonal(&self) -> ArrayView2<'_, T> {
        self.diag.value()
    }

    fn tikhonov(&self, damping: Damping) -> Result<f64> {
        tikhonov_only(&self.name, damping, "a diagonal is not a Kronecker product; use Damping::Tikhonov")
    }

    fn lambda_checked(&self) -> Result<T> {
        let lambda = self.lambda.ok_or_else(|| not_ready(&self.name))?;
        let l = T::from_f64_lossy(lambda);
        if self.diag.value().iter().all(|&d| d + l > T::zero()) {
            Ok(l)
        } else {
            Err(Error::Singular { block: self.name.clone(), what: "a damped diagonal entry is zero" })
        }
    }
}

impl<T: Real> CurvatureBlock<T> for DiagonalBlock<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> LayerShape {
        self.shape
    }

    fn accumulate(&mut self, la: &dyn LinAlg<T>, batch: &LayerBatch<'_, T>) -> Result<()> {
        batch.validate(&self.name, self.shape)?;
        let weight = batch.normalization_weight();
        if batch.positions > 1 {
            // The per-example gradients U_n, squared: summed over positions first.
            let mut pending = self.diag.pending_mut();
            for n in 0..batch.len() {
                let u = batch.example_gradient(n, self.shape);
                Zip::from(&mut pending).and(&u).for_each(|p, &x| *p += weight * x * x);
            }
            self.diag.add_count(batch.len());
            return Ok(());
        }
        let d_in = self.shape.d_in;
        let m = batch.grad_multiplier();
        let alpha = m * m * weight;
        let g2 = batch.grads.mapv(|x| x * x);
        let a2 = batch.inputs.mapv(|x| x * x);
        let err = lin_err(&self.name);
        let mut pending = self.diag.pending_mut();
        la.gemm(alpha, g2.t(), a2.view(), T::one(), pending.slice_mut(s![.., ..d_in])).map_err(&err)?;
        if self.shape.bias {
            let col = g2.sum_axis(Axis(0));
            let mut bias = pending.column_mut(d_in);
            Zip::from(&mut bias).and(&col).for_each(|p, &c| *p += alpha * c);
        }
        self.diag.add_count(batch.len());
        Ok(())
    }

    fn commit(&mut self, decay: f64) -> Result<()> {
        self.diag.commit(decay).map(|_| ())
    }

    fn statistics_mut(&mut self) -> Vec<&mut MovingAverage<T>> {
        vec![&mut self.diag]
    }

    fn refresh(&mut self, _la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        if !self.diag.is_initialised() {
            return Err(Error::NotReady { block: self.name.clone(), what: "no statistics yet" });
        }
        self.lambda = Some(self.tikhonov(damping)?);
        Ok(())
    }

    fn set_damping(&mut self, _la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        self.lambda = Some(self.tikhonov(damping)?);
        Ok(())
    }

    fn damping(&self) -> Option<Damping> {
        self.lambda.map(Damping::tikhonov)
    }

    fn is_ready(&self) -> bool {
        self.lambda.is_some()
    }

    fn precondition(&self, _la: &dyn LinAlg<T>, grad: ArrayView2<'_, T>) -> Result<Array2<T>> {
        check_operand(&self.name, self.shape, &grad)?;
        let l = self.lambda_checked()?;
        let mut out = grad.to_owned();
        Zip::from(&mut out).and(&self.diag.value()).for_each(|x, &d| *x /= d + l);
        Ok(out)
    }

    fn multiply(&self, _la: &dyn LinAlg<T>, v: ArrayView2<'_, T>) -> Result<Array2<T>> {
        check_operand(&self.name, self.shape, &v)?;
        let l = T::from_f64_lossy(self.lambda.ok_or_else(|| not_ready(&self.name))?);
        let mut out = v.to_owned();
        Zip::from(&mut out).and(&self.diag.value()).for_each(|x, &d| *x *= d + l);
        Ok(out)
    }

    fn to_dense(&self, _la: &dyn LinAlg<T>) -> Result<Array2<T>> {
        let p = self.shape.num_params();
        check_dense_size(&self.name, p)?;
        Ok(Array2::from_diag(&crate::shape::vec_col_major(self.diag.value())))
    }

    fn memory_bytes(&self) -> usize {
        self.diag.memory_bytes()
    }

    fn state(&self) -> BlockState<T> {
        let mut st = BlockState::new("diagonal", self.shape);
        st.average("diag", &self.diag);
        st.damping(self.damping());
        st
    }

    fn restored(&self, state: &BlockState<T>) -> Result<Box<dyn CurvatureBlock<T>>> {
        let r = state.reader(&self.name, "diagonal", self.shape)?;
        let (rows, cols) = self.shape.param_dims();
        let diag = r.average("diag", rows, cols)?;
        let lambda = match r.damping()? {
            Some(d) => Some(
                self.tikhonov(d).map_err(|e| Error::InvalidState { block: self.name.clone(), why: e.to_string() })?,
            ),
            None => None,
        };
        r.finish()?;
        Ok(Box::new(Self { name: self.name.clone(), shape: self.shape, diag, lambda }))
    }

    fn health(&self) -> BlockHealth {
        let spectrum = self.lambda.and_then(|_| range(self.diag.value().iter()));
        BlockHealth::with_spectrum(&self.name, spectrum, self.lambda, Counters::default())
    }
}
