//! Euler trajectories along the fields, and their shape.
//!
//! From a start $p_0$, $p_{k+1} = p_k + \gamma\, v(p_k)$ for $K$ steps. The
//! authors' code takes $\gamma = 10^{-3}$ and $K = 50{,}000$ (total time 50);
//! their appendix says $10^{-4}$, with which the EF paths stop far from the
//! minimum, unlike their figure.

use super::fields::{Field, Fields, Point};

/// One trajectory and its measures.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trajectory {
    /// The field followed.
    pub field: Field,
    /// $p_0$.
    pub start: Point,
    /// $p_K$.
    pub end: Point,
    /// $\lVert p_K - p^* \rVert$, the distance to the closed-form optimum.
    pub distance: f64,
    /// $\sum_k \lVert p_{k+1} - p_k \rVert$.
    pub length: f64,
    /// The largest distance of a $p_k$ from the segment $[p_0, p^*]$.
    pub max_deviation: f64,
    /// Every `sample_every`-th point (the first and the last included).
    pub sampled: Vec<Point>,
    /// Every point $p_0, \dots, p_K$ (not serialised).
    #[serde(skip)]
    pub path: Vec<Point>,
}

/// The $K + 1$ points of the Euler trajectory of `field` from `start`.
pub fn integrate(
    fields: &mut Fields<'_>,
    field: Field,
    start: Point,
    steps: usize,
    step_size: f64,
) -> kfac_core::Result<Vec<Point>> {
    let mut path = Vec::with_capacity(steps + 1);
    let mut p = start;
    path.push(p);
    for _ in 0..steps {
        let v = fields.eval(field, p)?;
        p = [p[0] + step_size * v[0], p[1] + step_size * v[1]];
        path.push(p);
    }
    Ok(path)
}

/// The trajectory of `field` from `start`, measured against the optimum `optimum`.
pub fn trajectory(
    fields: &mut Fields<'_>,
    field: Field,
    start: Point,
    optimum: Point,
    steps: usize,
    step_size: f64,
    sample_every: usize,
) -> kfac_core::Result<Trajectory> {
    let path = integrate(fields, field, start, steps, step_size)?;
    let end = *path.last().unwrap_or(&start);
    let every = sample_every.max(1);
    let mut sampled: Vec<Point> = path.iter().step_by(every).copied().collect();
    if path.len() % every != 1 && every > 1 {
        sampled.push(end);
    }
    Ok(Trajectory {
        field,
        start,
        end,
        distance: distance(end, optimum),
        length: length(&path),
        max_deviation: max_deviation(&path, start, optimum),
        sampled,
        path,
    })
}

/// $\lVert p - q \rVert$.
pub fn distance(p: Point, q: Point) -> f64 {
    (p[0] - q[0]).hypot(p[1] - q[1])
}

/// The length of the polygonal path.
pub fn length(path: &[Point]) -> f64 {
    path.windows(2).map(|w| distance(w[0], w[1])).sum()
}

/// The largest distance of a point of `path` from the segment $[a, b]$.
pub fn max_deviation(path: &[Point], a: Point, b: Point) -> f64 {
    path.iter().map(|&p| segment_distance(p, a, b)).fold(0.0, f64::max)
}

/// The distance of `p` from the segment $[a, b]$.
pub fn segment_distance(p: Point, a: Point, b: Point) -> f64 {
    let d = [b[0] - a[0], b[1] - a[1]];
    let len2 = d[0] * d[0] + d[1] * d[1];
    if len2 == 0.0 {
        return distance(p, a);
    }
    let t = (((p[0] - a[0]) * d[0] + (p[1] - a[1]) * d[1]) / len2).clamp(0.0, 1.0);
    distance(p, [a[0] + t * d[0], a[1] + t * d[1]])
}
