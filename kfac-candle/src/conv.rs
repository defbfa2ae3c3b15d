//! [`KfacConv2d`]: candle's `Conv2d` with the capture of [`crate::capture`];
//! its statistics through kfac-core's `im2col` ([`kfac_core::conv`]).

use std::sync::Arc;

use candle_core::{Tensor, Var};
use candle_nn::{Conv2d, Module};
use kfac_core::{Conv2dGeometry, LayerShape};

use crate::capture::Capture;
use crate::error::{Error, Result};
use crate::linear::variable;

/// A `candle_nn::Conv2d` that K-FAC can see: the same forward pass, plus the
/// capture of its input ($N \times C_\text{in} \times H \times W$) and of the
/// gradient of its output ($N \times C_\text{out} \times H_o \times W_o$). K-FAC
/// sees it as a layer shared over the $H_o W_o$ output locations (KFC,
/// Grosse & Martens 2016): the patches of the input
/// ([`im2col`](kfac_core::conv::im2col)) against the output gradients at
/// each location ([`location_rows`](kfac_core::conv::location_rows)), with
/// the weight $C_\text{out} \times C_\text{in} k_h k_w$ flattened as
/// candle stores it, and the bias last.
///
/// Grouped convolutions are refused (hand each group over as a layer of
/// its own).
#[derive(Debug, Clone)]
pub struct KfacConv2d(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    conv: Conv2d,
    weight: Var,
    bias: Option<Var>,
    dims: (usize, usize, usize, usize),
    capture: Capture,
}

impl KfacConv2d {
    /// Wraps `conv`, whose weight and bias must be candle variables.
    ///
    /// # Errors
    ///
    /// [`Error::Layer`] when the weight or bias is not a variable, the
    /// weight is not 4-D, or the convolution is grouped.
    pub fn new(conv: Conv2d) -> Result<Self> {
        let weight = variable(conv.weight(), "weight")?;
        let dims =
            weight.dims4().map_err(|e| Error::Layer { layer: 0, why: format!("a Conv2d weight must be 4-D: {e}") })?;
        if conv.config().groups != 1 {
            return Err(Error::Layer {
                layer: 0,
                why: format!("grouped convolution ({} groups): hand each group over as a layer", conv.config().groups),
            });
        }
        let bias = conv.bias().map(|b| variable(b, "bias")).transpose()?;
        Ok(Self(Arc::new(Inner { conv, weight, bias, dims, capture: Capture::default() })))
    }

    /// The wrapped layer.
    pub fn conv(&self) -> &Conv2d {
        &self.0.conv
    }

    /// The weight variable, $C_\text{out} \times C_\text{in} \times k_h \times k_w$.
    pub fn weight(&self) -> &Var {
        &self.0.weight
    }

    /// The bias variable, $C_\text{out}$.
    pub fn bias(&self) -> Option<&Var> {
        self.0.bias.as_ref()
    }

    /// The shape kfac-core sees: $C_\text{in} k_h k_w$ inputs, $C_\text{out}$
    /// outputs, and the bias.
    pub fn shape(&self) -> LayerShape {
        let (c_out, c_in, kh, kw) = self.0.dims;
        LayerShape { d_in: c_in * kh * kw, d_out: c_out, bias: self.0.bias.is_some() }
    }

    /// The geometry of the convolution on an input of size `input` $(H, W)$.
    pub fn geometry(&self, input: (usize, usize)) -> Conv2dGeometry {
        let (c_out, c_in, kh, kw) = self.0.dims;
        let c = self.0.conv.config();
        Conv2dGeometry {
            stride: (c.stride, c.stride),
            padding: (c.padding, c.padding),
            dilation: (c.dilation, c.dilation),
            ..Conv2dGeometry::new(c_in, c_out, (kh, kw), input)
        }
    }

    pub(crate) fn capture(&self) -> &Capture {
        &self.0.capture
    }
}

impl Module for KfacConv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let z = self.0.conv.forward(x)?;
        self.0.capture.record(x, z)
    }
}
