//! Block-tridiagonal K-FAC (Martens & Grosse's chain model) against dense
//! references, for f32 and f64, on both backends.
//!
//! The model is pinned down by its defining properties, each checked on
//! tiny random MLPs (a real forward and backward pass, so neighbouring
//! layers are correlated):
//! - its blocks on the diagonal and the first off-diagonal are the K-FAC
//!   blocks $A_i \otimes B_i$ (damped) and $A_{i,i+1} \otimes B_{i,i+1}$, built here
//!   from explicit loops over the examples;
//! - its inverse (the preconditioner, as a dense matrix) is block-tridiagonal
//!   and is the inverse of the model (Gaussian elimination);
//! - `precondition` and `multiply` undo each other.
//!
//! A positive definite matrix whose inverse is block-tridiagonal is fixed by
//! those blocks, so together they check the whole model.

mod common;

use common::*;
use kfac_core::DampingSchedule;
use kfac_core::{
    BlockKind, CurvatureBlock, Damping, Error, KfacBlock, KfacMethod, LayerBatch, LayerShape, LinAlg, NonFinitePolicy,
    Preconditioner, PreconditionerConfig, Real, Structure, TridiagonalKfac,
};
use kfac_linalg_faer::Faer;
use kfac_linalg_nalgebra::Nalgebra;
use ndarray::{Array1, Array2, Axis, s};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

type Check = Result<(), TestCaseError>;

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond { Ok(()) } else { Err(TestCaseError::fail(msg())) }
}

fn close(what: &str, got: &Array2<f64>, want: &Array2<f64>, tol: f64) -> Check {
    let e = rel_err(got, want);
    ensure(e <= tol, || format!("{what}: relative error {e:.3e} > tolerance {tol:.3e}\n got {got:.5}\nwant {want:.5}"))
}

fn ok<V>(r: kfac_core::Result<V>) -> Result<V, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("unexpected error: {e}")))
}

/// A tiny MLP's statistics: inputs and per-example pre-activation gradients
/// of every layer, from a forward and a backward pass (tanh units).
#[derive(Debug, Clone)]
struct Chain {
    shapes: Vec<LayerShape>,
    inputs: Vec<Array2<f64>>,
    grads: Vec<Array2<f64>>,
    lambda: f64,
    seed: u64,
}

impl Chain {
    fn n(&self) -> usize {
        self.inputs[0].nrows()
    }

    fn a_bar(&self, i: usize) -> Array2<f64> {
        let x = &self.inputs[i];
        let (n, d) = x.dim();
        Array2::from_shape_fn((n, self.shapes[i].a_dim()), |(r, c)| if c < d { x[(r, c)] } else { 1.0 })
    }

    /// $A_{i,j} = \frac1N \sum_n \bar a_{i,n} \bar a_{j,n}^\top$ by explicit loops.
    fn a_ref(&self, i: usize, j: usize) -> Array2<f64> {
        mean_outer(&self.a_bar(i), &self.a_bar(j))
    }

    /// $B_{i,j} = \frac1N \sum_n g_{i,n} g_{j,n}^\top$ by explicit loops.
    fn b_ref(&self, i: usize, j: usize) -> Array2<f64> {
        mean_outer(&self.grads[i], &self.grads[j])
    }

    /// The damped diagonal factors, with π² = (tr A / dim A) / (tr B / dim B).
    fn damped(&self, i: usize, lambda: f64) -> (Array2<f64>, Array2<f64>) {
        let (a, b) = (self.a_ref(i, i), self.b_ref(i, i));
        let (ta, tb) = (a.diag().sum() / a.nrows() as f64, b.diag().sum() / b.nrows() as f64);
        let pi = if ta > 0.0 && tb > 0.0 { (ta / tb).sqrt() } else { 1.0 };
        (add_identity(&a, pi * lambda.sqrt()), add_identity(&b, lambda.sqrt() / pi))
    }

    fn batches<T: Real>(&self) -> (Vec<Array2<T>>, Vec<Array2<T>>) {
        (self.inputs.iter().map(cast).collect(), self.grads.iter().map(cast).collect())
    }

    fn offsets(&self) -> Vec<usize> {
        let mut o = vec![0];
        for s in &self.shapes {
            o.push(o.last().unwrap() + s.num_params());
        }
        o
    }

