//! Two-dimensional convolutions as weight-sharing layers: the geometry, and
//! the patch matrix (im2col) that turns a convolution into a dense layer
//! applied at every output location.
//!
//! A convolution with $C_\text{in}$ input and $C_\text{out}$ output channels,
//! a $k_h \times k_w$ kernel, stride $s$, zero padding $p$ and dilation $d$
//! computes, at output location $t = (y, x)$,
//! $$ s_{o,t} = b_o + \sum_{c,i,j} W_{o,c,i,j}\, a_{c,\; y s_h - p_h + i d_h,\; x s_w - p_w + j d_w} ,$$
//! the input read as 0 outside the image. With the **patch** $p_t$ (the
//! inputs that location $t$ reads, in the order $(c, i, j)$) this is
//! $s_t = W p_t + b$ with $W$ flattened to $C_\text{out} \times C_\text{in} k_h k_w$,
//! the flattening of PyTorch's `[C_out, C_in, kh, kw]` and candle's: a dense
//! layer of shape [`Conv2dGeometry::shape`] shared over the
//! $|T| = H_\text{out} W_\text{out}$ output locations. So a framework hands
//! a convolution to the curvature blocks as
//! `LayerBatch::shared(im2col(..), location_rows(..), geometry.locations())`
//! ([`crate::statistics`], weight sharing): the factors are then KFC's
//! (Grosse & Martens, 2016), normalised by the number of **output**
//! locations, whatever the input's size, stride or padding.
//!
//! A grouped convolution ($G$ groups) is $G$ convolutions side by side,
//! each reading $C_\text{in}/G$ channels and writing $C_\text{out}/G$, with
//! weights of their own: as one dense layer, its weight would be
//! block-diagonal, the blocks between groups zeros that are not parameters.
//! So hand it over as $G$ layers, each with its own Kronecker factors: group $g$'s geometry has
//! `in_channels` $C_\text{in}/G$ and `out_channels` $C_\text{out}/G$, its
//! input is the slice of channels $g C_\text{in}/G \dots (g+1) C_\text{in}/G$ and its
//! gradient rows those of its output channels. This module has no
//! `groups` field for that reason.
//!
//! The arrays are NCHW ([`ndarray::Array4`]: example, channel, row,
//! column). Rows of a patch matrix are example-major, then output location
//! in row-major order $(y, x)$: row $n|T| + y W_\text{out} + x$.

use ndarray::{Array2, Array4, ArrayView2, ArrayView4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::scalar::Real;
use crate::shape::LayerShape;

/// The geometry of a 2-D convolution; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Conv2dGeometry {
    /// $C_\text{in}$.
    pub in_channels: usize,
    /// $C_\text{out}$.
    pub out_channels: usize,
    /// $(k_h, k_w)$.
    pub kernel: (usize, usize),
    /// $(s_h, s_w)$, at least 1.
    pub stride: (usize, usize),
    /// $(p_h, p_w)$: zeros added on each side.
    pub padding: (usize, usize),
    /// $(d_h, d_w)$, at least 1 (1: an ordinary kernel).
    pub dilation: (usize, usize),
    /// The input's $(H, W)$.
    pub input: (usize, usize),
}

impl Conv2dGeometry {
    /// A convolution with stride 1, no padding and no dilation.
    pub fn new(in_channels: usize, out_channels: usize, kernel: (usize, usize), input: (usize, usize)) -> Self {
        Self { in_channels, out_channels, kernel, stride: (1, 1), padding: (0, 0), dilation: (1, 1), input }
    }

