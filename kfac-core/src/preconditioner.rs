//! A stack of curvature blocks with the step schedule of K-FAC.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::average::check_decay;
use crate::blocks::{BlockKind, CurvatureBlock};
use crate::damping::{DampingKind, DampingSchedule, Schedule};
use crate::error::{Error, Result};
use crate::linalg::LinAlg;
use crate::scalar::Real;
use crate::shape::{LayerBatch, LayerShape, check_finite};
use crate::state::{BlockHealth, BlockState};
use crate::tridiagonal::TridiagonalKfac;

mod distributed;

/// How the layers' blocks relate to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum Structure {
    /// One independent block per layer, of kind [`PreconditionerConfig::block`]:
    /// every covariance between layers is dropped. The default.
    #[default]
    BlockDiagonal,
    /// Martens & Grosse's chain model ([`TridiagonalKfac`]): a block-tridiagonal
    /// inverse over the layers in order, with cross factors between
    /// consecutive layers. Needs a K-FAC [`BlockKind`] (its [`KfacMethod`](crate::KfacMethod)
    /// does not matter: the chain has its own cache) and factored damping.
    ///
    /// The cross factors tie neighbouring layers together, so a step's
    /// statistics are taken for all layers or none: under
    /// [`NonFinitePolicy::Skip`] a non-finite batch in any layer skips the
    /// step's statistics of every layer. The chain's cache depends on the
    /// damping, so a change of damping (a schedule,
    /// [`Preconditioner::apply_damping`]) rebuilds it, at the cost of a refresh.
    Tridiagonal,
}

/// What [`Preconditioner::update`] does with a layer whose batch (inputs or
/// gradients) holds a NaN or an infinity, or whose summed statistics
/// overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
pub enum NonFinitePolicy {
    /// Leave that layer's statistics and scalings as they were for this
    /// step, count the skip in its [`BlockHealth`] and report it in the
    /// [`UpdateReport`]. The default: a long run survives a bad batch.
    #[default]
    Skip,
    /// Return [`Error::NonFinite`]. A non-finite batch is found before any
    /// statistic changes; an overflow is found when a layer's sums are
    /// folded in, and that layer is left unchanged (the layers before it
    /// have taken the step).
    Error,
}

/// What one [`Preconditioner::update`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct UpdateReport {
    /// Layers whose statistics update was skipped ([`NonFinitePolicy::Skip`]).
    pub skipped: Vec<usize>,
    /// Whether the caches were rebuilt at this step.
    pub refreshed: bool,
}

/// The complete state of a [`Preconditioner`] (checkpoints); see
/// [`crate::state`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PreconditionerState<T> {
    /// Completed [`Preconditioner::update`] calls.
    pub step: usize,
    /// Skipped statistics updates per layer.
    pub skipped: Vec<usize>,
    /// The blocks' states, in layer order.
    pub blocks: Vec<BlockState<T>>,
}

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
    /// What to do with non-finite batches. Default [`NonFinitePolicy::Skip`].
    pub on_non_finite: NonFinitePolicy,
    /// Block-diagonal or block-tridiagonal. Default [`Structure::BlockDiagonal`].
    pub structure: Structure,
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
            on_non_finite: NonFinitePolicy::Skip,
            structure: Structure::BlockDiagonal,
        }
    }
}

impl PreconditionerConfig {
    /// Checks the periods (at least 1), and that the tridiagonal structure
    /// has K-FAC blocks and factored damping.
    pub fn validate(&self) -> Result<()> {
        if self.structure == Structure::Tridiagonal {
            if !matches!(self.block, BlockKind::Kfac(_)) {
                return Err(Error::InvalidConfig {
                    what: "structure",
                    value: format!("Tridiagonal with {:?} blocks", self.block),
                    why: "the chain model is built from K-FAC's Kronecker factors; use BlockKind::Kfac",
                });
            }
            if self.damping.kind == DampingKind::Tikhonov {
                return Err(Error::InvalidConfig {
                    what: "structure",
                    value: "Tridiagonal with Tikhonov damping".into(),
                    why: "the chain model damps the diagonal factors (Martens & Grosse, section 6.3); use factored \
                          damping",
                });
            }
        }
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
    /// The blocks of [`Structure::BlockDiagonal`] (empty for the chain).
    blocks: Vec<Box<dyn CurvatureBlock<T>>>,
    /// The model of [`Structure::Tridiagonal`].
    chain: Option<TridiagonalKfac<T>>,
    step: usize,
    skipped: Vec<usize>,
}

impl<T: Real> Preconditioner<T> {
    /// Blocks of kind `config.block` for layers of the given shapes, named
    /// `layer0`, `layer1`, ...
    pub fn new(config: PreconditionerConfig, shapes: &[LayerShape]) -> Result<Self> {
        config.validate()?;
        if config.structure == Structure::Tridiagonal {
            let chain = TridiagonalKfac::new(shapes)?;
            return Ok(Self {
                config,
                blocks: Vec::new(),
                chain: Some(chain),
                step: 0,
                skipped: vec![0; shapes.len()],
            });
        }
        let blocks = shapes
            .iter()
            .enumerate()
            .map(|(i, &s)| config.block.build(format!("layer{i}"), s))
            .collect::<Result<Vec<_>>>()?;
        let skipped = vec![0; blocks.len()];
        Ok(Self { config, blocks, chain: None, step: 0, skipped })
    }