    fn random_vectors<T: Real>(&self) -> Vec<Array2<T>> {
        let mut rng = Lcg::new(self.seed ^ 0x5eed);
        self.shapes.iter().map(|s| cast(&rng.matrix(s.param_dims().0, s.param_dims().1))).collect()
    }
}

/// $\frac1N \sum_n x_n y_n^\top$ over the rows of `x` and `y`, by explicit loops.
fn mean_outer(x: &Array2<f64>, y: &Array2<f64>) -> Array2<f64> {
    let n = x.nrows();
    let mut m = Array2::zeros((x.ncols(), y.ncols()));
    for k in 0..n {
        for r in 0..x.ncols() {
            for c in 0..y.ncols() {
                m[(r, c)] += x[(k, r)] * y[(k, c)];
            }
        }
    }
    m / n as f64
}

/// 1 to 4 layers of widths 1 to 4, 1 to 12 examples, random biases, damping
/// λ in [0.05, 1].
fn chain() -> impl Strategy<Value = Chain> {
    (1usize..=4, proptest::collection::vec(1usize..=4, 5), 1usize..=12, any::<u8>(), any::<u64>(), 0.05f64..1.0)
        .prop_map(|(layers, widths, n, bias_bits, seed, lambda)| {
            build_chain(layers, &widths, n, bias_bits, seed, lambda)
        })
}

fn build_chain(layers: usize, widths: &[usize], n: usize, bias_bits: u8, seed: u64, lambda: f64) -> Chain {
    let mut rng = Lcg::new(seed);
    let shapes: Vec<LayerShape> = (0..layers)
        .map(|i| {
            if bias_bits >> i & 1 == 1 {
                LayerShape::new(widths[i], widths[i + 1])
            } else {
                LayerShape::without_bias(widths[i], widths[i + 1])
            }
        })
        .collect();
    let weights: Vec<Array2<f64>> = shapes.iter().map(|s| rng.matrix(s.d_out, s.a_dim()) * 0.9).collect();
    let mut inputs = vec![rng.matrix(n, widths[0])];
    for (i, s) in shapes.iter().enumerate().take(layers - 1) {
        let x = &inputs[i];
        let mut z = x.dot(&weights[i].slice(s![.., ..s.d_in]).t());
        if s.bias {
            z += &weights[i].column(s.d_in);
        }
        inputs.push(z.mapv(f64::tanh));
    }
    let mut grads = vec![Array2::zeros((0, 0)); layers];
    grads[layers - 1] = rng.matrix(n, widths[layers]);
    for i in (0..layers - 1).rev() {
        let next = &shapes[i + 1];
        let back = grads[i + 1].dot(&weights[i + 1].slice(s![.., ..next.d_in]));
        grads[i] = back * inputs[i + 1].mapv(|h| 1.0 - h * h);
    }
    Chain { shapes, inputs, grads, lambda, seed }
}

fn fitted<T: Real>(la: &dyn LinAlg<T>, c: &Chain, damping: Damping) -> kfac_core::Result<TridiagonalKfac<T>> {
    let (x, g) = c.batches::<T>();
    let batches: Vec<_> = x.iter().zip(&g).map(|(x, g)| LayerBatch::new(x.view(), g.view())).collect();
    let mut m = TridiagonalKfac::new(&c.shapes)?;
    m.update_statistics(la, &batches, 0.95)?;
    m.refresh(la, damping)?;
    Ok(m)
}

