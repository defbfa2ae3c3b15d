//! The empirical-Fisher study (Kunstner et al., 2019, figures 1 and 2)
//! against closed forms written here from the data's moments, independent
//! of `kfac_core`.
//!
//! Notation: $\varepsilon$ is the machine epsilon, $N = 1000$, $K = 50{,}000$
//! steps of size $\gamma = 10^{-3}$, $H = F + I/100$ the loss's Hessian,
//! $\delta = 10^{-8}$ the damping. Every tolerance is derived in the comment
//! above the assertion that uses it.

use std::sync::OnceLock;

use kfac_bench::empirical_fisher::data::{self, Case, Regression};
use kfac_bench::empirical_fisher::fields::{DAMPING, Field, LeastSquares, PRIOR, Point};
use kfac_bench::empirical_fisher::trajectories::{Trajectory, distance};
use kfac_bench::empirical_fisher::{self as ef, EmpiricalFisherConfig, Study, misspec, sampling, sweep};
use kfac_linalg_faer::Faer;

const EPS: f64 = f64::EPSILON;

type M2 = [[f64; 2]; 2];

/// The study as `kfac-bench empirical-fisher` runs it (default seed), with
/// the trajectories the tests need (GD, NGD, EF) and no seed sweep.
fn study() -> &'static Study {
    static STUDY: OnceLock<Study> = OnceLock::new();
    STUDY.get_or_init(|| {
        let config = EmpiricalFisherConfig {
            trajectory_fields: vec![Field::Gd, Field::Ngd, Field::Ef],
            sweep_seeds: vec![],
            ..Default::default()
        };
        ef::run(&config).expect("the study runs")
    })
}

// ---------- 2 x 2 algebra, in (b, θ) order ----------

fn add_identity(m: M2, d: f64) -> M2 {
    [[m[0][0] + d, m[0][1]], [m[1][0], m[1][1] + d]]
}

fn solve(m: M2, v: [f64; 2]) -> [f64; 2] {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    [(m[1][1] * v[0] - m[0][1] * v[1]) / det, (m[0][0] * v[1] - m[1][0] * v[0]) / det]
}

fn norm(v: [f64; 2]) -> f64 {
    v[0].hypot(v[1])
}

fn scale(c: f64, v: [f64; 2]) -> [f64; 2] {
    [c * v[0], c * v[1]]
}

/// Eigenvalues (ascending) and unit eigenvectors of a symmetric 2 x 2 matrix.
fn eig(m: M2) -> ([f64; 2], [[f64; 2]; 2]) {
    let (a, b, c) = (m[0][0], m[0][1], m[1][1]);
    let mean = 0.5 * (a + c);
    let d = (0.5 * (a - c)).hypot(b);
    let values = [mean - d, mean + d];
    let vector = |l: f64| {
        let (u, v) = ([b, l - a], [l - c, b]);
        let w = if norm(u) >= norm(v) { u } else { v };
        if norm(w) == 0.0 { [1.0, 0.0] } else { scale(1.0 / norm(w), w) }
    };
    let v0 = vector(values[0]);
    (values, [v0, [-v0[1], v0[0]]])
}

/// The generalised eigenvalues $\mu$ of the pencil $P v = \mu H v$ (ascending).
fn pencil(p: M2, h: M2) -> [f64; 2] {
    let a = h[0][0] * h[1][1] - h[0][1] * h[0][1];
    let b = -(p[0][0] * h[1][1] + p[1][1] * h[0][0] - 2.0 * p[0][1] * h[0][1]);
    let c = p[0][0] * p[1][1] - p[0][1] * p[0][1];
    let root = (b * b - 4.0 * a * c).max(0.0).sqrt();
    [(-b - root) / (2.0 * a), (-b + root) / (2.0 * a)]
}

fn cosine(u: [f64; 2], v: [f64; 2]) -> f64 {
    (u[0] * v[0] + u[1] * v[1]) / (norm(u) * norm(v))
}

// ---------- the closed forms of the regression problem ----------

/// The regression problem from its moments $m_{pq} = \frac1N \sum_n x_n^p y_n^q$.
struct Oracle {
    x: Vec<f64>,
    y: Vec<f64>,
    m: [[f64; 3]; 5],
}

impl Oracle {
    fn new(d: &Regression) -> Self {
        let x: Vec<f64> = d.x.column(0).to_vec();
        let y: Vec<f64> = d.y.to_vec();
        let n = x.len() as f64;
        let mut m = [[0.0; 3]; 5];
        for (&xn, &yn) in x.iter().zip(&y) {
            for (p, row) in m.iter_mut().enumerate() {
                for (q, v) in row.iter_mut().enumerate() {
                    *v += xn.powi(p as i32) * yn.powi(q as i32) / n;
                }
            }
        }
        Self { x, y, m }
    }

    fn n(&self) -> f64 {
        self.x.len() as f64
    }

