//! The `LinAlg` contract, checked on every backend: residual tests with
//! tolerances from the size and the precision, on every memory layout
//! (row- and column-major, transposed, padded, strided with a negative
//! stride), shape and finiteness errors, and empty operands.
//!
//! Unused storage around each view is NaN, so a read outside a view poisons
//! the result and a write outside it is detected.

use kfac_core::{LinAlg, LinAlgError, Real};
use kfac_linalg_faer::Faer;
use kfac_linalg_nalgebra::Nalgebra;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, ShapeBuilder, s};

/// A 64-bit linear congruential generator (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in $[-1, 1)$.
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

fn random<T: Real>(m: usize, n: usize, seed: u64) -> Array2<T> {
    let mut g = Lcg::new(seed);
    Array2::from_shape_simple_fn((m, n), || T::from_f64_lossy(g.uniform()))
}

fn to_f64<T: Real>(a: ArrayView2<'_, T>) -> Array2<f64> {
    a.mapv(T::to_f64_exact)
}

fn t_of<T: Real>(a: &Array2<f64>) -> Array2<T> {
    a.mapv(T::from_f64_lossy)
}

/// Symmetric, entries in $[-1, 1)$.
fn symmetric<T: Real>(n: usize, seed: u64) -> Array2<T> {
    let g = random::<T>(n, n, seed);
    Array2::from_shape_fn((n, n), |(i, j)| g[[i.max(j), i.min(j)]])
}

/// $G G^\top / n + I$: symmetric positive definite, eigenvalues in $[1, 5]$.
fn spd<T: Real>(n: usize, seed: u64) -> Array2<T> {
    let g = random::<f64>(n, n, seed);
    let mut a = g.dot(&g.t()) / n.max(1) as f64 + Array2::<f64>::eye(n);
    for i in 0..n {
        for j in 0..i {
            a[[j, i]] = a[[i, j]];
        }
    }
    t_of(&a)
}

/// Overwrites the strict upper triangle with large finite garbage: the
/// decompositions must read the lower triangle only.
fn spoil_upper<T: Real>(a: &Array2<T>, seed: u64) -> Array2<T> {
    let n = a.nrows();
    let junk = random::<T>(n, n, seed);
    Array2::from_shape_fn((n, n), |(i, j)| if j > i { junk[[i, j]] * T::from_f64_lossy(1e3) } else { a[[i, j]] })
}

fn fro(a: &Array2<f64>) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn eps<T: Real>() -> f64 {
    T::EPSILON.to_f64_exact()
}

#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Standard (C order).
    Row,
    /// Fortran order, built with `ShapeBuilder::f`.
    Col,
    /// `.reversed_axes()` of a row-major array.
    Transposed,
    /// Every other row of a wider array: non-contiguous rows.
    Padded,
    /// `s![..;2, ..;-1]`: row stride 2 n, column stride -1.
    Strided,
}

use Layout::*;
const LAYOUTS: [Layout; 5] = [Row, Col, Transposed, Padded, Strided];

/// A matrix stored in a given layout; unused storage is NaN, so a read
/// outside the view poisons the result and a write there is detected.
struct Held<T> {
    data: Array2<T>,
    layout: Layout,
}

impl<T: Real> Held<T> {
    fn new(m: &Array2<T>, layout: Layout) -> Self {
        let (r, c) = m.dim();
        let mut held = Self {
            data: match layout {
                Row => Array2::from_elem((r, c), T::nan()),
                Col => Array2::from_elem((r, c).f(), T::nan()),
                Transposed => Array2::from_elem((c, r), T::nan()),
                Padded => Array2::from_elem((r, c + 3), T::nan()),
                Strided => Array2::from_elem((2 * r, c), T::nan()),
            },
            layout,
        };
        held.view_mut().assign(m);
        held
    }

