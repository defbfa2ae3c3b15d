//! Block-tridiagonal K-FAC: Martens & Grosse's chain model of the inverse
//! Fisher (2015, §4.3 and appendix B).
//!
//! Block-diagonal K-FAC drops every covariance between layers. Martens &
//! Grosse observe that the *inverse* Fisher is much closer to
//! block-tridiagonal than to block-diagonal, and model it by a chain: a
//! directed Gaussian graphical model over the layers' gradients
//! $\mathcal D\theta_1, \dots, \mathcal D\theta_\ell$ in which layer $i$
//! depends only on layer $i+1$,
//! $$ \mathcal D\theta_i = \Psi_{i,i+1}\,\mathcal D\theta_{i+1} + \varepsilon_i, \qquad
//!    \varepsilon_i \sim \mathcal N(0, \Sigma_{i|i+1}), \qquad
//!    \mathcal D\theta_\ell \sim \mathcal N(0, \Sigma_\ell). $$
//! Its covariance $\hat F$ is fixed by asking that the blocks on the diagonal
//! and the first off-diagonal be the K-FAC blocks
//! $$ \hat F_{i,i} = A_i \otimes B_i, \qquad \hat F_{i,i+1} = A_{i,i+1} \otimes B_{i,i+1}, \qquad
//!    A_{i,i+1} = E[\bar a_i \bar a_{i+1}^\top],\; B_{i,i+1} = E[g_i g_{i+1}^\top], $$
//! which gives
//! $$ \Psi_{i,i+1} = \hat F_{i,i+1} \hat F_{i+1,i+1}^{-1} = \Psi^A_{i,i+1} \otimes \Psi^B_{i,i+1}, \qquad
//!    \Psi^A_{i,i+1} = A_{i,i+1} A_{i+1}^{-1},\; \Psi^B_{i,i+1} = B_{i,i+1} B_{i+1}^{-1}, $$
//! $$ \Sigma_{i|i+1} = A_i \otimes B_i - C^A_i \otimes C^B_i, \qquad
//!    C^A_i = \Psi^A_{i,i+1} A_{i+1} {\Psi^A_{i,i+1}}^\top,\; C^B_i = \Psi^B_{i,i+1} B_{i+1} {\Psi^B_{i,i+1}}^\top, $$
//! and $\Sigma_\ell = A_\ell \otimes B_\ell$. The inverse is
//! $$ \hat F^{-1} = \Xi^\top \Lambda\, \Xi, $$
//! where $\Xi$ has identity blocks on the diagonal and $-\Psi_{i,i+1}$ on the
//! block super-diagonal, and $\Lambda = \operatorname{diag}(\Sigma_{1|2}^{-1}, \dots,
//! \Sigma_{\ell-1|\ell}^{-1}, \Sigma_\ell^{-1})$. It is block-tridiagonal; $\hat F$
//! itself is dense (its block $(i, j)$ is $\Psi_{i,i+1}\cdots\Psi_{j-1,j}\hat F_{j,j}$ for
//! $j > i$).
//!
//! # Inverting a difference of Kronecker products
//! $\Sigma_{i|i+1}$ is never formed. With $K_A$ the generalised eigenvectors
//! of $C^A K_A = A K_A \operatorname{diag}(t_A)$ normalised so that
//! $K_A^\top A K_A = I$ (and likewise $K_B$, $t_B$),
//! $$ A \otimes B - C^A \otimes C^B = (K_A \otimes K_B)^{-\top}
//!    \big(I - \operatorname{diag}(t_A) \otimes \operatorname{diag}(t_B)\big)(K_A \otimes K_B)^{-1}, $$
//! so $\Sigma^{-1}\operatorname{vec}(U) = \operatorname{vec}\big(K_B\,[(K_B^\top U K_A) \oslash
//! (1 - t_B t_A^\top)]\,K_A^\top\big)$. $K_A = W_A E_A$ with
//! $W_A = U_A \operatorname{diag}(s_A)^{-1/2}$ from the eigendecomposition of $A$ and
//! $E_A$ the eigenvectors of $W_A^\top C^A W_A$. Applying $\hat F^{-1}$ costs, per
//! layer, two products for $\Psi$, four for $\Sigma^{-1}$ and two for
//! $\Psi^\top$: only factor-sized products.
//!
//! # Damping
//! As the paper prescribes for this variant (§6.3), factored Tikhonov damping
//! is added to the diagonal factors, $A_i + \pi_i\sqrt\lambda\,I$ and
//! $B_i + \sqrt\lambda/\pi_i\,I$, *before* $\Psi$ and $\Sigma$ are formed; the
//! cross factors are not damped. Everything above then holds with the damped
//! factors: the blocks of the damped $\hat F$ are the damped K-FAC blocks on
//! the diagonal and $A_{i,i+1} \otimes B_{i,i+1}$ beside it. Only
//! [`Damping::Factored`] is accepted.
//!
//! Because the joint covariances of $(\bar a_i, \bar a_{i+1})$ and
//! $(g_i, g_{i+1})$ are positive semidefinite (their running averages are
//! updated together, with the same weights), each damped $\Sigma_{i|i+1}$ is,
//! for $\lambda > 0$, a Schur complement of a positive definite matrix, so
//! every $1 - t_{B,r} t_{A,c} > 0$ in exact arithmetic (with $\lambda = 0$ it
//! may be only semidefinite). **Fallback**: if rounding makes the smallest
//! of them fall below $100\,\epsilon$ ($\epsilon$ the machine epsilon of `T`),
//! the chain is cut between layers $i$ and $i+1$ at that refresh
//! ($\Psi_{i,i+1} = 0$, $\Sigma_{i|i+1} = A_i \otimes B_i$ damped; layer $i$ stays
//! linked to layer $i-1$). It is counted in [`BlockHealth::fallbacks`]. A
//! damping of zero with an exactly singular diagonal factor (an eigenvalue
//! computed as zero or below) is an error ([`Error::Singular`], or
//! [`Error::Decomposition`] from the Cholesky inverse of a next layer's
//! factor); a nearly singular one gives an ill-conditioned model: use a
//! positive damping.
//!
//! # Which layers form a chain
//! The layers are given in order and consecutive layers are linked: layer
//! $i+1$ should be the layer whose input is (a function of) layer $i$'s
//! output, as in an MLP. The model is still well defined for any order (it
//! is a Gaussian chain in the order given), but it only captures the
//! covariances between neighbours in that order. A network that is not a
//! chain (branches, skip connections, shared weights) can cut the chain
//! where it branches with [`TridiagonalKfac::with_breaks`]: no cross factor
//! is kept for a cut link, and the pieces are independent chains
//! (block-diagonal between them).
//!
//! # Statistics
//! The cross factors follow the conventions of the diagonal ones
//! ([`crate::shape`]): per-example gradients $g_n$ (the [`GradScale`](crate::GradScale) of
//! each batch is undone), the bias column appended to $\bar a$ without being
//! materialised, and running averages ([`MovingAverage`]) folded with the same
//! decay at the same steps as the diagonal factors. The batches of two linked
//! layers must hold the same examples in the same order.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip, s};
use rayon::prelude::*;