/// The cross factors are batch means of $\bar a_i \bar a_{i+1}^\top$ and
/// $g_i g_{i+1}^\top$; gradients of the mean loss give the same factors;
/// duplicating the batch changes nothing.
fn check_factors<T: Real>(la: &dyn LinAlg<T>, c: &Chain) -> Check {
    let (x, g) = c.batches::<T>();
    let n = c.n();
    let tol = tol::<T>(n, 1.0);
    let mut per_example = ok(TridiagonalKfac::<T>::new(&c.shapes))?;
    let b: Vec<_> = x.iter().zip(&g).map(|(x, g)| LayerBatch::new(x.view(), g.view())).collect();
    ok(per_example.update_statistics(la, &b, 0.95))?;
    let scaled: Vec<Array2<T>> = g.iter().map(|g| g.mapv(|v| v / T::from_usize(n).unwrap())).collect();
    let mut mean_loss = ok(TridiagonalKfac::<T>::new(&c.shapes))?;
    let b: Vec<_> = x.iter().zip(&scaled).map(|(x, g)| LayerBatch::from_mean_loss(x.view(), g.view())).collect();
    ok(mean_loss.update_statistics(la, &b, 0.95))?;
    let twice = |m: &Array2<T>| ndarray::concatenate(Axis(0), &[m.view(), m.view()]).unwrap();
    let (x2, g2): (Vec<_>, Vec<_>) = x.iter().zip(&g).map(|(x, g)| (twice(x), twice(g))).unzip();
    let mut doubled = ok(TridiagonalKfac::<T>::new(&c.shapes))?;
    let b: Vec<_> = x2.iter().zip(&g2).map(|(x, g)| LayerBatch::new(x.view(), g.view())).collect();
    ok(doubled.update_statistics(la, &b, 0.95))?;
    for i in 0..c.shapes.len() {
        for (name, m) in [("per-example", &per_example), ("mean-loss", &mean_loss), ("doubled", &doubled)] {
            let f = m.factors(i).unwrap();
            close(&format!("{name} A_{i}"), &to64(f.a()), &c.a_ref(i, i), tol)?;
            close(&format!("{name} B_{i}"), &to64(f.b()), &c.b_ref(i, i), tol)?;
            match m.cross_factors(i) {
                Some((a, b)) => {
                    close(&format!("{name} A_{i},{}", i + 1), &to64(a), &c.a_ref(i, i + 1), tol)?;
                    close(&format!("{name} B_{i},{}", i + 1), &to64(b), &c.b_ref(i, i + 1), tol)?;
                }
                None => ensure(i + 1 == c.shapes.len(), || format!("layer {i} has no cross factors"))?,
            }
        }
    }
    Ok(())
}

/// The defining properties, on the dense model and its dense inverse.
fn check_model<T: Real>(la: &dyn LinAlg<T>, c: &Chain) -> Check {
    let m = ok(fitted(la, c, Damping::factored(c.lambda)))?;
    let f = to64(ok(m.to_dense(la))?.view());
    let p_inv = to64(ok(m.to_dense_inverse(la))?.view());
    let p = f.nrows();
    // The model's own conditioning sets the tolerance.
    let eig = Faer::sequential().eigh(f.view()).unwrap();
    let (lo, hi) = (eig.values[0], eig.values[p - 1]);
    ensure(lo > 0.0, || format!("the model is not positive definite: smallest eigenvalue {lo:e}"))?;
    let tol = tol::<T>(p, hi / lo);
    // The damping keeps these tiny models well conditioned; a tolerance
    // this loose would make the checks below meaningless.
    ensure(tol < 0.05, || format!("tolerance {tol:e} (condition {:e}) is too loose to test anything", hi / lo))?;
    let o = c.offsets();
    let layers = c.shapes.len();
    for i in 0..layers {
        let (ad, bd) = c.damped(i, c.lambda);
        let block = f.slice(s![o[i]..o[i + 1], o[i]..o[i + 1]]).to_owned();
        close(&format!("diagonal block {i}"), &block, &kron(&ad, &bd), tol)?;
        if i + 1 < layers {
            let want = Array2::from_shape_fn((o[i + 1] - o[i], o[i + 2] - o[i + 1]), {
                let (a, b) = (c.a_ref(i, i + 1), c.b_ref(i, i + 1));
                move |(r, col)| {
                    let q = b.nrows();
                    let q2 = b.ncols();
                    a[(r / q, col / q2)] * b[(r % q, col % q2)]
                }
            });
            let got = f.slice(s![o[i]..o[i + 1], o[i + 1]..o[i + 2]]).to_owned();
            close(&format!("off-diagonal block ({i}, {})", i + 1), &got, &want, tol)?;
        }
    }
    // The inverse of the model, by Gaussian elimination on the dense model
    // (independent of `precondition`), is block-tridiagonal. (The
    // preconditioner's own matrix is so by construction: a unit vector in
    // layer j only reaches layers j - 1, j, j + 1; checked too, as a
    // regression check.)
    let mut exact_inv = Array2::zeros((p, p));
    for k in 0..p {
        let mut e = Array1::zeros(p);
        e[k] = 1.0;
        exact_inv.column_mut(k).assign(&solve(&f, &e));
    }
    for (name, inv) in [("inverse of the dense model", &exact_inv), ("preconditioner", &p_inv)] {
        let scale = fro(inv);
        for i in 0..layers {
            for j in i + 2..layers {
                for block in [
                    inv.slice(s![o[i]..o[i + 1], o[j]..o[j + 1]]).to_owned(),
                    inv.slice(s![o[j]..o[j + 1], o[i]..o[i + 1]]).to_owned(),
                ] {
                    ensure(fro(&block) <= tol * scale, || {
                        format!("{name}: block ({i}, {j}) is not zero: {:.3e} of {scale:.3e}", fro(&block))
                    })?;
                }
            }
        }
    }
    close("preconditioner vs the inverse of the model", &p_inv, &exact_inv, tol)?;
    // precondition(multiply(v)) = v and multiply(precondition(v)) = v.
    let v = c.random_vectors::<T>();
    let views: Vec<_> = v.iter().map(|x| x.view()).collect();
    let fv = ok(m.multiply(la, &views))?;
    let back = ok(m.precondition(la, &fv.iter().map(|x| x.view()).collect::<Vec<_>>()))?;
    let pv = ok(m.precondition(la, &views))?;
    let forth = ok(m.multiply(la, &pv.iter().map(|x| x.view()).collect::<Vec<_>>()))?;
    for (i, vi) in v.iter().enumerate() {
        close(&format!("precondition(multiply(v)) layer {i}"), &to64(back[i].view()), &to64(vi.view()), tol)?;
        close(&format!("multiply(precondition(v)) layer {i}"), &to64(forth[i].view()), &to64(vi.view()), tol)?;
    }
    Ok(())
}

