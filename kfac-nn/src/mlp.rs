//! A multilayer perceptron with batched forward and backward passes and
//! backpropagation hooks.
//!
//! Layer $l$ computes $s_l = W_l a_l + b_l$ and $a_{l+1} = \phi_l(s_l)$, with the
//! parameters kept as $\bar W_l = [W_l \mid b_l]$ ($d_\text{out} \times (d_\text{in} + 1)$,
//! the bias as the last column: the layout of `kfac_core`). Batches are
//! matrices with one example per row. The loss takes the last layer's
//! pre-activations $s_L$ (logits) and owns the output link (softmax,
//! sigmoid, identity), so the last layer's activation is the identity.
//!
//! The backward pass starts from the **per-example** gradients
//! $g_{L,n} = \partial \ell_n / \partial s_{L,n}$ and returns the gradients of the
//! **mean** loss, $\nabla_{\bar W_l} L = \frac1N \sum_n g_{l,n} \bar a_{l,n}^\top$:
//! the conventions of `kfac_core::shape`.
//!
//! # Parallelism
//! Every product goes through the [`LinAlg`] backend handed in, so with
//! `kfac_linalg_faer::Faer` the products are parallel over the rayon pool
//! ([`Parallelism::Products`]). [`Parallelism::Shards`] instead splits the
//! batch into fixed shards of [`SHARD_ROWS`] rows, processed in parallel with
//! sequential products of the same backend ([`LinAlg::sequential`]); the weight gradient is split over output rows. Both
//! give results independent of the thread count. `kfac-bench` measures which
//! is faster.

use kfac::{LayerShape, LinAlg, Real};

use crate::backend::Scalar;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, s};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::rng::Rng;

/// A layer's nonlinearity $\phi$.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// $\tanh$.
    Tanh,
    /// $\max(0, x)$.
    Relu,
    /// $1 / (1 + e^{-x})$.
    Sigmoid,
    /// The identity (linear layer).
    Identity,
}

impl Activation {
    /// Applies $\phi$ elementwise in place, in parallel over the rayon pool
    /// (elementwise, so the result does not depend on the thread count).
    pub fn apply<T: Scalar>(self, z: ArrayViewMut2<'_, T>) {
        match self {
            Self::Tanh => par_map_inplace(z, T::tanh_fast),
            Self::Relu => par_map_inplace(z, |x| if x > T::zero() { x } else { T::zero() }),
            Self::Sigmoid => par_map_inplace(z, sigmoid),
            Self::Identity => {}
        }
    }

    /// $\phi'(s)$ expressed through the output $y = \phi(s)$.
    #[inline]
    pub fn derivative_from_output<T: Real>(self, y: T) -> T {
        match self {
            Self::Tanh => T::one() - y * y,
            Self::Relu => {
                if y > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
            Self::Sigmoid => y * (T::one() - y),
            Self::Identity => T::one(),
        }
    }
}

pub use kfac::loss::{par_map_inplace, sigmoid};

/// How the weights are initialised (biases start at zero).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Martens' (2010) sparse initialisation, used for the deep autoencoders
    /// of the Hessian-free and K-FAC papers: each unit gets `nonzero` incoming
    /// weights drawn from $\mathcal N(0, 1)$ (all of them if the layer has fewer
    /// inputs), the rest zero. It keeps tanh units out of saturation without
    /// shrinking the weights with the width.
    Sparse {
        /// Nonzero incoming weights per unit (15 in the papers).
        nonzero: usize,
    },
    /// Glorot (Xavier) normal: $\mathcal N(0, 2/(d_\text{in} + d_\text{out}))$.
    Glorot,
}

impl Default for Init {
    fn default() -> Self {
        Self::Sparse { nonzero: 15 }
    }
}

/// How the batched products are parallelised; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parallelism {
    /// One product per layer, parallel inside the backend.
    #[default]
    Products,
    /// Fixed shards of the batch in parallel (rayon), sequential products.
    Shards,
}

/// Rows per shard in [`Parallelism::Shards`] (fixed, so that results do not
/// depend on the number of threads).
pub const SHARD_ROWS: usize = 128;

/// A dense layer: $\bar W = [W \mid b]$ and its activation.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer<T> {
    /// $\bar W$, $d_\text{out} \times (d_\text{in} + 1)$, the bias as the last column.
    pub w: Array2<T>,
    /// The nonlinearity after the layer.
    pub activation: Activation,
}

impl<T: Real> Layer<T> {
    /// $d_\text{in}$.
    pub fn d_in(&self) -> usize {
        self.w.ncols() - 1
    }
    /// $d_\text{out}$.
    pub fn d_out(&self) -> usize {
        self.w.nrows()
    }
    /// The weight matrix $W$ without the bias column (a view).
    pub fn weight(&self) -> ArrayView2<'_, T> {
        self.w.slice(s![.., ..self.d_in()])
    }
}

