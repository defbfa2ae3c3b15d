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
use crate::layers::{Conv2d, LayerKind};
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
    /// LeCun normal, $\mathcal N(0, 1/d_\text{in})$: the start of kfac-jax's
    /// autoencoder example (its weights' initialiser, with zero biases).
    Gaussian,
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

/// A layer: $\bar W = [W \mid b]$, what it computes with it (dense or a
/// convolution, [`LayerKind`]) and its activation.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer<T> {
    /// $\bar W$, $d_\text{out} \times (d_\text{in} + 1)$, the bias as the last column
    /// (for a convolution $d_\text{in} = C_\text{in} k_h k_w$, $d_\text{out} = C_\text{out}$).
    pub w: Array2<T>,
    /// The nonlinearity after the layer.
    pub activation: Activation,
    /// Dense, or a convolution (with its pooling).
    pub kind: LayerKind,
}

impl<T: Real> Layer<T> {
    /// A dense layer.
    pub fn dense(w: Array2<T>, activation: Activation) -> Self {
        Self { w, activation, kind: LayerKind::Dense }
    }
    /// $d_\text{in}$ of $\bar W$ (a convolution's patch length $C_\text{in} k_h k_w$).
    pub fn d_in(&self) -> usize {
        self.w.ncols() - 1
    }
    /// $d_\text{out}$ of $\bar W$ (a convolution's $C_\text{out}$).
    pub fn d_out(&self) -> usize {
        self.w.nrows()
    }
    /// The width of an input row: $d_\text{in}$, or $C_\text{in} H W$ for a convolution.
    pub fn input_width(&self) -> usize {
        match &self.kind {
            LayerKind::Dense => self.d_in(),
            LayerKind::Conv2d(c) => c.input_width(),
        }
    }
    /// The width of an output row: $d_\text{out}$, or $C_\text{out} H_\text{out} W_\text{out}$
    /// after the pooling for a convolution.
    pub fn output_width(&self) -> usize {
        match &self.kind {
            LayerKind::Dense => self.d_out(),
            LayerKind::Conv2d(c) => c.output_width(),
        }
    }
    /// The positions $R$ over which the layer shares its weights: 1 for a
    /// dense layer, the output locations $|T|$ for a convolution.
    pub fn positions(&self) -> usize {
        match &self.kind {
            LayerKind::Dense => 1,
            LayerKind::Conv2d(c) => c.locations(),
        }
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
/// $\bar a$ and $g$. Both methods have empty defaults. A dense layer hands
/// out one row per example; a convolution one row per example and output
/// location, example-major (row $n|T| + t$): its patches
/// ([`kfac::conv::im2col`]) and its location gradients
/// ([`kfac::conv::location_rows`]), what
/// [`LayerBatch::shared`](kfac::LayerBatch::shared) takes with
/// [`Layer::positions`] positions.
pub trait Hook<T> {
    /// Layer `layer` received `input` ($N \times d_\text{in}$, without the
    /// bias column; $N|T| \times C_\text{in}k_hk_w$ patches for a convolution).
    fn forward(&mut self, _layer: usize, _input: ArrayView2<'_, T>) {}
    /// The backward pass computed `grad`, the per-example gradients
    /// $\partial \ell_n / \partial s_{l,n}$ ($N \times d_\text{out}$; $N|T| \times C_\text{out}$
    /// for a convolution, $\partial \ell_n / \partial s_{l,n,t}$) of layer `layer`.
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
/// `acts[l + 1]` the output of layer `l` (after its pooling); the last is
/// $s_L$ (the logits). `conv[l]` holds what a convolution's backward pass
/// and R-operator need again (`None` for a dense layer).
#[derive(Debug, Clone)]
pub struct Forward<T> {
    /// The layer inputs and the final output.
    pub acts: Vec<Array2<T>>,
    /// Per layer: a convolution's patches, activation before pooling and argmax.
    pub conv: Vec<Option<ConvCache<T>>>,
}

/// What a convolution's forward pass keeps.
#[derive(Debug, Clone)]
pub struct ConvCache<T> {
    /// The patches $P$ of its input ($N|T| \times C_\text{in}k_hk_w$).
    pub patches: Array2<T>,
    /// $\phi(S)$ before the pooling ($N \times C_\text{out}|T|$), when the layer pools.
    pub activated: Option<Array2<T>>,
    /// The max pooling's argmax (empty otherwise).
    pub argmax: crate::layers::pool::Argmax,
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
    /// What layer `l` hands the curvature as its inputs $\bar a$ (without
    /// the bias): $a_l$ for a dense layer, the patches for a convolution.
    pub fn statistics_input(&self, l: usize) -> ArrayView2<'_, T> {
        match self.conv.get(l) {
            Some(Some(c)) => c.patches.view(),
            _ => self.input(l),
        }
    }
    /// Layer `l`'s activation $\phi(s_l)$ before any pooling.
    pub fn activated(&self, l: usize) -> ArrayView2<'_, T> {
        match self.conv.get(l) {
            Some(Some(ConvCache { activated: Some(y), .. })) => y.view(),
            _ => self.input(l + 1),
        }
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
                Init::Glorot | Init::Gaussian => {
                    let var = if init == Init::Glorot { 2.0 / (d_in + d_out) as f64 } else { 1.0 / d_in as f64 };
                    let sd = var.sqrt();
                    for x in w.slice_mut(s![.., ..d_in]).iter_mut() {
                        *x = T::from_f64_lossy(sd * rng.normal());
                    }
                }
            }
            let mut activation = if l + 1 == n_layers { output } else { hidden };
            if let Some(&(_, a)) = hidden_overrides.iter().find(|(i, _)| *i == l) {
                activation = a;
            }
            layers.push(Layer::dense(w, activation));
        }
        Ok(Self { layers, parallelism: Parallelism::default() })
    }