    /// $F = \frac1N \sum_n \bar a_n \bar a_n^\top$, $\bar a_n = (1, x_n)$.
    fn fisher(&self) -> M2 {
        [[1.0, self.m[1][0]], [self.m[1][0], self.m[2][0]]]
    }

    fn hessian(&self) -> M2 {
        add_identity(self.fisher(), PRIOR)
    }

    fn gradient(&self, [b, t]: Point) -> [f64; 2] {
        let m = &self.m;
        [t * m[1][0] + b - m[0][1] + PRIOR * b, t * m[2][0] + b * m[1][0] - m[1][1] + PRIOR * t]
    }

    /// $\mathrm{EF} = \frac1N \sum_n r_n^2 \bar a_n \bar a_n^\top$ with $r_n^2$ expanded in moments.
    fn empirical_fisher(&self, [b, t]: Point) -> M2 {
        let m = &self.m;
        let e = |j: usize| {
            t * t * m[j + 2][0] + b * b * m[j][0] + m[j][2] + 2.0 * t * b * m[j + 1][0]
                - 2.0 * t * m[j + 1][1]
                - 2.0 * b * m[j][1]
        };
        [[e(0), e(1)], [e(1), e(2)]]
    }

    /// $(b^*, \theta^*)$: $H p = (m_{01}, m_{11})$ by Cramer's rule.
    fn optimum(&self) -> Point {
        solve(self.hessian(), [self.m[0][1], self.m[1][1]])
    }

    fn loss_gap(&self, p: Point) -> f64 {
        let e = [p[0] - self.optimum()[0], p[1] - self.optimum()[1]];
        let h = self.hessian();
        0.5 * (e[0] * (h[0][0] * e[0] + h[0][1] * e[1]) + e[1] * (h[1][0] * e[0] + h[1][1] * e[1]))
    }

    /// $\frac1N \sum_n (\lvert\theta x_n\rvert + \lvert b\rvert + \lvert y_n\rvert)^k \lVert \bar a_n \rVert_2^l x_n^j$:
    /// the scale of the rounding errors of the sums that make the gradient
    /// ($k = l = 1$, $j = 0$) and the EF ($k = 2$, $l = 0$).
    fn magnitude(&self, [b, t]: Point, k: i32, l: i32, j: i32) -> f64 {
        let total: f64 = self
            .x
            .iter()
            .zip(&self.y)
            .map(|(&x, &y)| ((t * x).abs() + b.abs() + y.abs()).powi(k) * (1.0 + x * x).sqrt().powi(l) * x.powi(j))
            .sum();
        total / self.n()
    }

    /// A bound on the rounding error of the gradient at `p`, computed in
    /// either order: $(N + 4)\varepsilon$ times the sum of the magnitudes.
    fn gradient_rounding(&self, p: Point) -> f64 {
        (self.n() + 4.0) * EPS * self.magnitude(p, 1, 1, 0)
    }

    /// A bound on the Frobenius norm of the rounding error of the EF.
    fn ef_rounding(&self, p: Point) -> f64 {
        let e: Vec<f64> = (0..3).map(|j| (self.n() + 8.0) * EPS * self.magnitude(p, 2, 0, j)).collect();
        (e[0] * e[0] + 2.0 * e[1] * e[1] + e[2] * e[2]).sqrt()
    }
}

fn oracle() -> Oracle {
    Oracle::new(&study().regression_data)
}

fn trajectory(field: Field, start: Point) -> &'static Trajectory {
    study().trajectory(field, start).expect("the trajectory was run")
}

// ---------- the fields ----------