    /// Checks that every size is positive and that the dilated kernel fits
    /// the padded input.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, value: String, why: &'static str| Err(Error::InvalidConfig { what, value, why });
        for (what, v) in [
            ("conv in_channels", self.in_channels),
            ("conv out_channels", self.out_channels),
            ("conv kernel height", self.kernel.0),
            ("conv kernel width", self.kernel.1),
            ("conv stride", self.stride.0.min(self.stride.1)),
            ("conv dilation", self.dilation.0.min(self.dilation.1)),
            ("conv input height", self.input.0),
            ("conv input width", self.input.1),
        ] {
            if v == 0 {
                return bad(what, "0".into(), "must be positive");
            }
        }
        for (k, d, p, n) in [
            (self.kernel.0, self.dilation.0, self.padding.0, self.input.0),
            (self.kernel.1, self.dilation.1, self.padding.1, self.input.1),
        ] {
            if d * (k - 1) + 1 > n + 2 * p {
                return bad(
                    "conv kernel",
                    format!(
                        "{:?} with dilation {:?} on {:?} padded by {:?}",
                        self.kernel, self.dilation, self.input, self.padding
                    ),
                    "the dilated kernel must fit the padded input",
                );
            }
        }
        Ok(())
    }

    /// $(H_\text{out}, W_\text{out})$, $\lfloor (H + 2p - d(k-1) - 1)/s \rfloor + 1$
    /// per axis (the geometry must be valid).
    pub fn output(&self) -> (usize, usize) {
        let out = |n: usize, k: usize, s: usize, p: usize, d: usize| (n + 2 * p - d * (k - 1) - 1) / s + 1;
        (
            out(self.input.0, self.kernel.0, self.stride.0, self.padding.0, self.dilation.0),
            out(self.input.1, self.kernel.1, self.stride.1, self.padding.1, self.dilation.1),
        )
    }

    /// $|T| = H_\text{out} W_\text{out}$, the positions $R$ of the layer.
    pub fn locations(&self) -> usize {
        let (h, w) = self.output();
        h * w
    }

    /// The length of a patch, $C_\text{in} k_h k_w$.
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel.0 * self.kernel.1
    }

    /// The shape of the shared dense layer: $d_\text{in} = C_\text{in} k_h k_w$,
    /// $d_\text{out} = C_\text{out}$, with a bias.
    pub fn shape(&self) -> LayerShape {
        LayerShape::new(self.patch_len(), self.out_channels)
    }

    fn check_input<T>(&self, x: &ArrayView4<'_, T>) -> Result<()> {
        self.validate()?;
        let (_, c, h, w) = x.dim();
        if (c, h, w) != (self.in_channels, self.input.0, self.input.1) {
            return Err(Error::ShapeMismatch {
                block: "conv".into(),
                what: "input (channels, height x width)",
                expected: (self.in_channels, self.input.0 * self.input.1),
                found: (c, h * w),
            });
        }
        Ok(())
    }

    /// The input coordinate that kernel offset `i` reads for output `o` on
    /// axis `axis` (0: rows, 1: columns), `None` in the padding.
    #[inline]
    fn source(&self, axis: usize, o: usize, i: usize) -> Option<usize> {
        let (s, p, d, n) = if axis == 0 {
            (self.stride.0, self.padding.0, self.dilation.0, self.input.0)
        } else {
            (self.stride.1, self.padding.1, self.dilation.1, self.input.1)
        };
        (o * s + i * d).checked_sub(p).filter(|&v| v < n)
    }

    /// The kernel columns $j_0 \dots j_1$ that read inside the input for
    /// output column `xo` (an interval, empty when $j_0 \ge j_1$).
    fn column_taps(&self, xo: usize) -> (usize, usize) {
        let kw = self.kernel.1;
        let j0 = (0..kw).find(|&j| self.source(1, xo, j).is_some()).unwrap_or(kw);
        let j1 = (j0..kw).rev().find(|&j| self.source(1, xo, j).is_some()).map_or(j0, |j| j + 1);
        (j0, j1)
    }

    /// For every output column, its taps ([`Self::column_taps`]) and the
    /// input column its first tap reads.
    fn column_plan(&self) -> Vec<(usize, usize, usize)> {
        (0..self.output().1)
            .map(|xo| {
                let (j0, j1) = self.column_taps(xo);
                (j0, j1, self.source(1, xo, j0).unwrap_or(0))
            })
            .collect()
    }
}

/// Copies example `xn`'s patches (its $C_\text{in} H W$ values, row-major)
/// into `rows` ($|T|$ rows of $C_\text{in} k_h k_w$, zeros already in place).
fn fill_patches<T: Real>(g: &Conv2dGeometry, plan: &[(usize, usize, usize)], xn: &[T], rows: &mut [T]) {
    let ((kh, kw), (h, w), wo, d) = (g.kernel, g.input, g.output().1, g.dilation.1);
    for (t, row) in rows.chunks_exact_mut(g.patch_len()).enumerate() {
        let (y, (j0, j1, sx0)) = (t / wo, plan[t % wo]);
        for c in 0..g.in_channels {
            for i in 0..kh {
                let Some(sy) = g.source(0, y, i) else { continue };
                let src = &xn[(c * h + sy) * w..][..w];
                let dst = &mut row[(c * kh + i) * kw..][..kw];
                for (k, j) in (j0..j1).enumerate() {
                    dst[j] = src[sx0 + k * d];
                }
            }
        }
    }
}

/// Adds example `rows`' patch gradients into its input gradient `xn`, row
/// after row (the order [`col2im`] documents).
fn add_patches<T: Real>(g: &Conv2dGeometry, plan: &[(usize, usize, usize)], rows: &[T], xn: &mut [T]) {
    let ((kh, kw), (h, w), wo, d) = (g.kernel, g.input, g.output().1, g.dilation.1);
    for (t, row) in rows.chunks_exact(g.patch_len()).enumerate() {
        let (y, (j0, j1, sx0)) = (t / wo, plan[t % wo]);
        for c in 0..g.in_channels {
            for i in 0..kh {
                let Some(sy) = g.source(0, y, i) else { continue };
                let dst = &mut xn[(c * h + sy) * w..][..w];
                let src = &row[(c * kh + i) * kw..][..kw];
                for (k, j) in (j0..j1).enumerate() {
                    dst[sx0 + k * d] += src[j];
                }
            }
        }
    }
}

