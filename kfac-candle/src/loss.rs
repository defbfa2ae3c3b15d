//! kfac-core's losses as candle tensors, so that their gradients come from
//! candle's backward pass.
//!
//! Each is the mean over the batch (rows) of the per-example loss summed
//! over the outputs, as in [`kfac_core::loss`]:
//!
//! | [`Loss`] | $\ell(s, t)$ | candle's own |
//! |---|---|---|
//! | `SoftmaxCrossEntropy` | $-\sum_k t_k \log \operatorname{softmax}(s)_k$ | `candle_nn::loss::cross_entropy` for one-hot $t$ (it takes class indices) |
//! | `SigmoidCrossEntropy` | $\sum_k \operatorname{softplus}(s_k) - t_k s_k$ | `binary_cross_entropy_with_logit` averages over the outputs too, and adds $10^{-7}$ inside the logarithms |
//! | `SquaredError` | $\tfrac12 \lVert s - t \rVert^2$ | `mse` averages over the outputs and drops the $\tfrac12$ |
//!
//! So $\partial L / \partial s_n = (E[t \mid s_n] - t_n)/N$: the rows of a
//! mean loss over $N$ examples ([`GradScale::MeanLoss`](kfac_core::GradScale::MeanLoss)).

use candle_core::{D, Tensor};
use kfac_core::Loss;

/// The mean over the rows of `logits` ($N \times K$) of the loss `loss`
/// against `targets` (the same shape), as a scalar tensor.
///
/// # Errors
///
/// candle's errors (shapes or dtypes that do not match).
pub fn loss_tensor(loss: Loss, logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let per_example = match loss {
        Loss::SoftmaxCrossEntropy => {
            let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            targets.mul(&log_p)?.sum(D::Minus1)?.neg()?
        }
        Loss::SigmoidCrossEntropy => {
            // softplus(s) = max(s, 0) + log(1 + exp(-|s|)), without overflow.
            let softplus = logits.relu()?.add(&((logits.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
            softplus.sub(&targets.mul(logits)?)?.sum(D::Minus1)?
        }
        Loss::SquaredError => (logits.sub(targets)?.sqr()?.sum(D::Minus1)? * 0.5)?,
    };
    per_example.mean(0)
}