use crate::average::{MovingAverage, check_decay};
use crate::blocks::{DENSE_LIMIT, check_operand, dec_err, factored_damped, lin_err, safe_eigh, safe_spd_inverse};
use crate::damping::Damping;
use crate::error::{Error, Result};
use crate::factors::KroneckerFactors;
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape};
use crate::state::{BlockHealth, BlockState, Counters};

/// The kind name of a layer's [`BlockState`].
pub const STATE_KIND: &str = "kfac-tridiagonal";

/// The cached inverse (and, for [`TridiagonalKfac::multiply`], the model
/// itself) of one layer's conditional covariance.
#[derive(Debug, Clone)]
enum Link<T> {
    /// $\Sigma = A \otimes B$ (damped): the last layer of a chain, or a link
    /// that fell back.
    Kron { a_inv: Array2<T>, b_inv: Array2<T> },
    /// $\Sigma_{i|i+1} = A \otimes B - C^A \otimes C^B$ and $\Psi = \Psi^A \otimes \Psi^B$.
    Conditional(Box<Conditional<T>>),
}

#[derive(Debug, Clone)]
struct Conditional<T> {
    psi_a: Array2<T>,
    psi_b: Array2<T>,
    c_a: Array2<T>,
    c_b: Array2<T>,
    k_a: Array2<T>,
    k_b: Array2<T>,
    /// $1 / (1 - t_B t_A^\top)$, $d_\text{out} \times \dim A$.
    inv_denominator: Array2<T>,
}

/// A layer's damped factors, their inverses when needed, and the counters
/// of computing them.
type Damped<T> = (Array2<T>, Array2<T>, Option<(Array2<T>, Array2<T>)>, Counters);

#[derive(Debug, Clone)]
struct Cache<T> {
    /// The damped diagonal factors the cache was built from.
    a_damped: Array2<T>,
    b_damped: Array2<T>,
    link: Link<T>,
}

#[derive(Debug, Clone)]
struct Layer<T> {
    name: String,
    factors: KroneckerFactors<T>,
    /// $A_{i,i+1}$ ($\dim A_i \times \dim A_{i+1}$) and $B_{i,i+1}$
    /// ($d_{\text{out},i} \times d_{\text{out},i+1}$); `None` for the last layer of a
    /// chain.
    cross: Option<(MovingAverage<T>, MovingAverage<T>)>,
    cache: Option<Cache<T>>,
    counters: Counters,
    fallbacks: usize,
}

/// Block-tridiagonal K-FAC for a chain of layers; see the [module docs](self).
///
/// ```
/// use kfac_core::{Damping, LayerBatch, LayerShape, TridiagonalKfac};
/// use kfac_linalg_faer::Faer;
/// use ndarray::Array2;
///
/// let la = Faer::sequential();
/// // A 3 -> 4 -> 2 network: two layers in a chain.
/// let shapes = [LayerShape::new(3, 4), LayerShape::new(4, 2)];
/// let mut model = TridiagonalKfac::<f64>::new(&shapes)?;
/// let x0 = Array2::from_shape_fn((16, 3), |(n, j)| ((n * 7 + j * 3) % 5) as f64 - 2.0);
/// let g0 = Array2::from_shape_fn((16, 4), |(n, j)| ((n * 3 + j) % 7) as f64 - 3.0);
/// let x1 = Array2::from_shape_fn((16, 4), |(n, j)| ((n + j * 5) % 3) as f64);
/// let g1 = Array2::from_shape_fn((16, 2), |(n, j)| ((n * 5 + j) % 4) as f64 - 1.5);
/// let batches = [LayerBatch::new(x0.view(), g0.view()), LayerBatch::new(x1.view(), g1.view())];
/// model.update_statistics(&la, &batches, 0.95)?;
/// model.refresh(&la, Damping::factored(1e-2))?;
/// let grads = [Array2::ones((4, 4)), Array2::ones((2, 5))];
/// let views: Vec<_> = grads.iter().map(|g| g.view()).collect();
/// let directions = model.precondition(&la, &views)?;
/// // `multiply` applies the damped model itself: it undoes `precondition`.
/// let back = model.multiply(&la, &directions.iter().map(|d| d.view()).collect::<Vec<_>>())?;
/// assert!((&back[0] - &grads[0]).iter().all(|e| e.abs() < 1e-8));
/// # Ok::<(), kfac_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TridiagonalKfac<T> {
    layers: Vec<Layer<T>>,
    damping: Option<Damping>,
}