/// The fields of the study, computed through `kfac_core`'s blocks, equal
/// the closed forms at every grid point and at the starts.
///
/// Tolerance: a field is $v = -c P^{-1} g$. The gradient's sums of $N$ terms
/// carry an absolute error $\tau_g \le (N + 4)\varepsilon \cdot \frac1N\sum_n (\lvert\theta x_n\rvert + \lvert b\rvert + \lvert y_n\rvert)\lVert\bar a_n\rVert$
/// in either computation, the matrix an error $\lVert\delta P\rVert_F \le \tau_P$: none
/// for GD; $(N + 8)\varepsilon \frac1N\sum_n \lVert \bar a_n \rVert^2$ for $F$ and $H$; for the EF
/// the same with the squared residual magnitudes ([`Oracle::ef_rounding`]),
/// which also bounds the error of $\bar r^2 A$ (K-FAC) up to the factor
/// $\lVert A \rVert_F$. To first order
/// $\lvert\delta v\rvert \le c \lVert P^{-1}\rVert_2 (2\tau_g + 2\tau_P \lVert P^{-1} g\rVert)$, the 2s
/// for the two computations. EKFAC's eigenbasis moves by $\lVert\delta A\rVert / \text{gap}$
/// as well, which adds $4 c\, \tau_F \lVert g\rVert / (\text{gap} \cdot \min_i(S_i + \delta))$.
#[test]
fn fields_through_the_blocks_match_the_closed_forms() {
    let o = oracle();
    let r = &study().regression;
    let a = o.fisher();
    let (sa, qa) = eig(a);
    let norm_a = (a[0][0].powi(2) + 2.0 * a[0][1].powi(2) + a[1][1].powi(2)).sqrt();
    let tau_f = (o.n() + 8.0) * EPS * o.magnitude([0.0, 0.0], 0, 2, 0);
    for point in r.grid.iter().chain(&r.at_starts) {
        let p = point.at;
        let g = o.gradient(p);
        let efm = o.empirical_fisher(p);
        let (tau_g, tau_ef) = (o.gradient_rounding(p), o.ef_rounding(p));
        let check = |name: &str, got: [f64; 2], want: [f64; 2], c: f64, m: M2, tau_p: f64, extra: f64| {
            let inv_norm = 1.0 / eig(m).0[0];
            let tol = c * inv_norm * (2.0 * tau_g + 2.0 * tau_p * norm(solve(m, g))) + extra;
            let err = distance(got, want);
            assert!(err <= tol, "{name} at {p:?}: {got:?} vs {want:?}, error {err:.3e} > {tol:.3e}");
        };
        let identity = [[1.0, 0.0], [0.0, 1.0]];
        check("GD", point.gd, scale(-1.0 / 3.0, g), 1.0 / 3.0, identity, 0.0, 0.0);
        let h = add_identity(o.hessian(), DAMPING);
        check("NGD", point.ngd, scale(-1.0, solve(h, g)), 1.0, h, tau_f, 0.0);
        let fd = add_identity(a, DAMPING);
        check("F alone", point.fisher_only, scale(-1.0, solve(fd, g)), 1.0, fd, tau_f, 0.0);
        let efd = add_identity(efm, DAMPING);
        check("EF", point.ef, scale(-3.0, solve(efd, g)), 3.0, efd, tau_ef, 0.0);
        // For one output K-FAC's B is mean(r²) = EF_bb (the bias input is 1).
        let m = efm[0][0];
        let kf = add_identity([[m * a[0][0], m * a[0][1]], [m * a[1][0], m * a[1][1]]], DAMPING);
        check("K-FAC-EF", point.kfac_ef, scale(-3.0, solve(kf, g)), 3.0, kf, norm_a * tau_ef + m * tau_f, 0.0);
        // EKFAC: A's eigenbasis, S_i = mean((q_iᵀ ā)² r²) = q_iᵀ EF q_i.
        let mut want = [0.0; 2];
        let mut smin = f64::INFINITY;
        for q in qa {
            let s = q[0] * (efm[0][0] * q[0] + efm[0][1] * q[1]) + q[1] * (efm[1][0] * q[0] + efm[1][1] * q[1]);
            smin = smin.min(s + DAMPING);
            let coef = -3.0 * (q[0] * g[0] + q[1] * g[1]) / (s + DAMPING);
            want = [want[0] + coef * q[0], want[1] + coef * q[1]];
        }
        let basis = 4.0 * 3.0 * tau_f * norm(g) / ((sa[1] - sa[0]) * smin);
        let ek = [[smin, 0.0], [0.0, smin]];
        check("EKFAC-EF", point.ekfac_ef, want, 3.0, ek, tau_ef, basis);
    }
}

