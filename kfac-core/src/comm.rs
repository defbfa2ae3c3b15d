//! Communication between the processes of a data-parallel run.
//!
//! In data-parallel K-FAC every process (a *rank*) holds the same network
//! and the same optimizer, and computes the gradient and the layers'
//! statistics on its own part of each global batch. The optimizer then
//! combines what the ranks computed through a [`Communicator`], so that
//! every rank takes the same step: the one of the global batch.
//!
//! [`Communicator`] is the transport: rank, size, an in-place sum
//! all-reduce, a broadcast, an all-gather and a barrier of `f32` and `f64`
//! buffers. [`SingleProcess`] is the transport of one process, which does
//! nothing; the `kfac-mpi` crate implements it over MPI. kfac-core itself
//! never needs MPI.
//!
//! # What a part is, and how parts are combined
//! A rank's contribution is one or more *parts* (shards of the global
//! batch), each with its number of examples $n_p$. A mean over the global
//! batch of $N = \sum_p n_p$ examples (the loss, the gradient, the quadratic
//! forms of the adaptive rule) is combined as
//! $$ \bar v = \sum_p \frac{n_p}{N}\, \bar v_p ,$$
//! and a sum (the factors' pending sums, their example counts) as
//! $\sum_p v_p$. So the result is that of the global batch even when the
//! ranks hold unequal shares. Two orders of summation ([`Reduction`]):
//! - [`Reduction::Sum`]: each rank sums its parts, then one sum all-reduce
//!   (the transport chooses the order; the result may differ in the last
//!   bits with the number of ranks);
//! - [`Reduction::Ordered`]: every part is gathered on every rank and the
//!   parts are summed in the order of their global index, one after the
//!   other. With fixed shards of the global batch, computed alike wherever
//!   they run, the result does not depend on the number of ranks, bit for
//!   bit. It costs an all-gather of $S\,n$ numbers for $S$ parts of $n$
//!   numbers, instead of an all-reduce of $n$.
//!
//! With a single part in all (one process, one shard) every value is taken
//! as it is: no product by $n_p/N = 1$, no sum.

mod reduce;
mod state;

pub use reduce::Reducer;
pub use state::{Outcome, UNCHANGED_BY_REFRESH, assign_owners, broadcast_state};

use crate::error::{Error, Result};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The transport of a data-parallel run; see the [module docs](self).
///
/// Every method is collective: all ranks call it, in the same order, with
/// buffers of the same length. Implementations report a failed transfer as
/// [`Error::Communication`].
pub trait Communicator {
    /// This process's rank, in `0..size()`.
    fn rank(&self) -> usize;

    /// The number of processes.
    fn size(&self) -> usize;

    /// Replaces `buf` on every rank by the element-wise sum over the ranks.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;

    /// Replaces `buf` on every rank by the element-wise sum over the ranks.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;

    /// Copies `buf` of rank `root` into `buf` of every rank.
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()>;

    /// Copies `buf` of rank `root` into `buf` of every rank.
    fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()>;

    /// Writes `local` of rank $r$ into `out[r n..(r + 1) n]` of every rank
    /// ($n$ = `local.len()`, `out.len()` = $n \cdot$ `size()`).
    ///
    /// The default is a sum all-reduce of `out` with every other entry
    /// $-0$: $x + (-0) = x$ for every $x$ (including $\pm 0$), in any order,
    /// so the gathered values are exact whatever order the transport sums
    /// in. A transport with a native all-gather should use it.
    fn all_gather_f32(&self, local: &[f32], out: &mut [f32]) -> Result<()> {
        padded_gather(self, local, out, Self::all_reduce_sum_f32)
    }

    /// As [`all_gather_f32`](Self::all_gather_f32), for `f64`.
    fn all_gather_f64(&self, local: &[f64], out: &mut [f64]) -> Result<()> {
        padded_gather(self, local, out, Self::all_reduce_sum_f64)
    }

    /// Waits until every rank has called it.
    fn barrier(&self) -> Result<()>;
}

fn padded_gather<C: Communicator + ?Sized, T: Copy + std::ops::Neg<Output = T> + Default>(
    comm: &C,
    local: &[T],
    out: &mut [T],
    reduce: fn(&C, &mut [T]) -> Result<()>,
) -> Result<()> {
    let n = local.len();
    check_gather_len(n, comm.size(), out.len())?;
    // -0 is the identity of IEEE addition; `T::default()` is +0.
    out.fill(-T::default());
    out[comm.rank() * n..(comm.rank() + 1) * n].copy_from_slice(local);
    reduce(comm, out)
}

