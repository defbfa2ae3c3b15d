//! Data-parallel training: every rank of a run computes its parts of each
//! global batch, and kfac-core's
//! [`KfacOptimizer::step_distributed`](kfac::KfacOptimizer::step_distributed)
//! combines them (see the guide's page on distributed training for the
//! design and its communication volume).
//!
//! # The parts of a batch
//! Every rank draws the same global batch of $B$ examples (the data order
//! is the seed's, as in one process). [`DataParallel::parts`] cuts it into
//! $S$ fixed parts: part $p$ holds rows
//! $\lfloor pB/S \rfloor .. \lfloor (p+1)B/S \rfloor$ of the batch, so their
//! sizes differ by at most one. With $P$ ranks ($P$ must divide $S$), rank
//! $r$ reads and computes parts $rS/P .. (r+1)S/P$ only. A part's loss and
//! gradient are the means over its examples; kfac-core weighs them by
//! $n_p/B$, so the step is that of the global batch.
//!
//! # Sampled targets and statistics
//! The curvature statistics of a part come from its first
//! $\lceil \tau n_p \rceil$ examples ([`CurvatureConfig::statistics_rows`](kfac::optim::CurvatureConfig::statistics_rows)).
//! The true Fisher's targets of part $p$ at step $k$ are drawn from their
//! own generator, [`part_rng`]`(seed, k, p)`: what a part computes does not
//! depend on the rank that computes it. (A one-process run without
//! `data_parallel` draws the targets of the whole batch from one stream, so
//! it is not the same run as `parts = 1`; with the empirical Fisher, which
//! draws nothing, the two are identical, bit for bit.)
//!
//! # The same result whatever the number of ranks
//! With [`Reduction::Ordered`] every part's sums are gathered and added in
//! the order of the part's index, so a run with $S$ parts gives the same
//! losses and weights, bit for bit, on 1, 2, … or $S$ ranks (any $P$ that
//! divides $S$), and a checkpoint saved by $P$ ranks resumes on any other
//! such number. With [`Reduction::Sum`] (the default: one all-reduce per
//! quantity) the last bits may change with $P$.
//!
//! # Ranks
//! Only rank 0 evaluates the test loss, writes checkpoints and returns the
//! [`Metrics`](crate::train::Metrics) ([`crate::train::train_on`]). Every
//! rank must make the same calls: an error on one rank leaves the others
//! waiting in their next collective, so a program must end the whole job on
//! error (`MpiCommunicator::abort` in kfac-mpi, as the `kfac` command does).

use std::ops::Range;

use kfac::LinAlg;
use kfac::comm::{Communicator, Reducer, Reduction};
use kfac::optim::StepReport;

use crate::backend::Scalar;
use crate::error::{Error, Result};
use crate::mlp::Mlp;
use crate::optim::{Optimizer, Part};
use crate::rng::Rng;
use crate::train::Task;

/// How a run divides its batches (a field of
/// [`TrainConfig`](crate::train::TrainConfig)): every rank must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataParallel {
    /// The number $S$ of fixed parts of every global batch (at least 1, at
    /// most the batch size, a multiple of the number of ranks).
    pub parts: usize,
    /// How the parts' sums are combined.
    #[serde(default)]
    pub reduction: Reduction,
}

impl DataParallel {
    /// `parts` parts, combined by `reduction`.
    pub fn new(parts: usize, reduction: Reduction) -> Self {
        Self { parts, reduction }
    }

    /// The parts of rank `rank` of `ranks`, for batches of `batch` examples.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `parts` is 0, exceeds the batch size, or is
    /// not a multiple of `ranks`. Every rank reaches the same verdict.
    pub fn local_parts(&self, batch: usize, rank: usize, ranks: usize) -> Result<Range<usize>> {
        let bad = |why: String| Error::Config { what: "parts", value: self.parts.to_string(), why };
        if self.parts == 0 || self.parts > batch {
            return Err(bad(format!("must lie in 1..={batch} (the batch size)")));
        }
        if ranks == 0 || !self.parts.is_multiple_of(ranks) {
            return Err(bad(format!("must be a multiple of the number of ranks, {ranks}")));
        }
        let per_rank = self.parts / ranks;
        Ok(rank * per_rank..(rank + 1) * per_rank)
    }