/// The patch matrix of the batch `x` ($N \times C_\text{in} \times H \times W$):
/// $N|T| \times C_\text{in}k_hk_w$, row $n|T| + t$ the patch of example $n$ at output
/// location $t$, columns $(c, i, j)$ as $c k_h k_w + i k_w + j$; zeros where a
/// patch overlaps the padding. Examples are filled in parallel (the result
/// does not depend on the thread count).
///
/// # Errors
///
/// An invalid geometry, or an input of another shape.
pub fn im2col<T: Real>(geometry: &Conv2dGeometry, x: ArrayView4<'_, T>) -> Result<Array2<T>> {
    geometry.check_input(&x)?;
    let g = *geometry;
    let (n, l, len) = (x.dim().0, g.locations(), g.patch_len());
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("a standard-layout array is contiguous");
    let plan = g.column_plan();
    let mut out = vec![T::zero(); n * l * len];
    out.par_chunks_mut(l * len)
        .zip(xs.par_chunks(g.in_channels * g.input.0 * g.input.1))
        .for_each(|(rows, xn)| fill_patches(&g, &plan, xn, rows));
    Ok(Array2::from_shape_vec((n * l, len), out).expect("the patch matrix's length"))
}

/// The adjoint of [`im2col`]: the gradient with respect to the input
/// ($N \times C_\text{in} \times H \times W$) of a function of the patches, from
/// its gradient with respect to the patch matrix (`patches`, the shape of
/// [`im2col`]'s output). Each input entry sums the patch entries that read
/// it, in the order of the patch matrix's rows, so the result does not
/// depend on the thread count.
///
/// # Errors
///
/// An invalid geometry, or `patches` of another shape.
pub fn col2im<T: Real>(geometry: &Conv2dGeometry, patches: ArrayView2<'_, T>, examples: usize) -> Result<Array4<T>> {
    geometry.validate()?;
    let g = *geometry;
    let (l, len) = (g.locations(), g.patch_len());
    if patches.dim() != (examples * l, len) {
        return Err(Error::ShapeMismatch {
            block: "conv".into(),
            what: "patch gradients",
            expected: (examples * l, len),
            found: patches.dim(),
        });
    }
    let patches = patches.as_standard_layout();
    let ps = patches.as_slice().expect("a standard-layout array is contiguous");
    let (c, (h, w)) = (g.in_channels, g.input);
    let plan = g.column_plan();
    let mut out = vec![T::zero(); examples * c * h * w];
    out.par_chunks_mut(c * h * w).zip(ps.par_chunks(l * len)).for_each(|(xn, rows)| add_patches(&g, &plan, rows, xn));
    Ok(Array4::from_shape_vec((examples, c, h, w), out).expect("the input's length"))
}

/// The rows of a convolution's output-shaped array `y`
/// ($N \times C \times H_\text{out} \times W_\text{out}$, e.g. the gradient with
/// respect to its pre-activations): $N|T| \times C$, in the row order of
/// [`im2col`].
pub fn location_rows<T: Real>(y: ArrayView4<'_, T>) -> Array2<T> {
    let (n, c, h, w) = y.dim();
    let l = h * w;
    let y = y.as_standard_layout();
    let ys = y.as_slice().expect("a standard-layout array is contiguous");
    let mut out = vec![T::zero(); n * l * c];
    if l * c > 0 {
        out.par_chunks_mut(l * c).zip(ys.par_chunks(l * c)).for_each(|(rows, yn)| transpose(yn, c, l, rows));
    }
    Array2::from_shape_vec((n * l, c), out).expect("the rows' length")
}

/// `dst` ($b \times a$, row-major) $\leftarrow$ `src`ᵀ ($a \times b$).
fn transpose<T: Copy>(src: &[T], a: usize, b: usize, dst: &mut [T]) {
    for (i, row) in src.chunks_exact(b).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            dst[j * a + i] = v;
        }
    }
}

/// The inverse of [`location_rows`]: rows ($N|T| \times C$) back to
/// $N \times C \times H_\text{out} \times W_\text{out}$.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] when the rows are not $N H_\text{out} W_\text{out}$.
pub fn rows_to_nchw<T: Real>(rows: ArrayView2<'_, T>, examples: usize, output: (usize, usize)) -> Result<Array4<T>> {
    let (h, w) = output;
    let (c, l) = (rows.ncols(), h * w);
    if rows.nrows() != examples * l {
        return Err(Error::ShapeMismatch {
            block: "conv".into(),
            what: "location rows",
            expected: (examples * l, c),
            found: rows.dim(),
        });
    }
    let rows = rows.as_standard_layout();
    let rs = rows.as_slice().expect("a standard-layout array is contiguous");
    let mut out = vec![T::zero(); examples * c * l];
    if l * c > 0 {
        out.par_chunks_mut(l * c).zip(rs.par_chunks(l * c)).for_each(|(yn, rn)| transpose(rn, l, c, yn));
    }
    Ok(Array4::from_shape_vec((examples, c, h, w), out).expect("the array's length"))
}