/// One layer, or a chain cut everywhere, is block-diagonal K-FAC with
/// factored damping (the Cholesky path).
fn check_reduces_to_kfac<T: Real>(la: &dyn LinAlg<T>, c: &Chain) -> Check {
    let (x, g) = c.batches::<T>();
    let batches: Vec<_> = x.iter().zip(&g).map(|(x, g)| LayerBatch::new(x.view(), g.view())).collect();
    let breaks: Vec<usize> = (0..c.shapes.len() - 1).collect();
    let mut cut = ok(TridiagonalKfac::<T>::with_breaks(&c.shapes, &breaks))?;
    ok(cut.update_statistics(la, &batches, 0.95))?;
    ok(cut.refresh(la, Damping::factored(c.lambda)))?;
    let v = c.random_vectors::<T>();
    let got = ok(cut.precondition(la, &v.iter().map(|x| x.view()).collect::<Vec<_>>()))?;
    for (i, s) in c.shapes.iter().enumerate() {
        let mut k = KfacBlock::<T>::new("k", *s, KfacMethod::Inverse);
        ok(k.update_statistics(la, &batches[i], 0.95))?;
        ok(k.refresh(la, Damping::factored(c.lambda)))?;
        let want = ok(k.precondition(la, v[i].view()))?;
        let (ad, bd) = c.damped(i, c.lambda);
        let kappa = (fro(&ad) / ad.diag().iter().cloned().fold(f64::INFINITY, f64::min))
            * (fro(&bd) / bd.diag().iter().cloned().fold(f64::INFINITY, f64::min));
        close(
            &format!("cut chain layer {i}"),
            &to64(got[i].view()),
            &to64(want.view()),
            tol::<T>(s.num_params(), kappa),
        )?;
    }
    Ok(())
}