/// K-FAC of the EF is $3 (\bar r^2 A + \delta I)^{-1}$ with $\bar r^2 = \frac1N\sum_n r_n^2$: its
/// field is parallel to the natural gradient with the Fisher alone,
/// $-(A + \delta I)^{-1} g$, at every grid point, and $3/\bar r^2$ times as long.
///
/// Tolerances. In $A$'s eigenbasis the two preconditioners differ by the
/// diagonal factor $D_i = (s_i + \delta)/(s_i + \delta/\bar r^2)$, whose spread
/// $\kappa_D - 1 \le \delta / s_{\min}$ tilts the direction by at most that angle,
/// so $1 - \cos \le (\delta / s_{\min})^2$; computing the cosine adds at most
/// $8\varepsilon$. The length ratio is off by $\delta / s_{\min}$ and by the
/// rounding of $\bar r^2$ ($(N + 6)\varepsilon$ times the mean squared magnitude,
/// relative to $\bar r^2$) and of the two $2 \times 2$ solves ($8\kappa(A)\varepsilon$).
///
/// Against NGD, whose matrix has the prior's $I/100$ as well, the factor is
/// $D_i = (s_i + \delta/\bar r^2)/(s_i + 1/100 + \delta)$ and
/// $\cos(x, Dx) \ge 2\sqrt{\kappa_D}/(1 + \kappa_D)$ (the Kantorovich bound), with
/// $\kappa_D \le (s_2 + \delta)(s_1 + 1/100 + \delta) / ((s_2 + 1/100 + \delta)\, s_1)$:
/// parallel up to the prior, not to rounding.
#[test]
fn kfac_of_the_ef_is_parallel_to_the_natural_gradient() {
    let o = oracle();
    let r = &study().regression;
    let (s, _) = eig(o.fisher());
    let cond = s[1] / s[0];
    let tol_cos = 8.0 * EPS + (DAMPING / s[0]).powi(2);
    let b = PRIOR + DAMPING;
    let kappa = (s[1] + DAMPING) * (s[0] + b) / ((s[1] + b) * s[0]);
    let bound_ngd = 2.0 * kappa.sqrt() / (1.0 + kappa) - 8.0 * EPS;
    for g in &r.grid {
        let c = cosine(g.kfac_ef, g.fisher_only);
        assert!((1.0 - c).abs() <= tol_cos, "at {:?}: 1 - cos = {:.3e} > {tol_cos:.3e}", g.at, 1.0 - c);
        let mean_r2 = o.empirical_fisher(g.at)[0][0];
        let ratio = norm(g.kfac_ef) / norm(g.fisher_only) / (3.0 / mean_r2);
        let tol_len = DAMPING / s[0] + (o.n() + 6.0) * EPS * o.magnitude(g.at, 2, 0, 0) / mean_r2 + 8.0 * cond * EPS;
        assert!((ratio - 1.0).abs() <= tol_len, "at {:?}: length ratio {ratio} (tolerance {tol_len:.2e})", g.at);
        let cn = cosine(g.kfac_ef, g.ngd);
        assert!(cn >= bound_ngd, "at {:?}: cos(K-FAC-EF, NGD) = {cn} < {bound_ngd}", g.at);
    }
    let summary = r.cosines.kfac_ef_vs_fisher_only;
    assert!((1.0 - summary.min).abs() <= tol_cos && (1.0 - summary.median).abs() <= tol_cos);
    // The dense EF is not parallel: its cosine with NGD goes negative on the grid.
    assert!(r.cosines.ef_vs_ngd.min < 0.0, "{:?}", r.cosines.ef_vs_ngd);
}

// ---------- the trajectories ----------

