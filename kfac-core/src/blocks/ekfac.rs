//! EKFAC: K-FAC's eigenbasis with re-estimated diagonal scalings.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip, s};
use rayon::prelude::*;

use super::{
    CurvatureBlock, bytes, bytes1, check_dense_size, check_operand, dense_in_basis, from_basis, lin_err, not_ready,
    outer_plus, safe_eigh, tikhonov_only, to_basis,
};
use crate::average::MovingAverage;
use crate::damping::Damping;
use crate::error::{Error, Result};
use crate::factors::KroneckerFactors;
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape};
use crate::state::{BlockHealth, BlockState, Counters, range};

#[derive(Debug, Clone)]
struct Basis<T> {
    ua: Array2<T>,
    ub: Array2<T>,
    sa: Array1<T>,
    sb: Array1<T>,
}

/// The EKFAC block of a dense layer (George et al., 2018).
///
/// EKFAC keeps K-FAC's eigenbasis $Q = U_A \otimes U_B$, refreshed from the
/// factors every few steps, and replaces K-FAC's eigenvalues
/// $\operatorname{vec}(s_B s_A^\top)$ by the second moment of the per-example
/// gradients in that basis,
/// $$ S = E\Big[\big(U_B^\top g_n \bar a_n^\top U_A\big)^{\odot 2}\Big]
///      = \frac1N \big((G U_B)^{\odot 2}\big)^\top \big((\bar A U_A)^{\odot 2}\big),$$
/// with $G$ ($N\times d_\text{out}$) and $\bar A$ ($N \times \dim A$) the batch's
/// gradients and inputs stacked as rows. The right-hand side is two basis
/// projections and one product: the per-example gradient matrices are never
/// formed. With weight sharing over $R$ positions the per-example gradient
/// $U_n = \sum_r u_{n,r}\bar a_{n,r}^\top$ is summed over the positions first
/// and then projected, $S = c\sum_n (U_B^\top U_n U_A)^{\odot 2}$, as
/// $(G_n U_B)^\top(\bar A_n U_A)$ from the projected rows of example $n$
/// ([`projected_squares`](super::projected_squares)), in either approximation's eigenbasis. $\operatorname{diag}(\operatorname{vec} S)$ is the Frobenius-optimal diagonal in
/// the basis $Q$, so $\|F - Q \operatorname{diag}(S) Q^\top\|_F \le \|F - A \otimes B\|_F$
/// when $S$, $A$, $B$ come from the same examples (George et al., §3.1).
///
/// $S$ is a running average of its own ([`update_scalings`](CurvatureBlock::update_scalings)),
/// usually updated every step. A [`refresh`](CurvatureBlock::refresh) computes a
/// new basis and resets $S$ to K-FAC's eigenvalues in it, with weight zero, so
/// the next scalings update replaces them by the estimate in the new basis.
/// Damping: [`Damping::Tikhonov`] only, preconditioning by
/// $U_B\big[(U_B^\top V U_A) \oslash (S + \lambda)\big]U_A^\top$.
#[derive(Debug, Clone)]
pub struct EkfacBlock<T> {
    name: String,
    factors: KroneckerFactors<T>,
    basis: Option<Basis<T>>,
    scalings: MovingAverage<T>,
    lambda: Option<f64>,
    counters: Counters,
}

impl<T: Real> EkfacBlock<T> {
    /// A new block with zero statistics and no basis.
    pub fn new(name: impl Into<String>, shape: LayerShape) -> Self {
        let (r, c) = shape.param_dims();
        Self {
            name: name.into(),
            factors: KroneckerFactors::new(shape),
            basis: None,
            scalings: MovingAverage::zeros(r, c),
            lambda: None,
            counters: Counters::default(),
        }
    }

    /// The running factors $A$, $B$.
    pub fn factors(&self) -> &KroneckerFactors<T> {
        &self.factors
    }

    /// The scalings $S$ ($d_\text{out} \times \dim A$) in the current basis.
    pub fn scalings(&self) -> ArrayView2<'_, T> {
        self.scalings.value()
    }

    /// The eigenbases $(U_A, U_B)$, once refreshed.
    pub fn basis(&self) -> Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)> {
        self.basis.as_ref().map(|b| (b.ua.view(), b.ub.view()))
    }

    fn check_damping(&self, damping: Damping) -> Result<f64> {
        tikhonov_only(&self.name, damping, "EKFAC's scalings are not a Kronecker product; use Damping::Tikhonov")
    }

    fn check_positive(&self, lambda: f64) -> Result<()> {
        let l = T::from_f64_lossy(lambda);
        if self.scalings.value().iter().all(|&s| s + l > T::zero()) {
            Ok(())
        } else {
            Err(Error::Singular { block: self.name.clone(), what: "a damped scaling is zero" })
        }
    }
}

