//! Exact Fisher-vector products against the dense Fisher of tiny networks,
//! built from finite-difference Jacobians and finite-difference output
//! Hessians (nothing shared with the code under test but the forward pass
//! and the loss gradient).

use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::curvature::fisher_vector_product;
use kfac_nn::loss::Loss;
use kfac_nn::mlp::{Activation, Init, Mlp, NoHook};
use ndarray::{Array1, Array2, ArrayView2};

fn la() -> Box<dyn kfac::LinAlg<f64>> {
    <f64 as Scalar>::backend(Backend::default(), false).unwrap()
}

fn flatten(ws: &[Array2<f64>]) -> Array1<f64> {
    ws.iter().flat_map(|w| w.iter().copied()).collect()
}

fn set_flat(mlp: &mut Mlp<f64>, theta: &Array1<f64>) {
    let mut k = 0;
    for layer in &mut mlp.layers {
        for w in layer.w.iter_mut() {
            *w = theta[k];
            k += 1;
        }
    }
}

fn outputs(mlp: &Mlp<f64>, x: ArrayView2<'_, f64>) -> Array2<f64> {
    mlp.forward(&*la(), x, &mut NoHook).unwrap().output().to_owned()
}

/// The dense Fisher $\frac1N \sum_n J_n^\top H_n J_n$ by central differences.
fn dense_fisher(mlp: &Mlp<f64>, x: ArrayView2<'_, f64>, loss: Loss, t: ArrayView2<'_, f64>) -> Array2<f64> {
    let theta = flatten(&mlp.layers.iter().map(|l| l.w.clone()).collect::<Vec<_>>());
    let p = theta.len();
    let s0 = outputs(mlp, x);
    let (n, k) = s0.dim();
    let h = 1e-6;
    // J[n][o, p]
    let mut jac = vec![Array2::<f64>::zeros((k, p)); n];
    let mut probe = mlp.clone();
    for j in 0..p {
        let mut tp = theta.clone();
        tp[j] += h;
        set_flat(&mut probe, &tp);
        let plus = outputs(&probe, x);
        tp[j] -= 2.0 * h;
        set_flat(&mut probe, &tp);
        let minus = outputs(&probe, x);
        for i in 0..n {
            for o in 0..k {
                jac[i][(o, j)] = (plus[(i, o)] - minus[(i, o)]) / (2.0 * h);
            }
        }
    }
    let mut f = Array2::<f64>::zeros((p, p));
    for i in 0..n {
        // H_n from differences of the per-example loss gradient in s.
        let mut hess = Array2::<f64>::zeros((k, k));
        for o in 0..k {
            let mut sp = s0.row(i).to_owned().insert_axis(ndarray::Axis(0));
            let ti = t.row(i).to_owned().insert_axis(ndarray::Axis(0));
            sp[(0, o)] += 1e-5;
            let gp = loss.grad(sp.view(), ti.view()).unwrap();
            sp[(0, o)] -= 2e-5;
            let gm = loss.grad(sp.view(), ti.view()).unwrap();
            for q in 0..k {
                hess[(q, o)] = (gp[(0, q)] - gm[(0, q)]) / 2e-5;
            }
        }
        f = f + jac[i].t().dot(&hess).dot(&jac[i]);
    }
    f / n as f64
}

fn check(loss: Loss, sizes: &[usize], hidden: Activation, seed: u64) {
    let mlp = Mlp::<f64>::new(sizes, hidden, Activation::Identity, Init::Glorot, seed, &[]).unwrap();
    let n = 5;
    let d = sizes[0];
    let k = *sizes.last().unwrap();
    let x = Array2::from_shape_fn((n, d), |(i, j)| ((i * 7 + j * 3 + seed as usize) as f64 * 0.37).sin());
    let t = match loss {
        Loss::SoftmaxCrossEntropy => Array2::from_shape_fn((n, k), |(i, j)| if j == i % k { 1.0 } else { 0.0 }),
        _ => Array2::from_shape_fn((n, k), |(i, j)| 0.5 + 0.4 * ((i + 2 * j) as f64).cos()),
    };
    let f = dense_fisher(&mlp, x.view(), loss, t.view());
    let v: Vec<Array2<f64>> = mlp
        .layers
        .iter()
        .enumerate()
        .map(|(l, layer)| Array2::from_shape_fn(layer.w.dim(), |(i, j)| ((i * 5 + j + 11 * l) as f64 * 0.91).cos()))
        .collect();
    let views: Vec<_> = v.iter().map(|a| a.view()).collect();
    let got = flatten(&fisher_vector_product(&*la(), &mlp, x.view(), loss, &views).unwrap());
    let want = f.dot(&flatten(&v));
    let err = (&got - &want).mapv(|e| e * e).sum().sqrt() / want.mapv(|e| e * e).sum().sqrt();
    // Central differences with h = 1e-6 on the Jacobian and 1e-5 on the
    // Hessian: truncation ~h² and round-off ~1e-16/h, about 1e-7 relative.
    assert!(err < 1e-5, "{loss:?} {sizes:?}: relative error {err:e}");
    // F is symmetric positive semi-definite: uᵀ F v = vᵀ F u, vᵀ F v ≥ 0.
    let u: Vec<Array2<f64>> = v.iter().map(|a| a.mapv(|e| (3.0 * e).sin())).collect();
    let uv: Vec<_> = u.iter().map(|a| a.view()).collect();
    let fu = flatten(&fisher_vector_product(&*la(), &mlp, x.view(), loss, &uv).unwrap());
    let (a, b) = (flatten(&u).dot(&got), flatten(&v).dot(&fu));
    assert!((a - b).abs() <= 1e-10 * a.abs().max(b.abs()).max(1e-300), "{a} {b}");
    assert!(flatten(&v).dot(&got) >= -1e-12);
}

#[test]
fn fisher_vector_products_equal_the_dense_fisher() {
    check(Loss::SoftmaxCrossEntropy, &[3, 4, 3], Activation::Tanh, 1);
    check(Loss::SigmoidCrossEntropy, &[3, 4, 2, 3], Activation::Tanh, 2);
    check(Loss::SquaredError, &[2, 3, 2], Activation::Sigmoid, 3);
    check(Loss::SoftmaxCrossEntropy, &[4, 5, 3], Activation::Relu, 4);
}

#[test]
fn directions_of_the_wrong_shape_are_refused() {
    let mlp = Mlp::<f64>::new(&[3, 4, 2], Activation::Tanh, Activation::Identity, Init::Glorot, 0, &[]).unwrap();
    let x = Array2::<f64>::zeros((2, 3));
    let short = [Array2::<f64>::zeros((4, 4))];
    let views: Vec<_> = short.iter().map(|a| a.view()).collect();
    assert!(fisher_vector_product(&*la(), &mlp, x.view(), Loss::SquaredError, &views).is_err());
    let wrong = [Array2::<f64>::zeros((4, 4)), Array2::<f64>::zeros((3, 5))];
    let views: Vec<_> = wrong.iter().map(|a| a.view()).collect();
    assert!(fisher_vector_product(&*la(), &mlp, x.view(), Loss::SquaredError, &views).is_err());
}