/// Receives each layer's input during the forward pass and its
/// pre-activation gradients during the backward pass, as views (no copy).
///
/// This is how a curvature method (kfac-nn's K-FAC and EKFAC, or yours) sees
/// $\bar a$ and $g$. Both methods have empty defaults.
pub trait Hook<T> {
    /// Layer `layer` received `input` ($N \times d_\text{in}$, without the bias column).
    fn forward(&mut self, _layer: usize, _input: ArrayView2<'_, T>) {}
    /// The backward pass computed `grad`, the per-example gradients
    /// $\partial \ell_n / \partial s_{l,n}$ ($N \times d_\text{out}$) of layer `layer`.
    /// Layers are visited from the last to the first.
    fn backward(&mut self, _layer: usize, _grad: ArrayView2<'_, T>) {}
}

/// A hook that does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHook;
impl<T> Hook<T> for NoHook {}

/// A hook that keeps a copy of each layer's pre-activation gradients.
#[derive(Debug, Clone, Default)]
pub struct GradRecorder<T> {
    /// `grads[l]`: the gradients of layer `l`, once the backward pass reached it.
    pub grads: Vec<Option<Array2<T>>>,
}

impl<T: Real> Hook<T> for GradRecorder<T> {
    fn backward(&mut self, layer: usize, grad: ArrayView2<'_, T>) {
        if self.grads.len() <= layer {
            self.grads.resize(layer + 1, None);
        }
        self.grads[layer] = Some(grad.to_owned());
    }
}

/// The activations of a forward pass: `acts[0]` is the input batch,
/// `acts[l + 1]` the output of layer `l`; the last is $s_L$ (the logits).
#[derive(Debug, Clone)]
pub struct Forward<T> {
    /// The layer inputs and the final output.
    pub acts: Vec<Array2<T>>,
}

impl<T: Real> Forward<T> {
    /// Layer `l`'s input $a_l$.
    pub fn input(&self, l: usize) -> ArrayView2<'_, T> {
        self.acts[l].view()
    }
    /// The network's output $s_L$.
    pub fn output(&self) -> ArrayView2<'_, T> {
        self.acts[self.acts.len() - 1].view()
    }
}

/// A multilayer perceptron.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp<T> {
    /// The layers, input first.
    pub layers: Vec<Layer<T>>,
    /// How products are parallelised.
    pub parallelism: Parallelism,
}