impl<T: Real> TridiagonalKfac<T> {
    /// One chain over all `shapes`, layers named `layer0`, `layer1`, ...
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `shapes` is empty.
    pub fn new(shapes: &[LayerShape]) -> Result<Self> {
        Self::with_breaks(shapes, &[])
    }

    /// Chains cut after each layer listed in `breaks`: with `breaks = [k]`,
    /// layers $0..=k$ and $k+1..$ are two independent chains (no cross factor
    /// between $k$ and $k+1$).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `shapes` is empty or a break is not
    /// between two layers.
    pub fn with_breaks(shapes: &[LayerShape], breaks: &[usize]) -> Result<Self> {
        if shapes.is_empty() {
            return Err(Error::InvalidConfig {
                what: "tridiagonal layers",
                value: "0".into(),
                why: "a chain needs at least one layer",
            });
        }
        if let Some(&b) = breaks.iter().find(|&&b| b + 1 >= shapes.len()) {
            return Err(Error::InvalidConfig {
                what: "tridiagonal break",
                value: b.to_string(),
                why: "a break must be after a layer that has a next layer",
            });
        }
        let layers = shapes
            .iter()
            .enumerate()
            .map(|(i, &shape)| {
                let linked = i + 1 < shapes.len() && !breaks.contains(&i);
                let cross = linked.then(|| {
                    let next = shapes[i + 1];
                    (
                        MovingAverage::zeros(shape.a_dim(), next.a_dim()),
                        MovingAverage::zeros(shape.b_dim(), next.b_dim()),
                    )
                });
                Layer {
                    name: format!("layer{i}"),
                    factors: KroneckerFactors::new(shape),
                    cross,
                    cache: None,
                    counters: Counters::default(),
                    fallbacks: 0,
                }
            })
            .collect();
        Ok(Self { layers, damping: None })
    }