    /// A convolutional network on images of `input` = $(C, H, W)$ (rows of
    /// the batch in NCHW order): the convolutions `convs` in order, each
    /// followed by `hidden` and its pooling, then dense layers of widths
    /// `dense` (the last is the output; `hidden` after every dense layer but
    /// the last, the identity after it: the loss owns the link). The first
    /// dense layer reads the last convolution's output flattened
    /// ([`crate::layers`]). Weights are Glorot normal,
    /// $\mathcal N(0, 2/(\text{fan}_\text{in} + \text{fan}_\text{out}))$ with a
    /// convolution's fans $C_\text{in}k^2$ and $C_\text{out}k^2$, from the
    /// generator's stream $l$ of `seed` for layer $l$; biases start at zero.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no output layer, a zero width, or a
    /// convolution or pooling that does not fit its input.
    pub fn cnn(
        input: (usize, usize, usize),
        convs: &[crate::layers::ConvSpec],
        dense: &[usize],
        hidden: Activation,
        seed: u64,
    ) -> Result<Self> {
        if dense.is_empty() || dense.contains(&0) || convs.iter().any(|c| c.channels == 0) {
            return Err(Error::Config {
                what: "network",
                value: format!("{} convolutions, dense widths {dense:?}", convs.len()),
                why: "needs an output layer and positive widths".into(),
            });
        }
        let (mut c, mut size) = (input.0, (input.1, input.2));
        let mut layers = Vec::with_capacity(convs.len() + dense.len());
        for (l, spec) in convs.iter().enumerate() {
            let mut geometry = kfac::Conv2dGeometry::new(c, spec.channels, (spec.kernel, spec.kernel), size);
            geometry.stride = (spec.stride, spec.stride);
            geometry.padding = (spec.padding, spec.padding);
            let conv = Conv2d { geometry, pool: spec.pool };
            conv.validate().map_err(|e| Error::Config {
                what: "convolution",
                value: format!("layer {l}: {spec:?} on {c}x{}x{}", size.0, size.1),
                why: e.to_string(),
            })?;
            let k2 = spec.kernel * spec.kernel;
            let w = glorot::<T>(spec.channels, geometry.patch_len(), (c * k2, spec.channels * k2), seed, l);
            layers.push(Layer { w, activation: hidden, kind: LayerKind::Conv2d(conv) });
            (c, size) = (spec.channels, conv.output_size());
        }
        let mut d_in = c * size.0 * size.1;
        for (i, &d_out) in dense.iter().enumerate() {
            let l = convs.len() + i;
            let w = glorot::<T>(d_out, d_in, (d_in, d_out), seed, l);
            let activation = if i + 1 == dense.len() { Activation::Identity } else { hidden };
            layers.push(Layer::dense(w, activation));
            d_in = d_out;
        }
        Ok(Self { layers, parallelism: Parallelism::default() })
    }