    fn view(&self) -> ArrayView2<'_, T> {
        match self.layout {
            Row | Col => self.data.view(),
            Transposed => self.data.view().reversed_axes(),
            Padded => {
                let c = self.data.ncols() - 3;
                self.data.slice(s![.., ..c])
            }
            Strided => self.data.slice(s![..;2, ..;-1]),
        }
    }

    fn view_mut(&mut self) -> ArrayViewMut2<'_, T> {
        match self.layout {
            Row | Col => self.data.view_mut(),
            Transposed => self.data.view_mut().reversed_axes(),
            Padded => {
                let c = self.data.ncols() - 3;
                self.data.slice_mut(s![.., ..c])
            }
            Strided => self.data.slice_mut(s![..;2, ..;-1]),
        }
    }

    /// The storage outside the view is still all NaN.
    fn gaps_untouched(&self) -> bool {
        let inside = self.view().len();
        self.data.iter().filter(|x| x.is_nan()).count() == self.data.len() - inside
    }
}

/// Checks $C = \alpha A B + \beta C_0$ elementwise against the bound
/// $|\Delta| \le 2 (k + 2) \epsilon (|\alpha| |A| |B| + |\beta| |C_0|)$.
fn check_gemm_case<T: Real>(
    la: &dyn LinAlg<T>,
    (m, k, n): (usize, usize, usize),
    (alpha, beta): (f64, f64),
    layouts: [Layout; 3],
    seed: u64,
) {
    let a = random::<T>(m, k, seed);
    let b = random::<T>(k, n, seed + 1);
    let c0 = if beta == 0.0 { Array2::from_elem((m, n), T::nan()) } else { random::<T>(m, n, seed + 2) };
    let ha = Held::new(&a, layouts[0]);
    let hb = Held::new(&b, layouts[1]);
    let mut hc = Held::new(&c0, layouts[2]);
    la.gemm(T::from_f64_lossy(alpha), ha.view(), hb.view(), T::from_f64_lossy(beta), hc.view_mut()).unwrap();
    assert!(hc.gaps_untouched(), "gemm wrote outside C ({layouts:?})");
    let (a, b, c0, got) = (to_f64(a.view()), to_f64(b.view()), to_f64(c0.view()), to_f64(hc.view()));
    let tol = 2.0 * (k + 2) as f64 * eps::<T>();
    for i in 0..m {
        for j in 0..n {
            let mut exact = 0.0;
            let mut bound = 0.0;
            for l in 0..k {
                exact += alpha * a[[i, l]] * b[[l, j]];
                bound += (alpha * a[[i, l]] * b[[l, j]]).abs();
            }
            if beta != 0.0 {
                exact += beta * c0[[i, j]];
                bound += (beta * c0[[i, j]]).abs();
            }
            let err = (got[[i, j]] - exact).abs();
            assert!(
                err <= tol * bound + f64::MIN_POSITIVE,
                "gemm {}: ({i}, {j}) off by {err:e} (bound {:e}), shape {:?}, alpha {alpha}, beta {beta}, {layouts:?}",
                T::NAME,
                tol * bound,
                (m, k, n)
            );
        }
    }
}

const ALPHA_BETA: [(f64, f64); 6] = [(1.0, 0.0), (2.5, 0.0), (1.0, 1.0), (-0.5, 0.75), (1.25, -1.0), (0.0, 0.5)];

fn check_gemm<T: Real>(la: &dyn LinAlg<T>) {
    let mut case = 0;
    for shape in [(7, 9, 5), (67, 45, 53), (1, 30, 1), (40, 1, 3)] {
        for &ab in &ALPHA_BETA {
            check_gemm_case(la, shape, ab, [Row; 3], case);
            case += 1;
        }
        for la_ in LAYOUTS {
            for lb in LAYOUTS {
                for lc in LAYOUTS {
                    let ab = ALPHA_BETA[case as usize % ALPHA_BETA.len()];
                    check_gemm_case(la, shape, ab, [la_, lb, lc], case);
                    case += 1;
                }
            }
        }
    }
}

