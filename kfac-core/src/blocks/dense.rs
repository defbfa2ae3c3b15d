//! The exact dense block, for small layers.

use ndarray::{Array2, ArrayView2};

use super::{
    CurvatureBlock, bytes, check_dense_size, check_operand, lin_err, not_ready, safe_spd_inverse, tikhonov_only,
};
use crate::average::MovingAverage;
use crate::damping::Damping;
use crate::error::{Error, Result};
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape, unvec_col_major, vec_col_major};
use crate::state::{BlockHealth, BlockState, Counters};

/// The layer's exact Fisher block, from per-example gradients.
///
/// $$ F = E\big[\operatorname{vec}(g_n \bar a_n^\top)\operatorname{vec}(g_n \bar a_n^\top)^\top\big]
///      = \frac1N J^\top J, \qquad J_{n,:} = (\bar a_n \otimes g_n)^\top, $$
/// or with weight sharing $F = c\sum_n \operatorname{vec}(U_n)\operatorname{vec}(U_n)^\top$,
/// $U_n = \sum_r u_{n,r}\bar a_{n,r}^\top$ ([`crate::statistics`]),
/// a $d_\text{out}\dim A$-sided matrix: for small layers, tests and diagnostics
/// (at most [`DENSE_LIMIT`](super::DENSE_LIMIT) parameters). It is the
/// reference the Kronecker-factored blocks approximate. Preconditioning uses
/// the Cholesky inverse of $F + \lambda I$ ([`Damping::Tikhonov`] only).
#[derive(Debug, Clone)]
pub struct DenseBlock<T> {
    name: String,
    shape: LayerShape,
    fisher: MovingAverage<T>,
    lambda: Option<f64>,
    inverse: Option<Array2<T>>,
    counters: Counters,
}

impl<T: Real> DenseBlock<T> {
    /// A new block; fails with [`Error::TooLarge`] for layers with more than
    /// [`DENSE_LIMIT`](super::DENSE_LIMIT) parameters.
    pub fn new(name: impl Into<String>, shape: LayerShape) -> Result<Self> {
        let name = name.into();
        let p = shape.num_params();
        check_dense_size(&name, p)?;
        Ok(Self {
            name,
            shape,
            fisher: MovingAverage::zeros(p, p),
            lambda: None,
            inverse: None,
            counters: Counters::default(),
        })
    }

    /// The running Fisher block $F$.
    pub fn fisher(&self) -> ArrayView2<'_, T> {
        self.fisher.value()
    }

    fn tikhonov(&self, damping: Damping) -> Result<f64> {
        tikhonov_only(&self.name, damping, "the exact block is not a Kronecker product; use Damping::Tikhonov")
    }

    fn damped(&self, lambda: f64) -> Array2<T> {
        let mut f = self.fisher.value().to_owned();
        let l = T::from_f64_lossy(lambda);
        f.diag_mut().mapv_inplace(|x| x + l);
        f
    }
}

impl<T: Real> CurvatureBlock<T> for DenseBlock<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> LayerShape {
        self.shape
    }

    fn accumulate(&mut self, la: &dyn LinAlg<T>, batch: &LayerBatch<'_, T>) -> Result<()> {
        batch.validate(&self.name, self.shape)?;
        let j = batch.per_example_gradients(self.shape);
        let weight = batch.normalization_weight();
        la.gram(weight, j.view(), T::one(), self.fisher.pending_mut()).map_err(lin_err(&self.name))?;
        self.fisher.add_count(batch.len());
        Ok(())
    }

    fn commit(&mut self, decay: f64) -> Result<()> {
        self.fisher.commit(decay).map(|_| ())
    }

    fn statistics_mut(&mut self) -> Vec<&mut MovingAverage<T>> {
        vec![&mut self.fisher]
    }

    fn refresh(&mut self, la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        if !self.fisher.is_initialised() {
            return Err(Error::NotReady { block: self.name.clone(), what: "no statistics yet" });
        }
        self.set_damping(la, damping)
    }

    fn set_damping(&mut self, la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        let lambda = self.tikhonov(damping)?;
        let mut counters = self.counters;
        let inv = safe_spd_inverse(la, self.damped(lambda).view(), &self.name, "F + lambda I", &mut counters)?;
        counters.refreshes += 1;
        self.counters = counters;
        self.inverse = Some(inv);
        self.lambda = Some(lambda);
        Ok(())
    }

    fn damping(&self) -> Option<Damping> {
        self.lambda.map(Damping::tikhonov)
    }

    fn is_ready(&self) -> bool {
        self.inverse.is_some()
    }

    fn precondition(&self, la: &dyn LinAlg<T>, grad: ArrayView2<'_, T>) -> Result<Array2<T>> {
        check_operand(&self.name, self.shape, &grad)?;
        let inv = self.inverse.as_ref().ok_or_else(|| not_ready(&self.name))?;
        apply_dense(la, inv.view(), grad, self.shape, &self.name)
    }

    fn multiply(&self, la: &dyn LinAlg<T>, v: ArrayView2<'_, T>) -> Result<Array2<T>> {
        check_operand(&self.name, self.shape, &v)?;
        let lambda = self.lambda.ok_or_else(|| not_ready(&self.name))?;
        apply_dense(la, self.damped(lambda).view(), v, self.shape, &self.name)
    }

    fn to_dense(&self, _la: &dyn LinAlg<T>) -> Result<Array2<T>> {
        Ok(self.fisher.value().to_owned())
    }

    fn memory_bytes(&self) -> usize {
        self.fisher.memory_bytes() + self.inverse.as_ref().map_or(0, bytes)
    }

    fn state(&self) -> BlockState<T> {
        let mut st = BlockState::new("dense", self.shape);
        st.average("fisher", &self.fisher);
        st.damping(self.damping());
        st.counters(&self.counters);
        if let Some(inv) = &self.inverse {
            st.matrix("inverse", inv);
        }
        st
    }

    fn restored(&self, state: &BlockState<T>) -> Result<Box<dyn CurvatureBlock<T>>> {
        let r = state.reader(&self.name, "dense", self.shape)?;
        let p = self.shape.num_params();
        let fisher = r.average("fisher", p, p)?;
        let lambda = match r.damping()? {
            Some(d) => Some(
                self.tikhonov(d).map_err(|e| Error::InvalidState { block: self.name.clone(), why: e.to_string() })?,
            ),
            None => None,
        };
        let counters = r.counters()?;
        let inverse = if r.has("inverse") { Some(r.matrix("inverse", p, p)?) } else { None };
        if inverse.is_some() != lambda.is_some() {
            return Err(Error::InvalidState {
                block: self.name.clone(),
                why: "an inverse without a damping, or a damping without an inverse".into(),
            });
        }
        r.finish()?;
        Ok(Box::new(Self { name: self.name.clone(), shape: self.shape, fisher, lambda, inverse, counters }))
    }

    fn health(&self) -> BlockHealth {
        BlockHealth::with_spectrum(&self.name, None, self.lambda, self.counters)
    }
}

/// $\operatorname{unvec}(M \operatorname{vec}(V))$.
fn apply_dense<T: Real>(
    la: &dyn LinAlg<T>,
    m: ArrayView2<'_, T>,
    v: ArrayView2<'_, T>,
    shape: LayerShape,
    name: &str,
) -> Result<Array2<T>> {
    let x = vec_col_major(v);
    let x = x.view().insert_axis(ndarray::Axis(1));
    let y = la.matmul(m, x).map_err(lin_err(name))?;
    let (r, c) = shape.param_dims();
    unvec_col_major(y.column(0), r, c)
}
