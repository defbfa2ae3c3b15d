//! The fidelity study's exact Fisher against finite differences, and the
//! relations between the exact block, K-FAC and EKFAC that the figure relies on.

use kfac_bench::fidelity::{self, FidelityConfig, exact_block, fisher_rows, layer_matrices, output_fisher_factor};
use kfac_core::{CurvatureBlock, EkfacBlock, LayerBatch, LinAlg};
use kfac_linalg_faer::Faer;
use kfac_nn::loss::{FisherMode, Loss};
use kfac_nn::mlp::{Activation, Init, Mlp, NoHook};
use ndarray::{Array1, Array2, ArrayView1, s};
use proptest::prelude::*;

fn net(seed: u64, sizes: &[usize]) -> Mlp<f64> {
    Mlp::new(sizes, Activation::Tanh, Activation::Identity, Init::Glorot, seed, &[(1, Activation::Identity)]).unwrap()
}

fn inputs(seed: u64, m: usize, d: usize) -> Array2<f64> {
    let mut rng = kfac_nn::rng::Rng::new(seed);
    Array2::from_shape_fn((m, d), |_| rng.uniform())
}

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn max_abs(a: &Array2<f64>) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// $\mathbb E_y[g g^\top]$ by enumerating every target, $g = \mathbb E[t] - y$.
fn enumerated_output_fisher(loss: Loss, s: ArrayView1<'_, f64>) -> Array2<f64> {
    let k = s.len();
    let p = loss.mean(s.insert_axis(ndarray::Axis(0))).row(0).to_owned();
    let mut f = Array2::zeros((k, k));
    match loss {
        Loss::SoftmaxCrossEntropy => {
            for c in 0..k {
                let mut g = p.clone();
                g[c] -= 1.0;
                f += &(outer(&g, &g) * p[c]);
            }
        }
        Loss::SigmoidCrossEntropy => {
            for bits in 0..(1usize << k) {
                let y = Array1::from_shape_fn(k, |j| ((bits >> j) & 1) as f64);
                let prob: f64 = (0..k).map(|j| if y[j] == 1.0 { p[j] } else { 1.0 - p[j] }).product();
                let g = &p - &y;
                f += &(outer(&g, &g) * prob);
            }
        }
        Loss::SquaredError => f = Array2::eye(k),
    }
    f
}

fn outer(a: &Array1<f64>, b: &Array1<f64>) -> Array2<f64> {
    Array2::from_shape_fn((a.len(), b.len()), |(i, j)| a[i] * b[j])
}

#[test]
fn output_fisher_factor_sums_to_the_expected_outer_product() {
    let s = Array1::from(vec![0.3, -1.2, 2.0, 0.1]);
    for loss in [Loss::SoftmaxCrossEntropy, Loss::SigmoidCrossEntropy, Loss::SquaredError] {
        let r = output_fisher_factor(loss, s.view());
        let from_factor = r.t().dot(&r);
        let enumerated = enumerated_output_fisher(loss, s.view());
        assert!(max_abs_diff(&from_factor, &enumerated) < 1e-14, "{loss:?}: {from_factor} vs {enumerated}");
    }
}

/// The Jacobian of the logits of example `x` with respect to the
/// column-major vec of layer `l`'s $\bar W$, by central differences.
fn jacobian(la: &dyn LinAlg<f64>, mlp: &Mlp<f64>, l: usize, x: ArrayView1<'_, f64>) -> Array2<f64> {
    let (rows, cols) = mlp.layers[l].w.dim();
    let x = x.insert_axis(ndarray::Axis(0));
    let k = mlp.d_out();
    let h = 1e-5;
    let mut j = Array2::zeros((k, rows * cols));
    let mut m = mlp.clone();
    for c in 0..cols {
        for r in 0..rows {
            let w0 = m.layers[l].w[(r, c)];
            m.layers[l].w[(r, c)] = w0 + h;
            let plus = m.forward(la, x, &mut NoHook).unwrap().output().row(0).to_owned();
            m.layers[l].w[(r, c)] = w0 - h;
            let minus = m.forward(la, x, &mut NoHook).unwrap().output().row(0).to_owned();
            m.layers[l].w[(r, c)] = w0;
            j.column_mut(c * rows + r).assign(&((plus - minus) / (2.0 * h)));
        }
    }
    j
}