/// Saving and restoring is exact, and a damaged state is refused.
fn check_state<T: Real>(la: &dyn LinAlg<T>, c: &Chain) -> Check {
    let m = ok(fitted(la, c, Damping::factored(c.lambda)))?;
    let st = m.state();
    let fresh = ok(TridiagonalKfac::<T>::new(&c.shapes))?;
    let back = ok(fresh.restored(&st))?;
    let v = c.random_vectors::<T>();
    let views: Vec<_> = v.iter().map(|x| x.view()).collect();
    ensure(ok(m.precondition(la, &views))? == ok(back.precondition(la, &views))?, || "restored differs".into())?;
    ensure(back.state() == st, || "the restored state differs".into())?;
    let refused = |what: &str, damaged: &[kfac_core::BlockState<T>]| {
        ensure(matches!(fresh.restored(damaged), Err(Error::InvalidState { .. })), || format!("{what} was accepted"))
    };
    let mut damaged = st.clone();
    damaged[0].tensors.remove("A");
    refused("a missing entry", &damaged)?;
    let mut damaged = st.clone();
    let last = damaged.len() - 1;
    damaged[last].scalars.insert("damping.lambda".into(), c.lambda * 2.0);
    if last > 0 {
        refused("layers with different dampings", &damaged)?;
    }
    let mut damaged = st.clone();
    damaged[0].scalars.insert("damping.kind".into(), 0.0);
    refused("Tikhonov damping", &damaged)?;
    let mut damaged = st.clone();
    damaged[0].scalars.insert("A.weight".into(), 7.0);
    refused("unequal averaging weights", &damaged)?;
    let mut damaged = st.clone();
    let key = if c.shapes.len() > 1 { "k_a" } else { "a_inv" };
    if let Some(t) = damaged[0].tensors.get_mut(key) {
        t[[0, 0]] = T::nan();
    }
    refused("a non-finite cache entry", &damaged)?;
    let mut damaged = st.clone();
    for k in ["a_damped", "b_damped", "a_inv", "b_inv", "psi_a", "psi_b", "c_a", "c_b", "k_a", "k_b", "inv_denominator"]
    {
        damaged[last].tensors.remove(k);
    }
    if last > 0 {
        refused("a partial cache", &damaged)?;
    }
    if c.shapes.len() > 1 {
        let mut damaged = st.clone();
        let extra = damaged[0].tensors.get("a_damped").cloned().unwrap();
        damaged[last].tensors.insert("psi_a".into(), extra);
        refused("a link cache on the last layer", &damaged)?;
    }
    if c.shapes.len() > 1 {
        let cut = ok(TridiagonalKfac::<T>::with_breaks(&c.shapes, &[0]))?;
        ensure(matches!(cut.restored(&st), Err(Error::InvalidState { .. })), || "different links".into())?;
    }
    Ok(())
}

/// The Preconditioner's tridiagonal structure is the chain model, with the
/// schedule of steps.
fn check_preconditioner<T: Real>(la: &dyn LinAlg<T>, c: &Chain) -> Check {
    let config = PreconditionerConfig {
        block: BlockKind::Kfac(KfacMethod::Inverse),
        damping: DampingSchedule::factored(c.lambda),
        structure: Structure::Tridiagonal,
        ..Default::default()
    };
    let mut pre = ok(Preconditioner::<T>::new(config, &c.shapes))?;
    let (x, g) = c.batches::<T>();
    let batches: Vec<_> = x.iter().zip(&g).map(|(x, g)| LayerBatch::new(x.view(), g.view())).collect();
    let report = ok(pre.update(la, Some(&batches)))?;
    ensure(report.refreshed && report.skipped.is_empty(), || format!("{report:?}"))?;
    let direct = ok(fitted(la, c, Damping::factored(c.lambda)))?;
    let v = c.random_vectors::<T>();
    let views: Vec<_> = v.iter().map(|x| x.view()).collect();
    ensure(ok(pre.precondition(la, &views))? == ok(direct.precondition(la, &views))?, || {
        "the preconditioner differs from the chain".into()
    })?;
    ensure(ok(pre.multiply(la, &views))? == ok(direct.multiply(la, &views))?, || {
        "the preconditioner's multiply differs from the chain's".into()
    })?;
    ensure(pre.blocks().is_empty() && pre.tridiagonal().is_some(), || "structure accessors".into())?;
    ensure(pre.health().len() == c.shapes.len(), || "one health report per layer".into())?;
    // A non-finite batch skips the statistics of every layer (the cross
    // factors tie them together) and changes nothing.
    let mut bad = x.clone();
    bad[0][(0, 0)] = T::nan();
    let bad_batches: Vec<_> = bad.iter().zip(&g).map(|(x, g)| LayerBatch::new(x.view(), g.view())).collect();
    let before = pre.state();
    let report = ok(pre.update(la, Some(&bad_batches)))?;
    ensure(report.skipped.len() == c.shapes.len(), || format!("skipped {:?}", report.skipped))?;
    let after = pre.state();
    ensure(after.blocks == before.blocks, || "a skipped step changed the statistics".into())?;
    // The same state restores into a fresh preconditioner.
    let mut fresh = ok(Preconditioner::<T>::new(pre.config().clone(), &c.shapes))?;
    ok(fresh.restore(&after))?;
    ensure(ok(fresh.precondition(la, &views))? == ok(pre.precondition(la, &views))?, || "restore".into())?;
    Ok(())
}

const CASES: u32 = 64;