impl<T: Scalar> Mlp<T> {
    /// A network with layer widths `sizes` (input first), activation
    /// `hidden` after every layer but the last, `output` after the last
    /// (normally the identity: the loss owns the link), initialised with
    /// `init` from `seed`. `hidden_overrides` sets the activation of chosen
    /// layers (e.g. the linear code layer of an autoencoder).
    pub fn new(
        sizes: &[usize],
        hidden: Activation,
        output: Activation,
        init: Init,
        seed: u64,
        hidden_overrides: &[(usize, Activation)],
    ) -> Result<Self> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(Error::Config {
                what: "layer sizes",
                value: format!("{sizes:?}"),
                why: "need at least an input and an output width, all positive".into(),
            });
        }
        let n_layers = sizes.len() - 1;
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let (d_in, d_out) = (sizes[l], sizes[l + 1]);
            let mut rng = Rng::stream(seed, l as u64);
            let mut w = Array2::<T>::zeros((d_out, d_in + 1));
            match init {
                Init::Sparse { nonzero } => {
                    let mut cols: Vec<usize> = (0..d_in).collect();
                    for mut row in w.outer_iter_mut() {
                        rng.shuffle(&mut cols);
                        for &c in cols.iter().take(nonzero.min(d_in)) {
                            row[c] = T::from_f64_lossy(rng.normal());
                        }
                    }
                }
                Init::Glorot => {
                    let sd = (2.0 / (d_in + d_out) as f64).sqrt();
                    for x in w.slice_mut(s![.., ..d_in]).iter_mut() {
                        *x = T::from_f64_lossy(sd * rng.normal());
                    }
                }
            }
            let mut activation = if l + 1 == n_layers { output } else { hidden };
            if let Some(&(_, a)) = hidden_overrides.iter().find(|(i, _)| *i == l) {
                activation = a;
            }
            layers.push(Layer { w, activation });
        }
        Ok(Self { layers, parallelism: Parallelism::default() })
    }

    /// The shapes of the layers, for `kfac_core`.
    pub fn shapes(&self) -> Vec<LayerShape> {
        self.layers.iter().map(|l| LayerShape::new(l.d_in(), l.d_out())).collect()
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.layers[0].d_in()
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.layers[self.layers.len() - 1].d_out()
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layers.iter().map(|l| l.w.len()).sum()
    }

    /// Multiply-adds of one forward pass per example.
    pub fn flops_per_example(&self) -> usize {
        self.layers.iter().map(|l| l.d_in() * l.d_out()).sum()
    }

    /// The forward pass on a batch `x` ($N \times d_\text{in}$).
    pub fn forward(&self, la: &dyn LinAlg<T>, x: ArrayView2<'_, T>, hook: &mut dyn Hook<T>) -> Result<Forward<T>> {
        if x.ncols() != self.d_in() {
            return Err(Error::Shape { what: "input batch", expected: (x.nrows(), self.d_in()), found: x.dim() });
        }
        let n = x.nrows();
        let mut acts = Vec::with_capacity(self.layers.len() + 1);
        acts.push(x.to_owned());
        for (l, layer) in self.layers.iter().enumerate() {
            hook.forward(l, acts[l].view());
            let mut z = Array2::<T>::zeros((n, layer.d_out()));
            // z = a Wᵀ + 1 bᵀ
            z.assign(&layer.w.column(layer.d_in()).insert_axis(Axis(0)));
            self.product(la, T::one(), acts[l].view(), layer.weight().t(), T::one(), z.view_mut())?;
            layer.activation.apply(z.view_mut());
            acts.push(z);
        }
        Ok(Forward { acts })
    }

    /// The backward pass from the per-example output gradients `g_out`
    /// ($\partial \ell_n / \partial s_{L,n}$) of the first `g_out.nrows()` examples of
    /// `fwd`. Calls `hook.backward` for every layer. Returns the gradients of
    /// the mean loss over those examples in the $\bar W$ layout when
    /// `weight_grads` is true (else an empty vector: a statistics-only pass
    /// skips those products).
    pub fn backward(
        &self,
        la: &dyn LinAlg<T>,
        fwd: &Forward<T>,
        g_out: ArrayView2<'_, T>,
        weight_grads: bool,
        hook: &mut dyn Hook<T>,
    ) -> Result<Vec<Array2<T>>> {
        let n = g_out.nrows();
        let batch = fwd.acts[0].nrows();
        if n == 0 || n > batch || g_out.ncols() != self.d_out() {
            return Err(Error::Shape { what: "output gradients", expected: (batch, self.d_out()), found: g_out.dim() });
        }
        let inv_n = T::one() / T::from_usize(n).unwrap_or(T::one());
        let mut grads = vec![Array2::zeros((0, 0)); if weight_grads { self.layers.len() } else { 0 }];
        let mut g = g_out.to_owned();
        for l in (0..self.layers.len()).rev() {
            let layer = &self.layers[l];
            hook.backward(l, g.view());
            let a = fwd.acts[l].slice(s![..n, ..]);
            if weight_grads {
                let mut gw = Array2::<T>::zeros(layer.w.dim());
                let d_in = layer.d_in();
                self.weight_product(la, inv_n, g.view(), a, gw.slice_mut(s![.., ..d_in]))?;
                let bias = g.sum_axis(Axis(0));
                gw.column_mut(d_in).assign(&(bias * inv_n));
                grads[l] = gw;
            }
            if l > 0 {
                // dL/da_l = g W, then through the previous activation.
                let mut da = Array2::<T>::zeros((n, layer.d_in()));
                self.product(la, T::one(), g.view(), layer.weight(), T::zero(), da.view_mut())?;
                let prev = self.layers[l - 1].activation;
                ndarray::Zip::from(&mut da).and(&a).par_for_each(|d, &y| *d *= prev.derivative_from_output(y));
                g = da;
            }
        }
        Ok(grads)
    }

    /// $C \leftarrow \alpha A B + \beta C$ for batch-shaped $A$ and $C$ (rows are examples).
    fn product(
        &self,
        la: &dyn LinAlg<T>,
        alpha: T,
        a: ArrayView2<'_, T>,
        b: ArrayView2<'_, T>,
        beta: T,
        mut c: ArrayViewMut2<'_, T>,
    ) -> Result<()> {
        match self.parallelism {
            Parallelism::Products => la.gemm(alpha, a, b, beta, c).map_err(core_err),
            Parallelism::Shards => {
                let seq = la.sequential().unwrap_or(la);
                a.axis_chunks_iter(Axis(0), SHARD_ROWS)
                    .into_par_iter()
                    .zip(c.axis_chunks_iter_mut(Axis(0), SHARD_ROWS).into_par_iter())
                    .try_for_each(|(ac, cc)| seq.gemm(alpha, ac, b, beta, cc))
                    .map_err(core_err)
            }
        }
    }

    /// $C \leftarrow \alpha G^\top A$: the weight gradient, a reduction over the batch.
    fn weight_product(
        &self,
        la: &dyn LinAlg<T>,
        alpha: T,
        g: ArrayView2<'_, T>,
        a: ArrayView2<'_, T>,
        mut c: ArrayViewMut2<'_, T>,
    ) -> Result<()> {
        match self.parallelism {
            Parallelism::Products => la.gemm(alpha, g.t(), a, T::zero(), c).map_err(core_err),
            Parallelism::Shards => {
                // Split over output rows: each block reduces over the whole
                // batch in one sequential product, so the order is fixed.
                let seq = la.sequential().unwrap_or(la);
                let gt = g.t();
                gt.axis_chunks_iter(Axis(0), SHARD_ROWS / 2)
                    .into_par_iter()
                    .zip(c.axis_chunks_iter_mut(Axis(0), SHARD_ROWS / 2).into_par_iter())
                    .try_for_each(|(gc, cc)| seq.gemm(alpha, gc, a, T::zero(), cc))
                    .map_err(core_err)
            }
        }
    }
}

fn core_err(e: kfac::LinAlgError) -> Error {
    Error::Core(kfac::Error::LinAlg { block: "mlp".into(), source: e })
}