    /// The number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers (never: [`new`](Self::new) refuses it).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The layers' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().map(|l| l.name.as_str())
    }

    /// The layers' shapes.
    pub fn shapes(&self) -> Vec<LayerShape> {
        self.layers.iter().map(|l| l.factors.shape()).collect()
    }

    /// Whether layer `i` is linked to layer `i + 1`.
    pub fn is_linked(&self, i: usize) -> bool {
        self.layers.get(i).is_some_and(|l| l.cross.is_some())
    }

    /// The diagonal factors $A_i$, $B_i$ of layer `i`.
    pub fn factors(&self, i: usize) -> Option<&KroneckerFactors<T>> {
        self.layers.get(i).map(|l| &l.factors)
    }

    /// The cross factors $(A_{i,i+1}, B_{i,i+1})$ of layer `i` and the next,
    /// `None` for the last layer of a chain.
    pub fn cross_factors(&self, i: usize) -> Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)> {
        self.layers.get(i)?.cross.as_ref().map(|(a, b)| (a.value(), b.value()))
    }

    /// The damping in use, once refreshed.
    pub fn damping(&self) -> Option<Damping> {
        self.damping
    }

    /// Whether the cache is built.
    pub fn is_ready(&self) -> bool {
        self.layers.iter().all(|l| l.cache.is_some())
    }

    /// Whether the statistics have been updated at least once.
    pub fn is_initialised(&self) -> bool {
        self.layers.iter().all(|l| l.factors.is_initialised())
    }

    /// The number of parameters, $\sum_i d_{\text{out},i} \dim A_i$.
    pub fn num_params(&self) -> usize {
        self.layers.iter().map(|l| l.factors.shape().num_params()).sum()
    }

    fn check_count(&self, what: &'static str, found: usize) -> Result<()> {
        if found != self.layers.len() {
            return Err(Error::ShapeMismatch {
                block: "tridiagonal".into(),
                what,
                expected: (self.layers.len(), 1),
                found: (found, 1),
            });
        }
        Ok(())
    }

    fn check_batches(&self, batches: &[LayerBatch<'_, T>]) -> Result<()> {
        self.check_count("batches (one per layer)", batches.len())?;
        for (i, (layer, batch)) in self.layers.iter().zip(batches).enumerate() {
            batch.validate(&layer.name, layer.factors.shape())?;
            if batch.positions > 1 {
                return Err(Error::InvalidConfig {
                    what: "LayerBatch::positions",
                    value: format!("{} positions in {}", batch.positions, layer.name),
                    why: "the chain model pairs example n of a layer with example n of the next, row for row; a \
                          layer that shares its weights over positions (a convolution, a sequence) has no such \
                          pairing with its neighbours: use the block-diagonal structure",
                });
            }
            if batch.normalization != batches[0].normalization {
                return Err(Error::InvalidConfig {
                    what: "LayerBatch::normalization",
                    value: format!("{:?} in {}", batch.normalization, layer.name),
                    why: "the layers of a chain share one loss, so one normalisation",
                });
            }
            if layer.cross.is_some() && batches[i + 1].len() != batch.len() {
                return Err(Error::ShapeMismatch {
                    block: layer.name.clone(),
                    what: "the next layer's batch (linked layers need the same examples)",
                    expected: (batch.len(), 1),
                    found: (batches[i + 1].len(), 1),
                });
            }
        }
        Ok(())
    }

    /// Adds one batch per layer to the pending step: the diagonal factors'
    /// sums and the cross factors' sums
    /// $\sum_n \bar a_{i,n} \bar a_{i+1,n}^\top$, $\sum_n g_{i,n} g_{i+1,n}^\top$.
    /// Every batch is checked (shapes, emptiness, finiteness, equal sizes
    /// of linked layers) before any sum changes.
    ///
    /// # Errors
    ///
    /// Shape, emptiness and finiteness errors (nothing changed); a backend
    /// error during the products, after which the whole pending step
    /// (earlier chunks included) is dropped, so that the diagonal and cross
    /// factors keep the same weights.
    pub fn accumulate(&mut self, la: &dyn LinAlg<T>, batches: &[LayerBatch<'_, T>]) -> Result<()> {
        self.check_batches(batches)?;
        let result = self.accumulate_checked(la, batches);
        if result.is_err() {
            self.discard_pending();
        }
        result
    }

    fn discard_pending(&mut self) {
        for l in &mut self.layers {
            l.factors.discard_pending();
            if let Some((a, b)) = l.cross.as_mut() {
                a.discard_pending();
                b.discard_pending();
            }
        }
    }

    fn accumulate_checked(&mut self, la: &dyn LinAlg<T>, batches: &[LayerBatch<'_, T>]) -> Result<()> {
        for i in 0..self.layers.len() {
            let (head, tail) = self.layers.split_at_mut(i + 1);
            let layer = &mut head[i];
            layer.factors.accumulate(la, &batches[i], &layer.name)?;
            let Some((ca, cb)) = layer.cross.as_mut() else { continue };
            let (this, next) = (&batches[i], &batches[i + 1]);
            let (s0, s1) = (layer.factors.shape(), tail[0].factors.shape());
            let n = this.len();
            let err = lin_err(&layer.name);
            {
                let mut p = ca.pending_mut();
                la.gemm(T::one(), this.inputs.t(), next.inputs, T::one(), p.slice_mut(s![..s0.d_in, ..s1.d_in]))
                    .map_err(&err)?;
                if s1.bias {
                    let col = this.inputs.sum_axis(Axis(0));
                    p.slice_mut(s![..s0.d_in, s1.d_in]).zip_mut_with(&col, |x, &c| *x += c);
                }
                if s0.bias {
                    let row = next.inputs.sum_axis(Axis(0));
                    p.slice_mut(s![s0.d_in, ..s1.d_in]).zip_mut_with(&row, |x, &c| *x += c);
                }
                if s0.bias && s1.bias {
                    p[(s0.d_in, s1.d_in)] += T::from_usize(n).unwrap_or(T::zero());
                }
            }
            ca.add_count(n);
            let m = this.grad_multiplier() * next.grad_multiplier() * this.normalization_weight();
            la.gemm(m, this.grads.t(), next.grads, T::one(), cb.pending_mut()).map_err(&err)?;
            cb.add_count(n);
        }
        Ok(())
    }

    /// Ends the step: folds every pending sum into its running average with
    /// decay `decay`. All or nothing: if any pending sum is not finite (an
    /// overflow), every one is dropped and the statistics are unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::NonFinite`] for an overflow; an invalid decay.
    pub fn commit(&mut self, decay: f64) -> Result<()> {
        check_decay(decay)?;
        let finite = self.layers.iter().all(|l| {
            l.factors.a_average().pending_is_finite()
                && l.factors.b_average().pending_is_finite()
                && l.cross.as_ref().is_none_or(|(a, b)| a.pending_is_finite() && b.pending_is_finite())
        });
        if !finite {
            self.discard_pending();
            return Err(Error::NonFinite { block: "tridiagonal".into(), what: "the step's summed statistics" });
        }
        for l in &mut self.layers {
            l.factors.commit(decay)?;
            if let Some((a, b)) = l.cross.as_mut() {
                a.commit(decay)?;
                b.commit(decay)?;
            }
        }
        Ok(())
    }

    /// [`accumulate`](Self::accumulate) then [`commit`](Self::commit).
    pub fn update_statistics(&mut self, la: &dyn LinAlg<T>, batches: &[LayerBatch<'_, T>], decay: f64) -> Result<()> {
        self.accumulate(la, batches)?;
        self.commit(decay)
    }

    /// Rebuilds the cache ($\Psi$, the generalised eigenbases of every
    /// $\Sigma_{i|i+1}$, the last layers' inverses) from the current
    /// statistics, with factored damping `damping`.
    ///
    /// Layers are processed side by side on the rayon pool with
    /// [`LinAlg::concurrent_decompositions`] when the backend offers it; each
    /// decomposition is sequential, so the result does not depend on the
    /// thread count. On error the previous cache is kept.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedDamping`] for Tikhonov damping;
    /// [`Error::NotReady`] before any statistics; [`Error::Singular`] when a
    /// damped diagonal factor is singular (damping 0); decomposition
    /// failures.
    pub fn refresh(&mut self, la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        damping.validate()?;
        if matches!(damping, Damping::Tikhonov { .. }) {
            return Err(Error::UnsupportedDamping {
                block: "tridiagonal".into(),
                damping: damping.to_string(),
                why: "the chain model damps the diagonal factors before forming Psi and Sigma (Martens & Grosse, \
                      section 6.3); use Damping::Factored",
            });
        }
        if let Some(l) = self.layers.iter().find(|l| !l.factors.is_initialised()) {
            return Err(Error::NotReady { block: l.name.clone(), what: "no statistics yet" });
        }
        let cla = la.concurrent_decompositions();
        let work = cla.unwrap_or(la);
        // Phase 1: damped diagonal factors, and the inverses of those that
        // are some link's "next" layer or the last of a chain.
        let needs_inverse: Vec<bool> = (0..self.layers.len())
            .map(|i| self.layers[i].cross.is_none() || (i > 0 && self.is_linked(i - 1)))
            .collect();
        let phase1 = |(l, &inv): (&Layer<T>, &bool)| -> Result<Damped<T>> {
            let (a_d, b_d) =
                factored_damped(l.factors.a(), l.factors.b(), damping).ok_or_else(|| Error::UnsupportedDamping {
                    block: l.name.clone(),
                    damping: damping.to_string(),
                    why: "the chain model needs Damping::Factored",
                })?;
            let mut c = Counters::default();
            let invs = if inv {
                let ai = safe_spd_inverse(work, a_d.view(), &l.name, "A (damped)", &mut c)?;
                let bi = safe_spd_inverse(work, b_d.view(), &l.name, "B (damped)", &mut c)?;
                Some((ai, bi))
            } else {
                None
            };
            Ok((a_d, b_d, invs, c))
        };
        let p1: Vec<_> = if cla.is_some() {
            self.layers.par_iter().zip(needs_inverse.par_iter()).map(phase1).collect()
        } else {
            self.layers.iter().zip(needs_inverse.iter()).map(phase1).collect()
        };
        let mut p1 = p1.into_iter().collect::<Result<Vec<_>>>()?;
        // Phase 2: each layer's link.
        let tol = T::from_f64_lossy(100.0) * T::EPSILON;
        // `None`: the last layer of a chain, whose link is its own damped
        // inverses from phase 1 (moved in below, not copied).
        let phase2 = |i: usize| -> Result<(Option<Link<T>>, Counters, bool)> {
            let l = &self.layers[i];
            let (a_d, b_d, _, _) = &p1[i];
            let mut c = Counters::default();
            let Some((ca, cb)) = l.cross.as_ref() else { return Ok((None, c, false)) };
            let (_, _, next_inv, _) = &p1[i + 1];
            let Some((next_a_inv, next_b_inv)) = next_inv.as_ref() else {
                return Err(Error::NotReady { block: l.name.clone(), what: "the next layer's damped inverses" });
            };
            let err = lin_err(&l.name);
            let psi_a = work.matmul(ca.value(), next_a_inv.view()).map_err(&err)?;
            let psi_b = work.matmul(cb.value(), next_b_inv.view()).map_err(&err)?;
            let c_a = symmetric(work.matmul(psi_a.view(), ca.value().t()).map_err(&err)?);
            let c_b = symmetric(work.matmul(psi_b.view(), cb.value().t()).map_err(&err)?);
            let (k_a, t_a) = generalised_eigh(work, c_a.view(), a_d.view(), &l.name, "A", &mut c)?;
            let (k_b, t_b) = generalised_eigh(work, c_b.view(), b_d.view(), &l.name, "B", &mut c)?;
            let denom = Array2::from_shape_fn((t_b.len(), t_a.len()), |(r, q)| T::one() - t_b[r] * t_a[q]);
            if denom.iter().all(|&d| d > tol && d.is_finite()) {
                let inv_denominator = denom.mapv(|d| T::one() / d);
                let cond = Conditional { psi_a, psi_b, c_a, c_b, k_a, k_b, inv_denominator };
                Ok((Some(Link::Conditional(Box::new(cond))), c, false))
            } else {
                let ai = safe_spd_inverse(work, a_d.view(), &l.name, "A (damped)", &mut c)?;
                let bi = safe_spd_inverse(work, b_d.view(), &l.name, "B (damped)", &mut c)?;
                Ok((Some(Link::Kron { a_inv: ai, b_inv: bi }), c, true))
            }
        };
        let n = self.layers.len();
        let p2: Vec<_> =
            if cla.is_some() { (0..n).into_par_iter().map(phase2).collect() } else { (0..n).map(phase2).collect() };
        let mut p2 = p2.into_iter().collect::<Result<Vec<_>>>()?;
        // Everything is computed: only now does the model change.
        let mut links = Vec::with_capacity(n);
        for ((layer, (_, _, invs, _)), (link, _, _)) in self.layers.iter().zip(&mut p1).zip(&mut p2) {
            match (link.take(), invs.take()) {
                (Some(link), _) => links.push(link),
                (None, Some((a_inv, b_inv))) => links.push(Link::Kron { a_inv, b_inv }),
                (None, None) => {
                    return Err(Error::NotReady { block: layer.name.clone(), what: "the damped inverses" });
                }
            }
        }
        for (((layer, (a_d, b_d, _, c1)), (_, c2, fell_back)), link) in
            self.layers.iter_mut().zip(p1).zip(p2).zip(links)
        {
            layer.counters.refreshes += 1;
            layer.counters.clamped += c1.clamped + c2.clamped;
            layer.counters.f64_retries += c1.f64_retries + c2.f64_retries;
            layer.fallbacks += usize::from(fell_back);
            layer.cache = Some(Cache { a_damped: a_d, b_damped: b_d, link });
        }
        self.damping = Some(damping);
        Ok(())
    }

    /// Changes the damping: the cache depends on it, so it is rebuilt from
    /// the current statistics (as [`refresh`](Self::refresh)).
    pub fn set_damping(&mut self, la: &dyn LinAlg<T>, damping: Damping) -> Result<()> {
        self.refresh(la, damping)
    }

    fn check_operands(&self, v: &[ArrayView2<'_, T>]) -> Result<()> {
        self.check_count("gradients (one per layer)", v.len())?;
        for (l, x) in self.layers.iter().zip(v) {
            check_operand(&l.name, l.factors.shape(), x)?;
        }
        if let Some(l) = self.layers.iter().find(|l| l.cache.is_none()) {
            return Err(Error::NotReady { block: l.name.clone(), what: "the cache is not built" });
        }
        Ok(())
    }

    fn cache(&self, i: usize) -> Result<&Cache<T>> {
        let l = &self.layers[i];
        l.cache.as_ref().ok_or_else(|| Error::NotReady { block: l.name.clone(), what: "the cache is not built" })
    }

    /// $\Psi_{i,i+1} \operatorname{vec}(X) = \operatorname{vec}(\Psi^B X {\Psi^A}^\top)$, or
    /// with `transpose` $\Psi_{i,i+1}^\top$; `None` for an unlinked layer.
    fn psi(&self, la: &dyn LinAlg<T>, i: usize, x: ArrayView2<'_, T>, transpose: bool) -> Result<Option<Array2<T>>> {
        let Link::Conditional(cond) = &self.cache(i)?.link else { return Ok(None) };
        let (psi_a, psi_b) = (&cond.psi_a, &cond.psi_b);
        let err = lin_err(&self.layers[i].name);
        let out = if transpose {
            triple(la, psi_b.t(), x, psi_a.view()).map_err(&err)?
        } else {
            triple(la, psi_b.view(), x, psi_a.t()).map_err(&err)?
        };
        Ok(Some(out))
    }

    /// The damped model's inverse applied to the gradients of all layers,
    /// $\hat F^{-1} v = \Xi^\top \Lambda\, \Xi\, v$, each in the $\bar W$ layout
    /// ($d_{\text{out},i} \times \dim A_i$).
    ///
    /// # Errors
    ///
    /// Shape mismatches, non-finite operands, [`Error::NotReady`] before a
    /// refresh.
    pub fn precondition(&self, la: &dyn LinAlg<T>, grads: &[ArrayView2<'_, T>]) -> Result<Vec<Array2<T>>> {
        self.check_operands(grads)?;
        let n = self.layers.len();
        // w_i = Σ_i⁻¹ (v_i − Ψ_i v_{i+1})
        let mut w = Vec::with_capacity(n);
        for i in 0..n {
            let err = lin_err(&self.layers[i].name);
            let mut u = grads[i].to_owned();
            if let Some(p) = self.psi(la, i, grads[i + usize::from(i + 1 < n)], false)? {
                u -= &p;
            }
            let wi = match &self.cache(i)?.link {
                Link::Kron { a_inv, b_inv } => la.kron_matvec(a_inv.view(), b_inv.view(), u.view()).map_err(&err)?,
                Link::Conditional(cd) => {
                    let mut t = la.kron_matvec(cd.k_a.t(), cd.k_b.t(), u.view()).map_err(&err)?;
                    t *= &cd.inv_denominator;
                    la.kron_matvec(cd.k_a.view(), cd.k_b.view(), t.view()).map_err(&err)?
                }
            };
            w.push(wi);
        }
        // out_{i+1} = w_{i+1} − Ψ_iᵀ w_i
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut o = w[i].clone();
            if i > 0
                && let Some(p) = self.psi(la, i - 1, w[i - 1].view(), true)?
            {
                o -= &p;
            }
            out.push(o);
        }
        Ok(out)
    }

    /// The damped model applied to `v`, $\hat F v = \Xi^{-1}\Lambda^{-1}\Xi^{-\top} v$,
    /// the inverse of [`precondition`](Self::precondition), computed from the
    /// same cache with factor-sized products.
    pub fn multiply(&self, la: &dyn LinAlg<T>, v: &[ArrayView2<'_, T>]) -> Result<Vec<Array2<T>>> {
        self.check_operands(v)?;
        let n = self.layers.len();
        // x = Ξ⁻ᵀ v: x_0 = v_0, x_{i+1} = v_{i+1} + Ψ_iᵀ x_i.
        let mut x: Vec<Array2<T>> = Vec::with_capacity(n);
        for i in 0..n {
            let mut xi = v[i].to_owned();
            if i > 0
                && let Some(p) = self.psi(la, i - 1, x[i - 1].view(), true)?
            {
                xi += &p;
            }
            x.push(xi);
        }
        // y_i = Σ_i x_i.
        let mut y = Vec::with_capacity(n);
        for (i, xi) in x.iter().enumerate() {
            let c = self.cache(i)?;
            let err = lin_err(&self.layers[i].name);
            let mut yi = la.kron_matvec(c.a_damped.view(), c.b_damped.view(), xi.view()).map_err(&err)?;
            if let Link::Conditional(cd) = &c.link {
                yi -= &la.kron_matvec(cd.c_a.view(), cd.c_b.view(), xi.view()).map_err(&err)?;
            }
            y.push(yi);
        }
        // z = Ξ⁻¹ y: z_{n-1} = y_{n-1}, z_i = y_i + Ψ_i z_{i+1}.
        let mut z: Vec<Array2<T>> = y;
        for i in (0..n.saturating_sub(1)).rev() {
            if let Some(p) = self.psi(la, i, z[i + 1].view(), false)? {
                z[i] += &p;
            }
        }
        Ok(z)
    }

    /// A dense matrix whose columns are `apply` of the unit vectors, in the
    /// order of the concatenated $\operatorname{vec}(\bar W_i)$.
    fn dense_of(
        &self,
        la: &dyn LinAlg<T>,
        apply: impl Fn(&dyn LinAlg<T>, &[ArrayView2<'_, T>]) -> Result<Vec<Array2<T>>>,
    ) -> Result<Array2<T>> {
        let p = self.num_params();
        if p > DENSE_LIMIT {
            return Err(Error::TooLarge { block: "tridiagonal".into(), dim: p, limit: DENSE_LIMIT });
        }
        let shapes = self.shapes();
        let mut out = Array2::zeros((p, p));
        let mut col = 0;
        for (li, s) in shapes.iter().enumerate() {
            let (rows, cols) = s.param_dims();
            for c in 0..cols {
                for r in 0..rows {
                    let mut e: Vec<Array2<T>> = shapes.iter().map(|s| Array2::zeros(s.param_dims())).collect();
                    e[li][(r, c)] = T::one();
                    let views: Vec<_> = e.iter().map(|x| x.view()).collect();
                    let res = apply(la, &views)?;
                    let flat: Array1<T> = res.iter().flat_map(|m| crate::shape::vec_col_major(m.view())).collect();
                    out.column_mut(col).assign(&flat);
                    col += 1;
                }
            }
        }
        Ok(out)
    }

    /// The damped model $\hat F$ as a dense matrix over all parameters (tests,
    /// diagnostics; at most [`DENSE_LIMIT`] parameters).
    pub fn to_dense(&self, la: &dyn LinAlg<T>) -> Result<Array2<T>> {
        self.dense_of(la, |la, v| self.multiply(la, v))
    }

    /// The damped model's inverse $\hat F^{-1}$ as a dense matrix (tests,
    /// diagnostics; at most [`DENSE_LIMIT`] parameters).
    pub fn to_dense_inverse(&self, la: &dyn LinAlg<T>) -> Result<Array2<T>> {
        self.dense_of(la, |la, v| self.precondition(la, v))
    }

    /// Bytes held by statistics and cache.
    pub fn memory_bytes(&self) -> usize {
        let b = |a: &Array2<T>| a.len() * std::mem::size_of::<T>();
        self.layers
            .iter()
            .map(|l| {
                l.factors.memory_bytes()
                    + l.cross.as_ref().map_or(0, |(a, c)| a.memory_bytes() + c.memory_bytes())
                    + l.cache.as_ref().map_or(0, |c| {
                        b(&c.a_damped)
                            + b(&c.b_damped)
                            + match &c.link {
                                Link::Kron { a_inv, b_inv } => b(a_inv) + b(b_inv),
                                Link::Conditional(cd) => {
                                    b(&cd.psi_a)
                                        + b(&cd.psi_b)
                                        + b(&cd.c_a)
                                        + b(&cd.c_b)
                                        + b(&cd.k_a)
                                        + b(&cd.k_b)
                                        + b(&cd.inv_denominator)
                                }
                            }
                    })
            })
            .sum()
    }

    /// The health report of every layer: damping, refreshes, the safeguards'
    /// counters and [`BlockHealth::fallbacks`]. No eigenvalue range (the
    /// chain's spectrum is not computed).
    pub fn health(&self) -> Vec<BlockHealth> {
        self.layers
            .iter()
            .map(|l| BlockHealth {
                fallbacks: l.fallbacks,
                ..BlockHealth::with_spectrum(&l.name, None, self.damping.map(|d| d.lambda()), l.counters)
            })
            .collect()
    }

    /// The complete state, one [`BlockState`] of kind [`STATE_KIND`] per
    /// layer: the running averages (`A`, `B`, and `A_next`, `B_next` for a
    /// linked layer), the damping, the counters and the cache.
    pub fn state(&self) -> Vec<BlockState<T>> {
        self.layers
            .iter()
            .map(|l| {
                let mut st = BlockState::new(STATE_KIND, l.factors.shape());
                st.average("A", l.factors.a_average());
                st.average("B", l.factors.b_average());
                if let Some((a, b)) = &l.cross {
                    st.average("A_next", a);
                    st.average("B_next", b);
                }
                st.damping(self.damping);
                st.counters(&l.counters);
                st.scalar("count.fallbacks", l.fallbacks as f64);
                if let Some(c) = &l.cache {
                    st.matrix("a_damped", &c.a_damped);
                    st.matrix("b_damped", &c.b_damped);
                    match &c.link {
                        Link::Kron { a_inv, b_inv } => {
                            st.matrix("a_inv", a_inv);
                            st.matrix("b_inv", b_inv);
                        }
                        Link::Conditional(cd) => {
                            st.matrix("psi_a", &cd.psi_a);
                            st.matrix("psi_b", &cd.psi_b);
                            st.matrix("c_a", &cd.c_a);
                            st.matrix("c_b", &cd.c_b);
                            st.matrix("k_a", &cd.k_a);
                            st.matrix("k_b", &cd.k_b);
                            st.matrix("inv_denominator", &cd.inv_denominator);
                        }
                    }
                }
                st
            })
            .collect()
    }

    /// A model holding `states` (from [`state`](Self::state) of a model with
    /// the same layers and breaks), checked completely first; `self` is
    /// unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] naming what does not fit.
    pub fn restored(&self, states: &[BlockState<T>]) -> Result<Self> {
        let invalid = |why: String| Error::InvalidState { block: "tridiagonal".into(), why };
        if states.len() != self.layers.len() {
            return Err(invalid(format!("{} layer states for {} layers", states.len(), self.layers.len())));
        }
        let mut damping = None;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, (l, st)) in self.layers.iter().zip(states).enumerate() {
            let shape = l.factors.shape();
            let r = st.reader(&l.name, STATE_KIND, shape)?;
            let (da, db) = (shape.a_dim(), shape.b_dim());
            let a = r.average("A", da, da)?;
            let b = r.average("B", db, db)?;
            let cross = match (&l.cross, r.has("A_next")) {
                (Some(_), true) => {
                    let next = self.layers[i + 1].factors.shape();
                    Some((r.average("A_next", da, next.a_dim())?, r.average("B_next", db, next.b_dim())?))
                }
                (None, false) => None,
                _ => return Err(invalid(format!("{}: the state's chain links differ from this model's", l.name))),
            };

            let d = r.damping()?;
            if let Some(Damping::Tikhonov { .. }) = d {
                return Err(invalid(format!("{}: Tikhonov damping; the chain model is factored", l.name)));
            }
            if i > 0 && d != damping {
                return Err(invalid(format!("{}: the layers' dampings differ", l.name)));
            }
            damping = d;
            let counters = r.counters()?;
            let fallbacks = r.count("count.fallbacks")?;
            let cache = if r.has("a_damped") {
                let a_damped = r.matrix("a_damped", da, da)?;
                let b_damped = r.matrix("b_damped", db, db)?;
                let link = if r.has("psi_a") {
                    let next = match &cross {
                        Some(_) => self.layers[i + 1].factors.shape(),
                        None => return Err(invalid(format!("{}: a link cache for an unlinked layer", l.name))),
                    };
                    Link::Conditional(Box::new(Conditional {
                        psi_a: r.matrix("psi_a", da, next.a_dim())?,
                        psi_b: r.matrix("psi_b", db, next.b_dim())?,
                        c_a: r.matrix("c_a", da, da)?,
                        c_b: r.matrix("c_b", db, db)?,
                        k_a: r.matrix("k_a", da, da)?,
                        k_b: r.matrix("k_b", db, db)?,
                        inv_denominator: r.matrix("inv_denominator", db, da)?,
                    }))
                } else {
                    Link::Kron { a_inv: r.matrix("a_inv", da, da)?, b_inv: r.matrix("b_inv", db, db)? }
                };
                Some(Cache { a_damped, b_damped, link })
            } else {
                None
            };
            if cache.is_some() && d.is_none() {
                return Err(invalid(format!("{}: a cache without a damping", l.name)));
            }
            r.finish()?;
            layers.push(Layer {
                name: l.name.clone(),
                factors: KroneckerFactors::from_parts(shape, a, b),
                cross,
                cache,
                counters,
                fallbacks,
            });
        }
        // Every average is updated at the same steps with the same decay: the
        // model's positive definiteness rests on equal weights.
        let weights = |l: &Layer<T>| {
            let mut w = vec![l.factors.a_average(), l.factors.b_average()];
            if let Some((a, b)) = &l.cross {
                w.extend([a, b]);
            }
            w.into_iter().map(|m| (m.weight(), m.pending_count())).collect::<Vec<_>>()
        };
        let first = weights(&layers[0])[0];
        if let Some(l) = layers.iter().find(|l| weights(l).iter().any(|&w| w != first)) {
            return Err(invalid(format!(
                "{}: the running averages' weights differ (all factors of a chain are updated together)",
                l.name
            )));
        }
        let ready = layers.iter().filter(|l| l.cache.is_some()).count();
        if ready != 0 && ready != layers.len() {
            return Err(invalid("some layers have a cache and others do not".into()));
        }
        Ok(Self { layers, damping })
    }
}

/// $L X R$, associated the cheaper way: the factors of neighbouring layers
/// can differ in size by a factor of 30 (the autoencoder's 250 → 30 → 250),
/// and the two orders then differ in cost by as much.
fn triple<T: Real>(
    la: &dyn LinAlg<T>,
    l: ArrayView2<'_, T>,
    x: ArrayView2<'_, T>,
    r: ArrayView2<'_, T>,
) -> std::result::Result<Array2<T>, crate::LinAlgError> {
    let left_first = l.nrows() * l.ncols() * x.ncols() + l.nrows() * x.ncols() * r.ncols();
    let right_first = x.nrows() * x.ncols() * r.ncols() + l.nrows() * l.ncols() * r.ncols();
    if left_first <= right_first {
        let t = la.matmul(l, x)?;
        la.matmul(t.view(), r)
    } else {
        let t = la.matmul(x, r)?;
        la.matmul(l, t.view())
    }
}

/// $\tfrac12(M + M^\top)$: products that are symmetric in exact arithmetic.
fn symmetric<T: Real>(m: Array2<T>) -> Array2<T> {
    let half = T::from_f64_lossy(0.5);
    let mut out = m.clone();
    Zip::from(&mut out).and(&m.t()).for_each(|o, &t| *o = half * (*o + t));
    out
}

/// The generalised eigenproblem $C K = A K \operatorname{diag}(t)$ for
/// symmetric $C \succeq 0$ and $A \succ 0$, with $K^\top A K = I$:
/// $K = W E$, $W = U_A \operatorname{diag}(s_A)^{-1/2}$ and $E$ the eigenvectors
/// of $W^\top C W$. Negative $t$ (round-off) are clamped to zero and counted.
fn generalised_eigh<T: Real>(
    la: &dyn LinAlg<T>,
    c: ArrayView2<'_, T>,
    a: ArrayView2<'_, T>,
    block: &str,
    what: &'static str,
    counters: &mut Counters,
) -> Result<(Array2<T>, Array1<T>)> {
    let ea = safe_eigh(la, a, block, what, counters)?;
    if ea.values.iter().any(|&s| s <= T::zero()) {
        return Err(Error::Singular {
            block: block.to_string(),
            what: "a damped diagonal factor of the chain has a zero eigenvalue",
        });
    }
    let mut w = ea.vectors;
    for (mut col, &s) in w.columns_mut().into_iter().zip(ea.values.iter()) {
        let r = T::one() / s.sqrt();
        col.mapv_inplace(|x| x * r);
    }
    let err = lin_err(block);
    let cw = la.matmul(c, w.view()).map_err(&err)?;
    let m = symmetric(la.matmul(w.t(), cw.view()).map_err(&err)?);
    let em = safe_eigh(la, m.view(), block, what, counters)?;
    let k = la.matmul(w.view(), em.vectors.view()).map_err(dec_err(block, what))?;
    Ok((k, em.values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_averages_the_two_triangles() {
        let m = ndarray::array![[1.0, 2.0], [4.0, 3.0]];
        assert_eq!(symmetric(m), ndarray::array![[1.0, 3.0], [3.0, 3.0]]);
    }

    #[test]
    fn breaks_must_fall_between_layers() {
        let shapes = [LayerShape::new(2, 3), LayerShape::new(3, 2)];
        assert!(TridiagonalKfac::<f64>::with_breaks(&shapes, &[1]).is_err());
        assert!(TridiagonalKfac::<f64>::new(&[]).is_err());
        let cut = TridiagonalKfac::<f64>::with_breaks(&shapes, &[0]).unwrap();
        assert!(!cut.is_linked(0));
        assert!(TridiagonalKfac::<f64>::new(&shapes).unwrap().is_linked(0));
    }
}