macro_rules! suite {
    ($name:ident, $t:ty, $backend:expr) => {
        mod $name {
            use super::*;
            type T = $t;
            fn la() -> Box<dyn LinAlg<T>> {
                Box::new($backend)
            }
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(CASES))]
                #[test] fn cross_factors_are_batch_means(c in chain()) { check_factors::<T>(&*la(), &c)?; }
                #[test] fn model_has_the_kfac_blocks_and_a_tridiagonal_inverse(c in chain()) { check_model::<T>(&*la(), &c)?; }
                #[test] fn cut_chain_is_block_diagonal_kfac(c in chain()) { check_reduces_to_kfac::<T>(&*la(), &c)?; }
                #[test] fn state_roundtrip(c in chain()) { check_state::<T>(&*la(), &c)?; }
                #[test] fn preconditioner_structure(c in chain()) { check_preconditioner::<T>(&*la(), &c)?; }
            }
        }
    };
}

suite!(faer_f64, f64, Faer::sequential());
suite!(faer_f32, f32, Faer::sequential());
suite!(faer_f64_threads, f64, Faer::with_threads(2));
suite!(nalgebra_f64, f64, Nalgebra);
suite!(nalgebra_f32, f32, Nalgebra);

// ------------------------------------------------- errors and the fallback

fn two_identical_layers(n: usize) -> (Vec<LayerShape>, Array2<f64>, Array2<f64>) {
    let mut rng = Lcg::new(7);
    (vec![LayerShape::new(3, 3), LayerShape::new(3, 3)], rng.matrix(n, 3), rng.matrix(n, 3))
}

