//! How far the empirical Fisher at the optimum may lie from the Fisher by
//! sampling error alone, for the regression of figure 1.
//!
//! Given the inputs, the residuals at the optimum are a linear function of
//! the Gaussian noise: with $X$ the $N \times 2$ matrix of rows
//! $\bar a_n = (1, x_n)$, $A = X^\top X / N$, $M = A + I/100$ and
//! $P = X M^{-1} X^\top / N$, the optimum is $M^{-1} X^\top y / N$ and
//! $$ r = (P - I)\, y = \mu + (P - I)\,\varepsilon, \qquad
//!    \mu = -\tfrac{1}{100}\, X M^{-1} \beta, $$
//! with $\beta = (2, 2)$ the true parameters and $\varepsilon \sim \mathcal N(0, I)$.
//! So $r \sim \mathcal N(\mu, C)$ with $C = (I - P)^2 = I - 2P + P^2$, and each
//! entry of $\mathrm{EF} = \frac1N \sum_n r_n^2\, \bar a_n \bar a_n^\top$ is a Gaussian
//! quadratic form $\frac1N r^\top D r$, $D = \operatorname{diag}(c_n)$, $c_n = \bar a_{nj} \bar a_{nk}$:
//! $$ E[\mathrm{EF}_{jk}] = \frac1N \sum_n (\mu_n^2 + C_{nn})\, c_n, \qquad
//!    \operatorname{Var}[\mathrm{EF}_{jk}] = \frac{1}{N^2}\Big(2 \operatorname{tr}(DCDC) + 4 \mu^\top D C D \mu\Big). $$
//! The mean differs from $F_{jk} = \frac1N \sum_n c_n$ by the leverage
//! ($C_{nn} = 1 - O(1/N)$) and the prior's shift ($\mu$); the standard
//! deviation is of order $\sqrt{2 \sum_n c_n^2} / N$, which the heavy tail of
//! the log-normal inputs makes large for the $\theta\theta$ entry ($c_n = x_n^2$).

use super::data::{Regression, TRUE_PARAMS};
use super::fields::PRIOR;

/// The conditional mean and standard deviation of $\mathrm{EF}(b^*, \theta^*)$ given
/// the inputs, in $(b, \theta)$ order.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Band {
    /// $E[\mathrm{EF} \mid x]$.
    pub mean: [[f64; 2]; 2],
    /// $\operatorname{sd}[\mathrm{EF} \mid x]$, entrywise.
    pub sd: [[f64; 2]; 2],
}

fn inverse(m: [[f64; 2]; 2]) -> [[f64; 2]; 2] {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    [[m[1][1] / det, -m[0][1] / det], [-m[1][0] / det, m[0][0] / det]]
}

fn quad(u: [f64; 2], m: [[f64; 2]; 2], v: [f64; 2]) -> f64 {
    u[0] * (m[0][0] * v[0] + m[0][1] * v[1]) + u[1] * (m[1][0] * v[0] + m[1][1] * v[1])
}

fn product(a: [[f64; 2]; 2], b: [[f64; 2]; 2]) -> [[f64; 2]; 2] {
    let mut c = [[0.0; 2]; 2];
    for i in 0..2 {
        for j in 0..2 {
            c[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j];
        }
    }
    c
}

/// The [`Band`] of the data's empirical Fisher at the optimum.
pub fn band(data: &Regression) -> Band {
    let rows: Vec<[f64; 2]> = data.x.column(0).iter().map(|&x| [1.0, x]).collect();
    let n = rows.len() as f64;
    let mut a = [[0.0; 2]; 2];
    for r in &rows {
        for i in 0..2 {
            for j in 0..2 {
                a[i][j] += r[i] * r[j] / n;
            }
        }
    }
    let m_inv = inverse([[a[0][0] + PRIOR, a[0][1]], [a[1][0], a[1][1] + PRIOR]]);
    // P = X M⁻¹ Xᵀ / N and P² = X M⁻¹ A M⁻¹ Xᵀ / N, so C = I - 2P + P².
    let k2 = product(product(m_inv, a), m_inv);
    let c = |p: &[f64; 2], q: &[f64; 2]| -2.0 * quad(*p, m_inv, *q) / n + quad(*p, k2, *q) / n;
    let shift = [
        -PRIOR * (m_inv[0][0] * TRUE_PARAMS[0] + m_inv[0][1] * TRUE_PARAMS[1]),
        -PRIOR * (m_inv[1][0] * TRUE_PARAMS[0] + m_inv[1][1] * TRUE_PARAMS[1]),
    ];
    let mu: Vec<f64> = rows.iter().map(|r| r[0] * shift[0] + r[1] * shift[1]).collect();
    let mut out = Band { mean: [[0.0; 2]; 2], sd: [[0.0; 2]; 2] };
    for (j, k) in [(0, 0), (0, 1), (1, 1)] {
        let w: Vec<f64> = rows.iter().map(|r| r[j] * r[k]).collect();
        let mean: f64 = rows.iter().zip(&w).zip(&mu).map(|((r, wn), m)| (m * m + 1.0 + c(r, r)) * wn).sum::<f64>() / n;
        let (mut trace, mut shifted) = (0.0, 0.0);
        for (p, (rp, (wp, mp))) in rows.iter().zip(w.iter().zip(&mu)).enumerate() {
            for (q, (rq, (wq, mq))) in rows.iter().zip(w.iter().zip(&mu)).enumerate() {
                let cpq = f64::from(u8::from(p == q)) + c(rp, rq);
                trace += wp * wq * cpq * cpq;
                shifted += mp * wp * cpq * wq * mq;
            }
        }
        let sd = (2.0 * trace + 4.0 * shifted).max(0.0).sqrt() / n;
        out.mean[j][k] = mean;
        out.mean[k][j] = mean;
        out.sd[j][k] = sd;
        out.sd[k][j] = sd;
    }
    out
}