fn check_gram<T: Real>(la: &dyn LinAlg<T>) {
    let mut case = 100;
    for (nb, d) in [(9, 6), (150, 70), (3, 40)] {
        for (i, &(alpha, beta)) in ALPHA_BETA.iter().enumerate() {
            let layouts = [LAYOUTS[i % 5], LAYOUTS[(i + 2) % 5]];
            let x = random::<T>(nb, d, case);
            let c0 = if beta == 0.0 { Array2::from_elem((d, d), T::nan()) } else { symmetric::<T>(d, case + 1) };
            let hx = Held::new(&x, layouts[0]);
            let mut hc = Held::new(&c0, layouts[1]);
            la.gram(T::from_f64_lossy(alpha), hx.view(), T::from_f64_lossy(beta), hc.view_mut()).unwrap();
            assert!(hc.gaps_untouched());
            let got = hc.view();
            assert_eq!(got, got.t(), "gram result not exactly symmetric");
            let (x, c0, got) = (to_f64(x.view()), to_f64(c0.view()), to_f64(got));
            let tol = 2.0 * (nb + 2) as f64 * eps::<T>();
            for i in 0..d {
                for j in 0..d {
                    let mut exact = 0.0;
                    let mut bound = 0.0;
                    for l in 0..nb {
                        exact += alpha * x[[l, i]] * x[[l, j]];
                        bound += (alpha * x[[l, i]] * x[[l, j]]).abs();
                    }
                    if beta != 0.0 {
                        exact += beta * c0[[i, j]];
                        bound += (beta * c0[[i, j]]).abs();
                    }
                    let err = (got[[i, j]] - exact).abs();
                    assert!(
                        err <= tol * bound + f64::MIN_POSITIVE,
                        "gram {}: ({i}, {j}) off by {err:e}, alpha {alpha}, beta {beta}",
                        T::NAME
                    );
                }
            }
            case += 2;
        }
    }
}

fn check_eigh_of<T: Real>(la: &dyn LinAlg<T>, a: &Array2<T>, layout: Layout, seed: u64) {
    let n = a.nrows();
    let held = Held::new(&spoil_upper(a, seed), layout);
    let eig = la.eigh(held.view()).unwrap();
    assert_eq!(eig.values.len(), n);
    assert_eq!(eig.vectors.dim(), (n, n));
    assert!(eig.values.windows(2).into_iter().all(|w| w[0] <= w[1]), "eigenvalues not sorted: {:?}", eig.values);
    let (a, u) = (to_f64(a.view()), to_f64(eig.vectors.view()));
    let s = eig.values.mapv(T::to_f64_exact);
    // ‖A U − U diag(s)‖ ≤ c n ε ‖A‖ and ‖UᵀU − I‖ ≤ c n ε, c = 4.
    let tol = 4.0 * n as f64 * eps::<T>();
    let residual = a.dot(&u) - &u * &s;
    assert!(
        fro(&residual) <= tol * fro(&a),
        "eigh {} n = {n} {layout:?}: residual {:e} > {:e}",
        T::NAME,
        fro(&residual),
        tol * fro(&a)
    );
    let ortho = u.t().dot(&u) - Array2::<f64>::eye(n);
    assert!(fro(&ortho) <= tol, "eigh {} n = {n}: orthogonality {:e} > {tol:e}", T::NAME, fro(&ortho));
}