impl<T: Real> CurvatureBlock<T> for EkfacBlock<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> LayerShape {
        self.factors.shape()
    }

    fn accumulate(&mut self, la: &dyn LinAlg<T>, batch: &LayerBatch<'_, T>) -> Result<()> {
        self.factors.accumulate(la, batch, &self.name)
    }

    fn commit(&mut self, decay: f64) -> Result<()> {
        self.factors.commit(decay).map(|_| ())
    }

    fn statistics_mut(&mut self) -> Vec<&mut MovingAverage<T>> {
        self.factors.averages_mut().into()
    }

    fn scalings_mut(&mut self) -> Vec<&mut MovingAverage<T>> {
        vec![&mut self.scalings]
    }

    fn has_scalings(&self) -> bool {
        true
    }

    fn accumulate_scalings(&mut self, la: &dyn LinAlg<T>, batch: &LayerBatch<'_, T>) -> Result<()> {
        let shape = self.shape();
        batch.validate(&self.name, shape)?;
        let basis = self.basis.as_ref().ok_or_else(|| not_ready(&self.name))?;
        let err = lin_err(&self.name);
        let (ua, ub) = (basis.ua.view(), basis.ub.view());
        // (Ā U_A) without forming Ā: X U_A[..d_in, :] plus the bias row of U_A.
        let mut pa = la.matmul(batch.inputs, ua.slice(s![..shape.d_in, ..])).map_err(&err)?;
        if shape.bias {
            let bias_row = ua.row(shape.d_in);
            pa += &bias_row.insert_axis(Axis(0));
        }
        let m = batch.grad_multiplier();
        let alpha = m * m * batch.normalization_weight();
        let mut pg = la.matmul(batch.grads, ub).map_err(&err)?;
        if batch.positions > 1 {
            let sums = projected_squares(la, pg.view(), pa.view(), batch.positions).map_err(&err)?;
            self.scalings.pending_mut().scaled_add(alpha, &sums);
        } else {
            pa.mapv_inplace(|x| x * x);
            pg.mapv_inplace(|x| x * x);
            la.gemm(alpha, pg.t(), pa.view(), T::one(), self.scalings.pending_mut()).map_err(&err)?;
        }
        self.scalings.add_count(batch.len());
        Ok(())
    }

    fn commit_scalings(&mut self, decay: f64) -> Result<()> {
        self.scalings.commit(decay).map(|_| ())
    }

    fn refresh(&mut self, la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        let lambda = self.check_damping(damping)?;
        if !self.factors.is_initialised() {
            return Err(Error::NotReady { block: self.name.clone(), what: "no statistics yet" });
        }
        let mut counters = self.counters;
        let ea = safe_eigh(la, self.factors.a(), &self.name, "A", &mut counters)?;
        let eb = safe_eigh(la, self.factors.b(), &self.name, "B", &mut counters)?;
        counters.refreshes += 1;
        self.counters = counters;
        let (sa, sb) = (ea.values, eb.values);
        self.scalings.reset_to(outer_plus(sb.view(), sa.view(), T::zero(), T::zero()));
        self.basis = Some(Basis { ua: ea.vectors, ub: eb.vectors, sa, sb });
        self.lambda = Some(lambda);
        Ok(())
    }

    fn set_damping(&mut self, _la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        let lambda = self.check_damping(damping)?;
        self.lambda = Some(lambda);
        Ok(())
    }

    fn damping(&self) -> Option<Damping> {
        self.lambda.map(Damping::tikhonov)
    }

    fn is_ready(&self) -> bool {
        self.basis.is_some()
    }

    fn precondition(&self, la: &dyn LinAlg<T>, grad: ArrayView2<'_, T>) -> Result<Array2<T>> {
        check_operand(&self.name, self.shape(), &grad)?;
        let (basis, lambda) = match (&self.basis, self.lambda) {
            (Some(b), Some(l)) => (b, l),
            _ => return Err(not_ready(&self.name)),
        };
        self.check_positive(lambda)?;
        let l = T::from_f64_lossy(lambda);
        let err = lin_err(&self.name);
        let mut t = to_basis(la, basis.ub.view(), basis.ua.view(), grad).map_err(&err)?;
        Zip::from(&mut t).and(&self.scalings.value()).for_each(|x, &s| *x /= s + l);
        from_basis(la, basis.ub.view(), basis.ua.view(), t.view()).map_err(&err)
    }

    fn multiply(&self, la: &dyn LinAlg<T>, v: ArrayView2<'_, T>) -> Result<Array2<T>> {
        check_operand(&self.name, self.shape(), &v)?;
        let (basis, lambda) = match (&self.basis, self.lambda) {
            (Some(b), Some(l)) => (b, l),
            _ => return Err(not_ready(&self.name)),
        };
        let l = T::from_f64_lossy(lambda);
        let err = lin_err(&self.name);
        let mut t = to_basis(la, basis.ub.view(), basis.ua.view(), v).map_err(&err)?;
        Zip::from(&mut t).and(&self.scalings.value()).for_each(|x, &s| *x *= s + l);
        from_basis(la, basis.ub.view(), basis.ua.view(), t.view()).map_err(&err)
    }

    fn to_dense(&self, la: &dyn LinAlg<T>) -> Result<Array2<T>> {
        check_dense_size(&self.name, self.shape().num_params())?;
        let basis = self.basis.as_ref().ok_or_else(|| not_ready(&self.name))?;
        dense_in_basis(la, basis.ua.view(), basis.ub.view(), self.scalings.value()).map_err(lin_err(&self.name))
    }

    fn memory_bytes(&self) -> usize {
        self.factors.memory_bytes()
            + self.scalings.memory_bytes()
            + self.basis.as_ref().map_or(0, |b| bytes(&b.ua) + bytes(&b.ub) + bytes1(&b.sa) + bytes1(&b.sb))
    }

    fn state(&self) -> BlockState<T> {
        let mut st = BlockState::new("ekfac", self.shape());
        st.average("A", self.factors.a_average());
        st.average("B", self.factors.b_average());
        st.average("S", &self.scalings);
        st.damping(self.damping());
        st.counters(&self.counters);
        if let Some(b) = &self.basis {
            st.matrix("ua", &b.ua);
            st.matrix("ub", &b.ub);
            st.vector("sa", &b.sa);
            st.vector("sb", &b.sb);
        }
        st
    }

    fn restored(&self, state: &BlockState<T>) -> Result<Box<dyn CurvatureBlock<T>>> {
        let shape = self.shape();
        let r = state.reader(&self.name, "ekfac", shape)?;
        let (da, db) = (shape.a_dim(), shape.b_dim());
        let (rows, cols) = shape.param_dims();
        let a = r.average("A", da, da)?;
        let b = r.average("B", db, db)?;
        let scalings = r.average("S", rows, cols)?;
        let lambda = match r.damping()? {
            Some(d) => Some(
                self.check_damping(d)
                    .map_err(|e| Error::InvalidState { block: self.name.clone(), why: e.to_string() })?,
            ),
            None => None,
        };
        let counters = r.counters()?;
        let basis = if r.has("ua") {
            Some(Basis {
                ua: r.matrix("ua", da, da)?,
                ub: r.matrix("ub", db, db)?,
                sa: r.vector("sa", da)?,
                sb: r.vector("sb", db)?,
            })
        } else {
            None
        };
        if basis.is_some() != lambda.is_some() {
            return Err(Error::InvalidState {
                block: self.name.clone(),
                why: "a basis without a damping, or a damping without a basis".into(),
            });
        }
        r.finish()?;
        Ok(Box::new(Self {
            name: self.name.clone(),
            factors: KroneckerFactors::from_parts(shape, a, b),
            basis,
            scalings,
            lambda,
            counters,
        }))
    }

    fn health(&self) -> BlockHealth {
        let spectrum = self.basis.as_ref().and_then(|_| range(self.scalings.value().iter()));
        BlockHealth::with_spectrum(&self.name, spectrum, self.lambda, self.counters)
    }
}

