//! [`KfacLayer`]: a wrapped layer as the optimizer handles it: its shape,
//! its parameters and gradients in kfac-core's $[W \mid b]$ layout, its
//! statistics, and the write-back of the update.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use kfac_core::conv::{im2col, location_rows};
use kfac_core::{GradScale, LayerBatch, LayerShape};
use ndarray::{Array2, ArrayView2, s};

use crate::capture::{Capture, Tap};
use crate::conv::KfacConv2d;
use crate::error::{Error, Result};
use crate::host::{Host, to_tensor};
use crate::linear::KfacLinear;
use crate::scalar::Scalar;

/// A layer the optimizer preconditions.
#[derive(Debug, Clone)]
pub enum KfacLayer {
    /// A dense layer.
    Linear(KfacLinear),
    /// A 2-D convolution.
    Conv2d(KfacConv2d),
}

impl From<&KfacLinear> for KfacLayer {
    fn from(l: &KfacLinear) -> Self {
        Self::Linear(l.clone())
    }
}

impl From<&KfacConv2d> for KfacLayer {
    fn from(l: &KfacConv2d) -> Self {
        Self::Conv2d(l.clone())
    }
}

/// One layer's statistics, borrowed from candle where possible.
pub(crate) enum StatsData<'t, T> {
    /// A dense layer: input and gradient rows read in place.
    Dense { input: Host<'t, T>, grad: Host<'t, T>, rows: usize, positions: usize, batch: usize, shape: LayerShape },
    /// A convolution: the patches and the location rows (copies by nature).
    Conv { patches: Array2<T>, grads: Array2<T>, positions: usize, batch: usize },
}

impl<T: Scalar> StatsData<'_, T> {
    /// The kfac-core batch: rows of the mean loss over `batch` examples.
    pub fn batch(&self) -> Result<LayerBatch<'_, T>> {
        let (inputs, grads, positions, batch) = match self {
            Self::Dense { input, grad, rows, positions, batch, shape } => {
                let x = input.view2(input.slice().len() / shape.d_in.max(1), shape.d_in)?;
                let g = grad.view2(grad.slice().len() / shape.d_out.max(1), shape.d_out)?;
                (x.slice_move(s![..*rows, ..]), g.slice_move(s![..*rows, ..]), *positions, *batch)
            }
            Self::Conv { patches, grads, positions, batch } => (patches.view(), grads.view(), *positions, *batch),
        };
        Ok(LayerBatch::shared(inputs, grads, positions).with_scale(GradScale::MeanLoss { batch_size: batch }))
    }

    /// Whether the statistics were read without a copy.
    pub fn borrowed(&self) -> bool {
        matches!(self, Self::Dense { input, grad, .. } if input.is_borrowed() && grad.is_borrowed())
    }
}

impl KfacLayer {
    /// The shape kfac-core sees.
    pub fn shape(&self) -> LayerShape {
        match self {
            Self::Linear(l) => l.shape(),
            Self::Conv2d(c) => c.shape(),
        }
    }

    /// The weight and bias variables.
    pub fn vars(&self) -> (&Var, Option<&Var>) {
        match self {
            Self::Linear(l) => (l.weight(), l.bias()),
            Self::Conv2d(c) => (c.weight(), c.bias()),
        }
    }

    pub(crate) fn capture(&self) -> &Capture {
        match self {
            Self::Linear(l) => l.capture(),
            Self::Conv2d(c) => c.capture(),
        }
    }

    /// Joins a weight-shaped and a bias-shaped tensor into $[W \mid b]$.
    fn join<T: Scalar>(&self, w: &Tensor, b: Option<&Tensor>) -> Result<Array2<T>> {
        let shape = self.shape();
        let wh = Host::<T>::new(w)?;
        let bh = b.map(Host::<T>::new).transpose()?;
        let bv = bh.as_ref().map(|h| ndarray::ArrayView1::from(h.slice()));
        Ok(shape.join(wh.view2(shape.d_out, shape.d_in)?, bv)?)
    }

    /// $\theta$ in the $[W \mid b]$ layout (a copy).
    pub(crate) fn params<T: Scalar>(&self) -> Result<Array2<T>> {
        let (w, b) = self.vars();
        self.join(w.as_tensor(), b.map(Var::as_tensor))
    }

    /// The gradient in `grads` in the $[W \mid b]$ layout.
    pub(crate) fn grads<T: Scalar>(&self, index: usize, grads: &GradStore) -> Result<Array2<T>> {
        let (w, b) = self.vars();
        let gw = grads.get(w.as_tensor()).ok_or(Error::MissingGradient { layer: index, what: "weight" })?;
        let gb = b.map(|b| grads.get(b.as_tensor()).ok_or(Error::MissingGradient { layer: index, what: "bias" }));
        self.join(gw, gb.transpose()?)
    }

    /// Writes $\bar W$ into the layer's variables.
    pub(crate) fn write<T: Scalar>(&self, w_bar: ArrayView2<'_, T>) -> Result<()> {
        let (w, b) = self.vars();
        let (wm, bv) = self.shape().split(w_bar)?;
        w.set(&to_tensor(wm.view(), w.dims(), w.device())?)?;
        if let (Some(b), Some(bv)) = (b, bv) {
            let n = bv.len();
            b.set(&to_tensor(bv.into_shape_with_order((1, n)).map_err(shape_err)?.view(), b.dims(), b.device())?)?;
        }
        Ok(())
    }

    /// The statistics of the first `batch` examples: the tap's input and
    /// `eps_grad`, the gradient of a mean loss over those examples with
    /// respect to the pre-activation.
    pub(crate) fn statistics<'t, T: Scalar>(
        &self,
        tap: &'t Tap,
        eps_grad: &'t Tensor,
        batch: usize,
    ) -> Result<StatsData<'t, T>> {
        match self {
            Self::Linear(_) => {
                let shape = self.shape();
                let positions = match tap.input.dims() {
                    [_, _] => 1,
                    [_, r, _] => *r,
                    d => {
                        return Err(Error::Layer {
                            layer: 0,
                            why: format!("a Linear input must be 2-D or 3-D: {d:?}"),
                        });
                    }
                };
                let (input, grad) = (Host::new(&tap.input)?, Host::new(eps_grad)?);
                Ok(StatsData::Dense { input, grad, rows: batch * positions, positions, batch, shape })
            }
            Self::Conv2d(c) => {
                let (xh, gh) = (Host::<T>::new(&tap.input)?, Host::<T>::new(eps_grad)?);
                let x = xh.view4()?;
                let g = c.geometry((x.dim().2, x.dim().3));
                let patches = im2col(&g, x.slice(s![..batch, .., .., ..]))?;
                let grads = location_rows(gh.view4()?.slice(s![..batch, .., .., ..]));
                Ok(StatsData::Conv { patches, grads, positions: g.locations(), batch })
            }
        }
    }
}

fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::Layer { layer: 0, why: e.to_string() }
}
