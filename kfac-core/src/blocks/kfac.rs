//! K-FAC: the Kronecker-factored block $A \otimes B$.

use ndarray::{Array1, Array2, ArrayView2, Zip};

use super::{
    CurvatureBlock, bytes, bytes1, check_dense_size, check_operand, damped_inverse, factored_damped, from_basis,
    kron_dense, lin_err, mean_diag, not_ready, outer_plus, safe_eigh, to_basis,
};
use crate::average::MovingAverage;
use crate::damping::Damping;
use crate::error::{Error, Result};
use crate::factors::KroneckerFactors;
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape};
use crate::state::{BlockHealth, BlockState, Counters, range};

/// How [`KfacBlock`] inverts its damped factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum KfacMethod {
    /// Eigendecompositions $A = U_A \operatorname{diag}(s_A) U_A^\top$,
    /// $B = U_B \operatorname{diag}(s_B) U_B^\top$. Supports both dampings; Tikhonov
    /// damping of the whole block is exact.
    #[default]
    Eigen,
    /// Cholesky inverses of the damped factors. Cheaper to refresh, but only
    /// supports [`Damping::Factored`].
    Inverse,
}

#[derive(Debug, Clone)]
enum Cache<T> {
    Empty,
    Eigen {
        ua: Array2<T>,
        sa: Array1<T>,
        ub: Array2<T>,
        sb: Array1<T>,
        mean_diag_a: T,
        mean_diag_b: T,
        /// $1 / \text{denominator}$ for the current damping, $d_\text{out} \times \dim A$.
        inv_denominator: Array2<T>,
    },
    Inverse {
        a_inv: Array2<T>,
        b_inv: Array2<T>,
        /// The damped factors $(A + \delta_A I)$, $(B + \delta_B I)$ as inverted.
        a_damped: Array2<T>,
        b_damped: Array2<T>,
    },
}

/// The K-FAC block of a dense layer (Martens & Grosse, 2015).
///
/// The layer's Fisher block is approximated by
/// $$ F \approx A \otimes B, \qquad A = E[\bar a \bar a^\top],\; B = E[g g^\top], $$
/// exact when the activations and the pre-activation gradients are
/// independent (and for a single example). Preconditioning uses the vec trick,
/// $(A \otimes B)^{-1}\operatorname{vec}(V) = \operatorname{vec}(B^{-1} V A^{-1})$, at
/// $O(d_\text{out}\dim A\,(d_\text{out} + \dim A))$ cost.
///
/// With [`KfacMethod::Eigen`] and [`Damping::Tikhonov`] the damped inverse is
/// exact: $\operatorname{vec}^{-1}\big[(A\otimes B + \lambda I)^{-1}\operatorname{vec} V\big]
/// = U_B \big[(U_B^\top V U_A) \oslash (s_B s_A^\top + \lambda)\big] U_A^\top$.
/// With [`Damping::Factored`] it is $(B + \delta_B I)^{-1} V (A + \delta_A I)^{-1}$.
/// Eigenvalues below zero (round-off) are clamped to zero.
#[derive(Debug, Clone)]
pub struct KfacBlock<T> {
    name: String,
    factors: KroneckerFactors<T>,
    method: KfacMethod,
    damping: Option<Damping>,
    cache: Cache<T>,
    counters: Counters,
}

