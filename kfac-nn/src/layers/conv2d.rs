//! A two-dimensional convolution as a layer of the network: the geometry,
//! an optional pooling after the activation, and the conversions between
//! the network's batches (one row per example, NCHW flattened) and the
//! rows of kfac-core's patch matrices (one row per example and output
//! location).
//!
//! With the patches $P$ of the input ([`kfac::conv::im2col`], $N|T| \times C_\text{in} k_h k_w$,
//! row $n|T| + t$) and the parameters $\bar W = [W \mid b]$
//! ($C_\text{out} \times (C_\text{in} k_h k_w + 1)$, PyTorch's `[C_out, C_in, kh, kw]`
//! flattened, the bias last), the pre-activations are the rows
//! $$ S = P W^\top + \mathbf 1 b^\top \qquad (N|T| \times C_\text{out}), $$
//! a dense layer applied at every output location $t$. For the mean loss
//! $L = \frac1N \sum_n \ell_n$ and the per-example location gradients
//! $u_{n,t} = \partial \ell_n / \partial s_{n,t}$ (the rows $G$):
//! $$ \nabla_W L = \tfrac1N G^\top P, \qquad \nabla_b L = \tfrac1N G^\top \mathbf 1, \qquad
//!    \frac{\partial \ell}{\partial x} = \operatorname{col2im}(G W) ,$$
//! col2im being im2col's adjoint ([`kfac::conv::col2im`]). The R-operator
//! is linear in both arguments:
//! $R(S) = P V_W^\top + \mathbf 1 v_b^\top + \operatorname{im2col}(R(x))\, W^\top$.
//!
//! kfac-core receives $P$ and $G$ with $R = |T|$ positions
//! ([`LayerBatch::shared`](kfac::LayerBatch::shared)): KFC (expand) by
//! default, K-FAC-reduce on request.

use kfac::conv::{self, Conv2dGeometry};
use ndarray::{Array2, ArrayView2, ArrayView4};

use super::pool::Pool2d;
use crate::backend::Scalar;
use crate::error::{Error, Result};

/// A convolution layer's geometry and the pooling after its activation;
/// see the [module docs](self). Its parameters are the layer's
/// $\bar W$ ([`Layer::w`](crate::mlp::Layer::w)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2d {
    /// The convolution (channels, kernel, stride, padding, dilation, input size).
    pub geometry: Conv2dGeometry,
    /// Pooling applied after the activation, if any.
    pub pool: Option<Pool2d>,
}

impl Conv2d {
    /// Checks the geometry and that the pooling window fits its output.
    ///
    /// # Errors
    ///
    /// [`Error::Core`] for an invalid geometry, [`Error::Config`] for a pooling that does not fit.
    pub fn validate(&self) -> Result<()> {
        self.geometry.validate()?;
        if let Some(p) = self.pool {
            p.validate(self.geometry.output())?;
        }
        Ok(())
    }

    /// The width of an input row, $C_\text{in} H W$.
    pub fn input_width(&self) -> usize {
        let g = &self.geometry;
        g.in_channels * g.input.0 * g.input.1
    }

    /// The number of output locations $|T| = H_\text{out} W_\text{out}$ (the
    /// positions kfac-core sees).
    pub fn locations(&self) -> usize {
        self.geometry.locations()
    }

    /// The width of the activation before pooling, $C_\text{out} |T|$.
    pub fn conv_width(&self) -> usize {
        self.geometry.out_channels * self.locations()
    }

    /// The spatial size of the layer's output, after the pooling.
    pub fn output_size(&self) -> (usize, usize) {
        let o = self.geometry.output();
        self.pool.map_or(o, |p| p.output(o))
    }

    /// The width of an output row, after the pooling.
    pub fn output_width(&self) -> usize {
        let (h, w) = self.output_size();
        self.geometry.out_channels * h * w
    }

    /// The patches $P$ of the batch `x` ($N \times C_\text{in} H W$).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] for a batch of another width.
    pub fn patches<T: Scalar>(&self, x: ArrayView2<'_, T>) -> Result<Array2<T>> {
        let g = &self.geometry;
        Ok(conv::im2col(g, self.nchw(x, g.in_channels, g.input)?)?)
    }

    /// Location rows ($N|T| \times C_\text{out}$) to a batch of NCHW rows
    /// ($N \times C_\text{out} |T|$).
    ///
    /// # Errors
    ///
    /// [`Error::Core`] when the rows are not $N|T|$.
    pub fn rows_to_batch<T: Scalar>(&self, rows: ArrayView2<'_, T>, n: usize) -> Result<Array2<T>> {
        let y = conv::rows_to_nchw(rows, n, self.geometry.output())?;
        let width = self.conv_width();
        y.into_shape_with_order((n, width)).map_err(|_| Error::Shape {
            what: "convolution output",
            expected: (n, width),
            found: (n, 0),
        })
    }

    /// A batch of NCHW rows ($N \times C_\text{out}|T|$) to location rows
    /// ($N|T| \times C_\text{out}$): [`rows_to_batch`](Self::rows_to_batch)'s inverse.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] for a batch of another width.
    pub fn batch_to_rows<T: Scalar>(&self, y: ArrayView2<'_, T>) -> Result<Array2<T>> {
        let g = &self.geometry;
        Ok(conv::location_rows(self.nchw(y, g.out_channels, g.output())?))
    }

    /// The input gradient ($N \times C_\text{in} H W$) from the patch
    /// gradients $G W$ ($N|T| \times C_\text{in} k_h k_w$), by col2im.
    ///
    /// # Errors
    ///
    /// [`Error::Core`] when the patch gradients do not fit the geometry.
    pub fn input_gradient<T: Scalar>(&self, patch_grads: ArrayView2<'_, T>, n: usize) -> Result<Array2<T>> {
        let x = conv::col2im(&self.geometry, patch_grads, n)?;
        let width = self.input_width();
        x.into_shape_with_order((n, width)).map_err(|_| Error::Shape {
            what: "convolution input gradient",
            expected: (n, width),
            found: (n, 0),
        })
    }

    /// A batch of rows viewed as $N \times C \times H \times W$.
    fn nchw<'a, T>(&self, x: ArrayView2<'a, T>, c: usize, (h, w): (usize, usize)) -> Result<ArrayView4<'a, T>> {
        let (n, width) = (x.nrows(), c * h * w);
        if x.ncols() != width {
            return Err(Error::Shape { what: "convolution batch", expected: (n, width), found: x.dim() });
        }
        let std = x.is_standard_layout();
        x.into_shape_with_order((n, c, h, w)).ok().filter(|_| std).ok_or(Error::Shape {
            what: "convolution batch (standard layout)",
            expected: (n, width),
            found: (n, width),
        })
    }
}