/// The largest coordinate of a path, for the rounding of its additions.
fn max_coordinate(path: &[Point]) -> f64 {
    path.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// The largest rounding magnitude of the gradient over a path: every
/// residual is bounded by $\max\lvert\theta\rvert x + \max\lvert b\rvert + \lvert y\rvert$.
fn path_gradient_rounding(o: &Oracle, path: &[Point]) -> f64 {
    let bmax = path.iter().fold(0.0f64, |m, p| m.max(p[0].abs()));
    let tmax = path.iter().fold(0.0f64, |m, p| m.max(p[1].abs()));
    o.gradient_rounding([bmax, tmax])
}

/// GD and NGD are linear recursions, $e_{k+1} = (I - \gamma c P^{-1} H) e_k$ with
/// $e = p - p^*$ ($P = I$, $c = 1/3$ for GD; $P = H + \delta I$, $c = 1$ for NGD),
/// so their end points are known in closed form: $e_K = U \operatorname{diag}(\rho_i^K) U^\top e_0$
/// with $\rho_i = 1 - \gamma c\, s_i / (s_i + \delta_P)$ on $H$'s eigenpairs $(s_i, u_i)$.
/// NGD's $\rho^K \approx e^{-50}$: it ends at the optimum. GD's slow direction has
/// $\rho^K = (1 - \gamma s_{\min}/3)^K$, about $e^{-5.6}$: GD ends a few $10^{-3}$ away,
/// where this formula puts it.
///
/// Tolerance: both iteration matrices are symmetric with eigenvalues in
/// $(0, 1)$, so a step's rounding is never amplified; over $K$ steps the error
/// is at most $K (\sqrt2\,\varepsilon \max\lvert p \rvert + \gamma c \lVert P^{-1} \rVert \tau_g)$ (the
/// addition's rounding and the gradient's, $\tau_g$ over the path), plus the
/// difference of the two closed-form optima.
#[test]
fn gd_and_ngd_end_where_their_linear_recursions_put_them() {
    let o = oracle();
    let st = study();
    let (steps, gamma) = (st.config.steps as f64, st.config.step_size);
    let optimum = o.optimum();
    let (s, u) = eig(o.hessian());
    // Two solutions of H p = rhs: |δp| ≤ ‖H⁻¹‖ (|δrhs| + ‖δH‖ |p|) for each.
    let opt_err = distance(optimum, st.regression.optimum);
    let h_rounding = (o.n() + 8.0) * EPS * o.magnitude([0.0, 0.0], 0, 2, 0);
    let opt_tol = 2.0 / s[0] * (o.gradient_rounding(optimum) + h_rounding * norm(optimum));
    assert!(opt_err <= opt_tol, "closed-form optima differ by {opt_err:.3e} > {opt_tol:.3e}");
    for &start in &st.config.starts {
        for (field, c, damping_p) in [(Field::Gd, 1.0 / 3.0, None), (Field::Ngd, 1.0, Some(DAMPING))] {
            let t = trajectory(field, start);
            let e0 = [start[0] - optimum[0], start[1] - optimum[1]];
            let mut e = [0.0; 2];
            for (si, ui) in s.iter().zip(&u) {
                let rate = damping_p.map_or(*si, |d| si / (si + d));
                let rho = (1.0 - gamma * c * rate).powf(steps);
                let coef = rho * (ui[0] * e0[0] + ui[1] * e0[1]);
                e = [e[0] + coef * ui[0], e[1] + coef * ui[1]];
            }
            let predicted = [optimum[0] + e[0], optimum[1] + e[1]];
            let inv_p = damping_p.map_or(1.0, |d| 1.0 / (s[0] + d));
            let per_step =
                2f64.sqrt() * EPS * max_coordinate(&t.path) + gamma * c * inv_p * path_gradient_rounding(&o, &t.path);
            let tol = steps * per_step + opt_err;
            let err = distance(t.end, predicted);
            assert!(
                err <= tol,
                "{field:?} from {start:?}: end {:?}, predicted {predicted:?}, {err:.3e} > {tol:.3e}",
                t.end
            );
            if field == Field::Ngd {
                assert!(t.distance <= norm(e) + tol, "NGD from {start:?} ends {:.3e} away", t.distance);
            }
        }
    }
}

/// NGD's paths are straight. In exact arithmetic $e_k = a \rho_1^k u_1 + b \rho_2^k u_2$
/// (orthonormal $u_i$), whose distance from the segment $[e_0, 0]$ is
/// $\lvert a b\rvert\,\lvert\rho_1^k - \rho_2^k\rvert / \lVert e_0 \rVert \le \tfrac12 \lVert e_0\rVert \max_k \lvert\rho_1^k - \rho_2^k\rvert$:
/// nonzero only through the damping $\delta$ ($\rho_i = 1 - \gamma s_i/(s_i + \delta)$).
/// Rounding adds at most the accumulated error of the previous test, and
/// the segment's end (the computed optimum) is off by the optima's difference.
#[test]
fn ngd_paths_are_straight() {
    let o = oracle();
    let st = study();
    let (steps, gamma) = (st.config.steps, st.config.step_size);
    let (s, _) = eig(o.hessian());
    let rho: Vec<f64> = s.iter().map(|si| 1.0 - gamma * si / (si + DAMPING)).collect();
    let spread = (0..=steps).map(|k| (rho[0].powi(k as i32) - rho[1].powi(k as i32)).abs()).fold(0.0, f64::max);
    let opt_err = distance(o.optimum(), st.regression.optimum);
    for &start in &st.config.starts {
        let t = trajectory(Field::Ngd, start);
        let e0 = distance(start, st.regression.optimum);
        let rounding = steps as f64
            * (2f64.sqrt() * EPS * max_coordinate(&t.path)
                + gamma / (s[0] + DAMPING) * path_gradient_rounding(&o, &t.path));
        let tol = 0.5 * e0 * spread + rounding + opt_err;
        assert!(t.max_deviation <= tol, "NGD from {start:?} deviates {:.3e} > {tol:.3e}", t.max_deviation);
    }
    let largest = st.config.starts.iter().map(|&s| trajectory(Field::Ngd, s).max_deviation).fold(0.0, f64::max);
    assert_eq!(st.regression.ngd_max_deviation, largest);
}

/// The EF's paths end at the optimum. The field is nonlinear, so the bound
/// comes from the loss: for $v = -c P^{-1} g$ with $P$ SPD, one Euler step on the
/// quadratic $L$ gives
/// $L_{k+1} - L^* \le (L_k - L^*)\,\big(1 - 2\gamma c\,(1 - \gamma c / (2\mu_{\min}))/\mu_{\max}\big)$,
/// with $\mu_{\min}, \mu_{\max}$ the generalised eigenvalues of $(P, H)$ at $p_k$
/// (evaluated here along the computed path with the closed-form EF), and
/// $\lVert e \rVert^2 \le 2 (L - L^*)/s_{\min}(H)$. To that decay term the rounding
/// floor is added: the gradient's error moves the fixed point by
/// $\lVert H^{-1}\rVert\, 2\tau_g$, and the iteration stalls where a step is below
/// the additions' rounding, $\lVert e \rVert \le \sqrt2\,\varepsilon \max\lvert p\rvert\, \lambda_{\max}(P)/(\gamma c\, s_{\min}(H))$.
/// The decay term must be below the floor: the paths have converged to rounding.
#[test]
fn ef_paths_end_at_the_optimum() {
    let o = oracle();
    let st = study();
    let gamma = st.config.step_size;
    let h = o.hessian();
    let (sh, _) = eig(h);
    let c = Field::Ef.scale();
    for &start in &st.config.starts {
        let t = trajectory(Field::Ef, start);
        let mut log_decay = 0.0;
        for &p in &t.path[..t.path.len() - 1] {
            let [mu_min, mu_max] = pencil(add_identity(o.empirical_fisher(p), DAMPING), h);
            let factor = 1.0 - 2.0 * gamma * c * (1.0 - gamma * c / (2.0 * mu_min)) / mu_max;
            assert!(factor > 0.0 && gamma * c < 2.0 * mu_min, "the step is too long at {p:?}");
            log_decay += factor.ln();
        }
        let decay = (2.0 * o.loss_gap(start) * log_decay.exp() / sh[0]).sqrt();
        let end = t.end;
        let p_end = add_identity(o.empirical_fisher(end), DAMPING);
        let floor = 2.0 * o.gradient_rounding(end) / sh[0]
            + 2f64.sqrt() * EPS * max_coordinate(&[end]) * eig(p_end).0[1] / (gamma * c * sh[0]);
        let opt_err = distance(o.optimum(), st.regression.optimum);
        assert!(t.distance <= decay + floor + opt_err, "EF from {start:?}: {:.3e} > {:.3e}", t.distance, decay + floor);
        assert!(decay <= floor, "EF from {start:?} has not converged: decay bound {decay:.3e}, floor {floor:.3e}");
    }
}

/// The EF's paths take detours: each is longer than NGD's from the same
/// start, by more than the rounding of the two computed lengths (a sum of
/// $K$ terms each, relative error at most $(K + 2)\varepsilon$).
#[test]
fn ef_paths_are_longer_than_ngd_paths() {
    let st = study();
    let k = st.config.steps as f64;
    for l in &st.regression.lengths {
        assert!(l.ef > l.ngd * (1.0 + 2.0 * (k + 2.0) * EPS), "from {:?}: EF {} vs NGD {}", l.start, l.ef, l.ngd);
        assert!((l.ef_over_ngd - l.ef / l.ngd).abs() <= 4.0 * EPS * l.ef_over_ngd);
    }
}

// ---------- the EF against the Fisher at the optimum ----------

/// The [`sampling::Band`] formula (the conditional mean and standard
/// deviation of $\mathrm{EF}(b^*, \theta^*)$ given the inputs) against a Monte Carlo
/// estimate: $R = 4000$ redraws of the noise with the same inputs, refitted
/// in closed form. The Monte Carlo mean is within $4\,\mathrm{sd}/\sqrt R$ of the formula's,
/// the Monte Carlo sd within 4 standard errors of the formula's, the standard
/// error of an sd being $\mathrm{sd}\sqrt{(\kappa - 1)/(4R)}$ with $\kappa$ the sample kurtosis.
#[test]
fn sampling_band_matches_monte_carlo() {
    let d = data::regression(1000, ef::DEFAULT_SEED);
    let band = sampling::band(&d);
    let x: Vec<f64> = d.x.column(0).to_vec();
    let mut rng = kfac_nn::rng::Rng::stream(99, 1);
    let reps = 4000;
    let mut samples: Vec<[f64; 3]> = Vec::with_capacity(reps);
    for _ in 0..reps {
        let y: Vec<f64> = x.iter().map(|&xn| 2.0 + 2.0 * xn + rng.normal()).collect();
        let o = Oracle::new(&Regression { x: d.x.clone(), y: y.into() });
        let e = o.empirical_fisher(o.optimum());
        samples.push([e[0][0], e[0][1], e[1][1]]);
    }
    for (i, (j, k)) in [(0, 0), (0, 1), (1, 1)].into_iter().enumerate() {
        let v: Vec<f64> = samples.iter().map(|s| s[i]).collect();
        let n = reps as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let m4 = v.iter().map(|s| (s - mean).powi(4)).sum::<f64>() / n;
        let sd = var.sqrt();
        let kurtosis = m4 / (var * var);
        let (want_mean, want_sd) = (band.mean[j][k], band.sd[j][k]);
        assert!((mean - want_mean).abs() <= 4.0 * want_sd / n.sqrt(), "EF[{j}{k}] mean {mean} vs {want_mean}");
        let se_sd = want_sd * ((kurtosis - 1.0) / (4.0 * n)).sqrt();
        assert!((sd - want_sd).abs() <= 4.0 * se_sd, "EF[{j}{k}] sd {sd} vs {want_sd} (se {se_sd})");
    }
}

/// At the optimum the dense EF equals the Fisher within sampling error:
/// each entry within 4 standard deviations of its conditional mean
/// ([`sampling::Band`]; the mean is $F$ up to the leverage and the prior's
/// shift). At the study's seed and five more. Away from the optimum, at
/// the four starts, the EF lies hundreds of standard deviations outside.
#[test]
fn ef_equals_fisher_at_the_optimum_within_sampling_error() {
    let r = &study().regression;
    let z = r.empirical_fisher_z;
    assert!(z.iter().flatten().all(|v| v.abs() <= 4.0), "z-scores at the optimum {z:?}");
    let f = r.fisher;
    let band = r.empirical_fisher_band;
    for j in 0..2 {
        for k in 0..2 {
            let gap = (band.mean[j][k] - f[j][k]).abs();
            assert!(gap <= band.sd[j][k], "the band's mean is F up to O(1/N): {gap} vs sd {}", band.sd[j][k]);
        }
    }
    assert!(r.empirical_fisher_z_at_starts.iter().all(|&z| z > 4.0), "{:?}", r.empirical_fisher_z_at_starts);
    let la = Faer::sequential();
    for seed in 0..5 {
        let d = data::regression(1000, seed);
        let problem = LeastSquares::new(&d);
        let opt = problem.optimum(&la).unwrap();
        let e = problem.empirical_fisher(&la, opt).unwrap();
        // kfac-core's order is (θ, b).
        let got = [[e[(1, 1)], e[(1, 0)]], [e[(0, 1)], e[(0, 0)]]];
        let band = sampling::band(&d);
        for j in 0..2 {
            for k in 0..2 {
                let zjk = (got[j][k] - band.mean[j][k]) / band.sd[j][k];
                assert!(zjk.abs() <= 4.0, "seed {seed}: EF[{j}{k}] z = {zjk}");
            }
        }
    }
}

// ---------- the misspecification test ----------

/// The logistic fits: the Fisher and the EF from the blocks equal the
/// direct sums at $w^*$ (relative error at most $(N + 8)\varepsilon$ in the
/// sums' magnitude); the gradient vanishes there (Newton stopped on a step
/// below $10^{-12}$, so $\lVert\nabla L\rVert \le \lambda_{\max}(F)\sqrt2\cdot 10^{-12}$ plus its rounding);
/// the eigenvalues of $F^{-1}\mathrm{EF}$ equal the closed-form roots of
/// $\det(\mathrm{EF} - \mu F) = 0$ (to $16\kappa(F)\varepsilon$ relative).
///
/// The claim: the well-specified set's statistic $\max_i\lvert\lambda_i - 1\rvert$ lies
/// below the 99.5 % quantile of its bootstrap distribution under the fitted
/// model (sampling error, White's information-matrix test at level 0.005);
/// each misspecified set's lies above every one of the 200 replicates
/// (p-value $1/201$).
#[test]
fn misspecified_data_sets_move_the_eigenvalues_away_from_one() {
    let st = study();
    for (res, d) in st.misspecification.iter().zip(&st.classes) {
        let w = res.optimum;
        let n = d.y.len() as f64;
        let (mut f, mut e, mut g, mut mag) = ([[0.0; 2]; 2], [[0.0; 2]; 2], [0.0; 2], 0.0);
        for (row, &y) in d.x.rows().into_iter().zip(d.y.iter()) {
            let p = 1.0 / (1.0 + (-(w[0] * row[0] + w[1] * row[1])).exp());
            for i in 0..2 {
                g[i] += (p - y) * row[i] / n;
                for j in 0..2 {
                    f[i][j] += p * (1.0 - p) * row[i] * row[j] / n;
                    e[i][j] += (p - y) * (p - y) * row[i] * row[j] / n;
                }
            }
            mag += (row[0] * row[0] + row[1] * row[1]) / n;
        }
        let tol = (n + 8.0) * EPS * mag;
        for i in 0..2 {
            for j in 0..2 {
                assert!((res.fisher[i][j] - f[i][j]).abs() <= 2.0 * tol, "{:?} F", res.case);
                assert!((res.empirical_fisher[i][j] - e[i][j]).abs() <= 2.0 * tol, "{:?} EF", res.case);
            }
        }
        let (sf, _) = eig(f);
        let grad_tol = sf[1] * 2f64.sqrt() * misspec::NEWTON_TOLERANCE + 2.0 * (n + 4.0) * EPS * mag.sqrt();
        assert!(norm(g) <= grad_tol && res.gradient_at_optimum <= grad_tol, "{:?}: gradient {:?}", res.case, g);
        let mu = pencil(e, f);
        for i in 0..2 {
            let rel = (res.eigenvalues[i] - mu[i]).abs() / mu[i];
            assert!(
                rel <= 16.0 * sf[1] / sf[0] * EPS + 4.0 * tol / sf[0],
                "{:?}: {:?} vs {mu:?}",
                res.case,
                res.eigenvalues
            );
        }
        match res.case {
            Case::WellSpecified => assert!(
                res.statistic <= res.null.quantile_995,
                "the correct model is rejected: {} > {}",
                res.statistic,
                res.null.quantile_995
            ),
            _ => assert!(
                res.statistic > res.null.maximum,
                "{:?} is not told from sampling error: {} <= {}",
                res.case,
                res.statistic,
                res.null.maximum
            ),
        }
    }
}

// ---------- the data ----------

/// The generators draw what they say: per class, the sample mean within 4
/// standard errors $\sqrt{\Sigma_{ii}/n}$ of $\pm\mu$ and the sample covariance within
/// 4 standard errors $\sqrt{(\Sigma_{ii}\Sigma_{jj} + \Sigma_{ij}^2)/n}$ of $C^\top C$ (the
/// authors' code draws $\mu + z C$); the regression's $\log x$ has mean 0 and
/// sd 0.75, its noise mean 0 and variance 1, within 4 standard errors.
#[test]
fn the_data_have_the_stated_distributions() {
    for case in Case::ALL {
        let d = data::classes(case, 500, ef::DEFAULT_SEED);
        let c = case.mixing();
        for k in 0..2 {
            let rows: Vec<[f64; 2]> =
                d.x.rows()
                    .into_iter()
                    .zip(d.y.iter())
                    .filter(|(_, y)| **y as usize == k)
                    .map(|(r, _)| [r[0], r[1]])
                    .collect();
            let n = rows.len() as f64;
            assert_eq!(rows.len(), 500);
            let sigma = |i: usize, j: usize| c[k][0][i] * c[k][0][j] + c[k][1][i] * c[k][1][j];
            let sign = if k == 0 { 1.0 } else { -1.0 };
            let mean: Vec<f64> = (0..2).map(|i| rows.iter().map(|r| r[i]).sum::<f64>() / n).collect();
            for i in 0..2 {
                assert!(
                    (mean[i] - sign * case.mean()[i]).abs() <= 4.0 * (sigma(i, i) / n).sqrt(),
                    "{case:?} class {k}"
                );
                for j in 0..2 {
                    let cov = rows.iter().map(|r| (r[i] - mean[i]) * (r[j] - mean[j])).sum::<f64>() / (n - 1.0);
                    let se = ((sigma(i, i) * sigma(j, j) + sigma(i, j).powi(2)) / n).sqrt();
                    assert!(
                        (cov - sigma(i, j)).abs() <= 4.0 * se,
                        "{case:?} class {k} cov[{i}{j}] {cov} vs {}",
                        sigma(i, j)
                    );
                }
            }
        }
    }
    let d = data::regression(1000, ef::DEFAULT_SEED);
    let n = 1000.0;
    let logs: Vec<f64> = d.x.iter().map(|x| x.ln()).collect();
    let noise: Vec<f64> = d.x.iter().zip(d.y.iter()).map(|(x, y)| y - 2.0 - 2.0 * x).collect();
    for (v, sd) in [(&logs, data::LOG_SD), (&noise, 1.0)] {
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert!(mean.abs() <= 4.0 * sd / n.sqrt(), "mean {mean}");
        assert!((var - sd * sd).abs() <= 4.0 * sd * sd * (2.0 / n).sqrt(), "variance {var}");
    }
}

// ---------- outputs, reproducibility, errors ----------

#[test]
fn writes_the_json_and_both_figures_atomically() {
    let dir = std::env::temp_dir().join(format!("kfac-ef-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ef::write(&dir, study()).expect("write");
    for name in ["empirical_fisher.png", "empirical_fisher_misspec.png"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert!(bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("empirical_fisher.json")).unwrap()).unwrap();
    let reg = &json["regression"];
    assert_eq!(reg["grid"].as_array().unwrap().len(), 225);
    assert_eq!(reg["trajectories"].as_array().unwrap().len(), 12);
    assert_eq!(json["misspecification"].as_array().unwrap().len(), 3);
    assert!(reg["cosines"]["ef_vs_ngd"]["median"].is_f64());
    let md = std::fs::read_to_string(dir.join("empirical_fisher.md")).unwrap();
    assert_eq!(md, ef::table(study()));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Same seed, same numbers, whatever the thread count.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let config = EmpiricalFisherConfig { steps: 2000, replicates: 20, sweep_seeds: vec![0, 1], ..Default::default() };
    let on = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| sweep::sweep(&config).unwrap())
    };
    let (one, two) = (on(1), on(2));
    assert_eq!(one, two);
    assert_eq!(one.len(), 2);
}

#[test]
fn bad_configurations_are_refused() {
    for config in [
        EmpiricalFisherConfig { points: 0, ..Default::default() },
        EmpiricalFisherConfig { steps: 0, ..Default::default() },
        EmpiricalFisherConfig { per_class: 1, ..Default::default() },
        EmpiricalFisherConfig { step_size: f64::NAN, ..Default::default() },
        EmpiricalFisherConfig { step_size: -1e-3, ..Default::default() },
    ] {
        assert!(matches!(ef::run(&config), Err(kfac_nn::Error::Config { .. })));
    }
}

/// Separable classes have no optimum: Newton's method says so instead of
/// returning a point.
#[test]
fn newton_on_separable_classes_is_an_error() {
    let x = ndarray::array![[1.0, 0.5], [2.0, -0.5], [-1.0, 0.5], [-2.0, -0.5]];
    let y = ndarray::array![0.0, 0.0, 1.0, 1.0];
    let problem = misspec::Logistic::new(&data::Classes { x, y });
    let la = Faer::sequential();
    let r = problem.newton(&la, [0.0, 0.0]);
    assert!(matches!(r, Err(kfac_nn::Error::Data { .. })));
}
