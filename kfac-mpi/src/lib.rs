//! Data-parallel K-FAC and EKFAC over MPI: kfac-core's
//! [`Communicator`] on rsmpi.
//!
//! [`MpiCommunicator`] owns MPI's [`Universe`]: MPI is initialised when it
//! is made and finalised when it is dropped, once per process (MPI cannot be
//! restarted). The threading level is `Funneled`: rayon's threads may exist,
//! and every MPI call comes from the thread that made the communicator.
//!
//! Everything the optimizer reduces goes through four collectives of
//! `MPI_COMM_WORLD`: `MPI_Allreduce` with `MPI_SUM` (through a copy of the
//! buffer: rsmpi has no `MPI_IN_PLACE`), `MPI_Bcast`, `MPI_Allgather` and
//! `MPI_Barrier`. MPI's default error handler aborts the whole job on a
//! failed transfer, so these never return an error; a rank that dies makes
//! `mpirun` stop the others (see the guide's page on distributed training).
//!
//! ```no_run
//! use kfac_core::comm::{Communicator, Reducer, Reduction};
//! let comm = kfac_mpi::MpiCommunicator::new()?;
//! let reducer = Reducer::new(&comm, Reduction::Sum, 1)?;
//! println!("rank {} of {}", comm.rank(), comm.size());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use kfac_core::comm::{Communicator, check_gather_len, check_root};
use kfac_core::{Error, Result};
use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives, Root};

/// Why MPI could not be started.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// MPI is already initialised in this process (or was, and was finalised).
    #[error("MPI is already initialised in this process (one MPI_Init per process)")]
    AlreadyInitialized,
    /// The MPI library cannot give the threading level we need.
    #[error("the MPI library provides threading level {0:?}, Funneled is needed (rayon threads)")]
    Threading(Threading),
}

/// kfac-core's [`Communicator`] over `MPI_COMM_WORLD`; see the [crate docs](crate).
pub struct MpiCommunicator {
    // Declared before the universe: dropped first.
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    universe: Universe,
}

impl std::fmt::Debug for MpiCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCommunicator").field("rank", &self.rank).field("size", &self.size).finish()
    }
}

impl MpiCommunicator {
    /// Initialises MPI (`MPI_Init_thread` with `MPI_THREAD_FUNNELED`) and
    /// takes the world communicator. Run without `mpirun`, the process is a
    /// world of its own (rank 0 of 1).
    ///
    /// # Errors
    ///
    /// [`InitError`] when MPI is already initialised or cannot give the
    /// `Funneled` level.
    pub fn new() -> std::result::Result<Self, InitError> {
        let (universe, provided) =
            mpi::initialize_with_threading(Threading::Funneled).ok_or(InitError::AlreadyInitialized)?;
        if matches!(provided, Threading::Single) {
            return Err(InitError::Threading(provided));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Self { world, rank, size, universe })
    }

    /// The world communicator, for calls this crate does not wrap.
    pub fn world(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// The MPI universe (finalised when the communicator is dropped).
    pub fn universe(&self) -> &Universe {
        &self.universe
    }

    /// Ends every rank of the job at once (`MPI_Abort`) with exit code
    /// `code`: for an error on one rank, which would otherwise leave the
    /// others waiting in a collective.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn all_reduce<T: Equivalence + Copy>(&self, buf: &mut [T]) -> Result<()> {
        check_count(buf.len())?;
        if self.size > 1 && !buf.is_empty() {
            let send = buf.to_vec();
            self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
        Ok(())
    }

    fn broadcast<T: Equivalence>(&self, buf: &mut [T], root: usize) -> Result<()> {
        check_root(root, self.size)?;
        check_count(buf.len())?;
        if self.size > 1 && !buf.is_empty() {
            self.world.process_at_rank(root as i32).broadcast_into(buf);
        }
        Ok(())
    }

    fn all_gather<T: Equivalence + Copy>(&self, local: &[T], out: &mut [T]) -> Result<()> {
        check_gather_len(local.len(), self.size, out.len())?;
        check_count(out.len())?;
        if self.size == 1 {
            out.copy_from_slice(local);
        } else if !local.is_empty() {
            self.world.all_gather_into(local, out);
        }
        Ok(())
    }
}

/// MPI counts are `int`s.
fn check_count(n: usize) -> Result<()> {
    if i32::try_from(n).is_ok() {
        Ok(())
    } else {
        Err(Error::Communication { what: format!("a buffer of {n} values exceeds MPI's int count") })
    }
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce(buf)
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.all_reduce(buf)
    }

    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.broadcast(buf, root)
    }

    fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()> {
        self.broadcast(buf, root)
    }

    fn all_gather_f32(&self, local: &[f32], out: &mut [f32]) -> Result<()> {
        self.all_gather(local, out)
    }

    fn all_gather_f64(&self, local: &[f64], out: &mut [f64]) -> Result<()> {
        self.all_gather(local, out)
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
}
