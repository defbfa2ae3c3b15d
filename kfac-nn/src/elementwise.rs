//! The MLP's elementwise passes, in parallel over fixed chunks large enough
//! that rayon's hand-offs do not show. Each element is computed alone, so
//! the results do not depend on the chunking or the thread count.

use kfac::Real;
use ndarray::{ArrayView1, ArrayView2, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;

use crate::mlp::Activation;

/// Elements per parallel task (2¹⁶: tens of microseconds of work).
const CHUNK: usize = 1 << 16;

/// $\delta \leftarrow \delta \odot \phi'(s)$, with $\phi'$ expressed through the
/// layer's output $y = \phi(s)$ ([`Activation::derivative_from_output`]): the
/// backward pass through an activation. The activation is chosen once per
/// chunk, not per element, so that the loops vectorise.
pub(crate) fn scale_by_derivative<T: Real>(act: Activation, mut delta: ArrayViewMut2<'_, T>, y: ArrayView2<'_, T>) {
    if act == Activation::Identity {
        return;
    }
    if let (Some(d), Some(ys)) = (delta.as_slice_mut(), y.as_slice()) {
        d.par_chunks_mut(CHUNK).zip(ys.par_chunks(CHUNK)).for_each(|(d, ys)| match act {
            Activation::Tanh => scale(d, ys, |y| Activation::Tanh.derivative_from_output(y)),
            Activation::Relu => scale(d, ys, |y| Activation::Relu.derivative_from_output(y)),
            Activation::Sigmoid => scale(d, ys, |y| Activation::Sigmoid.derivative_from_output(y)),
            Activation::Identity => {}
        });
        return;
    }
    Zip::from(&mut delta).and(&y).par_for_each(|d, &y| *d *= act.derivative_from_output(y));
}

/// `d[i] *= f(y[i])`.
#[inline(always)]
fn scale<T: Real>(d: &mut [T], ys: &[T], f: impl Fn(T) -> T) {
    for (d, &y) in d.iter_mut().zip(ys) {
        *d *= f(y);
    }
}

/// Every row of `z` set to `b` (the bias, before the product adds $a W^\top$),
/// rows in parallel.
pub(crate) fn broadcast_rows<T: Real>(mut z: ArrayViewMut2<'_, T>, b: ArrayView1<'_, T>) {
    let rows = (CHUNK / z.ncols().max(1)).max(1);
    z.axis_chunks_iter_mut(Axis(0), rows).into_par_iter().for_each(|mut zc| zc.assign(&b.insert_axis(Axis(0))));
}