    /// A block of its own kind for each layer, `layers[i]` = (shape, kind),
    /// named `layer0`, `layer1`, ...; `config.block` is not used.
    /// Block-diagonal only.
    pub fn with_kinds(config: PreconditionerConfig, layers: &[(LayerShape, BlockKind)]) -> Result<Self> {
        let blocks = layers
            .iter()
            .enumerate()
            .map(|(i, &(s, kind))| kind.build(format!("layer{i}"), s))
            .collect::<Result<Vec<_>>>()?;
        Self::from_blocks(config, blocks)
    }

    /// Wraps blocks built by the caller (e.g. a different kind per layer);
    /// block-diagonal only.
    pub fn from_blocks(config: PreconditionerConfig, blocks: Vec<Box<dyn CurvatureBlock<T>>>) -> Result<Self> {
        config.validate()?;
        if config.structure != Structure::BlockDiagonal {
            return Err(Error::InvalidConfig {
                what: "structure",
                value: format!("{:?}", config.structure),
                why: "from_blocks wraps independent blocks: use Preconditioner::new for the chain",
            });
        }
        let skipped = vec![0; blocks.len()];
        Ok(Self { config, blocks, chain: None, step: 0, skipped })
    }

    /// The number of layers.
    pub fn num_layers(&self) -> usize {
        self.skipped.len()
    }