impl<T: Real> KfacBlock<T> {
    /// A new block with zero statistics and no cache.
    pub fn new(name: impl Into<String>, shape: LayerShape, method: KfacMethod) -> Self {
        Self {
            name: name.into(),
            factors: KroneckerFactors::new(shape),
            method,
            damping: None,
            cache: Cache::Empty,
            counters: Counters::default(),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.method {
            KfacMethod::Eigen => "kfac-eigen",
            KfacMethod::Inverse => "kfac-inverse",
        }
    }

    /// The running factors.
    pub fn factors(&self) -> &KroneckerFactors<T> {
        &self.factors
    }

    /// The inversion method.
    pub fn method(&self) -> KfacMethod {
        self.method
    }

    /// The cached eigenvalues $(s_A, s_B)$ (eigen path only), ascending and clamped at zero.
    pub fn eigenvalues(&self) -> Option<(&Array1<T>, &Array1<T>)> {
        match &self.cache {
            Cache::Eigen { sa, sb, .. } => Some((sa, sb)),
            _ => None,
        }
    }

    fn eigen_denominator(&self, damping: Damping, sa: &Array1<T>, sb: &Array1<T>, ma: T, mb: T) -> Array2<T> {
        match damping.factored_terms(ma, mb) {
            Some((da, db)) => outer_plus(sb.view(), sa.view(), db, da),
            None => {
                let l = T::from_f64_lossy(damping.lambda());
                let mut d = outer_plus(sb.view(), sa.view(), T::zero(), T::zero());
                d.mapv_inplace(|x| x + l);
                d
            }
        }
    }

    fn build_inverse(&mut self, la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        let (a_damped, b_damped) =
            factored_damped(self.factors.a(), self.factors.b(), damping).ok_or_else(|| Error::UnsupportedDamping {
                block: self.name.clone(),
                damping: damping.to_string(),
                why: "the Cholesky path cannot damp the whole Kronecker product; use KfacMethod::Eigen or Damping::Factored",
            })?;
        let (da, db) = damping
            .factored_terms(mean_diag(self.factors.a()), mean_diag(self.factors.b()))
            .unwrap_or((T::zero(), T::zero()));
        let mut counters = self.counters;
        let (a_inv, a_fixed) =
            damped_inverse(la, self.factors.a(), a_damped.view(), da, &self.name, "A", &mut counters)?;
        let (b_inv, b_fixed) =
            damped_inverse(la, self.factors.b(), b_damped.view(), db, &self.name, "B", &mut counters)?;
        let a_damped = a_fixed.unwrap_or(a_damped);
        let b_damped = b_fixed.unwrap_or(b_damped);
        counters.refreshes += 1;
        self.counters = counters;
        self.cache = Cache::Inverse { a_inv, b_inv, a_damped, b_damped };
        self.damping = Some(damping);
        Ok(())
    }

    fn set_eigen_damping(&mut self, damping: Damping) -> Result<()> {
        let denom = match &self.cache {
            Cache::Eigen { sa, sb, mean_diag_a, mean_diag_b, .. } => {
                self.eigen_denominator(damping, sa, sb, *mean_diag_a, *mean_diag_b)
            }
            _ => return Err(not_ready(&self.name)),
        };
        if !denom.iter().all(|&x| x > T::zero() && x.is_finite()) {
            return Err(Error::Singular { block: self.name.clone(), what: "a damped eigenvalue product is zero" });
        }
        if let Cache::Eigen { inv_denominator, .. } = &mut self.cache {
            *inv_denominator = denom.mapv(|x| T::one() / x);
        }
        self.damping = Some(damping);
        Ok(())
    }
}

impl<T: Real> CurvatureBlock<T> for KfacBlock<T> {
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

    fn refresh(&mut self, la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        damping.validate()?;
        if !self.factors.is_initialised() {
            return Err(Error::NotReady { block: self.name.clone(), what: "no statistics yet" });
        }
        match self.method {
            KfacMethod::Inverse => self.build_inverse(la, damping),
            KfacMethod::Eigen => {
                let mut counters = self.counters;
                let ea = safe_eigh(la, self.factors.a(), &self.name, "A", &mut counters)?;
                let eb = safe_eigh(la, self.factors.b(), &self.name, "B", &mut counters)?;
                counters.refreshes += 1;
                self.counters = counters;
                self.cache = Cache::Eigen {
                    ua: ea.vectors,
                    sa: ea.values,
                    ub: eb.vectors,
                    sb: eb.values,
                    mean_diag_a: mean_diag(self.factors.a()),
                    mean_diag_b: mean_diag(self.factors.b()),
                    inv_denominator: Array2::zeros((0, 0)),
                };
                self.set_eigen_damping(damping).inspect_err(|_| self.cache = Cache::Empty)
            }
        }
    }

    fn set_damping(&mut self, la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        damping.validate()?;
        match self.method {
            KfacMethod::Eigen => self.set_eigen_damping(damping),
            KfacMethod::Inverse => self.build_inverse(la, damping),
        }
    }

    fn damping(&self) -> Option<Damping> {
        self.damping
    }

    fn is_ready(&self) -> bool {
        !matches!(self.cache, Cache::Empty)
    }

    fn precondition(&self, la: &dyn LinAlg<T>, grad: ArrayView2<'_, T>) -> Result<Array2<T>> {
        check_operand(&self.name, self.shape(), &grad)?;
        let err = lin_err(&self.name);
        match &self.cache {
            Cache::Empty => Err(not_ready(&self.name)),
            Cache::Eigen { ua, ub, inv_denominator, .. } => {
                let mut t = to_basis(la, ub.view(), ua.view(), grad).map_err(&err)?;
                t *= inv_denominator;
                from_basis(la, ub.view(), ua.view(), t.view()).map_err(&err)
            }
            Cache::Inverse { a_inv, b_inv, .. } => la.kron_matvec(a_inv.view(), b_inv.view(), grad).map_err(&err),
        }
    }

