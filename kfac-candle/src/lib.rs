//! K-FAC and EKFAC for models written in [candle](https://github.com/huggingface/candle):
//! fixed or adaptive, true or empirical Fisher, on `Linear` and `Conv2d`
//! layers, through kfac-core's optimizer
//! ([`KfacOptimizer`](kfac_core::optim::KfacOptimizer)).
//!
//! # How it sees the layers
//! candle keeps no gradients of intermediate tensors and has no module
//! hooks. [`KfacLinear`] and [`KfacConv2d`] wrap `candle_nn::Linear` and
//! `candle_nn::Conv2d` and, when the optimizer asks, return
//! $z + \varepsilon$ instead of the pre-activation $z$, with $\varepsilon = 0$
//! a fresh candle `Var` ([`capture`]). Then
//! $$ \frac{\partial L}{\partial \varepsilon} = \frac{\partial L}{\partial z}, $$
//! which candle's `GradStore` holds, and the wrapper keeps its input
//! (detached). A dense layer's statistics are these two, row by row
//! ($A = \frac1N\sum_n \bar a_n \bar a_n^\top$, $B = \frac1N\sum_n g_n g_n^\top$); a
//! convolution's are the input's patches (kfac-core's
//! [`im2col`](kfac_core::conv::im2col)) against the output gradient at each of
//! the $R = H_oW_o$ locations, KFC's expand approximation
//! ([`LayerBatch::shared`](kfac_core::LayerBatch::shared)).
//!
//! # Conventions
//! The loss is the mean over the batch of the per-example loss
//! ([`loss_tensor`], kfac-core's [`Loss`](kfac_core::Loss)), as candle's are.
//! So the gradients candle returns are $g_n / N$: the layer batches say
//! [`GradScale::MeanLoss`](kfac_core::GradScale::MeanLoss) and kfac-core
//! undoes the $1/N$; nothing is rescaled here. The parameters are handed to
//! kfac-core as $\bar W = [W \mid b]$ ($d_\text{out} \times (d_\text{in} + 1)$;
//! a convolution's weight flattened to $C_\text{out} \times C_\text{in}k_hk_w$,
//! candle's own order, which is `im2col`'s), and the update is written
//! back into the layers' variables.
//!
//! # The Fisher
//! With the true Fisher ([`FisherMode::True`](kfac_core::FisherMode), the
//! default) the statistics come from a second backward pass over the same
//! graph (candle's backward does not consume it), of the mean loss over the
//! first $\lceil \tau N\rceil$ examples at targets drawn from the model's
//! predictive distribution (categorical, Bernoulli or Gaussian:
//! [`Loss::sample`](kfac_core::Loss::sample), seeded). With the empirical
//! Fisher they come from the data targets. This is what kfac-nn does, and
//! the tests check that both give the same numbers.
//!
//! # The adaptive rule
//! candle has no forward mode, so the adaptive rule's quadratic forms
//! $u^\top F v$ come from kfac-core's finite differences
//! ([`FiniteDifferences`](kfac_core::optim::FiniteDifferences), two forward
//! passes per direction, relative error of order $\varepsilon^{2/3}$), and the
//! loss at $\theta + \delta$ from one more forward pass. The variables are
//! set to the shifted values for those passes and restored after each.
//!
//! # Copies
//! Dense layers' inputs and pre-activation gradients are read in place
//! when they are contiguous CPU tensors of the optimizer's precision
//! (candle's `storage_and_layout`), and copied otherwise ([`host`]). The
//! $[W \mid b]$ parameters and gradients, the patches of a convolution and
//! the write-back are copies.
//!
//! # Example
//! A two-layer classifier trained by K-FAC for a few steps:
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use kfac_candle::{Kfac, KfacLinear, loss_tensor};
//! use kfac_core::Loss;
//! use kfac_core::optim::KfacConfig;
//!
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
//! let l1 = KfacLinear::new(candle_nn::linear(4, 8, vb.pp("l1"))?)?;
//! let l2 = KfacLinear::new(candle_nn::linear(8, 3, vb.pp("l2"))?)?;
//! let model = |x: &Tensor| l2.forward(&l1.forward(x)?.tanh()?);
//!
//! let x = Tensor::randn(0.0, 1.0, (32, 4), &dev)?;
//! let labels: Vec<u32> = (0..32).map(|i| i % 3).collect();
//! let t = candle_nn::encoding::one_hot(Tensor::new(labels, &dev)?, 3, 1.0f64, 0.0f64)?;
//!
//! let mut opt = Kfac::<f64>::new(KfacConfig::kfac(), vec![(&l1).into(), (&l2).into()], Loss::SoftmaxCrossEntropy, 0)?;
//! let before = loss_tensor(Loss::SoftmaxCrossEntropy, &model(&x)?, &t)?.to_scalar::<f64>()?;
//! for _ in 0..10 {
//!     opt.step(&x, &t, model)?;
//! }
//! let after = loss_tensor(Loss::SoftmaxCrossEntropy, &model(&x)?, &t)?.to_scalar::<f64>()?;
//! assert!(after < before);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod capture;
mod conv;
mod error;
pub mod host;
mod layer;
mod linear;
mod loss;
mod model;
mod optimizer;
mod scalar;
mod timing;

pub use conv::KfacConv2d;
pub use error::{Error, Result};
pub use layer::KfacLayer;
pub use linear::KfacLinear;
pub use loss::loss_tensor;
pub use optimizer::{Kfac, StepOutcome};
pub use scalar::Scalar;
pub use timing::PhaseTimes;
