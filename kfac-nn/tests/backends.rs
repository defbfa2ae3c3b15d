//! The backends on the factors of the README's problems.

use kfac::{KroneckerFactors, LayerBatch, LayerShape};
use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::data::Batches;
use kfac_nn::train::{DataSource, Task, TaskKind};
use ndarray::{Array2, s};

/// The first layer's input factor $A$ after the first step of the MNIST-5k
/// classifier with this seed and batch size, as K-FAC and EKFAC build it:
/// from the first quarter of the first batch (the statistics fraction).
fn mnist_input_factor<T: Scalar>(seed: u64, batch: usize) -> Array2<T> {
    let task = Task::load(TaskKind::Classifier, &DataSource::Mnist5k, seed).unwrap();
    let idx = Batches::new(task.train.len(), batch, seed ^ 0xBA7C).next_batch();
    let n_stats = (batch as f64 * 0.25).ceil() as usize;
    let (x, _) = task.batch::<T>(&task.train, &idx);
    let grads = Array2::<T>::zeros((n_stats, 512));
    let la = T::backend(Backend::Nalgebra, false).unwrap();
    let mut f = KroneckerFactors::<T>::new(LayerShape::new(784, 512));
    f.update(&*la, &LayerBatch::new(x.slice(s![..n_stats, ..]), grads.view()), 0.95, "layer0").unwrap();
    f.a().to_owned()
}

/// Regression: nalgebra's eigendecomposition of these factors (305 blank
/// pixels, rank at most 65 or 251) did not converge, in `f32` and in
/// `f64`, so the README's MNIST classifier stopped at its first step on
/// the nalgebra backend. Now it returns an orthonormal basis that
/// reproduces the factor, to a tolerance of $8 n \epsilon \max|A|$.
fn nalgebra_decomposes_the_mnist_input_factors<T: Scalar>() {
    for (seed, batch) in [(0u64, 256usize), (2, 256), (2, 1000), (3, 256)] {
        let a = mnist_input_factor::<T>(seed, batch);
        let n = a.nrows();
        let la = T::backend(Backend::Nalgebra, false).unwrap();
        let e = la.eigh(a.view()).unwrap_or_else(|e| panic!("seed {seed} batch {batch}: {e}"));
        let f = |x: T| -> f64 { x.to_f64_exact() };
        let eps: f64 = f(<T as kfac::Real>::EPSILON);
        let max_a = a.iter().fold(0.0f64, |m, &x| m.max(f(x).abs()));
        let tol = 8.0 * n as f64 * eps * max_a;
        let u = e.vectors.mapv(f);
        let s = e.values.mapv(f);
        let us = &u * &s.view().insert_axis(ndarray::Axis(0));
        let back = us.dot(&u.t());
        let residual = (&back - &a.mapv(f)).iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(residual <= tol, "seed {seed} batch {batch}: |A - U S U^T| = {residual} > {tol}");
        let gram = u.t().dot(&u) - Array2::<f64>::eye(n);
        let off = gram.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(off <= 8.0 * n as f64 * eps, "seed {seed} batch {batch}: |U^T U - I| = {off}");
        assert!(s.windows(2).into_iter().all(|w| w[0] <= w[1]), "not sorted");
    }
}

#[test]
fn nalgebra_decomposes_the_mnist_input_factors_f32() {
    nalgebra_decomposes_the_mnist_input_factors::<f32>();
}

#[test]
fn nalgebra_decomposes_the_mnist_input_factors_f64() {
    nalgebra_decomposes_the_mnist_input_factors::<f64>();
}
