//! [`KfacLinear`]: candle's `Linear` with the capture of [`crate::capture`].

use std::sync::Arc;

use candle_core::{Tensor, Var};
use candle_nn::{Linear, Module};
use kfac_core::LayerShape;

use crate::capture::Capture;
use crate::error::{Error, Result};

/// A `candle_nn::Linear` that K-FAC can see: the same forward pass, plus the
/// capture of its input and pre-activation gradient when the optimizer asks
/// for it. Cloning is cheap and shares the layer (hand one clone to the
/// model, one to [`Kfac`](crate::Kfac)).
///
/// The input is $N \times d_\text{in}$ (one example per row), or
/// $N \times R \times d_\text{in}$ for a layer shared over $R$ positions
/// (a sequence): K-FAC then sees $NR$ rows, $R$ per example
/// ([`LayerBatch::shared`](kfac_core::LayerBatch::shared), expand).
#[derive(Debug, Clone)]
pub struct KfacLinear(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    linear: Linear,
    weight: Var,
    bias: Option<Var>,
    capture: Capture,
}

impl KfacLinear {
    /// Wraps `linear`, whose weight and bias must be candle variables (as
    /// `candle_nn::linear` makes them from a `VarBuilder` over a `VarMap`).
    ///
    /// # Errors
    ///
    /// [`Error::Layer`] when the weight or the bias is not a variable, or the
    /// weight is not 2-D.
    pub fn new(linear: Linear) -> Result<Self> {
        let weight = variable(linear.weight(), "weight")?;
        weight.dims2().map_err(|e| Error::Layer { layer: 0, why: format!("a Linear weight must be 2-D: {e}") })?;
        let bias = linear.bias().map(|b| variable(b, "bias")).transpose()?;
        Ok(Self(Arc::new(Inner { linear, weight, bias, capture: Capture::default() })))
    }

    /// A layer from its variables: `weight` ($d_\text{out} \times d_\text{in}$)
    /// and `bias` ($d_\text{out}$).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn from_vars(weight: Var, bias: Option<Var>) -> Result<Self> {
        Self::new(Linear::new(weight.as_tensor().clone(), bias.map(|b| b.as_tensor().clone())))
    }

    /// The wrapped layer.
    pub fn linear(&self) -> &Linear {
        &self.0.linear
    }

    /// The weight variable, $d_\text{out} \times d_\text{in}$.
    pub fn weight(&self) -> &Var {
        &self.0.weight
    }

    /// The bias variable, $d_\text{out}$.
    pub fn bias(&self) -> Option<&Var> {
        self.0.bias.as_ref()
    }

    /// The shape kfac-core sees: $\bar W = [W \mid b]$.
    pub fn shape(&self) -> LayerShape {
        let (d_out, d_in) = self.0.weight.dims2().unwrap_or((0, 0));
        LayerShape { d_in, d_out, bias: self.0.bias.is_some() }
    }

    pub(crate) fn capture(&self) -> &Capture {
        &self.0.capture
    }
}

impl Module for KfacLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let z = self.0.linear.forward(x)?;
        self.0.capture.record(x, z)
    }
}

/// The variable behind `t`, or an error naming `what`.
pub(crate) fn variable(t: &Tensor, what: &str) -> Result<Var> {
    if !t.is_variable() {
        return Err(Error::Layer {
            layer: 0,
            why: format!("its {what} is not a candle Var (build the layer from a VarMap, or from Vars)"),
        });
    }
    Ok(Var::from_tensor(t)?)
}