/// Checks the buffer of an all-gather ([`Error::Communication`] otherwise).
pub fn check_gather_len(local: usize, size: usize, out: usize) -> Result<()> {
    if local.checked_mul(size) == Some(out) {
        Ok(())
    } else {
        Err(Error::Communication { what: format!("all-gather of {local} values from {size} ranks into {out}") })
    }
}

/// The communicator of a single process: rank 0 of 1. Every collective
/// leaves its buffers as they are (an all-gather copies `local` to `out`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn broadcast_f32(&self, _buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, 1)
    }

    fn broadcast_f64(&self, _buf: &mut [f64], root: usize) -> Result<()> {
        check_root(root, 1)
    }

    fn all_gather_f32(&self, local: &[f32], out: &mut [f32]) -> Result<()> {
        check_gather_len(local.len(), 1, out.len())?;
        out.copy_from_slice(local);
        Ok(())
    }

    fn all_gather_f64(&self, local: &[f64], out: &mut [f64]) -> Result<()> {
        check_gather_len(local.len(), 1, out.len())?;
        out.copy_from_slice(local);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Checks a broadcast's root ([`Error::Communication`] otherwise).
pub fn check_root(root: usize, size: usize) -> Result<()> {
    if root < size { Ok(()) } else { Err(Error::Communication { what: format!("root {root} of {size} ranks") }) }
}

/// Checks that every rank passes the same `bytes` (e.g. its serialised
/// configuration): a 64-bit FNV-1a hash of them, gathered from every rank.
///
/// # Errors
///
/// [`Error::Communication`] naming `what` and the first rank that differs
/// from rank 0 (on every rank), or a transport failure.
pub fn check_agreement(comm: &dyn Communicator, what: &str, bytes: &[u8]) -> Result<()> {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    // Four 16-bit pieces: exact in an f64.
    let local: Vec<f64> = (0..4).map(|i| ((hash >> (16 * i)) & 0xffff) as f64).collect();
    let mut all = vec![0.0; 4 * comm.size()];
    comm.all_gather_f64(&local, &mut all)?;
    match all.chunks_exact(4).position(|c| c != &all[..4]) {
        None => Ok(()),
        Some(r) => Err(Error::Communication { what: format!("the ranks' {what} differ (rank {r} from rank 0)") }),
    }
}

/// The element types a [`Communicator`] moves: `f32` and `f64` (sealed).
/// It routes a generic buffer to the communicator's method of its type.
pub trait Element: sealed::Sealed + Copy + Sized {
    /// [`Communicator::all_reduce_sum_f32`] or `_f64`.
    fn all_reduce_sum(comm: &dyn Communicator, buf: &mut [Self]) -> Result<()>;
    /// [`Communicator::broadcast_f32`] or `_f64`.
    fn broadcast(comm: &dyn Communicator, buf: &mut [Self], root: usize) -> Result<()>;
    /// [`Communicator::all_gather_f32`] or `_f64`.
    fn all_gather(comm: &dyn Communicator, local: &[Self], out: &mut [Self]) -> Result<()>;
}

impl Element for f32 {
    fn all_reduce_sum(comm: &dyn Communicator, buf: &mut [Self]) -> Result<()> {
        comm.all_reduce_sum_f32(buf)
    }
    fn broadcast(comm: &dyn Communicator, buf: &mut [Self], root: usize) -> Result<()> {
        comm.broadcast_f32(buf, root)
    }
    fn all_gather(comm: &dyn Communicator, local: &[Self], out: &mut [Self]) -> Result<()> {
        comm.all_gather_f32(local, out)
    }
}

impl Element for f64 {
    fn all_reduce_sum(comm: &dyn Communicator, buf: &mut [Self]) -> Result<()> {
        comm.all_reduce_sum_f64(buf)
    }
    fn broadcast(comm: &dyn Communicator, buf: &mut [Self], root: usize) -> Result<()> {
        comm.broadcast_f64(buf, root)
    }
    fn all_gather(comm: &dyn Communicator, local: &[Self], out: &mut [Self]) -> Result<()> {
        comm.all_gather_f64(local, out)
    }
}

/// The order in which the parts of a data-parallel step are summed; see
/// the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum Reduction {
    /// Local sums, then one sum all-reduce: the cheapest; the last bits may
    /// depend on the number of ranks. The default.
    #[default]
    Sum,
    /// Every part gathered, then summed in the order of its global index:
    /// bit for bit independent of the number of ranks.
    Ordered,
}