fn check_eigh<T: Real>(la: &dyn LinAlg<T>) {
    for (i, layout) in LAYOUTS.into_iter().enumerate() {
        check_eigh_of(la, &symmetric::<T>(17, 200 + i as u64), layout, 300 + i as u64);
    }
    for n in [1, 2, 3, 64, 150] {
        check_eigh_of(la, &symmetric::<T>(n, 400 + n as u64), Row, 500);
        check_eigh_of(la, &spd::<T>(n, 600 + n as u64), Strided, 700);
    }
    // Repeated eigenvalues.
    check_eigh_of(la, &Array2::<T>::eye(20), Col, 800);
    // Tiny, rank-deficient Gram matrices, like the output-gradient factor
    // of a trained layer (entries around 1e-9).
    for (n, rows) in [(128, 64), (65, 10)] {
        let x = random::<f64>(rows, n, 850 + n as u64);
        let tiny = x.t().dot(&x) * 1e-9;
        check_eigh_of(la, &t_of::<T>(&tiny), Row, 860);
    }
    // Rank one and two, a cluster of zero eigenvalues: the factors of a
    // batch of one or two examples. nalgebra's f32 eigenvectors lost their
    // orthogonality here (0.06 on a 5 x 5 rank-one factor) until the
    // backend re-orthonormalised them.
    // The Gram matrix is formed in `T`, as the blocks form their factors.
    for (n, rank) in [(5, 1), (5, 2), (17, 1), (40, 2)] {
        for seed in 0..8u64 {
            let x = t_of::<T>(&random::<f64>(rank, n, 870 + 10 * n as u64 + seed));
            check_eigh_of(la, &x.t().dot(&x), Row, 880 + seed);
        }
    }
    // The factor that showed it: g gᵀ for this g.
    let g = t_of::<T>(&ndarray::arr2(&[[
        -0.39513102668838695,
        -0.46162508117819123,
        -0.08731890368939133,
        0.9463213910453554,
        0.1019067585879363,
    ]]));
    check_eigh_of(la, &g.t().dot(&g), Row, 890);
    // Sorting: diag(3, 1, 2) gives 1, 2, 3 with unit vectors e1, e2, e0.
    let d = t_of::<T>(&Array2::from_diag(&ndarray::arr1(&[3.0, 1.0, 2.0])));
    let eig = la.eigh(d.view()).unwrap();
    assert_eq!(eig.values.mapv(T::to_f64_exact).to_vec(), vec![1.0, 2.0, 3.0]);
    for (col, row) in [(0, 1), (1, 2), (2, 0)] {
        assert_eq!(eig.vectors[[row, col]].abs(), T::one());
    }
}

fn check_inverse_of<T: Real>(la: &dyn LinAlg<T>, a: &Array2<T>, layout: Layout, seed: u64) {
    let n = a.nrows();
    let held = Held::new(&spoil_upper(a, seed), layout);
    let inv = la.spd_inverse(held.view()).unwrap();
    assert_eq!(inv.dim(), (n, n));
    assert!(inv.is_standard_layout());
    assert_eq!(inv, inv.t(), "spd_inverse result not exactly symmetric");
    let (a, x) = (to_f64(a.view()), to_f64(inv.view()));
    let residual = a.dot(&x) - Array2::<f64>::eye(n);
    let tol = 4.0 * n as f64 * eps::<T>() * fro(&a) * fro(&x);
    assert!(
        fro(&residual) <= tol,
        "spd_inverse {} n = {n} {layout:?}: residual {:e} > {tol:e}",
        T::NAME,
        fro(&residual)
    );
}

fn check_spd_inverse<T: Real>(la: &dyn LinAlg<T>) {
    for (i, layout) in LAYOUTS.into_iter().enumerate() {
        check_inverse_of(la, &spd::<T>(23, 900 + i as u64), layout, 950);
    }
    for n in [1, 2, 70, 130] {
        check_inverse_of(la, &spd::<T>(n, 1000 + n as u64), Row, 1050);
    }
}