#[test]
fn perfectly_correlated_layers_fall_back_to_block_diagonal() {
    // Two layers that see the same inputs and gradients: with no damping the
    // conditional covariance is exactly zero, so the link falls back (and
    // says so) and the result is block-diagonal K-FAC.
    let la = Faer::sequential();
    let (shapes, x, g) = two_identical_layers(40);
    let b = [LayerBatch::new(x.view(), g.view()), LayerBatch::new(x.view(), g.view())];
    let mut m = TridiagonalKfac::<f64>::new(&shapes).unwrap();
    m.update_statistics(&la, &b, 0.95).unwrap();
    m.refresh(&la, Damping::factored(0.0)).unwrap();
    assert_eq!(m.health()[0].fallbacks, 1);
    assert_eq!(m.health()[1].fallbacks, 0);
    let v = Lcg::new(3).matrix(3, 4);
    let got = m.precondition(&la, &[v.view(), v.view()]).unwrap();
    let mut k = KfacBlock::<f64>::new("k", shapes[0], KfacMethod::Inverse);
    k.update_statistics(&la, &b[0], 0.95).unwrap();
    k.refresh(&la, Damping::factored(0.0)).unwrap();
    let want = k.precondition(&la, v.view()).unwrap();
    for d in &got {
        assert!(rel_err(d, &want) < 1e-8, "{}", rel_err(d, &want));
    }
    // With damping the same layers are linked and the model is exact.
    m.refresh(&la, Damping::factored(0.1)).unwrap();
    assert_eq!(m.health()[0].fallbacks, 1, "the count is cumulative; no new fallback");
    assert!(m.state()[0].tensors.contains_key("psi_a"), "with damping the link is kept");
    let back = m
        .multiply(
            &la,
            &m.precondition(&la, &[v.view(), v.view()]).unwrap().iter().map(|x| x.view()).collect::<Vec<_>>(),
        )
        .unwrap();
    for b in &back {
        assert!(rel_err(b, &v) < 1e-8, "{}", rel_err(b, &v));
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let la = Faer::sequential();
    let (shapes, x, g) = two_identical_layers(10);
    let mut m = TridiagonalKfac::<f64>::new(&shapes).unwrap();
    let v = Array2::<f64>::zeros((3, 4));
    // Not refreshed yet.
    assert!(matches!(m.refresh(&la, Damping::factored(0.1)), Err(Error::NotReady { .. })));
    assert!(matches!(m.precondition(&la, &[v.view(), v.view()]), Err(Error::NotReady { .. })));
    // Linked layers must see the same examples.
    let short = x.slice(s![..5, ..]).to_owned();
    let gs = g.slice(s![..5, ..]).to_owned();
    let b = [LayerBatch::new(x.view(), g.view()), LayerBatch::new(short.view(), gs.view())];
    let before = m.state();
    assert!(matches!(m.update_statistics(&la, &b, 0.95), Err(Error::ShapeMismatch { .. })));
    assert_eq!(m.state(), before, "a refused batch changes nothing, pending sums included");
    let b = [LayerBatch::new(x.view(), g.view()), LayerBatch::new(x.view(), g.view())];
    m.update_statistics(&la, &b, 0.95).unwrap();
    // Tikhonov damping is not the chain's damping.
    assert!(matches!(m.refresh(&la, Damping::tikhonov(0.1)), Err(Error::UnsupportedDamping { .. })));
    m.refresh(&la, Damping::factored(0.1)).unwrap();
    // Wrong shapes and non-finite operands.
    assert!(matches!(m.precondition(&la, &[v.view()]), Err(Error::ShapeMismatch { .. })));
    let mut nan = v.clone();
    nan[(0, 0)] = f64::NAN;
    assert!(matches!(m.precondition(&la, &[v.view(), nan.view()]), Err(Error::NonFinite { .. })));
    // Zero gradients and no damping: a singular factor is an error, not NaN.
    let z = Array2::<f64>::zeros(g.dim());
    let mut s = TridiagonalKfac::<f64>::new(&shapes).unwrap();
    s.update_statistics(&la, &[LayerBatch::new(x.view(), z.view()), LayerBatch::new(x.view(), z.view())], 0.95)
        .unwrap();
    assert!(matches!(
        s.refresh(&la, Damping::factored(0.0)),
        Err(Error::Singular { .. } | Error::Decomposition { .. })
    ));
    // Preconditioner configurations that are not the chain model.
    for (block, damping) in [
        (BlockKind::Ekfac, DampingSchedule::factored(0.1)),
        (BlockKind::Kfac(KfacMethod::Eigen), DampingSchedule::tikhonov(0.1)),
    ] {
        let config = PreconditionerConfig { block, damping, structure: Structure::Tridiagonal, ..Default::default() };
        assert!(matches!(Preconditioner::<f64>::new(config, &shapes), Err(Error::InvalidConfig { .. })));
    }
    let config = PreconditionerConfig {
        block: BlockKind::Kfac(KfacMethod::Inverse),
        damping: DampingSchedule::factored(0.1),
        structure: Structure::Tridiagonal,
        on_non_finite: NonFinitePolicy::Error,
        ..Default::default()
    };
    let mut pre = Preconditioner::<f64>::new(config, &shapes).unwrap();
    let mut bad = x.clone();
    bad[(1, 1)] = f64::INFINITY;
    let r = pre.update(&la, Some(&[LayerBatch::new(x.view(), g.view()), LayerBatch::new(bad.view(), g.view())]));
    assert!(matches!(r, Err(Error::NonFinite { .. })), "{r:?}");
}

#[test]
fn the_chain_is_closer_to_the_exact_inverse_than_block_diagonal() {
    // The reason for the model (Martens & Grosse, figure 3): on a small
    // network, the tridiagonal inverse is closer to the inverse of the
    // exact K-FAC-consistent Fisher than the block-diagonal one. Here the
    // "exact" curvature is the empirical Fisher of the examples, damped the
    // same way on its diagonal blocks.
    let c = build_chain(3, &[4, 4, 4, 3, 0], 400, 0b111, 11, 0.05);
    let la = Faer::sequential();
    let m = fitted::<f64>(&la, &c, Damping::factored(c.lambda)).unwrap();
    let p = m.num_params();
    let o = c.offsets();
    // Per-example gradients of all layers, concatenated.
    let mut jac = Array2::<f64>::zeros((c.n(), p));
    for (i, s) in c.shapes.iter().enumerate() {
        let batch = LayerBatch::new(c.inputs[i].view(), c.grads[i].view());
        jac.slice_mut(s![.., o[i]..o[i + 1]]).assign(&batch.per_example_gradients(*s));
    }
    let mut fisher = jac.t().dot(&jac) / c.n() as f64;
    let lambda_exact = c.lambda;
    fisher.diag_mut().mapv_inplace(|x| x + lambda_exact);
    let exact_inv = {
        let mut inv = Array2::zeros((p, p));
        for k in 0..p {
            let mut e = Array1::zeros(p);
            e[k] = 1.0;
            inv.column_mut(k).assign(&solve(&fisher, &e));
        }
        inv
    };
    let tri = m.to_dense_inverse(&la).unwrap();
    let breaks: Vec<usize> = (0..c.shapes.len() - 1).collect();
    let mut diag = TridiagonalKfac::<f64>::with_breaks(&c.shapes, &breaks).unwrap();
    let batches: Vec<_> = c.inputs.iter().zip(&c.grads).map(|(x, g)| LayerBatch::new(x.view(), g.view())).collect();
    diag.update_statistics(&la, &batches, 0.95).unwrap();
    diag.refresh(&la, Damping::factored(c.lambda)).unwrap();
    let bd = diag.to_dense_inverse(&la).unwrap();
    let (e_tri, e_bd) = (rel_err(&tri, &exact_inv), rel_err(&bd, &exact_inv));
    assert!(e_tri < e_bd, "tridiagonal {e_tri:.3} vs block-diagonal {e_bd:.3}");
}

#[test]
fn the_preconditioner_follows_the_schedule_with_the_chain() {
    // Statistics every 2 steps, refresh every 3, a damping change between
    // refreshes: the Preconditioner does what the same calls on a
    // TridiagonalKfac do, and a state saved with pending sums restores.
    let la = Faer::sequential();
    let c = build_chain(3, &[3, 4, 2, 3, 0], 9, 0b101, 5, 0.2);
    let config = PreconditionerConfig {
        block: BlockKind::Kfac(KfacMethod::Inverse),
        damping: DampingSchedule::factored(0.2),
        structure: Structure::Tridiagonal,
        stats_period: 2,
        refresh_period: 3,
        ..Default::default()
    };
    let mut pre = Preconditioner::<f64>::new(config, &c.shapes).unwrap();
    let mut manual = TridiagonalKfac::<f64>::new(&c.shapes).unwrap();
    let batches: Vec<_> = c.inputs.iter().zip(&c.grads).map(|(x, g)| LayerBatch::new(x.view(), g.view())).collect();
    let v = c.random_vectors::<f64>();
    let views: Vec<_> = v.iter().map(|x| x.view()).collect();
    for k in 0..7 {
        let stats = k % 2 == 0;
        assert_eq!(pre.needs_statistics(), stats, "step {k}");
        let report = pre.update(&la, stats.then_some(&batches[..])).unwrap();
        if stats {
            manual.update_statistics(&la, &batches, 0.95).unwrap();
        }
        let mut refresh = k % 3 == 0;
        if refresh {
            manual.refresh(&la, Damping::factored(0.2)).unwrap();
        } else if manual.damping() != Some(Damping::factored(0.2)) {
            // The schedule's damping comes back at the next step, and
            // changing it rebuilds the cache.
            manual.set_damping(&la, Damping::factored(0.2)).unwrap();
            refresh = true;
        }
        assert_eq!(report.refreshed, refresh, "step {k}");
        assert_eq!(pre.precondition(&la, &views).unwrap(), manual.precondition(&la, &views).unwrap(), "step {k}");
        if k == 4 {
            // A new damping between refreshes rebuilds the chain's cache.
            pre.apply_damping(&la, Damping::factored(0.5)).unwrap();
            manual.set_damping(&la, Damping::factored(0.5)).unwrap();
            assert_eq!(pre.precondition(&la, &views).unwrap(), manual.precondition(&la, &views).unwrap());
            assert_eq!(pre.tridiagonal().unwrap().damping(), Some(Damping::factored(0.5)));
        }
    }
    // Without batches when the statistics are due (step 8): a clear error.
    pre.update(&la, None).unwrap();
    assert!(matches!(pre.update(&la, None), Err(Error::NotReady { .. })));
    // A Tikhonov damping slipped in through the schedule is refused before
    // any statistic changes.
    let before = pre.state();
    pre.set_damping_schedule(DampingSchedule::tikhonov(0.1));
    assert!(matches!(pre.update(&la, Some(&batches)), Err(Error::UnsupportedDamping { .. })));
    assert_eq!(pre.state(), before);
    // A half-accumulated step (pending sums) survives a save and restore.
    let mut half = TridiagonalKfac::<f64>::new(&c.shapes).unwrap();
    half.update_statistics(&la, &batches, 0.95).unwrap();
    half.accumulate(&la, &batches).unwrap();
    let st = half.state();
    assert!(st[0].tensors.contains_key("A_next.pending"));
    let mut back = TridiagonalKfac::<f64>::new(&c.shapes).unwrap().restored(&st).unwrap();
    back.commit(0.9).unwrap();
    half.commit(0.9).unwrap();
    assert_eq!(back.state(), half.state());
}
