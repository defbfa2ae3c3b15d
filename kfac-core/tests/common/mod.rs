//! Reference computations for the conformance suite, all in f64 and written
//! independently of the crate: explicit loops, a dense Kronecker product and
//! Gaussian elimination.
#![allow(dead_code)]

use kfac_core::{LayerShape, Real};
use ndarray::{Array1, Array2, ArrayView2};
use proptest::prelude::*;

/// A small random layer problem.
#[derive(Debug, Clone)]
pub struct Problem {
    pub shape: LayerShape,
    pub inputs: Array2<f64>,
    pub grads: Array2<f64>,
    pub v: Array2<f64>,
    pub lambda: f64,
}

impl Problem {
    pub fn n(&self) -> usize {
        self.inputs.nrows()
    }

    /// ā_n: the inputs with the bias 1 appended.
    pub fn a_bar(&self) -> Array2<f64> {
        let (n, d) = self.inputs.dim();
        Array2::from_shape_fn((n, self.shape.a_dim()), |(i, j)| if j < d { self.inputs[(i, j)] } else { 1.0 })
    }

    /// A = (1/N) Σ ā āᵀ.
    pub fn a_ref(&self) -> Array2<f64> {
        let ab = self.a_bar();
        ab.t().dot(&ab) / self.n() as f64
    }

    /// B = (1/N) Σ g gᵀ.
    pub fn b_ref(&self) -> Array2<f64> {
        self.grads.t().dot(&self.grads) / self.n() as f64
    }

    /// The exact Fisher block (1/N) Σ vec(g āᵀ) vec(g āᵀ)ᵀ, by explicit loops.
    pub fn fisher(&self) -> Array2<f64> {
        let (d_out, a_dim) = self.shape.param_dims();
        let p = d_out * a_dim;
        let ab = self.a_bar();
        let mut f = Array2::zeros((p, p));
        for n in 0..self.n() {
            // vec(g āᵀ)[j * d_out + i] = g_i ā_j
            let mut x = Array1::zeros(p);
            for j in 0..a_dim {
                for i in 0..d_out {
                    x[j * d_out + i] = self.grads[(n, i)] * ab[(n, j)];
                }
            }
            for r in 0..p {
                for c in 0..p {
                    f[(r, c)] += x[r] * x[c];
                }
            }
        }
        f / self.n() as f64
    }

    pub fn inputs_t<T: Real>(&self) -> Array2<T> {
        cast(&self.inputs)
    }
    pub fn grads_t<T: Real>(&self) -> Array2<T> {
        cast(&self.grads)
    }
    pub fn v_t<T: Real>(&self) -> Array2<T> {
        cast(&self.v)
    }
}

pub fn cast<T: Real>(a: &Array2<f64>) -> Array2<T> {
    a.mapv(T::from_f64_lossy)
}

pub fn to64<T: Real>(a: ArrayView2<'_, T>) -> Array2<f64> {
    a.mapv(|x| x.to_f64_exact())
}

/// Column-major vec.
pub fn vec(a: &Array2<f64>) -> Array1<f64> {
    a.t().iter().copied().collect()
}

pub fn unvec(x: &Array1<f64>, rows: usize, cols: usize) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |(i, j)| x[j * rows + i])
}

/// Dense C ⊗ D.
pub fn kron(c: &Array2<f64>, d: &Array2<f64>) -> Array2<f64> {
    let (p, q) = (c.nrows(), d.nrows());
    Array2::from_shape_fn((p * q, p * q), |(r, s)| c[(r / q, s / q)] * d[(r % q, s % q)])
}

pub fn add_identity(m: &Array2<f64>, l: f64) -> Array2<f64> {
    let mut m = m.clone();
    m.diag_mut().mapv_inplace(|x| x + l);
    m
}

/// Solves M x = b by Gaussian elimination with partial pivoting.
pub fn solve(m: &Array2<f64>, b: &Array1<f64>) -> Array1<f64> {
    let n = m.nrows();
    let mut a = m.clone();
    let mut x = b.clone();
    for k in 0..n {
        let p = (k..n).max_by(|&i, &j| a[(i, k)].abs().total_cmp(&a[(j, k)].abs())).unwrap();
        if p != k {
            for c in 0..n {
                a.swap((k, c), (p, c));
            }
            x.swap(k, p);
        }
        for i in k + 1..n {
            let f = a[(i, k)] / a[(k, k)];
            for c in k..n {
                a[(i, c)] -= f * a[(k, c)];
            }
            x[i] -= f * x[k];
        }
    }
    for k in (0..n).rev() {
        let s: f64 = (k + 1..n).map(|c| a[(k, c)] * x[c]).sum();
        x[k] = (x[k] - s) / a[(k, k)];
    }
    x
}

pub fn fro(a: &Array2<f64>) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// ‖a − b‖_F / ‖b‖_F (absolute when b is tiny).
pub fn rel_err(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    fro(&(a - b)) / fro(b).max(1e-30)
}

/// The tolerance for a relative error after O(p) accumulated roundings in a
/// problem of condition number `kappa`, at the precision of `T`.
pub fn tol<T: Real>(p: usize, kappa: f64) -> f64 {
    64.0 * (p as f64 + 4.0) * T::EPSILON.to_f64_exact() * kappa.max(1.0)
}

/// A deterministic generator for the data (proptest picks the seed).
pub struct Lcg(u64);
impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407))
    }
    /// Uniform in [-1, 1).
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    pub fn matrix(&mut self, r: usize, c: usize) -> Array2<f64> {
        Array2::from_shape_fn((r, c), |_| self.next())
    }
}

/// Random small problems: layer sizes 1..=5 in and out, 1..=9 examples,
/// with or without bias, damping λ in [0.05, 1].
pub fn problem() -> impl Strategy<Value = Problem> {
    (1usize..=5, 1usize..=5, 1usize..=9, any::<bool>(), any::<u64>(), 0.05f64..1.0).prop_map(
        |(d_in, d_out, n, bias, seed, lambda)| {
            let mut rng = Lcg::new(seed);
            let shape = if bias { LayerShape::new(d_in, d_out) } else { LayerShape::without_bias(d_in, d_out) };
            let inputs = rng.matrix(n, d_in);
            let grads = rng.matrix(n, d_out);
            let v = rng.matrix(d_out, shape.a_dim());
            Problem { shape, inputs, grads, v, lambda }
        },
    )
}