    /// The rows of the global batch that part `part` holds.
    pub fn rows(&self, batch: usize, part: usize) -> Range<usize> {
        part * batch / self.parts..(part + 1) * batch / self.parts
    }
}

/// The generator of the sampled targets of part `part` at step `step`
/// (independent of the rank that computes the part).
pub fn part_rng(seed: u64, step: usize, part: usize) -> Rng {
    let step = (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Rng::stream(seed ^ 0x0D15_7A1E ^ step, part as u64)
}

/// The number of ranks of the MPI job that started this process, read
/// from the launcher's environment (`OMPI_COMM_WORLD_SIZE` of Open MPI's
/// `mpirun`, `PMI_SIZE` of MPICH's and Slurm's); `None` outside such a job.
pub fn launcher_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// What a rank needs to take data-parallel steps.
pub(crate) struct Parallel<'c> {
    pub config: DataParallel,
    pub reducer: Reducer<'c>,
    pub parts: Range<usize>,
    pub seed: u64,
}

impl<'c> Parallel<'c> {
    /// The parts of this rank of `comm`, for batches of `batch` examples.
    pub fn new(config: DataParallel, comm: &'c dyn Communicator, batch: usize, seed: u64) -> Result<Self> {
        let parts = config.local_parts(batch, comm.rank(), comm.size())?;
        let reducer = Reducer::new(comm, config.reduction, parts.len())?;
        Ok(Self { config, reducer, parts, seed })
    }

    /// Step `step` on this rank's parts of the global batch `idx` (indices
    /// into the training set).
    pub fn step<T: Scalar>(
        &self,
        la: &dyn LinAlg<T>,
        opt: &mut Optimizer<T>,
        mlp: &mut Mlp<T>,
        task: &Task,
        idx: &[usize],
        step: usize,
    ) -> Result<StepReport> {
        let data: Vec<_> =
            self.parts.clone().map(|p| task.batch::<T>(&task.train, &idx[self.config.rows(idx.len(), p)])).collect();
        let mut parts: Vec<Part<'_, T>> = data
            .iter()
            .zip(self.parts.clone())
            .map(|((x, t), p)| Part { x: x.view(), t: t.view(), rng: part_rng(self.seed, step, p) })
            .collect();
        opt.step_parts(la, mlp, &mut parts, task.loss, &self.reducer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_batch_once_and_differ_by_at_most_one() {
        for (batch, parts) in [(10, 3), (1000, 4), (7, 7), (5, 1)] {
            let dp = DataParallel::new(parts, Reduction::Ordered);
            let rows: Vec<Range<usize>> = (0..parts).map(|p| dp.rows(batch, p)).collect();
            assert_eq!(rows[0].start, 0);
            assert_eq!(rows[parts - 1].end, batch);
            assert!(rows.windows(2).all(|w| w[0].end == w[1].start));
            let sizes: Vec<usize> = rows.iter().map(|r| r.len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        }
    }

    #[test]
    fn ranks_hold_consecutive_parts() {
        let dp = DataParallel::new(4, Reduction::Sum);
        assert_eq!(dp.local_parts(100, 0, 2).unwrap(), 0..2);
        assert_eq!(dp.local_parts(100, 1, 2).unwrap(), 2..4);
        assert_eq!(dp.local_parts(100, 0, 1).unwrap(), 0..4);
    }

    #[test]
    fn bad_parts_are_refused_with_their_reason() {
        let err = |s, batch, ranks| DataParallel::new(s, Reduction::Sum).local_parts(batch, 0, ranks).unwrap_err();
        assert!(err(0, 10, 1).to_string().contains("1..=10"));
        assert!(err(11, 10, 1).to_string().contains("1..=10"));
        assert!(err(3, 10, 2).to_string().contains("multiple of the number of ranks, 2"));
    }

    #[test]
    fn part_generators_differ_by_step_and_part() {
        let draw = |step, part| part_rng(0, step, part).next_u64();
        assert_ne!(draw(1, 0), draw(2, 0));
        assert_ne!(draw(1, 0), draw(1, 1));
        assert_eq!(draw(3, 2), draw(3, 2));
    }
}
