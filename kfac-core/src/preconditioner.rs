//! A stack of curvature blocks with the step schedule of K-FAC.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::average::check_decay;
use crate::blocks::{BlockKind, CurvatureBlock};
use crate::damping::{DampingKind, DampingSchedule, Schedule};
use crate::error::{Error, Result};
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape};

/// The configuration of a [`Preconditioner`]. Every field has a documented
/// default ([`PreconditionerConfig::default`]).
#[derive(Debug, Clone)]
pub struct PreconditionerConfig {
    /// The block of every layer. Default: [`BlockKind::Ekfac`].
    pub block: BlockKind,
    /// The damping. Default: Tikhonov with $\lambda = 10^{-3}$.
    pub damping: DampingSchedule,
    /// Decay $\varepsilon$ of the running statistics (see
    /// [`MovingAverage`](crate::MovingAverage)). Default 0.95.
    pub decay: Schedule,
    /// Update the factor statistics every this many steps. Default 1.
    pub stats_period: usize,
    /// Rebuild the cache (eigenbases, inverses) every this many steps
    /// ($T$ of George et al.; $T_3$ of Martens & Grosse). Default 20.
    pub refresh_period: usize,
    /// Update EKFAC's scalings every this many steps. Default 1.
    pub scalings_period: usize,
}

impl Default for PreconditionerConfig {
    fn default() -> Self {
        Self {
            block: BlockKind::Ekfac,
            damping: DampingSchedule { kind: DampingKind::Tikhonov, lambda: Schedule::Constant(1e-3) },
            decay: Schedule::Constant(0.95),
            stats_period: 1,
            refresh_period: 20,
            scalings_period: 1,
        }
    }
}

impl PreconditionerConfig {
    /// Checks the periods (at least 1).
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("stats_period", self.stats_period),
            ("refresh_period", self.refresh_period),
            ("scalings_period", self.scalings_period),
        ] {
            if v == 0 {
                return Err(Error::InvalidConfig {
                    what,
                    value: "0".into(),
                    why: "periods are counted in steps and must be at least 1",
                });
            }
        }
        Ok(())
    }
}

/// Curvature blocks for a stack of layers, and the bookkeeping of a step.
///
/// Each call to [`Preconditioner::update`] is one step $k = 0, 1, \dots$:
/// 1. if $k$ is a multiple of `stats_period`, every block's statistics are
///    updated with decay `decay(k)`;
/// 2. if $k$ is a multiple of `refresh_period` (or a block has no cache yet),
///    the caches are rebuilt with `damping(k)`; otherwise a changed damping is
///    passed on with [`CurvatureBlock::set_damping`];
/// 3. if $k$ is a multiple of `scalings_period`, EKFAC's scalings are updated
///    (after the refresh, so a new basis gets this step's scalings).
///
/// [`Preconditioner::precondition`] then maps the layers' gradients to the
/// natural-gradient directions $(\hat F_\ell + \text{damping})^{-1} \nabla_{\bar W_\ell} L$.
/// The learning rate, momentum and the update of the weights are the
/// caller's.
#[derive(Debug)]
pub struct Preconditioner<T: Real> {
    config: PreconditionerConfig,
    blocks: Vec<Box<dyn CurvatureBlock<T>>>,
    step: usize,
}

