//! The regression problem as one dense layer, and its five vector fields
//! computed through `kfac_core`'s blocks.
//!
//! The model $y \approx \theta x + b$ is a dense layer $1 \to 1$ with a bias,
//! [`LayerShape::new(1, 1)`](LayerShape::new): input $a_n = x_n$, extended
//! input $\bar a_n = (x_n, 1)$, parameters $\bar W = [\theta \mid b]$. So
//! `kfac_core` orders the parameters $(\theta, b)$, the slope first; the
//! paper, this module's [`Point`]s and the figure use $(b, \theta)$.
//! [`to_wbar`] and [`from_wbar`] convert.
//!
//! The loss, as the authors' code has it (the paper omits the prior term):
//! $$ L(b, \theta) = \frac1N \sum_n \tfrac12 r_n^2 + \frac{1}{200}\lVert (b, \theta) \rVert^2,
//!    \qquad r_n = \theta x_n + b - y_n. $$
//! The per-example pre-activation gradient is $g_n = r_n$, so the gradient is
//! $\nabla L = \frac1N \sum_n r_n \bar a_n + (b, \theta)/100$.
//!
//! The curvatures, all from [`LayerBatch`]es of the inputs $x_n$:
//! - **Fisher** $F = \frac1N \sum_n \bar a_n \bar a_n^\top$: a [`DenseBlock`] fed
//!   $g_n = 1$. For the Gaussian likelihood $y \sim \mathcal N(\theta x + b, 1)$
//!   the output Fisher is $E_y[(\theta x + b - y)^2] = 1$ whatever the
//!   parameters, so this is the exact Fisher (and the Hessian of the data
//!   term), not a sample of it.
//! - **Empirical Fisher** $\mathrm{EF} = \frac1N \sum_n r_n^2 \bar a_n \bar a_n^\top$: a
//!   [`DenseBlock`] fed $g_n = r_n$.
//! - **K-FAC of the EF**: a [`KfacBlock`] fed $g_n = r_n$, $A \otimes B$ with
//!   $A = F$ and $B = \frac1N \sum_n r_n^2$, a scalar for one output.
//! - **EKFAC of the EF**: an [`EkfacBlock`] fed $g_n = r_n$: $A$'s eigenbasis
//!   with the scalings $S_i = \frac1N \sum_n (q_i^\top \bar a_n)^2 r_n^2$.
//!
//! The fields, with the authors' relative scales $1/3, 1, 3$ and Tikhonov
//! damping $\delta = 10^{-8}$:
//! GD $-\frac13 \nabla L$; NGD $-(F + I/100 + \delta I)^{-1} \nabla L$ (the prior's
//! Hessian $I/100$ is in the NGD matrix: it enters as part of the block's
//! Tikhonov damping); EF $-3(\mathrm{EF} + \delta I)^{-1}\nabla L$ (no prior term, as in
//! the authors' code); K-FAC-EF and EKFAC-EF $-3(\hat F + \delta I)^{-1}\nabla L$.

use kfac_core::{
    CurvatureBlock, Damping, DenseBlock, EkfacBlock, KfacBlock, KfacMethod, LayerBatch, LayerShape, LinAlg,
};
use ndarray::{Array2, ArrayView2, Axis, array};

use super::data::Regression;

/// A point of the parameter plane in the paper's order, $(b, \theta)$.
pub type Point = [f64; 2];

/// The coefficient of the $\ell_2$ term: $L$ has $\tfrac{1}{2}\,\mathrm{PRIOR}\,\lVert (b, \theta)\rVert^2$,
/// i.e. $\lVert (b,\theta) \rVert^2 / 200$ (`prior_var = 0.1` over $N = 1000$ in the authors' code).
pub const PRIOR: f64 = 0.01;

/// The Tikhonov damping $\delta$ of every preconditioned field.
pub const DAMPING: f64 = 1e-8;

/// The layer: one input, one output, a bias.
pub const SHAPE: LayerShape = LayerShape { d_in: 1, d_out: 1, bias: true };

/// The five vector fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Field {
    /// Gradient descent, $-\frac13 \nabla L$.
    Gd,
    /// Natural gradient with the Fisher, $-(F + I/100 + \delta I)^{-1}\nabla L$.
    Ngd,
    /// The dense empirical Fisher, $-3(\mathrm{EF} + \delta I)^{-1}\nabla L$.
    Ef,
    /// K-FAC of the empirical Fisher.
    KfacEf,
    /// EKFAC of the empirical Fisher.
    EkfacEf,
}

impl Field {
    /// All five, in the figure's order.
    pub const ALL: [Field; 5] = [Field::Gd, Field::Ngd, Field::Ef, Field::KfacEf, Field::EkfacEf];

