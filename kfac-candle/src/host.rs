//! Reading candle tensors as ndarray views: without a copy when the tensor
//! is a contiguous CPU tensor of the right dtype, with one otherwise.

use candle_core::{Device, Storage, StorageRef, Tensor};
use ndarray::{Array2, ArrayView2, ArrayView4, Ix2, Ix4};

use crate::error::{Error, Result};
use crate::scalar::Scalar;

/// A tensor's elements on the host, in row-major order. Holds candle's read
/// lock on the storage while it lives (zero-copy), or a copy.
pub struct Host<'t, T> {
    data: Data<'t, T>,
    dims: Vec<usize>,
}

enum Data<'t, T> {
    Borrowed { guard: StorageRef<'t>, start: usize, end: usize, _t: std::marker::PhantomData<T> },
    Owned(Vec<T>),
}

impl<T> std::fmt::Debug for Host<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.data {
            Data::Borrowed { .. } => "borrowed",
            Data::Owned(_) => "copied",
        };
        f.debug_struct("Host").field("dims", &self.dims).field("data", &kind).finish()
    }
}

impl<'t, T: Scalar> Host<'t, T> {
    /// The elements of `t`: borrowed from candle's storage when `t` is a
    /// contiguous CPU tensor of dtype `T`, else converted and copied
    /// (another dtype, a strided view, another device).
    ///
    /// # Errors
    ///
    /// candle's errors from the conversion.
    pub fn new(t: &'t Tensor) -> Result<Self> {
        let dims = t.dims().to_vec();
        if t.dtype() == T::CANDLE {
            let (guard, layout) = t.storage_and_layout();
            if let (Storage::Cpu(cpu), Some((start, end))) = (&*guard, layout.contiguous_offsets()) {
                // Checks the dtype once; `slice` reads it again without failing.
                cpu.as_slice::<T>()?;
                let _t = std::marker::PhantomData;
                return Ok(Self { data: Data::Borrowed { guard, start, end, _t }, dims });
            }
        }
        let v = t.to_dtype(T::CANDLE)?.flatten_all()?.to_vec1::<T>()?;
        Ok(Self { data: Data::Owned(v), dims })
    }

    /// Whether the elements are read in place (no copy).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.data, Data::Borrowed { .. })
    }

    /// The tensor's dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The elements, row-major.
    pub fn slice(&self) -> &[T] {
        match &self.data {
            Data::Borrowed { guard, start, end, .. } => match &**guard {
                Storage::Cpu(cpu) => cpu.as_slice::<T>().map(|s| &s[*start..*end]).unwrap_or(&[]),
                _ => &[],
            },
            Data::Owned(v) => v,
        }
    }

    /// The elements as a `rows × cols` matrix (row-major).
    ///
    /// # Errors
    ///
    /// [`Error::Layer`] when `rows · cols` is not the number of elements.
    pub fn view2(&self, rows: usize, cols: usize) -> Result<ArrayView2<'_, T>> {
        ArrayView2::from_shape(Ix2(rows, cols), self.slice()).map_err(|e| shape_error(&self.dims, e))
    }

    /// The elements as an `N × C × H × W` array.
    ///
    /// # Errors
    ///
    /// [`Error::Layer`] when the tensor is not 4-D.
    pub fn view4(&self) -> Result<ArrayView4<'_, T>> {
        let &[n, c, h, w] = &self.dims[..] else {
            return Err(Error::Layer { layer: 0, why: format!("expected a 4-D tensor, found {:?}", self.dims) });
        };
        ArrayView4::from_shape(Ix4(n, c, h, w), self.slice()).map_err(|e| shape_error(&self.dims, e))
    }
}

fn shape_error(dims: &[usize], e: ndarray::ShapeError) -> Error {
    Error::Layer { layer: 0, why: format!("tensor of shape {dims:?}: {e}") }
}

/// A candle tensor of shape `dims` holding `a` (in row-major order).
///
/// # Errors
///
/// candle's errors (a shape that does not hold the elements).
pub fn to_tensor<T: Scalar>(a: ArrayView2<'_, T>, dims: &[usize], device: &Device) -> Result<Tensor> {
    let t = match a.as_slice() {
        Some(s) => Tensor::from_slice(s, dims, device)?,
        None => Tensor::from_vec(a.iter().copied().collect::<Vec<_>>(), dims, device)?,
    };
    Ok(t)
}

/// A copy of a 2-D tensor as an ndarray matrix.
///
/// # Errors
///
/// candle's errors; [`Error::Layer`] when `t` is not 2-D.
pub fn to_array2<T: Scalar>(t: &Tensor) -> Result<Array2<T>> {
    let (r, c) = t.dims2()?;
    Ok(Host::<T>::new(t)?.view2(r, c)?.to_owned())
}