impl<T: Real> Preconditioner<T> {
    /// Blocks of kind `config.block` for layers of the given shapes, named
    /// `layer0`, `layer1`, ...
    pub fn new(config: PreconditionerConfig, shapes: &[LayerShape]) -> Result<Self> {
        config.validate()?;
        let blocks = shapes
            .iter()
            .enumerate()
            .map(|(i, &s)| config.block.build(format!("layer{i}"), s))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, blocks, step: 0 })
    }

    /// Wraps blocks built by the caller (e.g. a different kind per layer).
    pub fn from_blocks(config: PreconditionerConfig, blocks: Vec<Box<dyn CurvatureBlock<T>>>) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, blocks, step: 0 })
    }

    /// The configuration.
    pub fn config(&self) -> &PreconditionerConfig {
        &self.config
    }

    /// The blocks, one per layer.
    pub fn blocks(&self) -> &[Box<dyn CurvatureBlock<T>>] {
        &self.blocks
    }

    /// The number of completed [`update`](Self::update) calls.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Whether the next [`update`](Self::update) will read the batches'
    /// statistics. When it will not, the caller may skip computing them
    /// (e.g. the extra backward pass of the true Fisher) and pass `None`.
    pub fn needs_statistics(&self) -> bool {
        let (stats_due, scalings_due) = self.due();
        stats_due || scalings_due
    }

    /// Whether the statistics, and the scalings of blocks that have them, are
    /// due at the current step.
    fn due(&self) -> (bool, bool) {
        let k = self.step;
        let scalings = self.blocks.iter().any(|b| b.has_scalings());
        (k.is_multiple_of(self.config.stats_period), scalings && k.is_multiple_of(self.config.scalings_period))
    }

    /// One step of statistics and cache maintenance; see the type's docs.
    /// `batches[i]` belongs to layer `i`. `None` is allowed when
    /// [`needs_statistics`](Self::needs_statistics) is false.
    pub fn update(&mut self, la: &dyn LinAlg<T>, batches: Option<&[LayerBatch<'_, T>]>) -> Result<()> {
        let k = self.step;
        let (stats_due, scalings_due) = self.due();
        let batches = match batches {
            Some(b) => {
                if b.len() != self.blocks.len() {
                    return Err(Error::ShapeMismatch {
                        block: "preconditioner".into(),
                        what: "batches (one per layer)",
                        expected: (self.blocks.len(), 1),
                        found: (b.len(), 1),
                    });
                }
                Some(b)
            }
            None if stats_due || scalings_due => {
                return Err(Error::NotReady {
                    block: "preconditioner".into(),
                    what: "this step updates statistics: batches are needed",
                });
            }
            None => None,
        };
        let decay = self.config.decay.at(k);
        check_decay(decay)?;
        let damping = self.config.damping.at(k)?;
        let refresh_due = k.is_multiple_of(self.config.refresh_period);
        if let (true, Some(b)) = (stats_due, batches) {
            for (block, batch) in self.blocks.iter_mut().zip(b) {
                block.update_statistics(la, batch, decay)?;
            }
        }
        let needs_refresh = |b: &dyn CurvatureBlock<T>| refresh_due || !b.is_ready();
        let refreshing = self.blocks.iter().filter(|b| needs_refresh(&***b)).count();
        match la.concurrent_decompositions() {
            Some(cla) if refreshing > 1 => {
                // Independent blocks, one per thread; each decomposition is
                // the same whatever runs beside it, so the result does not
                // depend on the thread count. The first error in layer order
                // is returned.
                let results: Vec<Result<()>> = self
                    .blocks
                    .par_iter_mut()
                    .map(|block| if needs_refresh(&**block) { block.refresh(cla, damping) } else { Ok(()) })
                    .collect();
                results.into_iter().collect::<Result<()>>()?;
            }
            _ => {
                for block in self.blocks.iter_mut().filter(|b| needs_refresh(&***b)) {
                    block.refresh(la, damping)?;
                }
            }
        }
        for block in &mut self.blocks {
            if block.damping() != Some(damping) {
                block.set_damping(la, damping)?;
            }
        }
        if let (true, Some(b)) = (scalings_due, batches) {
            for (block, batch) in self.blocks.iter_mut().zip(b) {
                block.update_scalings(la, batch, decay)?;
            }
        }
        self.step += 1;
        Ok(())
    }

    /// The preconditioned gradients, one per layer, each in the $\bar W$ layout.
    pub fn precondition(&self, la: &dyn LinAlg<T>, grads: &[ArrayView2<'_, T>]) -> Result<Vec<Array2<T>>> {
        if grads.len() != self.blocks.len() {
            return Err(Error::ShapeMismatch {
                block: "preconditioner".into(),
                what: "gradients (one per layer)",
                expected: (self.blocks.len(), 1),
                found: (grads.len(), 1),
            });
        }
        self.blocks.iter().zip(grads).map(|(b, g)| b.precondition(la, g.view())).collect()
    }

    /// Bytes held by all blocks.
    pub fn memory_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.memory_bytes()).sum()
    }
}