    /// The chain model of [`Structure::Tridiagonal`], `None` for the
    /// block-diagonal structure.
    pub fn tridiagonal(&self) -> Option<&TridiagonalKfac<T>> {
        self.chain.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &PreconditionerConfig {
        &self.config
    }

    /// The blocks, one per layer; empty for [`Structure::Tridiagonal`] (see
    /// [`tridiagonal`](Self::tridiagonal)).
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
    ///
    /// Every batch is checked (shape, emptiness, finiteness) before any
    /// statistic changes. A non-finite batch, or statistics that overflow,
    /// are handled as [`PreconditionerConfig::on_non_finite`] says.
    ///
    /// # Errors
    ///
    /// Shape and configuration errors; [`Error::NonFinite`] under
    /// [`NonFinitePolicy::Error`]; decomposition failures (after the `f32` to
    /// `f64` retry).
    pub fn update(&mut self, la: &dyn LinAlg<T>, batches: Option<&[LayerBatch<'_, T>]>) -> Result<UpdateReport> {
        let k = self.step;
        let (stats_due, scalings_due) = self.due();
        let batches = match batches {
            Some(b) => {
                if b.len() != self.num_layers() {
                    return Err(Error::ShapeMismatch {
                        block: "preconditioner".into(),
                        what: "batches (one per layer)",
                        expected: (self.num_layers(), 1),
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
        if self.chain.is_some() {
            return self.update_chain(la, batches.filter(|_| stats_due), decay, damping, refresh_due);
        }
        let mut report = UpdateReport::default();
        // Which layers take this step's statistics: every batch is checked
        // before anything changes.
        let mut take = vec![true; self.blocks.len()];
        if let (true, Some(b)) = (stats_due || scalings_due, batches) {
            for (l, (block, batch)) in self.blocks.iter().zip(b).enumerate() {
                let name = block.name();
                let finite = check_finite(name, "inputs", batch.inputs).and(check_finite(name, "grads", batch.grads));
                match (finite, self.config.on_non_finite) {
                    (Ok(()), _) => batch.validate(name, block.shape())?,
                    (Err(e), NonFinitePolicy::Error) => return Err(e),
                    (Err(_), NonFinitePolicy::Skip) => take[l] = false,
                }
            }
        }
        let policy = self.config.on_non_finite;
        let overflow = |name: &str, e: Error, take: &mut bool| -> Result<()> {
            match (e, policy) {
                (Error::NonFinite { .. }, NonFinitePolicy::Skip) => {
                    *take = false;
                    Ok(())
                }
                (Error::NonFinite { what, .. }, NonFinitePolicy::Error) => {
                    Err(Error::NonFinite { block: name.to_string(), what })
                }
                (e, _) => Err(e),
            }
        };
        if let (true, Some(b)) = (stats_due, batches) {
            for ((block, batch), take) in self.blocks.iter_mut().zip(b).zip(take.iter_mut()) {
                if *take && let Err(e) = block.update_statistics(la, batch, decay) {
                    overflow(block.name(), e, take)?;
                }
            }
        }
        // A block that has never had statistics cannot be refreshed: it
        // stays unready (and says so if asked to precondition).
        let flags: Vec<bool> = self
            .blocks
            .iter()
            .zip(&take)
            .map(|(b, &took)| (refresh_due || !b.is_ready()) && (took || b.is_ready()))
            .collect();
        let refreshing = flags.iter().filter(|&&f| f).count();
        report.refreshed = refreshing > 0;
        match la.concurrent_decompositions() {
            Some(cla) if refreshing > 1 => {
                // Independent blocks, one per thread; each decomposition is
                // the same whatever runs beside it, so the result does not
                // depend on the thread count. The first error in layer order
                // is returned.
                let results: Vec<Result<()>> = self
                    .blocks
                    .par_iter_mut()
                    .zip(flags.par_iter())
                    .map(|(block, &f)| if f { block.refresh(cla, damping) } else { Ok(()) })
                    .collect();
                results.into_iter().collect::<Result<()>>()?;
            }
            _ => {
                for (block, _) in self.blocks.iter_mut().zip(&flags).filter(|(_, f)| **f) {
                    block.refresh(la, damping)?;
                }
            }
        }
        for block in self.blocks.iter_mut().filter(|b| b.is_ready()) {
            if block.damping() != Some(damping) {
                block.set_damping(la, damping)?;
            }
        }
        if let (true, Some(b)) = (scalings_due, batches) {
            for ((block, batch), take) in self.blocks.iter_mut().zip(b).zip(take.iter_mut()) {
                if *take
                    && block.is_ready()
                    && let Err(e) = block.update_scalings(la, batch, decay)
                {
                    overflow(block.name(), e, take)?;
                }
            }
        }
        Ok(self.finish_update(&take, report))
    }

    /// Ends an update: the layers whose statistics were not taken
    /// (`take[l]` false) are counted as skipped and named in `report`, and
    /// the step counter advances.
    fn finish_update(&mut self, take: &[bool], mut report: UpdateReport) -> UpdateReport {
        for (l, &t) in take.iter().enumerate() {
            if !t {
                self.skipped[l] += 1;
                report.skipped.push(l);
            }
        }
        self.step += 1;
        report
    }

    /// [`update`](Self::update) for [`Structure::Tridiagonal`]: the chain's
    /// statistics are updated for all layers or for none (the cross factors
    /// tie neighbours together, so a non-finite batch in one layer skips the
    /// step's statistics of every layer under [`NonFinitePolicy::Skip`]).
    fn update_chain(
        &mut self,
        la: &dyn LinAlg<T>,
        batches: Option<&[LayerBatch<'_, T>]>,
        decay: f64,
        damping: crate::Damping,
        refresh_due: bool,
    ) -> Result<UpdateReport> {
        let policy = self.config.on_non_finite;
        let Some(chain) = self.chain.as_mut() else {
            return Err(Error::NotReady { block: "preconditioner".into(), what: "no chain model" });
        };
        // A damping the chain cannot use (e.g. set through
        // `set_damping_schedule`) is refused before any statistic changes.
        if let crate::Damping::Tikhonov { .. } = damping {
            return Err(Error::UnsupportedDamping {
                block: "tridiagonal".into(),
                damping: damping.to_string(),
                why: "the chain model needs factored damping",
            });
        }
        let mut report = UpdateReport::default();
        let mut took = true;
        // The chain checks every batch (finiteness included) before any sum
        // changes, and commits all layers or none: a non-finite batch or an
        // overflow leaves the statistics as they were.
        if let Some(b) = batches {
            match chain.update_statistics(la, b, decay) {
                Ok(()) => {}
                Err(Error::NonFinite { .. }) if policy == NonFinitePolicy::Skip => took = false,
                Err(e) => return Err(e),
            }
        }
        if (refresh_due || !chain.is_ready()) && chain.is_initialised() {
            chain.refresh(la, damping)?;
            report.refreshed = true;
        } else if chain.is_ready() && chain.damping() != Some(damping) {
            // The chain's cache depends on the damping: this is a refresh.
            chain.set_damping(la, damping)?;
            report.refreshed = true;
        }
        if !took {
            for (l, s) in self.skipped.iter_mut().enumerate() {
                *s += 1;
                report.skipped.push(l);
            }
        }
        self.step += 1;
        Ok(report)
    }

    fn check_count(&self, what: &'static str, found: usize) -> Result<()> {
        if found != self.num_layers() {
            return Err(Error::ShapeMismatch {
                block: "preconditioner".into(),
                what,
                expected: (self.num_layers(), 1),
                found: (found, 1),
            });
        }
        Ok(())
    }

    /// The preconditioned gradients, one per layer, each in the $\bar W$ layout.
    pub fn precondition(&self, la: &dyn LinAlg<T>, grads: &[ArrayView2<'_, T>]) -> Result<Vec<Array2<T>>> {
        self.check_count("gradients (one per layer)", grads.len())?;
        if let Some(chain) = &self.chain {
            return chain.precondition(la, grads);
        }
        self.blocks.iter().zip(grads).map(|(b, g)| b.precondition(la, g.view())).collect()
    }

    /// The damped curvature estimate applied to `v` (one matrix per layer),
    /// the inverse of [`precondition`](Self::precondition).
    pub fn multiply(&self, la: &dyn LinAlg<T>, v: &[ArrayView2<'_, T>]) -> Result<Vec<Array2<T>>> {
        self.check_count("vectors (one per layer)", v.len())?;
        if let Some(chain) = &self.chain {
            return chain.multiply(la, v);
        }
        self.blocks.iter().zip(v).map(|(b, x)| b.multiply(la, x.view())).collect()
    }

    /// Bytes held by all blocks.
    pub fn memory_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.memory_bytes()).sum::<usize>()
            + self.chain.as_ref().map_or(0, |c| c.memory_bytes())
    }

    /// Replaces the damping schedule; the next [`update`](Self::update)
    /// passes the new damping to the blocks. For adaptive rules that change
    /// the damping between steps (see also [`apply_damping`](Self::apply_damping)).
    pub fn set_damping_schedule(&mut self, damping: DampingSchedule) {
        self.config.damping = damping;
    }

    /// Gives every ready block the damping `damping` now (without a
    /// statistics step): the eigen paths and EKFAC only store it, the
    /// Cholesky path rebuilds its inverses, the tridiagonal chain rebuilds
    /// its whole cache (a refresh). The schedule is not changed:
    /// the next [`update`](Self::update) applies the schedule's damping
    /// again.
    ///
    /// # Errors
    ///
    /// A damping the blocks do not support, or a failed rebuild.
    pub fn apply_damping(&mut self, la: &dyn LinAlg<T>, damping: crate::Damping) -> Result<()> {
        if let Some(chain) = self.chain.as_mut() {
            if chain.is_ready() && chain.damping() != Some(damping) {
                chain.set_damping(la, damping)?;
            }
            return Ok(());
        }
        for block in self.blocks.iter_mut().filter(|b| b.is_ready()) {
            if block.damping() != Some(damping) {
                block.set_damping(la, damping)?;
            }
        }
        Ok(())
    }

    /// The health report of every layer: eigenvalue range, condition number,
    /// damping, and what the safeguards did (clamped eigenvalues, `f64`
    /// retries, skipped updates).
    pub fn health(&self) -> Vec<BlockHealth> {
        if let Some(chain) = &self.chain {
            return chain
                .health()
                .into_iter()
                .zip(&self.skipped)
                .map(|(h, &s)| BlockHealth { skipped_updates: s, ..h })
                .collect();
        }
        self.blocks.iter().zip(&self.skipped).map(|(b, &s)| BlockHealth { skipped_updates: s, ..b.health() }).collect()
    }

    /// The complete state, to save in a checkpoint; see [`crate::state`].
    pub fn state(&self) -> PreconditionerState<T> {
        PreconditionerState {
            step: self.step,
            skipped: self.skipped.clone(),
            blocks: match &self.chain {
                Some(chain) => chain.state(),
                None => self.blocks.iter().map(|b| b.state()).collect(),
            },
        }
    }

    /// Continues from a saved state. Every block's state is checked before
    /// anything changes: on error the preconditioner is as it was.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] when the number of layers differs or a block's
    /// state does not fit (see [`CurvatureBlock::restored`]).
    pub fn restore(&mut self, state: &PreconditionerState<T>) -> Result<()> {
        let invalid = |why: String| Error::InvalidState { block: "preconditioner".into(), why };
        let n = self.num_layers();
        if state.blocks.len() != n || state.skipped.len() != n {
            return Err(invalid(format!(
                "the state has {} blocks and {} skip counters, this preconditioner has {n} layers",
                state.blocks.len(),
                state.skipped.len(),
            )));
        }
        if let Some(chain) = &self.chain {
            let restored = chain.restored(&state.blocks)?;
            self.chain = Some(restored);
            self.step = state.step;
            self.skipped = state.skipped.clone();
            return Ok(());
        }
        let blocks = self.blocks.iter().zip(&state.blocks).map(|(b, s)| b.restored(s)).collect::<Result<Vec<_>>>()?;
        self.blocks = blocks;
        self.step = state.step;
        self.skipped = state.skipped.clone();
        Ok(())
    }
}
