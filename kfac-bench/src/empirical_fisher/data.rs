//! The study's data sets, drawn with the project's seeded generator
//! ([`kfac_nn::rng::Rng`], SplitMix64), not numpy's: the draws differ from
//! the authors' by sampling error.

use kfac_nn::rng::Rng;
use ndarray::{Array1, Array2};

/// The linear-regression data of Kunstner et al.'s figure 1:
/// $x_n \sim \operatorname{LogNormal}(0, 0.75)$ ($\log x_n \sim \mathcal N(0, 0.75^2)$)
/// and $y_n = 2 + 2 x_n + \varepsilon_n$, $\varepsilon_n \sim \mathcal N(0, 1)$.
#[derive(Debug, Clone, PartialEq)]
pub struct Regression {
    /// The inputs, one per row ($N \times 1$, the layer's input $a_n = x_n$).
    pub x: Array2<f64>,
    /// The targets.
    pub y: Array1<f64>,
}

/// The true intercept and slope $(b, \theta) = (2, 2)$.
pub const TRUE_PARAMS: [f64; 2] = [2.0, 2.0];

/// The standard deviation of $\log x$.
pub const LOG_SD: f64 = 0.75;

/// $N$ points of the regression problem. The inputs come from stream 1 of
/// `seed`, the noise from stream 2.
pub fn regression(n: usize, seed: u64) -> Regression {
    let mut inputs = Rng::stream(seed, 1);
    let x = Array2::from_shape_simple_fn((n, 1), || (LOG_SD * inputs.normal()).exp());
    let mut noise = Rng::stream(seed, 2);
    let y = x.column(0).mapv(|xn| TRUE_PARAMS[0] + TRUE_PARAMS[1] * xn + noise.normal());
    Regression { x, y }
}

/// The three data sets of Kunstner et al.'s figure 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Case {
    /// Class-conditional Gaussians with equal covariance: logistic regression
    /// without a bias is the correct model.
    WellSpecified,
    /// Misspecified (A): different isotropic covariances.
    DifferentCovariances,
    /// Misspecified (B): opposite correlations.
    OppositeCorrelations,
}

impl Case {
    /// The three cases, in the figure's order.
    pub const ALL: [Case; 3] = [Case::WellSpecified, Case::DifferentCovariances, Case::OppositeCorrelations];

    /// The panel's title.
    pub fn title(self) -> &'static str {
        match self {
            Case::WellSpecified => "Correct",
            Case::DifferentCovariances => "Misspecified (A)",
            Case::OppositeCorrelations => "Misspecified (B)",
        }
    }

    /// The mean of class 0 (class 1's is its negative).
    pub fn mean(self) -> [f64; 2] {
        match self {
            Case::WellSpecified | Case::OppositeCorrelations => [1.0, 1.0],
            Case::DifferentCovariances => [1.5, 1.5],
        }
    }

    /// The matrices $C_0, C_1$ of the authors' code: class $k$ draws
    /// $x = \mu_k + z C_k$ with $z$ a standard normal row, so its covariance
    /// is $C_k^\top C_k$ (not $C_k$, as the paper's table 2 reads).
    pub fn mixing(self) -> [[[f64; 2]; 2]; 2] {
        match self {
            Case::WellSpecified => [[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [0.0, 2.0]]],
            Case::DifferentCovariances => [[[3.0, 0.0], [0.0, 3.0]], [[1.0, 0.0], [0.0, 1.0]]],
            Case::OppositeCorrelations => [[[1.5, -0.9], [-0.9, 1.5]], [[1.5, 0.9], [0.9, 1.5]]],
        }
    }

    fn stream(self) -> u64 {
        match self {
            Case::WellSpecified => 10,
            Case::DifferentCovariances => 11,
            Case::OppositeCorrelations => 12,
        }
    }
}

/// A two-class data set: inputs $x_n \in \mathbb R^2$ and labels $y_n \in \{0, 1\}$.
#[derive(Debug, Clone, PartialEq)]
pub struct Classes {
    /// The inputs, one per row ($N \times 2$).
    pub x: Array2<f64>,
    /// The labels, 0 or 1.
    pub y: Array1<f64>,
}

/// `per_class` points of each class of `case`: class 0 (label 0) around
/// the mean $\mu$, class 1 (label 1) around $-\mu$.
pub fn classes(case: Case, per_class: usize, seed: u64) -> Classes {
    let mut rng = Rng::stream(seed, case.stream());
    let mu = case.mean();
    let c = case.mixing();
    let n = 2 * per_class;
    let mut x = Array2::zeros((n, 2));
    let mut y = Array1::zeros(n);
    for i in 0..n {
        let k = usize::from(i >= per_class);
        let sign = if k == 0 { 1.0 } else { -1.0 };
        let z = [rng.normal(), rng.normal()];
        for j in 0..2 {
            x[(i, j)] = sign * mu[j] + z[0] * c[k][0][j] + z[1] * c[k][1][j];
        }
        y[i] = k as f64;
    }
    Classes { x, y }
}