fn check_kron_matvec<T: Real>(la: &dyn LinAlg<T>) {
    let (p, q) = (3, 4);
    let c = random::<T>(p, p, 1200);
    let d = random::<T>(q, q, 1201);
    let x = random::<T>(q, p, 1202);
    let y = la.kron_matvec(c.view(), d.view(), x.view()).unwrap();
    let (c, d, x, y) = (to_f64(c.view()), to_f64(d.view()), to_f64(x.view()), to_f64(y.view()));
    // Explicit (C ⊗ D) vec(X), vec stacking columns.
    for i in 0..q {
        for j in 0..p {
            let mut want = 0.0;
            for jj in 0..p {
                for ii in 0..q {
                    want += c[[j, jj]] * d[[i, ii]] * x[[ii, jj]];
                }
            }
            assert!((y[[i, j]] - want).abs() <= 64.0 * eps::<T>());
        }
    }
    assert!(matches!(
        la.kron_matvec(
            c.view().mapv(T::from_f64_lossy).view(),
            d.view().mapv(T::from_f64_lossy).view(),
            x.t().mapv(T::from_f64_lossy).view()
        ),
        Err(LinAlgError::ShapeMismatch { .. })
    ));
}

fn check_errors<T: Real>(la: &dyn LinAlg<T>) {
    let a = random::<T>(3, 4, 1300);
    let b = random::<T>(5, 2, 1301);
    let mut c = Array2::<T>::zeros((3, 2));
    assert!(matches!(
        la.gemm(T::one(), a.view(), b.view(), T::zero(), c.view_mut()),
        Err(LinAlgError::ShapeMismatch { op: "gemm", .. })
    ));
    let b = random::<T>(4, 2, 1302);
    let mut c = Array2::<T>::zeros((3, 3));
    assert!(matches!(
        la.gemm(T::one(), a.view(), b.view(), T::zero(), c.view_mut()),
        Err(LinAlgError::ShapeMismatch { .. })
    ));
    assert!(matches!(la.gram(T::one(), a.view(), T::zero(), c.view_mut()), Err(LinAlgError::ShapeMismatch { .. })));
    assert!(matches!(la.matmul(a.view(), a.view()), Err(LinAlgError::ShapeMismatch { .. })));
    assert!(matches!(la.eigh(a.view()), Err(LinAlgError::NotSquare { op: "eigh", rows: 3, cols: 4 })));
    assert!(matches!(la.spd_inverse(a.view()), Err(LinAlgError::NotSquare { .. })));
    let s = spd::<T>(4, 1303);

    for bad in [T::nan(), T::infinity(), T::neg_infinity()] {
        let mut s_bad = s.clone();
        s_bad[[2, 1]] = bad;
        assert!(matches!(la.eigh(s_bad.view()), Err(LinAlgError::NonFinite { op: "eigh" })));
        assert!(matches!(la.spd_inverse(s_bad.view()), Err(LinAlgError::NonFinite { op: "spd_inverse" })));
    }

    // Indefinite: the third pivot is the first non-positive one.
    let mut indefinite = Array2::<T>::eye(4);
    indefinite[[2, 2]] = -T::one();
    assert_eq!(la.spd_inverse(indefinite.view()), Err(LinAlgError::NotPositiveDefinite { index: 2 }));
    // Singular: [[1, 1], [1, 1]] has second pivot 0.
    let singular = Array2::<T>::ones((2, 2));
    assert_eq!(la.spd_inverse(singular.view()), Err(LinAlgError::NotPositiveDefinite { index: 1 }));
    // A symmetric matrix with a negative eigenvalue but positive diagonal.
    let mut g = spd::<T>(6, 1304);
    g[[5, 4]] = T::from_f64_lossy(10.0);
    g[[4, 5]] = g[[5, 4]];
    assert_eq!(la.spd_inverse(g.view()), Err(LinAlgError::NotPositiveDefinite { index: 5 }));
}

