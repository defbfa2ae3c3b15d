//! Two-dimensional pooling over non-overlapping $k \times k$ windows (window
//! and stride $k$), on batches of NCHW images flattened to one row per
//! example (column $c H W + y W + x$).
//!
//! Output $(c, i, j)$ reads the window $W_{ij} = \{(ik + a, jk + b) : 0 \le a, b < k\}$
//! of channel $c$; rows and columns past the last whole window are dropped
//! ($H_\text{out} = \lfloor H / k \rfloor$, as PyTorch's default).
//! - **Max**: $z_{c,i,j} = \max_{W_{ij}} y_c$. Its gradient goes to the
//!   window's first maximum (the argmax the forward pass records), and so
//!   does its directional derivative (the R-operator): $R(z) = R(y)$ at the
//!   argmax. Both are the derivatives where the maximum is unique, which it
//!   is almost everywhere for continuous inputs.
//! - **Average**: $z_{c,i,j} = \frac1{k^2} \sum_{W_{ij}} y_c$, linear: its
//!   gradient spreads $\partial z / k^2$ over the window, and $R(z)$ is the
//!   average of $R(y)$.
//!
//! Pooling has no parameters, so it is no layer of its own for the
//! curvature: it belongs to the convolution before it
//! ([`Conv2d::pool`](super::Conv2d::pool)). Examples are processed in
//! parallel over the rayon pool, each by itself, so the results do not
//! depend on the thread count.

use ndarray::{Array2, ArrayView2, Axis, Zip};

use crate::backend::Scalar;
use crate::error::{Error, Result};

/// Which reduction a pooling window applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// The window's maximum.
    Max,
    /// The window's mean.
    Average,
}

/// Pooling over non-overlapping `size` × `size` windows; see the
/// [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Pool2d {
    /// Max or average.
    pub kind: PoolKind,
    /// The window's side $k$, also its stride (at least 1).
    pub size: usize,
}

/// The positions of the maxima of a max-pooling forward pass: for each
/// example (row) and output (column), the column of the input row that
/// holds the window's first maximum. Empty for average pooling.
pub type Argmax = Array2<usize>;

impl Pool2d {
    /// Max pooling over $k \times k$ windows.
    pub fn max(size: usize) -> Self {
        Self { kind: PoolKind::Max, size }
    }

    /// Average pooling over $k \times k$ windows.
    pub fn average(size: usize) -> Self {
        Self { kind: PoolKind::Average, size }
    }

    /// The output's $(H_\text{out}, W_\text{out}) = (\lfloor H/k \rfloor, \lfloor W/k \rfloor)$.
    pub fn output(&self, input: (usize, usize)) -> (usize, usize) {
        let k = self.size.max(1);
        (input.0 / k, input.1 / k)
    }

    /// Checks that the window fits the input at least once.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero size or a window larger than the input.
    pub fn validate(&self, input: (usize, usize)) -> Result<()> {
        let (h, w) = self.output(input);
        if self.size == 0 || h == 0 || w == 0 {
            return Err(Error::Config {
                what: "pooling size",
                value: format!("{} on a {}x{} input", self.size, input.0, input.1),
                why: "must be at least 1 and fit the input".into(),
            });
        }
        Ok(())
    }

    /// The input column of window element $(a, b)$ of output $(c, i, j)$.
    #[inline]
    fn source(&self, input: (usize, usize), c: usize, (i, j): (usize, usize), (a, b): (usize, usize)) -> usize {
        let k = self.size;
        (c * input.0 + i * k + a) * input.1 + j * k + b
    }