/// Examples per task of [`projected_squares`]: fixed, so that the sum does
/// not depend on the thread count.
const EXAMPLES_PER_TASK: usize = 8;

/// $\sum_n (P_{G,n}^\top P_{A,n})^{\odot 2}$ over the examples of `positions`
/// consecutive rows each, with $P_G$ the projected gradients
/// ($NR \times d_\text{out}$) and $P_A$ the projected inputs ($NR \times \dim A$):
/// EKFAC's per-example second moments in the basis with weight sharing.
/// Examples are summed in fixed groups in parallel, and the groups in
/// order, so the result does not depend on the thread count.
///
/// # Errors
///
/// A backend error of the products.
pub fn projected_squares<T: Real>(
    la: &dyn LinAlg<T>,
    pg: ArrayView2<'_, T>,
    pa: ArrayView2<'_, T>,
    positions: usize,
) -> std::result::Result<Array2<T>, crate::LinAlgError> {
    let seq = la.sequential().unwrap_or(la);
    let rows = positions * EXAMPLES_PER_TASK;
    let partial = |(g, a): (ArrayView2<'_, T>, ArrayView2<'_, T>)| {
        let mut sum = Array2::<T>::zeros((pg.ncols(), pa.ncols()));
        let mut p = Array2::<T>::zeros((pg.ncols(), pa.ncols()));
        for (gn, an) in g.axis_chunks_iter(Axis(0), positions).zip(a.axis_chunks_iter(Axis(0), positions)) {
            seq.gemm(T::one(), gn.t(), an, T::zero(), p.view_mut())?;
            Zip::from(&mut sum).and(&p).for_each(|s, &x| *s += x * x);
        }
        Ok(sum)
    };
    let parts: Vec<Array2<T>> = pg
        .axis_chunks_iter(Axis(0), rows)
        .into_par_iter()
        .zip(pa.axis_chunks_iter(Axis(0), rows).into_par_iter())
        .map(partial)
        .collect::<std::result::Result<_, _>>()?;
    let mut total = Array2::zeros((pg.ncols(), pa.ncols()));
    for p in &parts {
        total += p;
    }
    Ok(total)
}
