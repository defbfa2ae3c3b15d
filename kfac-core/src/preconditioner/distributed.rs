//! [`Preconditioner::update_parts`]: the step's statistics from several
//! parts of the global batch, on one or several ranks.

use rayon::prelude::*;

use super::{NonFinitePolicy, Preconditioner, UpdateReport};
use crate::average::check_decay;
use crate::blocks::CurvatureBlock;
use crate::comm::{Outcome, Reducer, assign_owners, broadcast_state};
use crate::error::{Error, Result};
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, check_finite};

/// Which moving averages of a block a reduction reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Statistics,
    Scalings,
}

impl<T: Real> Preconditioner<T> {
    /// [`update`](Self::update) for a data-parallel step: `parts[j][l]` is
    /// layer `l`'s batch of this rank's part `j` (`reducer.local_parts()`
    /// parts). Every rank calls it with its own parts; afterwards every rank
    /// holds the same blocks, those of the global batch:
    /// 1. the batches' finiteness is agreed: a layer is skipped (or the step
    ///    refused, [`NonFinitePolicy::Error`]) on every rank when any rank's
    ///    batch of it is not finite;
    /// 2. each part is accumulated alone, and the pending sums and example
    ///    counts are combined over all parts of all ranks
    ///    ([`Reducer::sum`]) before the moving averages fold them in, so the
    ///    factors are those of the global batch even with unequal parts;
    /// 3. each layer's refresh is done by its owner ([`assign_owners`], by
    ///    $\dim A^3 + d_\text{out}^3$), which broadcasts the new cache
    ///    ([`broadcast_state`]); every refresh uses the backend's sequential
    ///    decompositions, so the cache does not depend on how many layers a
    ///    rank refreshes;
    /// 4. EKFAC's scalings are combined as the statistics are.
    ///
    /// With one part in all this is [`update`](Self::update) itself.
    ///
    /// # Errors
    ///
    /// Those of [`update`](Self::update); [`Error::Communication`] from the
    /// transport, or when a block cannot be reduced
    /// ([`CurvatureBlock::statistics_mut`] empty) or the structure is
    /// [`Structure::Tridiagonal`](super::Structure::Tridiagonal); a refresh
    /// that fails on its owner fails on every rank.
    pub fn update_parts(
        &mut self,
        la: &dyn LinAlg<T>,
        parts: Option<&[&[LayerBatch<'_, T>]]>,
        reducer: &Reducer<'_>,
    ) -> Result<UpdateReport> {
        if reducer.is_single() {
            return self.update(la, parts.and_then(|p| p.first().copied()));
        }
        if self.chain.is_some() {
            return Err(Error::InvalidConfig {
                what: "structure",
                value: "Tridiagonal".into(),
                why: "the block-tridiagonal chain is not data-parallel; use the block-diagonal structure",
            });
        }
        let k = self.step;
        let (stats_due, scalings_due) = self.due();
        let parts = self.check_parts(parts, stats_due || scalings_due, reducer)?;
        let decay = self.config.decay.at(k);
        check_decay(decay)?;
        let damping = self.config.damping.at(k)?;
        let refresh_due = k.is_multiple_of(self.config.refresh_period);
        let mut take = match parts {
            Some(p) if stats_due || scalings_due => self.agreed_take(p, reducer)?,
            _ => vec![true; self.blocks.len()],
        };
        if let (true, Some(p)) = (stats_due, parts) {
            self.reduce_stage(la, p, &mut take, decay, reducer, Stage::Statistics)?;
        }
        let flags: Vec<bool> = self
            .blocks
            .iter()
            .zip(&take)
            .map(|(b, &took)| (refresh_due || !b.is_ready()) && (took || b.is_ready()))
            .collect();
        let report = UpdateReport { refreshed: flags.iter().any(|&f| f), ..UpdateReport::default() };
        self.refresh_owned(la, &flags, damping, reducer)?;
        for block in self.blocks.iter_mut().filter(|b| b.is_ready()) {
            if block.damping() != Some(damping) {
                block.set_damping(la, damping)?;
            }
        }
        if let (true, Some(p)) = (scalings_due, parts) {
            self.reduce_stage(la, p, &mut take, decay, reducer, Stage::Scalings)?;
        }
        Ok(self.finish_update(&take, report))
    }

    fn check_parts<'p, 'b>(
        &self,
        parts: Option<&'p [&'p [LayerBatch<'b, T>]]>,
        needed: bool,
        reducer: &Reducer<'_>,
    ) -> Result<Option<&'p [&'p [LayerBatch<'b, T>]]>> {
        match parts {
            Some(p) => {
                let n = self.num_layers();
                if p.len() != reducer.local_parts() || p.iter().any(|b| b.len() != n) {
                    return Err(Error::ShapeMismatch {
                        block: "preconditioner".into(),
                        what: "parts x batches (one per layer)",
                        expected: (reducer.local_parts(), n),
                        found: (p.len(), p.first().map_or(0, |b| b.len())),
                    });
                }
                Ok(Some(p))
            }
            None if needed => Err(Error::NotReady {
                block: "preconditioner".into(),
                what: "this step updates statistics: batches are needed",
            }),
            None => Ok(None),
        }
    }

    /// Which layers take the step's statistics, the same on every rank: a
    /// layer none of whose batches (on any rank) holds a non-finite value.
    fn agreed_take(&self, parts: &[&[LayerBatch<'_, T>]], reducer: &Reducer<'_>) -> Result<Vec<bool>> {
        let mut bad = vec![0.0f64; self.blocks.len()];
        for part in parts {
            for (l, (block, batch)) in self.blocks.iter().zip(part.iter()).enumerate() {
                let name = block.name();
                match check_finite(name, "inputs", batch.inputs).and(check_finite(name, "grads", batch.grads)) {
                    Ok(()) => batch.validate(name, block.shape())?,
                    Err(_) => bad[l] += 1.0,
                }
            }
        }
        reducer.sum_counts(&mut bad)?;
        if let Some(l) = bad.iter().position(|&b| b > 0.0)
            && self.config.on_non_finite == NonFinitePolicy::Error
        {
            let block = self.blocks[l].name().to_string();
            return Err(Error::NonFinite { block, what: "a batch (on some rank)" });
        }
        Ok(bad.iter().map(|&b| b == 0.0).collect())
    }

    /// Accumulates each part alone, combines the pending sums and counts of
    /// every part of every rank, and commits them.
    fn reduce_stage(
        &mut self,
        la: &dyn LinAlg<T>,
        parts: &[&[LayerBatch<'_, T>]],
        take: &mut [bool],
        decay: f64,
        reducer: &Reducer<'_>,
        stage: Stage,
    ) -> Result<()> {
        let selected: Vec<usize> = (0..self.blocks.len())
            .filter(|&l| {
                take[l] && (stage == Stage::Statistics || (self.blocks[l].has_scalings() && self.blocks[l].is_ready()))
            })
            .collect();
        let mut sums = Vec::with_capacity(parts.len());
        let mut counts = Vec::new();
        // The packed length, known before the first part: one allocation
        // per part instead of a chain of growths (measured: the growths'
        // fresh pages were a fifth of a data-parallel step's time).
        let len: usize = selected
            .iter()
            .map(|&l| averages(self.blocks[l].as_mut(), stage).iter().map(|a| a.pending().len()).sum::<usize>())
            .sum();
        for part in parts {
            let mut packed = Vec::with_capacity(len);
            for &l in &selected {
                let block = &mut self.blocks[l];
                match stage {
                    Stage::Statistics => block.accumulate(la, &part[l])?,
                    Stage::Scalings => block.accumulate_scalings(la, &part[l])?,
                }
                let name = block.name().to_string();
                let averages = averages(block.as_mut(), stage);
                if averages.is_empty() {
                    return Err(Error::Communication { what: format!("{name}: a block without reducible statistics") });
                }
                for avg in averages {
                    match avg.pending().as_slice() {
                        Some(flat) => packed.extend_from_slice(flat),
                        None => packed.extend(avg.pending().iter().copied()),
                    }
                    counts.push(avg.pending_count());
                    avg.discard_pending();
                }
            }
            sums.push(packed);
        }
        let sum = reducer.sum(sums)?;
        // Each part's counts, added over the parts (whole numbers: exact),
        // then over the ranks.
        let per_part = counts.len() / parts.len().max(1);
        let mut total: Vec<f64> = (0..per_part).map(|i| counts.iter().skip(i).step_by(per_part).sum()).collect();
        reducer.sum_counts(&mut total)?;
        let (mut at, mut c) = (0, 0);
        for &l in &selected {
            for avg in averages(self.blocks[l].as_mut(), stage) {
                let mut pending = avg.pending_mut();
                let n = pending.len();
                pending.iter_mut().zip(&sum[at..at + n]).for_each(|(p, &s)| *p = s);
                avg.set_pending_count(total[c]);
                at += n;
                c += 1;
            }
        }
        let policy = self.config.on_non_finite;
        for &l in &selected {
            let block = &mut self.blocks[l];
            let result = match stage {
                Stage::Statistics => block.commit(decay),
                Stage::Scalings => block.commit_scalings(decay),
            };
            match (result, policy) {
                (Ok(()), _) => {}
                (Err(Error::NonFinite { .. }), NonFinitePolicy::Skip) => take[l] = false,
                (Err(Error::NonFinite { what, .. }), NonFinitePolicy::Error) => {
                    return Err(Error::NonFinite { block: block.name().to_string(), what });
                }
                (Err(e), _) => return Err(e),
            }
        }
        Ok(())
    }

    /// Refreshes the flagged blocks this rank owns, then broadcasts each
    /// flagged block's new state from its owner, in layer order.
    fn refresh_owned(
        &mut self,
        la: &dyn LinAlg<T>,
        flags: &[bool],
        damping: crate::Damping,
        reducer: &Reducer<'_>,
    ) -> Result<()> {
        let comm = reducer.comm();
        let costs: Vec<f64> = self
            .blocks
            .iter()
            .map(|b| {
                let s = b.shape();
                (s.a_dim() as f64).powi(3) + (s.b_dim() as f64).powi(3)
            })
            .collect();
        let owners = assign_owners(&costs, comm.size());
        let rank = comm.rank();
        let seq = la.concurrent_decompositions().unwrap_or(la);
        let mine: Vec<bool> = flags.iter().zip(&owners).map(|(&f, &o)| f && o == rank).collect();
        let results: Vec<Result<()>> = self
            .blocks
            .par_iter_mut()
            .zip(mine.par_iter())
            .map(|(block, &m)| if m { block.refresh(seq, damping) } else { Ok(()) })
            .collect();
        let mut results: Vec<Option<Result<()>>> = results.into_iter().map(Some).collect();
        for l in (0..self.blocks.len()).filter(|&l| flags[l]) {
            let root = owners[l];
            let result = results[l].take().unwrap_or(Ok(()));
            if comm.size() == 1 {
                result?;
                continue;
            }
            let own = self.blocks[l].state();
            let outcome: Option<Outcome<T>> = (rank == root).then(|| match &result {
                Err(e) => Err(e.to_string()),
                Ok(()) => Ok(own.clone()),
            });
            let received = broadcast_state(comm, root, outcome, &own);
            if rank == root {
                // The owner keeps its block (and its own error, as it was).
                result?;
                continue;
            }
            let restored = self.blocks[l].restored(&received?)?;
            self.blocks[l] = restored;
        }
        Ok(())
    }
}

fn averages<T: Real>(block: &mut dyn CurvatureBlock<T>, stage: Stage) -> Vec<&mut crate::MovingAverage<T>> {
    match stage {
        Stage::Statistics => block.statistics_mut(),
        Stage::Scalings => block.scalings_mut(),
    }
}