#[test]
fn exact_blocks_match_finite_difference_fishers() {
    let la = Faer::new();
    let sizes = [3, 4, 2, 3];
    let mlp = net(7, &sizes);
    let x = inputs(8, 5, 3);
    let loss = Loss::SigmoidCrossEntropy;
    let s_all = mlp.forward(&la, x.view(), &mut NoHook).unwrap().output().to_owned();
    for mode in [FisherMode::True, FisherMode::Empirical] {
        let rows = fisher_rows(&la, &mlp, loss, x.view(), x.view(), mode).unwrap();
        for l in 0..mlp.layers.len() {
            let (a, g) = &rows[l];
            let exact = exact_block(&la, a.view(), g.view()).unwrap();
            let p = exact.nrows();
            let mut reference = Array2::<f64>::zeros((p, p));
            for n in 0..x.nrows() {
                let j = jacobian(&la, &mlp, l, x.row(n));
                let s = s_all.row(n);
                let prob = loss.mean(s.insert_axis(ndarray::Axis(0))).row(0).to_owned();
                let f_out = match mode {
                    FisherMode::True => Array2::from_diag(&prob.mapv(|q| q * (1.0 - q))),
                    FisherMode::Empirical => {
                        let g = &prob - &x.row(n);
                        outer(&g, &g)
                    }
                };
                reference += &j.t().dot(&f_out).dot(&j);
            }
            reference /= x.nrows() as f64;
            let err = max_abs_diff(&exact, &reference);
            assert!(err < 1e-7 * max_abs(&reference).max(1e-3), "{mode:?} layer {l}: error {err}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// K-FAC's block is $A \otimes B$ of the rows (so the $\sqrt K$ scaling of the
    /// true-Fisher rows is right), EKFAC matches the diagonal of $F$ in the
    /// eigenbasis (its defining property), so its error is never above
    /// K-FAC's, and the dense inverses are inverses of the damped blocks.
    #[test]
    fn kfac_ekfac_and_exact_blocks_relate_as_documented(seed in 0u64..1000, m in 2usize..8, h1 in 2usize..5, h2 in 1usize..4) {
        let la = Faer::new();
        let sizes = [3, h1, h2, 3];
        let mlp = net(seed, &sizes);
        let x = inputs(seed + 1, m, 3);
        for mode in [FisherMode::True, FisherMode::Empirical] {
            let rows = fisher_rows(&la, &mlp, Loss::SigmoidCrossEntropy, x.view(), x.view(), mode).unwrap();
            for (l, shape) in mlp.shapes().into_iter().enumerate() {
                let (a, g) = &rows[l];
                let mats = layer_matrices(&la, shape, a.view(), g.view(), 0.1).unwrap();
                let r = a.nrows() as f64;
                let mut abar = Array2::<f64>::ones((a.nrows(), a.ncols() + 1));
                abar.slice_mut(s![.., ..a.ncols()]).assign(a);
                let fa = abar.t().dot(&abar) / r;
                let fb = g.t().dot(g) / r;
                let kron = Array2::from_shape_fn((fa.nrows() * fb.nrows(), fa.ncols() * fb.ncols()), |(i, j)| {
                    fa[(i / fb.nrows(), j / fb.ncols())] * fb[(i % fb.nrows(), j % fb.ncols())]
                });
                let scale = max_abs(&mats.exact).max(1e-300);
                prop_assert!(max_abs_diff(&mats.kfac, &kron) <= 1e-12 * scale, "K-FAC is not A ⊗ B");

                let mut block = EkfacBlock::<f64>::new("t", shape);
                let batch = LayerBatch::new(a.view(), g.view());
                block.update_statistics(&la, &batch, 0.0).unwrap();
                block.refresh(&la, kfac_core::Damping::tikhonov(0.1)).unwrap();
                let (ua, ub) = block.basis().unwrap();
                let q = Array2::from_shape_fn((ua.nrows() * ub.nrows(), ua.ncols() * ub.ncols()), |(i, j)| {
                    ua[(i / ub.nrows(), j / ub.ncols())] * ub[(i % ub.nrows(), j % ub.ncols())]
                });
                let in_basis = |f: &Array2<f64>| q.t().dot(f).dot(&q).diag().to_owned();
                let d_exact = in_basis(&mats.exact);
                let d_ekfac = in_basis(&mats.ekfac);
                let diag_err = d_exact.iter().zip(&d_ekfac).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
                prop_assert!(diag_err <= 1e-10 * scale, "EKFAC's scalings are not diag(QᵀFQ): {diag_err}");
                prop_assert!(mats.errors.ekfac <= mats.errors.kfac + 1e-10, "{:?}", mats.errors);

                let lambda = mats.errors.damping;
                for (fhat, inv) in [(&mats.exact, &mats.exact_inverse), (&mats.kfac, &mats.kfac_inverse), (&mats.ekfac, &mats.ekfac_inverse)] {
                    let mut damped = fhat.clone();
                    damped.diag_mut().mapv_inplace(|v| v + lambda);
                    let id = damped.dot(inv);
                    let cond = (max_abs(fhat) + lambda) / lambda;
                    prop_assert!(max_abs_diff(&id, &Array2::eye(id.nrows())) <= 1e-12 * cond * id.nrows() as f64);
                }
            }
        }
    }
}

#[test]
fn a_small_study_runs_and_ekfac_is_never_worse() {
    let config = FidelityConfig {
        sizes: vec![64, 12, 6, 12, 64],
        code_layer: 1,
        train_steps: 20,
        batch_size: 64,
        examples: 24,
        shown: vec![1, 2],
        relative_damping: 0.1,
        chain: vec![1, 2],
        seed: 3,
    };
    let study = fidelity::study(&config).unwrap();
    // The cross-layer comparison: the tridiagonal model's inverse has no
    // entries beyond the first off-diagonal blocks, block-diagonal K-FAC's
    // none beyond the diagonal blocks; the exact inverse has some of both.
    let chain = study.chain.as_ref().unwrap();
    assert_eq!(chain.params, 13 * 6 + 7 * 12);
    for m in [&chain.true_fisher, &chain.empirical_fisher] {
        let (n, e) = (m.exact_inverse.nrows(), &m.errors);
        let split = 13 * 6;
        let off =
            |x: &ndarray::Array2<f64>| x.slice(ndarray::s![..split, split..]).iter().map(|v| v * v).sum::<f64>().sqrt();
        assert_eq!(off(&m.block_diagonal_inverse), 0.0);
        assert!(off(&m.tridiagonal_inverse) > 0.0 && off(&m.exact_inverse) > 0.0);
        assert_eq!(n, chain.params);
        assert_eq!(e.exact_inverse_beyond_tridiagonal, 0.0, "two layers: everything is tridiagonal");
        assert!(e.exact_inverse_beyond_diagonal > 0.0);
        assert!(e.block_diagonal_inverse.is_finite() && e.tridiagonal_inverse.is_finite());
        assert_eq!(e.fallbacks, 0);
    }
    assert_eq!(study.layers.len(), 4);
    assert_eq!(study.shown.len(), 2);
    assert!(study.ekfac_never_worse());
    for l in &study.layers {
        for e in [l.true_fisher, l.empirical_fisher] {
            assert!(e.kfac.is_finite() && e.kfac > 0.0 && e.kfac < 1.5, "{e:?}");
            assert!(e.kfac_inverse.is_finite() && e.ekfac_inverse.is_finite());
        }
    }
    let dir = std::env::temp_dir().join(format!("kfac-fidelity-test-{}", std::process::id()));
    fidelity::write(&dir, &study).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fidelity.json")).unwrap()).unwrap();
    assert_eq!(json["ekfac_never_worse"], serde_json::Value::Bool(true));
    assert_eq!(json["layers"].as_array().unwrap().len(), 4);
    assert!(json["chain"]["true_fisher"]["tridiagonal_inverse"].is_number());
    for f in ["fidelity.png", "fidelity_empirical.png", "fidelity_chain.png"] {
        assert!(std::fs::metadata(dir.join(f)).unwrap().len() > 1000);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_study_with_the_wrong_sizes_is_refused() {
    let config = FidelityConfig { sizes: vec![10, 4, 10], ..FidelityConfig::default() };
    let err = fidelity::study(&config).unwrap_err().to_string();
    assert!(err.contains("64"), "{err}");
}