    fn multiply(&self, la: &dyn LinAlg<T>, v: ArrayView2<'_, T>) -> Result<Array2<T>> {
        check_operand(&self.name, self.shape(), &v)?;
        let err = lin_err(&self.name);
        match &self.cache {
            Cache::Empty => Err(not_ready(&self.name)),
            Cache::Eigen { ua, ub, inv_denominator, .. } => {
                let mut t = to_basis(la, ub.view(), ua.view(), v).map_err(&err)?;
                Zip::from(&mut t).and(inv_denominator).for_each(|x, &d| *x /= d);
                from_basis(la, ub.view(), ua.view(), t.view()).map_err(&err)
            }
            Cache::Inverse { a_damped, b_damped, .. } => {
                la.kron_matvec(a_damped.view(), b_damped.view(), v).map_err(&err)
            }
        }
    }

    fn to_dense(&self, _la: &dyn LinAlg<T>) -> Result<Array2<T>> {
        check_dense_size(&self.name, self.shape().num_params())?;
        Ok(kron_dense(self.factors.a(), self.factors.b()))
    }

    fn memory_bytes(&self) -> usize {
        self.factors.memory_bytes()
            + match &self.cache {
                Cache::Empty => 0,
                Cache::Eigen { ua, sa, ub, sb, inv_denominator, .. } => {
                    bytes(ua) + bytes(ub) + bytes1(sa) + bytes1(sb) + bytes(inv_denominator)
                }
                Cache::Inverse { a_inv, b_inv, a_damped, b_damped } => {
                    bytes(a_inv) + bytes(b_inv) + bytes(a_damped) + bytes(b_damped)
                }
            }
    }

    fn state(&self) -> BlockState<T> {
        let mut st = BlockState::new(self.kind_name(), self.shape());
        st.average("A", self.factors.a_average());
        st.average("B", self.factors.b_average());
        st.damping(self.damping);
        st.counters(&self.counters);
        match &self.cache {
            Cache::Empty => {}
            Cache::Eigen { ua, sa, ub, sb, mean_diag_a, mean_diag_b, inv_denominator } => {
                st.matrix("ua", ua);
                st.vector("sa", sa);
                st.matrix("ub", ub);
                st.vector("sb", sb);
                st.scalar("mean_diag_a", mean_diag_a.to_f64_exact());
                st.scalar("mean_diag_b", mean_diag_b.to_f64_exact());
                st.matrix("inv_denominator", inv_denominator);
            }
            Cache::Inverse { a_inv, b_inv, a_damped, b_damped } => {
                st.matrix("a_inv", a_inv);
                st.matrix("b_inv", b_inv);
                st.matrix("a_damped", a_damped);
                st.matrix("b_damped", b_damped);
            }
        }
        st
    }

    fn restored(&self, state: &BlockState<T>) -> Result<Box<dyn CurvatureBlock<T>>> {
        let shape = self.shape();
        let r = state.reader(&self.name, self.kind_name(), shape)?;
        let (da, db) = (shape.a_dim(), shape.b_dim());
        let (rows, cols) = shape.param_dims();
        let a = r.average("A", da, da)?;
        let b = r.average("B", db, db)?;
        let damping = r.damping()?;
        let counters = r.counters()?;
        let cache = match self.method {
            KfacMethod::Eigen if r.has("ua") => Cache::Eigen {
                ua: r.matrix("ua", da, da)?,
                sa: r.vector("sa", da)?,
                ub: r.matrix("ub", db, db)?,
                sb: r.vector("sb", db)?,
                mean_diag_a: r.real("mean_diag_a")?,
                mean_diag_b: r.real("mean_diag_b")?,
                inv_denominator: r.matrix("inv_denominator", rows, cols)?,
            },
            KfacMethod::Inverse if r.has("a_inv") => Cache::Inverse {
                a_inv: r.matrix("a_inv", da, da)?,
                b_inv: r.matrix("b_inv", db, db)?,
                a_damped: r.matrix("a_damped", da, da)?,
                b_damped: r.matrix("b_damped", db, db)?,
            },
            _ => Cache::Empty,
        };
        if !matches!(cache, Cache::Empty) && damping.is_none() {
            return Err(Error::InvalidState { block: self.name.clone(), why: "a cache without a damping".into() });
        }
        r.finish()?;
        Ok(Box::new(Self {
            name: self.name.clone(),
            factors: KroneckerFactors::from_parts(shape, a, b),
            method: self.method,
            damping,
            cache,
            counters,
        }))
    }

    fn health(&self) -> BlockHealth {
        let spectrum = match &self.cache {
            Cache::Eigen { sa, sb, .. } => match (range(sa.iter()), range(sb.iter())) {
                (Some((a0, a1)), Some((b0, b1))) => Some((a0 * b0, a1 * b1)),
                _ => None,
            },
            _ => None,
        };
        BlockHealth::with_spectrum(&self.name, spectrum, self.damping.map(|d| d.lambda()), self.counters)
    }
}