    /// The shapes of the layers, for `kfac_core`.
    pub fn shapes(&self) -> Vec<LayerShape> {
        self.layers.iter().map(|l| LayerShape::new(l.d_in(), l.d_out())).collect()
    }

    /// Input width (of a row of the input batch).
    pub fn d_in(&self) -> usize {
        self.layers[0].input_width()
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.layers[self.layers.len() - 1].output_width()
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layers.iter().map(|l| l.w.len()).sum()
    }

    /// Multiply-adds of one forward pass per example (a convolution's
    /// $d_\text{in} d_\text{out}$ once per output location).
    pub fn flops_per_example(&self) -> usize {
        self.layers.iter().map(|l| l.d_in() * l.d_out() * l.positions()).sum()
    }

    /// Whether a layer is a convolution.
    pub fn has_convolutions(&self) -> bool {
        self.layers.iter().any(|l| matches!(l.kind, LayerKind::Conv2d(_)))
    }

    /// The forward pass on a batch `x` ($N \times d_\text{in}$).
    pub fn forward(&self, la: &dyn LinAlg<T>, x: ArrayView2<'_, T>, hook: &mut dyn Hook<T>) -> Result<Forward<T>> {
        if x.ncols() != self.d_in() {
            return Err(Error::Shape { what: "input batch", expected: (x.nrows(), self.d_in()), found: x.dim() });
        }
        let n = x.nrows();
        let mut acts = Vec::with_capacity(self.layers.len() + 1);
        let mut caches = Vec::with_capacity(self.layers.len());
        acts.push(x.to_owned());
        for (l, layer) in self.layers.iter().enumerate() {
            let (z, cache) = match &layer.kind {
                LayerKind::Dense => {
                    hook.forward(l, acts[l].view());
                    let mut z = Array2::<T>::zeros((n, layer.d_out()));
                    // z = a Wᵀ + 1 bᵀ
                    crate::elementwise::broadcast_rows(z.view_mut(), layer.w.column(layer.d_in()));
                    self.product(la, T::one(), acts[l].view(), layer.weight().t(), T::one(), z.view_mut())?;
                    layer.activation.apply(z.view_mut());
                    (z, None)
                }
                LayerKind::Conv2d(conv) => {
                    let (z, cache) = self.conv_forward(la, layer, conv, acts[l].view(), l, hook)?;
                    (z, Some(cache))
                }
            };
            acts.push(z);
            caches.push(cache);
        }
        Ok(Forward { acts, conv: caches })
    }

    /// A convolution's forward pass: patches, $S = P W^\top + \mathbf 1 b^\top$
    /// as NCHW rows, the activation, the pooling.
    fn conv_forward(
        &self,
        la: &dyn LinAlg<T>,
        layer: &Layer<T>,
        conv: &Conv2d,
        x: ArrayView2<'_, T>,
        l: usize,
        hook: &mut dyn Hook<T>,
    ) -> Result<(Array2<T>, ConvCache<T>)> {
        let n = x.nrows();
        let patches = conv.patches(x)?;
        hook.forward(l, patches.view());
        let mut rows = Array2::<T>::zeros((patches.nrows(), layer.d_out()));
        crate::elementwise::broadcast_rows(rows.view_mut(), layer.w.column(layer.d_in()));
        self.product(la, T::one(), patches.view(), layer.weight().t(), T::one(), rows.view_mut())?;
        let mut y = conv.rows_to_batch(rows.view(), n)?;
        layer.activation.apply(y.view_mut());
        let c = conv.geometry.out_channels;
        Ok(match conv.pool {
            None => (y, ConvCache { patches, activated: None, argmax: Array2::zeros((0, 0)) }),
            Some(pool) => {
                let (z, argmax) = pool.forward(y.view(), c, conv.geometry.output())?;
                (z, ConvCache { patches, activated: Some(y), argmax })
            }
        })
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
        // g: ∂ℓ/∂s_l, one row per example (NCHW rows for a convolution).
        let mut g = g_out.to_owned();
        for l in (0..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let da = match &layer.kind {
                LayerKind::Dense => {
                    hook.backward(l, g.view());
                    let a = fwd.acts[l].slice(s![..n, ..]);
                    if weight_grads {
                        grads[l] = self.dense_weight_grad(la, layer, g.view(), a, inv_n)?;
                    }
                    if l == 0 {
                        Array2::zeros((0, 0))
                    } else {
                        // dL/da_l = g W
                        let mut da = Array2::<T>::zeros((n, layer.d_in()));
                        self.product(la, T::one(), g.view(), layer.weight(), T::zero(), da.view_mut())?;
                        da
                    }
                }
                LayerKind::Conv2d(conv) => {
                    let rows = conv.batch_to_rows(g.view())?;
                    hook.backward(l, rows.view());
                    let cache = fwd.conv.get(l).and_then(Option::as_ref).ok_or(Error::Shape {
                        what: "forward pass (convolution caches)",
                        expected: (self.layers.len(), 1),
                        found: (fwd.conv.len(), 1),
                    })?;
                    let p = cache.patches.slice(s![..rows.nrows(), ..]);
                    if weight_grads {
                        grads[l] = self.dense_weight_grad(la, layer, rows.view(), p, inv_n)?;
                    }
                    if l == 0 {
                        Array2::zeros((0, 0))
                    } else {
                        let mut dp = Array2::<T>::zeros(p.dim());
                        self.product(la, T::one(), rows.view(), layer.weight(), T::zero(), dp.view_mut())?;
                        conv.input_gradient(dp.view(), n)?
                    }
                }
            };
            if l > 0 {
                g = self.through_activation(l - 1, fwd, da)?;
            }
        }
        Ok(grads)
    }