    /// The authors' relative scale $\gamma$ of the field (1/3, 1 or 3).
    pub fn scale(self) -> f64 {
        match self {
            Field::Gd => 1.0 / 3.0,
            Field::Ngd => 1.0,
            Field::Ef | Field::KfacEf | Field::EkfacEf => 3.0,
        }
    }

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Field::Gd => "GD",
            Field::Ngd => "NGD",
            Field::Ef => "EF",
            Field::KfacEf => "K-FAC of EF",
            Field::EkfacEf => "EKFAC of EF",
        }
    }
}

/// $(b, \theta)$ as the layer's $1 \times 2$ matrix $\bar W = [\theta \mid b]$.
pub fn to_wbar(p: Point) -> Array2<f64> {
    array![[p[1], p[0]]]
}

/// A $1 \times 2$ matrix $[\theta \mid b]$ as $(b, \theta)$.
pub fn from_wbar(w: ArrayView2<'_, f64>) -> Point {
    [w[(0, 1)], w[(0, 0)]]
}

/// A $2 \times 2$ matrix in `kfac_core`'s $(\theta, b)$ order, reordered to $(b, \theta)$.
pub fn matrix_bt(m: ArrayView2<'_, f64>) -> [[f64; 2]; 2] {
    [[m[(1, 1)], m[(1, 0)]], [m[(0, 1)], m[(0, 0)]]]
}

/// The regression problem; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct LeastSquares {
    x: Array2<f64>,
    y: Array2<f64>,
    ones: Array2<f64>,
}

impl LeastSquares {
    /// The problem on `data`.
    pub fn new(data: &Regression) -> Self {
        let n = data.x.nrows();
        Self { x: data.x.clone(), y: data.y.view().insert_axis(Axis(1)).to_owned(), ones: Array2::ones((n, 1)) }
    }

    /// $N$.
    pub fn len(&self) -> usize {
        self.x.nrows()
    }

    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inputs ($N \times 1$).
    pub fn x(&self) -> ArrayView2<'_, f64> {
        self.x.view()
    }

    /// The targets ($N \times 1$).
    pub fn y(&self) -> ArrayView2<'_, f64> {
        self.y.view()
    }

    /// The residuals $r_n = \theta x_n + b - y_n$, the per-example gradients $g_n$ ($N \times 1$).
    pub fn residuals(&self, p: Point) -> Array2<f64> {
        let [b, theta] = p;
        let mut r = self.x.mapv(|x| theta * x + b);
        r -= &self.y;
        r
    }

    /// $L(b, \theta)$, the prior term included.
    pub fn loss(&self, p: Point) -> f64 {
        let r = self.residuals(p);
        0.5 * r.mapv(|v| v * v).mean().unwrap_or(0.0) + 0.5 * PRIOR * (p[0] * p[0] + p[1] * p[1])
    }

    /// $\nabla L$ in the $\bar W$ layout: the mean of the batch's per-example
    /// gradients $g_n \bar a_n^\top$ ([`LayerBatch::per_example_gradients`]) plus the prior's.
    pub fn gradient(&self, batch: &LayerBatch<'_, f64>, p: Point) -> Array2<f64> {
        let j = batch.per_example_gradients(SHAPE);
        let mean = j.mean_axis(Axis(0)).unwrap_or_else(|| ndarray::Array1::zeros(2));
        let w = to_wbar(p);
        Array2::from_shape_fn((1, 2), |(_, c)| mean[c] + PRIOR * w[(0, c)])
    }

    /// The batch $(x_n, g_n)$.
    pub fn batch<'a>(&'a self, g: &'a Array2<f64>) -> LayerBatch<'a, f64> {
        LayerBatch::new(self.x.view(), g.view())
    }

    /// The exact Fisher block, fed $g_n = 1$ (not refreshed).
    pub fn fisher(&self, la: &dyn LinAlg<f64>) -> kfac_core::Result<DenseBlock<f64>> {
        let mut block = DenseBlock::new("fisher", SHAPE)?;
        block.update_statistics(la, &self.batch(&self.ones), 0.0)?;
        Ok(block)
    }

    /// The dense empirical Fisher at `p`, in `kfac_core`'s $(\theta, b)$ order.
    pub fn empirical_fisher(&self, la: &dyn LinAlg<f64>, p: Point) -> kfac_core::Result<Array2<f64>> {
        let r = self.residuals(p);
        let mut block = DenseBlock::new("empirical Fisher", SHAPE)?;
        block.update_statistics(la, &self.batch(&r), 0.0)?;
        block.to_dense(la)
    }

    /// The minimiser of $L$ in closed form: the normal equations
    /// $(F + I/100)\,\bar w^* = \frac1N \sum_n y_n \bar a_n$, solved with the Fisher
    /// block's damped inverse (damping exactly $1/100$).
    pub fn optimum(&self, la: &dyn LinAlg<f64>) -> kfac_core::Result<Point> {
        let mut fisher = self.fisher(la)?;
        fisher.refresh(la, Damping::tikhonov(PRIOR))?;
        let j = self.batch(&self.y).per_example_gradients(SHAPE);
        let rhs = j.mean_axis(Axis(0)).unwrap_or_else(|| ndarray::Array1::zeros(2)).insert_axis(Axis(0));
        Ok(from_wbar(fisher.precondition(la, rhs.view())?.view()))
    }
}