    /// The pooled batch $z$ ($N \times C H_\text{out} W_\text{out}$) of `y`
    /// ($N \times C H W$), and for max pooling the argmax of every output.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] when `y`'s width is not $C H W$, or an invalid window.
    pub fn forward<T: Scalar>(
        &self,
        y: ArrayView2<'_, T>,
        channels: usize,
        input: (usize, usize),
    ) -> Result<(Array2<T>, Argmax)> {
        self.check(y, channels, input)?;
        let (ho, wo) = self.output(input);
        let (n, width) = (y.nrows(), channels * ho * wo);
        let mut z = Array2::<T>::zeros((n, width));
        let max = self.kind == PoolKind::Max;
        let mut argmax = Array2::<usize>::zeros(if max { (n, width) } else { (0, 0) });
        let k = self.size;
        let inv = T::one() / T::from_usize(k * k).unwrap_or(T::one());
        let window = |yr: ndarray::ArrayView1<'_, T>, out: usize| {
            let (c, t) = (out / (ho * wo), out % (ho * wo));
            let ij = (t / wo, t % wo);
            let first = self.source(input, c, ij, (0, 0));
            let (mut best, mut at, mut sum) = (yr[first], first, T::zero());
            for a in 0..k {
                for b in 0..k {
                    let src = self.source(input, c, ij, (a, b));
                    sum += yr[src];
                    if yr[src] > best {
                        (best, at) = (yr[src], src);
                    }
                }
            }
            if max { (best, at) } else { (sum * inv, 0) }
        };
        if max {
            Zip::from(z.rows_mut()).and(argmax.rows_mut()).and(y.rows()).par_for_each(|mut zr, mut ar, yr| {
                for out in 0..width {
                    (zr[out], ar[out]) = window(yr, out);
                }
            });
        } else {
            Zip::from(z.rows_mut()).and(y.rows()).par_for_each(|mut zr, yr| {
                for out in 0..width {
                    zr[out] = window(yr, out).0;
                }
            });
        }
        Ok((z, argmax))
    }

    /// The gradient with respect to the input ($N \times C H W$, the first
    /// `dz.nrows()` examples) from the gradient `dz` with respect to the
    /// output; `argmax` is the forward pass's (for max pooling).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] when `dz` or `argmax` do not fit the geometry.
    pub fn backward<T: Scalar>(
        &self,
        dz: ArrayView2<'_, T>,
        argmax: &Argmax,
        channels: usize,
        input: (usize, usize),
    ) -> Result<Array2<T>> {
        let (ho, wo) = self.output(input);
        let (n, width) = (dz.nrows(), channels * ho * wo);
        if dz.ncols() != width {
            return Err(Error::Shape { what: "pooling gradient", expected: (n, width), found: dz.dim() });
        }
        let mut dy = Array2::<T>::zeros((n, channels * input.0 * input.1));
        match self.kind {
            PoolKind::Max => {
                let am = self.argmax_rows(argmax, n, width)?;
                Zip::from(dy.rows_mut()).and(dz.rows()).and(am.rows()).par_for_each(|mut d, g, a| {
                    for (out, &src) in a.iter().enumerate() {
                        d[src] += g[out];
                    }
                });
            }
            PoolKind::Average => {
                let k = self.size;
                let inv = T::one() / T::from_usize(k * k).unwrap_or(T::one());
                Zip::from(dy.rows_mut()).and(dz.rows()).par_for_each(|mut d, g| {
                    for out in 0..width {
                        let (c, t) = (out / (ho * wo), out % (ho * wo));
                        for a in 0..k {
                            for b in 0..k {
                                d[self.source(input, c, (t / wo, t % wo), (a, b))] += g[out] * inv;
                            }
                        }
                    }
                });
            }
        }
        Ok(dy)
    }

    /// The R-operator: $R(z)$ from $R(y)$ (`ry`, $N \times C H W$), the
    /// forward pass's `argmax` for max pooling; for average pooling it is
    /// the forward map itself (linear).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] when `ry` or `argmax` do not fit the geometry.
    pub fn tangent<T: Scalar>(
        &self,
        ry: ArrayView2<'_, T>,
        argmax: &Argmax,
        channels: usize,
        input: (usize, usize),
    ) -> Result<Array2<T>> {
        match self.kind {
            PoolKind::Average => Ok(self.forward(ry, channels, input)?.0),
            PoolKind::Max => {
                self.check(ry, channels, input)?;
                let (ho, wo) = self.output(input);
                let (n, width) = (ry.nrows(), channels * ho * wo);
                let am = self.argmax_rows(argmax, n, width)?;
                let mut rz = Array2::<T>::zeros((n, width));
                Zip::from(rz.rows_mut()).and(ry.rows()).and(am.rows()).par_for_each(|mut r, y, a| {
                    for (out, &src) in a.iter().enumerate() {
                        r[out] = y[src];
                    }
                });
                Ok(rz)
            }
        }
    }

    /// The first `n` rows of `argmax`, checked against the output width.
    fn argmax_rows<'a>(&self, argmax: &'a Argmax, n: usize, width: usize) -> Result<ArrayView2<'a, usize>> {
        if argmax.nrows() < n || argmax.ncols() != width {
            return Err(Error::Shape { what: "pooling argmax", expected: (n, width), found: argmax.dim() });
        }
        Ok(argmax.slice_axis(Axis(0), (0..n).into()))
    }

    fn check<T>(&self, y: ArrayView2<'_, T>, channels: usize, input: (usize, usize)) -> Result<()> {
        self.validate(input)?;
        let width = channels * input.0 * input.1;
        if y.ncols() != width {
            return Err(Error::Shape { what: "pooling input", expected: (y.nrows(), width), found: y.dim() });
        }
        Ok(())
    }
}