    /// $\nabla_{\bar W} = \frac1N [G^\top A \mid G^\top \mathbf 1]$ for the rows $G$
    /// (pre-activation gradients) and $A$ (inputs or patches).
    fn dense_weight_grad(
        &self,
        la: &dyn LinAlg<T>,
        layer: &Layer<T>,
        g: ArrayView2<'_, T>,
        a: ArrayView2<'_, T>,
        inv_n: T,
    ) -> Result<Array2<T>> {
        let mut gw = Array2::<T>::zeros(layer.w.dim());
        let d_in = layer.d_in();
        self.weight_product(la, inv_n, g, a, gw.slice_mut(s![.., ..d_in]))?;
        let bias = g.sum_axis(Axis(0));
        gw.column_mut(d_in).assign(&(bias * inv_n));
        Ok(gw)
    }

    /// $\partial \ell / \partial s_k$ from the gradient `da` with respect to
    /// layer $k$'s output: back through its pooling (if any), then times
    /// $\phi_k'$ read from its activation.
    fn through_activation(&self, k: usize, fwd: &Forward<T>, da: Array2<T>) -> Result<Array2<T>> {
        let n = da.nrows();
        let layer = &self.layers[k];
        let mut d = match (&layer.kind, fwd.conv.get(k)) {
            (LayerKind::Conv2d(Conv2d { pool: Some(pool), geometry }), Some(Some(cache))) => {
                pool.backward(da.view(), &cache.argmax, geometry.out_channels, geometry.output())?
            }
            _ => da,
        };
        let y = fwd.activated(k);
        let y = y.slice(s![..n, ..]);
        if d.dim() != y.dim() {
            return Err(Error::Shape { what: "activation gradient", expected: y.dim(), found: d.dim() });
        }
        crate::elementwise::scale_by_derivative(layer.activation, d.view_mut(), y);
        Ok(d)
    }

    /// $C \leftarrow \alpha A B + \beta C$ for batch-shaped $A$ and $C$ (rows are examples).
    pub(crate) fn product(
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

/// A $d_\text{out} \times (d_\text{in} + 1)$ matrix $\bar W$ with Glorot normal
/// weights for the fans `(fan_in, fan_out)` and a zero bias column, from
/// stream `l` of `seed`.
fn glorot<T: Scalar>(d_out: usize, d_in: usize, (fan_in, fan_out): (usize, usize), seed: u64, l: usize) -> Array2<T> {
    let mut rng = Rng::stream(seed, l as u64);
    let sd = (2.0 / (fan_in + fan_out) as f64).sqrt();
    let mut w = Array2::<T>::zeros((d_out, d_in + 1));
    for x in w.slice_mut(s![.., ..d_in]).iter_mut() {
        *x = T::from_f64_lossy(sd * rng.normal());
    }
    w
}

fn core_err(e: kfac::LinAlgError) -> Error {
    Error::Core(kfac::Error::LinAlg { block: "mlp".into(), source: e })
}
