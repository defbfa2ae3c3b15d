//! The kinds of layers a network stacks, one kind a file: the dense layer
//! (in [`crate::mlp`]), the convolution ([`conv2d`]), the pooling that may
//! follow a convolution's activation ([`pool`]).
//!
//! Every batch between layers is a matrix with one row per example. A
//! convolution reads and writes images in NCHW order flattened to a row
//! (column $c H W + y W + x$), so **flatten** is the identity on that
//! layout: a dense layer after a convolution reads its output row as it
//! is, input $c H W + y W + x$ (PyTorch's `flatten(1)` of an NCHW tensor).
//! There is no flatten layer to stack.
//!
//! Every layer with parameters keeps them as $\bar W = [W \mid b]$ in the
//! layout kfac-core expects ($d_\text{out} \times (d_\text{in}+1)$; for a
//! convolution $C_\text{out} \times (C_\text{in}k_hk_w + 1)$), so the
//! optimizers treat all kinds alike; only the statistics differ: a dense
//! layer hands kfac-core one row per example, a convolution one row per
//! example and output location ([`Conv2d`]).

pub mod conv2d;
pub mod pool;

pub use conv2d::Conv2d;
pub use pool::{Pool2d, PoolKind};

/// What a layer computes from its input before the activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LayerKind {
    /// $s = W a + b$ on the whole input row.
    #[default]
    Dense,
    /// A convolution, then (after the activation) an optional pooling.
    Conv2d(Conv2d),
}

/// One convolution of a network built by [`Mlp::cnn`](crate::mlp::Mlp::cnn):
/// a square kernel, the same stride and padding on both axes, no dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConvSpec {
    /// Output channels $C_\text{out}$.
    pub channels: usize,
    /// The kernel's side $k$.
    pub kernel: usize,
    /// The stride on both axes.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Pooling after the activation.
    pub pool: Option<Pool2d>,
}

impl ConvSpec {
    /// A $k \times k$ convolution to `channels` channels, stride 1, no
    /// padding, followed by `pool`.
    pub fn new(channels: usize, kernel: usize, pool: Option<Pool2d>) -> Self {
        Self { channels, kernel, stride: 1, padding: 0, pool }
    }
}