/// The fields of a [`LeastSquares`] problem, evaluated through the blocks.
///
/// The Fisher blocks are built once (their matrix does not depend on the
/// parameters); the empirical-Fisher blocks are re-fed at every evaluation
/// (decay 0: the new statistics replace the old) and refreshed.
#[derive(Debug)]
pub struct Fields<'a> {
    la: &'a dyn LinAlg<f64>,
    problem: &'a LeastSquares,
    ngd: DenseBlock<f64>,
    fisher: DenseBlock<f64>,
    ef: DenseBlock<f64>,
    kfac: KfacBlock<f64>,
    ekfac: EkfacBlock<f64>,
}

impl<'a> Fields<'a> {
    /// The blocks of `problem`.
    pub fn new(la: &'a dyn LinAlg<f64>, problem: &'a LeastSquares) -> kfac_core::Result<Self> {
        let mut ngd = problem.fisher(la)?;
        ngd.refresh(la, Damping::tikhonov(PRIOR + DAMPING))?;
        let mut fisher = problem.fisher(la)?;
        fisher.refresh(la, Damping::tikhonov(DAMPING))?;
        Ok(Self {
            la,
            problem,
            ngd,
            fisher,
            ef: DenseBlock::new("empirical Fisher", SHAPE)?,
            kfac: KfacBlock::new("K-FAC of the empirical Fisher", SHAPE, KfacMethod::Eigen),
            ekfac: EkfacBlock::new("EKFAC of the empirical Fisher", SHAPE),
        })
    }

    /// The problem.
    pub fn problem(&self) -> &LeastSquares {
        self.problem
    }

    /// The vector of `field` at `p`.
    pub fn eval(&mut self, field: Field, p: Point) -> kfac_core::Result<Point> {
        let la = self.la;
        let r = self.problem.residuals(p);
        let batch = self.problem.batch(&r);
        let g = self.problem.gradient(&batch, p);
        let damping = Damping::tikhonov(DAMPING);
        let step = match field {
            Field::Gd => g,
            Field::Ngd => self.ngd.precondition(la, g.view())?,
            Field::Ef => {
                self.ef.update_statistics(la, &batch, 0.0)?;
                self.ef.refresh(la, damping)?;
                self.ef.precondition(la, g.view())?
            }
            Field::KfacEf => {
                self.kfac.update_statistics(la, &batch, 0.0)?;
                self.kfac.refresh(la, damping)?;
                self.kfac.precondition(la, g.view())?
            }
            Field::EkfacEf => {
                self.ekfac.update_statistics(la, &batch, 0.0)?;
                self.ekfac.refresh(la, damping)?;
                self.ekfac.update_scalings(la, &batch, 0.0)?;
                self.ekfac.precondition(la, g.view())?
            }
        };
        let [b, theta] = from_wbar(step.view());
        let s = -field.scale();
        Ok([s * b, s * theta])
    }

    /// The natural gradient with the Fisher alone, without the prior's
    /// Hessian: $-(F + \delta I)^{-1} \nabla L$. K-FAC of the EF is parallel to it.
    pub fn fisher_only(&self, p: Point) -> kfac_core::Result<Point> {
        let r = self.problem.residuals(p);
        let g = self.problem.gradient(&self.problem.batch(&r), p);
        let [b, theta] = from_wbar(self.fisher.precondition(self.la, g.view())?.view());
        Ok([-b, -theta])
    }
}

/// The cosine of the angle between `u` and `v` (NaN if one is zero).
pub fn cosine(u: Point, v: Point) -> f64 {
    (u[0] * v[0] + u[1] * v[1]) / (u[0].hypot(u[1]) * v[0].hypot(v[1]))
}

/// `n` equally spaced values from `lo` to `hi`, both included.
pub fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![lo],
        _ => (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect(),
    }
}
