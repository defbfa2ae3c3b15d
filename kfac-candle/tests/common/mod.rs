//! Helpers shared by the tests: the same MLP in kfac-nn and in candle, and
//! relative errors.
#![allow(dead_code)]

use candle_core::{Device, Module, Tensor, Var};
use kfac_candle::{KfacLayer, KfacLinear};
use kfac_core::{BlockState, Loss, Real};
use kfac_nn::mlp::{Activation, Mlp};
use ndarray::{Array2, ArrayView2, s};

/// Both precisions, as both crates see them.
pub trait Both: kfac_nn::backend::Scalar + kfac_candle::Scalar {}
impl Both for f32 {}
impl Both for f64 {}

/// A kfac-nn MLP's layers as candle variables, and its forward pass.
pub struct CandleMlp {
    pub layers: Vec<KfacLinear>,
    pub activations: Vec<Activation>,
}

impl CandleMlp {
    pub fn from_mlp<T: Both>(mlp: &Mlp<T>) -> Self {
        let layers = mlp
            .layers
            .iter()
            .map(|l| {
                let (d_out, d_in) = (l.d_out(), l.d_in());
                let w: Vec<T> = l.weight().iter().copied().collect();
                let b: Vec<T> = l.w.column(d_in).iter().copied().collect();
                let w = Var::from_vec(w, (d_out, d_in), &Device::Cpu).unwrap();
                let b = Var::from_vec(b, d_out, &Device::Cpu).unwrap();
                KfacLinear::from_vars(w, Some(b)).unwrap()
            })
            .collect();
        Self { layers, activations: mlp.layers.iter().map(|l| l.activation).collect() }
    }

    pub fn kfac_layers(&self) -> Vec<KfacLayer> {
        self.layers.iter().map(KfacLayer::from).collect()
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (l, a) in self.layers.iter().zip(&self.activations) {
            h = l.forward(&h)?;
            h = match a {
                Activation::Relu => h.relu()?,
                Activation::Identity => h,
                Activation::Tanh => h.tanh()?,
                Activation::Sigmoid => candle_nn::ops::sigmoid(&h)?,
            };
        }
        Ok(h)
    }

    /// Each layer's $[W \mid b]$.
    pub fn params<T: Both>(&self) -> Vec<Array2<T>> {
        self.layers
            .iter()
            .map(|l| {
                let w = to_array::<T>(l.weight().as_tensor());
                let b = l.bias().unwrap().as_tensor().to_vec1::<T>().unwrap();
                let shape = l.shape();
                shape.join(w.view(), Some(ndarray::ArrayView1::from(&b[..]))).unwrap()
            })
            .collect()
    }
}

pub fn to_array<T: Both>(t: &Tensor) -> Array2<T> {
    kfac_candle::host::to_array2::<T>(t).unwrap()
}

pub fn tensor<T: Both>(a: &Array2<T>) -> Tensor {
    kfac_candle::host::to_tensor(a.view(), &[a.nrows(), a.ncols()], &Device::Cpu).unwrap()
}

/// $\lVert a - b\rVert_F / \lVert b\rVert_F$ in f64 (0 when both are 0).
pub fn rel<T: Real>(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b.iter()) {
        let (x, y) = (x.to_f64_exact(), y.to_f64_exact());
        num += (x - y).powi(2);
        den += y * y;
    }
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

/// The named tensors of two block states (as matrices), compared by [`rel`].
/// Returns the largest error and the name.
pub fn compare_states<T: Real>(a: &BlockState<T>, b: &BlockState<T>, names: &[&str]) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for &name in names {
        let (Some(x), Some(y)) = (a.tensors.get(name), b.tensors.get(name)) else {
            panic!("{name}: missing in one of the states ({:?} / {:?})", a.tensors.keys(), b.tensors.keys());
        };
        let x = x.view().into_shape_with_order((x.shape()[0], x.len() / x.shape()[0].max(1))).unwrap();
        let y = y.view().into_shape_with_order((y.shape()[0], y.len() / y.shape()[0].max(1))).unwrap();
        let e = rel(x.view(), y.view());
        if e > worst.0 {
            worst = (e, name.to_string());
        }
    }
    worst
}

/// A deterministic batch: inputs and targets for `loss`.
pub fn batch<T: Real>(n: usize, d_in: usize, d_out: usize, loss: Loss, seed: usize) -> (Array2<T>, Array2<T>) {
    let x = Array2::from_shape_fn((n, d_in), |(i, j)| T::from_f64_lossy(((i * 7 + j * 3 + seed) as f64 * 0.37).sin()));
    let t = Array2::from_shape_fn((n, d_out), |(i, k)| {
        let v = match loss {
            Loss::SoftmaxCrossEntropy => f64::from(u8::from((i * 5 + seed) % d_out == k)),
            Loss::SigmoidCrossEntropy => f64::from(u8::from((i + 2 * k + seed).is_multiple_of(3))),
            Loss::SquaredError => ((i * 3 + k + seed) as f64 * 0.71).cos(),
        };
        T::from_f64_lossy(v)
    });
    (x, t)
}

/// Gives every bias of `mlp` a nonzero value (Glorot leaves them at 0), so
/// that the bias column is tested.
pub fn nonzero_biases<T: Real>(mlp: &mut Mlp<T>) {
    for (l, layer) in mlp.layers.iter_mut().enumerate() {
        let d_in = layer.d_in();
        for (i, b) in layer.w.slice_mut(s![.., d_in]).iter_mut().enumerate() {
            *b = T::from_f64_lossy(0.1 * ((i + 3 * l) as f64).sin());
        }
    }
}

/// A deterministic gradient-shaped direction per layer.
pub fn directions<T: Real>(dims: &[(usize, usize)], phase: f64) -> Vec<Array2<T>> {
    dims.iter()
        .enumerate()
        .map(|(l, &d)| {
            Array2::from_shape_fn(d, |(i, j)| T::from_f64_lossy(((i * 5 + j + 11 * l) as f64 * 0.91 + phase).cos()))
        })
        .collect()
}

pub fn views<T>(a: &[Array2<T>]) -> Vec<ArrayView2<'_, T>> {
    a.iter().map(|x| x.view()).collect()
}