fn check_empty<T: Real>(la: &dyn LinAlg<T>) {
    // k = 0: C = beta C.
    let a = Array2::<T>::zeros((3, 0));
    let b = Array2::<T>::zeros((0, 2));
    let c0 = random::<T>(3, 2, 1400);
    let mut c = c0.clone();
    la.gemm(T::one(), a.view(), b.view(), T::from_f64_lossy(2.0), c.view_mut()).unwrap();
    assert_eq!(c, c0.mapv(|x| x * T::from_f64_lossy(2.0)));
    let mut c = Array2::from_elem((3, 2), T::nan());
    la.gemm(T::one(), a.view(), b.view(), T::zero(), c.view_mut()).unwrap();
    assert_eq!(c, Array2::zeros((3, 2)));
    // alpha = 0: C = beta C, A and B not read.
    let a = Array2::from_elem((3, 4), T::nan());
    let b = Array2::from_elem((4, 2), T::nan());
    let mut c = c0.clone();
    la.gemm(T::zero(), a.view(), b.view(), T::one(), c.view_mut()).unwrap();
    assert_eq!(c, c0);
    // m = 0 or n = 0.
    let mut c = Array2::<T>::zeros((0, 2));
    la.gemm(T::one(), Array2::zeros((0, 4)).view(), random::<T>(4, 2, 1401).view(), T::one(), c.view_mut()).unwrap();
    let mut c = Array2::<T>::zeros((0, 0));
    la.gemm(T::one(), Array2::zeros((0, 0)).view(), Array2::zeros((0, 0)).view(), T::zero(), c.view_mut()).unwrap();
    // Gram of an empty batch.
    let x = Array2::<T>::zeros((0, 3));
    let s0 = symmetric::<T>(3, 1402);
    let mut c = s0.clone();
    la.gram(T::one(), x.view(), T::from_f64_lossy(0.5), c.view_mut()).unwrap();
    assert_eq!(c, s0.mapv(|x| x * T::from_f64_lossy(0.5)));
    let mut c = Array2::<T>::zeros((0, 0));
    la.gram(T::one(), Array2::zeros((5, 0)).view(), T::zero(), c.view_mut()).unwrap();
    // 0 x 0 decompositions.
    let e = Array2::<T>::zeros((0, 0));
    let eig = la.eigh(e.view()).unwrap();
    assert_eq!((eig.values.len(), eig.vectors.dim()), (0, (0, 0)));
    assert_eq!(la.spd_inverse(e.view()).unwrap().dim(), (0, 0));
    assert_eq!(
        la.matmul(Array2::zeros((2, 0)).view(), Array2::zeros((0, 3)).view()).unwrap(),
        Array2::<T>::zeros((2, 3))
    );
}

macro_rules! typed_tests {
    ($module:ident, $t:ty, $backends:expr) => {
        mod $module {
            use super::*;
            type T = $t;
            fn backends() -> Vec<Box<dyn LinAlg<T>>> {
                $backends
            }

            #[test]
            fn gemm() {
                for la in backends() {
                    check_gemm::<T>(&*la);
                }
            }

            #[test]
            fn gram() {
                for la in backends() {
                    check_gram::<T>(&*la);
                }
            }

            #[test]
            fn eigh() {
                for la in backends() {
                    check_eigh::<T>(&*la);
                }
            }

            #[test]
            fn spd_inverse() {
                for la in backends() {
                    check_spd_inverse::<T>(&*la);
                }
            }

            #[test]
            fn kron_matvec() {
                for la in backends() {
                    check_kron_matvec::<T>(&*la);
                }
            }

            #[test]
            fn errors() {
                for la in backends() {
                    check_errors::<T>(&*la);
                }
            }

            #[test]
            fn empty() {
                for la in backends() {
                    check_empty::<T>(&*la);
                }
            }
        }
    };
}

// faer sequential, on two threads, and on the whole rayon pool.
typed_tests!(faer_f32, f32, vec![Box::new(Faer::sequential()), Box::new(Faer::with_threads(2)), Box::new(Faer::new())]);
typed_tests!(faer_f64, f64, vec![Box::new(Faer::sequential()), Box::new(Faer::with_threads(2)), Box::new(Faer::new())]);
typed_tests!(nalgebra_f32, f32, vec![Box::new(Nalgebra)]);
typed_tests!(nalgebra_f64, f64, vec![Box::new(Nalgebra)]);
