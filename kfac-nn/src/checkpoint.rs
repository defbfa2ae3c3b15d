//! Checkpoints: a training run saved and resumed bit for bit.
//!
//! A checkpoint is one [safetensors](https://huggingface.co/docs/safetensors)
//! file, so other tools can read the weights:
//!
//! | tensor | shape | what |
//! |---|---|---|
//! | `model.layer{l}.weight` | $d_\text{out} \times d_\text{in}$ | the weights $W$ |
//! | `model.layer{l}.bias` | $d_\text{out}$ | the bias $b$ |
//! | `optimizer.{buffer}.{l}` | $d_\text{out} \times (d_\text{in}+1)$ | momentum (`velocity`), or Adam's moments (`m`, `v`), in the $[W \mid b]$ layout |
//! | `optimizer.block{l}.{name}` | | the curvature block's statistics and cache ([`kfac::BlockState`]) |
//!
//! The header's metadata holds `format` (`kfac-checkpoint`), `version`
//! ([`VERSION`]), `dtype`, `state` (a JSON record, [`RunState`]: the run's
//! configuration, the step, the data order and generator states, the
//! records so far, and the optimizer's state as kfac-core and kfac-nn
//! serialise it, [`OptimizerState`], with its arrays taken out into the
//! tensors above) and `sha256`, the SHA-256 of the whole file with the 64 hex digits of the
//! checksum itself replaced by `0`. Any changed or missing byte is caught
//! by the checksum or by the checks that follow it (structure, names,
//! shapes, finiteness, ranges), and is reported as an
//! [`Error::Checkpoint`]; nothing is allocated from an unchecked size (the
//! file is read whole, and every size is checked against its length).
//!
//! The checks also refuse a run state that no run can have written
//! ([`check_run`]): records that do not count the steps from 1, negative or
//! non-finite seconds, counters beyond the step, Adam second moments below
//! zero, an adaptive $\lambda$ outside its bounds. Numbers of the run state
//! that are not finite (the loss of a skipped step) are written as in
//! [`crate::nonfinite`], so they read back as they were.
//!
//! Saving is atomic ([`write_atomic`](crate::report::write_atomic)): a crash
//! during a save leaves the previous checkpoint intact. A checkpoint is
//! decoded, with every check of the loader, before it is written: a save
//! never leaves a file that [`load`] would refuse.
//!
//! Version 2 added `data` (the SHA-256 of the training and test data, so
//! that a resume notices replaced data files) and the faithful non-finite
//! numbers; version-1 files are refused with a message saying so.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors, View};
use sha2::{Digest, Sha256};

use crate::backend::Scalar;
use crate::config::TrainConfig;
use crate::data::BatchState;
use crate::error::{Error, Result};
use crate::mlp::Mlp;
use crate::optim::OptimizerState;
use crate::records::{StepRecord, TestRecord};

/// The value of the `format` metadata entry.
pub const FORMAT: &str = "kfac-checkpoint";
/// The checkpoint format's version. Files of another version are refused:
/// version 1 (kfac 0.1) stored the optimizer's state in records that no
/// longer exist, and had neither the data's fingerprint nor the faithful
/// non-finite numbers.
pub const VERSION: u32 = 2;
const SUM_KEY: &str = "\"sha256\":\"";

/// Everything of a run that is not a tensor (the `state` metadata entry).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(bound(serialize = "T: serde::Serialize", deserialize = "T: serde::Deserialize<'de>"))]
pub struct RunState<T> {
    /// The run's configuration (a resumed run must ask for the same one,
    /// except for the number of steps).
    pub config: TrainConfig,
    /// Steps completed.
    pub step: usize,
    /// Training seconds so far.
    #[serde(with = "crate::nonfinite")]
    pub seconds: f64,
    /// The data order.
    pub batches: BatchState,
    /// The state of the generator of the sampled targets.
    pub rng: u64,
    /// The records of the steps so far.
    pub steps: Vec<StepRecord>,
    /// The test evaluations so far.
    pub test: Vec<TestRecord>,
    /// The layer shapes `(d_in, d_out)`.
    pub layers: Vec<(usize, usize)>,
    /// The optimizer's state without its arrays (they are tensors of the
    /// file; empty here).
    pub optimizer: OptimizerState<T>,
    /// The SHA-256 of the training and test data, in hex
    /// ([`Task::fingerprint`](crate::train::Task::fingerprint)).
    pub data: String,
}

/// A run's complete state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint<T> {
    /// Everything that is not a tensor (its optimizer state without arrays).
    pub run: RunState<T>,
    /// The layers' $\bar W = [W \mid b]$.
    pub weights: Vec<Array2<T>>,
    /// The optimizer, arrays included.
    pub optimizer: OptimizerState<T>,
}

struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn dtype<T: Scalar>() -> Dtype {
    if std::mem::size_of::<T>() == 4 { Dtype::F32 } else { Dtype::F64 }
}

fn tensor<T: Scalar>(a: impl IntoIterator<Item = T>, shape: Vec<usize>) -> Tensor {
    let mut bytes = Vec::new();
    for x in a {
        let v = x.to_f64_exact();
        if std::mem::size_of::<T>() == 4 {
            bytes.extend_from_slice(&(v as f32).to_le_bytes());
        } else {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    Tensor { dtype: dtype::<T>(), shape, bytes }
}

/// The per-layer buffers of an optimizer state and the curvature blocks'
/// tensors, as the file names them: `optimizer.{buffer}.{l}` and
/// `optimizer.block{l}.{name}`. The state is left without arrays.
fn take_arrays<T: Scalar>(state: &mut OptimizerState<T>) -> Vec<(String, ArrayD<T>)> {
    let mut out = Vec::new();
    let mut buffer = |name: &str, arrays: &mut Vec<Array2<T>>| {
        for (l, a) in std::mem::take(arrays).into_iter().enumerate() {
            out.push((format!("optimizer.{name}.{l}"), a.into_dyn()));
        }
    };
    match state {
        OptimizerState::Sgd { velocity, .. } => buffer("velocity", velocity),
        OptimizerState::Adam { m, v, .. } => {
            buffer("m", m);
            buffer("v", v);
        }
        OptimizerState::Kfac(k) => {
            buffer("velocity", &mut k.velocity);
            for (l, b) in k.preconditioner.blocks.iter_mut().enumerate() {
                for (name, t) in std::mem::take(&mut b.tensors) {
                    out.push((format!("optimizer.block{l}.{name}"), t));
                }
            }
        }
    }
    out
}

/// The bytes of a checkpoint of `mlp` with the run state `run` (its
/// optimizer state complete, arrays included).
pub fn encode<T: Scalar>(run: &RunState<T>, mlp: &Mlp<T>) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (l, layer) in mlp.layers.iter().enumerate() {
        let d_in = layer.d_in();
        let w = layer.w.slice(ndarray::s![.., ..d_in]);
        tensors.push((format!("model.layer{l}.weight"), tensor(w.iter().copied(), vec![layer.d_out(), d_in])));
        tensors
            .push((format!("model.layer{l}.bias"), tensor(layer.w.column(d_in).iter().copied(), vec![layer.d_out()])));
    }
    let mut hollow = run.clone();
    for (name, a) in take_arrays(&mut hollow.optimizer) {
        tensors.push((name, tensor(a.iter().copied(), a.shape().to_vec())));
    }
    let run = &hollow;
    let json = serde_json::to_string(run)?;
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), VERSION.to_string()),
        ("dtype".to_string(), if dtype::<T>() == Dtype::F32 { "f32" } else { "f64" }.to_string()),
        ("state".to_string(), json),
        ("sha256".to_string(), "0".repeat(64)),
    ]);
    let mut bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.clone(), t)), Some(meta))
        .map_err(|e| Error::Checkpoint { path: PathBuf::new(), reason: e.to_string() })?;
    let at = checksum_position(&bytes).ok_or_else(|| Error::Checkpoint {
        path: PathBuf::new(),
        reason: "the checksum entry is not in the header (internal error)".into(),
    })?;
    let sum = hex(&Sha256::digest(&bytes));
    bytes[at..at + 64].copy_from_slice(sum.as_bytes());
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the 64 hex digits of the checksum start: after the one occurrence
/// of `"sha256":"` in the header.
fn checksum_position(bytes: &[u8]) -> Option<usize> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = usize::try_from(n).ok()?.checked_add(8)?;
    let header = bytes.get(8..end)?;
    let key = SUM_KEY.as_bytes();
    let mut hits = header.windows(key.len()).enumerate().filter(|(_, w)| *w == key).map(|(i, _)| i);
    let first = hits.next()?;
    if hits.next().is_some() {
        return None;
    }
    let at = 8 + first + key.len();
    (at + 64 <= end).then_some(at)
}

/// Decodes and checks a checkpoint (see the [module docs](self)); `path`
/// names it in errors.
pub fn decode<T: Scalar>(bytes: &[u8], path: &Path) -> Result<Checkpoint<T>> {
    let bad = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let state = header::<T>(bytes, path)?;
    let run: RunState<T> = serde_json::from_str(&state).map_err(|e| bad(format!("the run state is damaged: {e}")))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let mut reader = Reader { st: &st, path, used: 0 };
    let mut weights = Vec::with_capacity(run.layers.len());
    for (l, &(d_in, d_out)) in run.layers.iter().enumerate() {
        let w = reader.matrix(&format!("model.layer{l}.weight"), d_out, d_in)?;
        let b = reader.read(&format!("model.layer{l}.bias"), &[d_out])?;
        let mut full = Array2::zeros((d_out, d_in + 1));
        full.slice_mut(ndarray::s![.., ..d_in]).assign(&w);
        full.column_mut(d_in).assign(&b.into_dimensionality::<ndarray::Ix1>().map_err(|e| bad(e.to_string()))?);
        weights.push(full);
    }
    let mut optimizer = run.optimizer.clone();
    fill_arrays(&mut optimizer, &run.layers, &mut reader)?;
    if reader.used != st.len() {
        return Err(bad(format!("the file holds {} tensors, {} of them expected", st.len(), reader.used)));
    }
    check_run(&run, &optimizer).map_err(|why| bad(format!("the run state holds impossible values: {why}")))?;
    Ok(Checkpoint { run, weights, optimizer })
}

/// Checks that `run` and `optimizer` could have been written by a run:
/// saved after a step ($\ge 1$); one record per step, numbered from 1, with
/// finite, non-negative, non-decreasing seconds up to the run's; KL-clip
/// factors in $[0, 1]$; test evaluations at increasing steps up to the
/// step, accuracies in $[0, 1]$; skipped steps as many as the records that
/// say so; the preconditioner's and the adaptive machinery's step counters
/// and Adam's at most the step (Adam's: the steps taken); Adam's second
/// moments non-negative; an adaptive $\lambda$ within its bounds.
/// (The data order is checked against the data by the training loop.)
///
/// # Errors
///
/// What is impossible, in words.
pub fn check_run<T: Scalar>(run: &RunState<T>, optimizer: &OptimizerState<T>) -> std::result::Result<(), String> {
    let step = run.step;
    if step == 0 {
        return Err("it was saved before the first step".into());
    }
    check_records(run)?;
    let skipped = run.steps.iter().filter(|r| r.skipped.is_some()).count();
    let taken = step - skipped.min(step);
    let counted = match optimizer {
        OptimizerState::Sgd { skipped_steps, .. } | OptimizerState::Adam { skipped_steps, .. } => *skipped_steps,
        OptimizerState::Kfac(k) => k.skipped_steps,
    };
    if counted != skipped {
        return Err(format!("{counted} skipped steps, {skipped} records of skipped steps"));
    }
    match optimizer {
        OptimizerState::Sgd { .. } => {}
        OptimizerState::Adam { t, v, .. } => {
            if usize::try_from(*t).ok() != Some(taken) {
                return Err(format!("Adam's step counter is {t}, {taken} steps were taken"));
            }
            if v.iter().any(|a| a.iter().any(|&x| x < T::zero())) {
                return Err("an Adam second moment is negative".into());
            }
        }
        OptimizerState::Kfac(k) => {
            if k.preconditioner.step > step {
                return Err(format!("the preconditioner counts {} updates after {step} steps", k.preconditioner.step));
            }
            if let Some(a) = k.adaptive {
                if a.steps > step {
                    return Err(format!("the adaptive machinery counts {} steps after {step}", a.steps));
                }
                if let Some(c) = run.config.optimizer.kfac().and_then(|c| c.adaptive())
                    && !(c.lambda_min..=c.lambda_max).contains(&a.lambda)
                {
                    return Err(format!("lambda = {}, outside [{}, {}]", a.lambda, c.lambda_min, c.lambda_max));
                }
            }
        }
    }
    Ok(())
}

/// The records part of [`check_run`].
fn check_records<T>(run: &RunState<T>) -> std::result::Result<(), String> {
    let step = run.step;
    if run.steps.len() != step {
        return Err(format!("{} records for {step} steps", run.steps.len()));
    }
    if !(run.seconds.is_finite() && run.seconds >= 0.0) {
        return Err(format!("seconds = {}", run.seconds));
    }
    let mut last = 0.0;
    for (i, r) in run.steps.iter().enumerate() {
        if r.step != i + 1 {
            return Err(format!("record {} is of step {}", i + 1, r.step));
        }
        if !(r.seconds.is_finite() && r.seconds >= last && r.seconds <= run.seconds) {
            return Err(format!(
                "step {} at {} seconds (the one before at {last}, the run at {})",
                r.step, r.seconds, run.seconds
            ));
        }
        last = r.seconds;
        if let Some(k) = r.kl_scale.filter(|k| !(0.0..=1.0).contains(k)) {
            return Err(format!("step {} has a KL-clip factor of {k}", r.step));
        }
    }
    let mut previous = 0;
    for t in &run.test {
        if t.step <= previous || t.step > step {
            return Err(format!("a test evaluation at step {} (after {previous}, saved at {step})", t.step));
        }
        previous = t.step;
        if let Some(a) = t.accuracy.filter(|a| !(0.0..=1.0).contains(a)) {
            return Err(format!("a test accuracy of {a}"));
        }
    }
    Ok(())
}

/// Checks the checksum and the header's metadata (format, version,
/// precision) and returns the `state` entry.
fn header<T: Scalar>(bytes: &[u8], path: &Path) -> Result<String> {
    let bad = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let at = checksum_position(bytes).ok_or_else(|| {
        bad("not a kfac checkpoint (no readable header with a checksum); the file may be truncated or damaged".into())
    })?;
    let stored =
        std::str::from_utf8(&bytes[at..at + 64]).map_err(|_| bad("the checksum is damaged".into()))?.to_string();
    let mut zeroed = bytes.to_vec();
    zeroed[at..at + 64].fill(b'0');
    if hex(&Sha256::digest(&zeroed)) != stored {
        return Err(bad("checksum mismatch: the file is damaged or truncated".into()));
    }
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).ok_or_else(|| bad(format!("the header has no `{k}` entry")));
    if get("format")? != FORMAT {
        return Err(bad(format!("format `{}`, expected `{FORMAT}`", get("format")?)));
    }
    let version = get("version")?;
    if version == "1" {
        return Err(bad(format!(
            "format version 1, this program reads version {VERSION}: version 2 lays out the optimizer's state as \
             kfac-core does and records the SHA-256 of the data and the records' non-finite numbers, which a \
             version-1 file lacks; resume it with the kfac that wrote it, or start again"
        )));
    }
    if version != &VERSION.to_string() {
        return Err(bad(format!("format version {version}, this program reads version {VERSION}")));
    }
    let want = if dtype::<T>() == Dtype::F32 { "f32" } else { "f64" };
    if get("dtype")? != want {
        return Err(bad(format!(
            "saved in {}, this run is in {want} (use --precision {})",
            get("dtype")?,
            get("dtype")?
        )));
    }
    Ok(get("state")?.clone())
}

/// Reads tensors of a checkpoint, checking each, and counts them.
struct Reader<'a, 'b> {
    st: &'a SafeTensors<'b>,
    path: &'a Path,
    used: usize,
}

impl Reader<'_, '_> {
    fn bad(&self, reason: String) -> Error {
        Error::Checkpoint { path: self.path.to_path_buf(), reason }
    }

    /// The shape of tensor `name`, if the file has it.
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.st.tensor(name).ok().map(|t| t.shape().to_vec())
    }

    /// Tensor `name`, which must have `shape`, the run's precision and finite values.
    fn read<T: Scalar>(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<T>> {
        let t = self.st.tensor(name).map_err(|_| self.bad(format!("tensor `{name}` is missing")))?;
        let want = if dtype::<T>() == Dtype::F32 { "f32" } else { "f64" };
        if t.dtype() != dtype::<T>() {
            return Err(self.bad(format!("tensor `{name}` is {:?}, expected {want}", t.dtype())));
        }
        if t.shape() != shape {
            return Err(self.bad(format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape())));
        }
        let width = std::mem::size_of::<T>();
        let values: Vec<T> = t
            .data()
            .chunks_exact(width)
            .map(|c| {
                if width == 4 {
                    T::from_f64_lossy(f64::from(f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))))
                } else {
                    T::from_f64_lossy(f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                }
            })
            .collect();
        if !values.iter().all(|x| x.is_finite()) {
            return Err(self.bad(format!("tensor `{name}` holds a non-finite value")));
        }
        self.used += 1;
        ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| self.bad(format!("tensor `{name}`: {e}")))
    }

    fn matrix<T: Scalar>(&mut self, name: &str, rows: usize, cols: usize) -> Result<Array2<T>> {
        let a = self.read(name, &[rows, cols])?;
        a.into_dimensionality().map_err(|e| self.bad(format!("tensor `{name}`: {e}")))
    }

    /// One matrix per layer, `optimizer.{name}.{l}`, in the $[W \mid b]$ layout.
    fn buffer<T: Scalar>(&mut self, name: &str, layers: &[(usize, usize)]) -> Result<Vec<Array2<T>>> {
        layers
            .iter()
            .enumerate()
            .map(|(l, &(d_in, d_out))| self.matrix(&format!("optimizer.{name}.{l}"), d_out, d_in + 1))
            .collect()
    }

    /// Every tensor `optimizer.block{l}.{name}`, by `name`.
    fn block<T: Scalar>(&mut self, l: usize) -> Result<BTreeMap<String, ArrayD<T>>> {
        let prefix = format!("optimizer.block{l}.");
        let names: Vec<String> =
            self.st.names().into_iter().filter_map(|n| n.strip_prefix(&prefix).map(str::to_string)).collect();
        let mut tensors = BTreeMap::new();
        for name in names {
            let full = format!("{prefix}{name}");
            let shape = self.shape(&full).unwrap_or_default();
            if shape.len() > 2 {
                return Err(self.bad(format!("tensor `{full}` has {} dimensions", shape.len())));
            }
            tensors.insert(name, self.read(&full, &shape)?);
        }
        Ok(tensors)
    }
}

/// Puts the file's arrays back into an optimizer state read without them.
fn fill_arrays<T: Scalar>(
    state: &mut OptimizerState<T>,
    layers: &[(usize, usize)],
    r: &mut Reader<'_, '_>,
) -> Result<()> {
    match state {
        OptimizerState::Sgd { velocity, .. } => *velocity = r.buffer("velocity", layers)?,
        OptimizerState::Adam { m, v, .. } => {
            *m = r.buffer("m", layers)?;
            *v = r.buffer("v", layers)?;
        }
        OptimizerState::Kfac(k) => {
            k.velocity = r.buffer("velocity", layers)?;
            for (l, b) in k.preconditioner.blocks.iter_mut().enumerate() {
                b.tensors = r.block(l)?;
            }
        }
    }
    Ok(())
}

/// Writes a checkpoint atomically (temporary file, sync, rename), after
/// decoding it with every check of [`load`]: a checkpoint that could not be
/// resumed is never written.
///
/// # Errors
///
/// [`Error::Checkpoint`] for a state the loader would refuse (the old file
/// is left as it was); [`Error::Io`] if writing fails.
pub fn save<T: Scalar>(path: &Path, run: &RunState<T>, mlp: &Mlp<T>) -> Result<()> {
    let here = |e| match e {
        Error::Checkpoint { reason, .. } => Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("not saved, it could not be resumed: {reason}"),
        },
        e => e,
    };
    let bytes = encode(run, mlp).map_err(here)?;
    decode::<T>(&bytes, path).map_err(here)?;
    crate::fs::write_atomic(path, &bytes)
}

/// Reads and checks a checkpoint. A path that is not a regular file (a
/// FIFO, a device, a directory) is refused before it is opened, so it never
/// blocks.
///
/// # Errors
///
/// [`Error::Io`] if it cannot be read or is not a regular file,
/// [`Error::Checkpoint`] if [`decode`] refuses it.
pub fn load<T: Scalar>(path: &Path) -> Result<Checkpoint<T>> {
    let bytes = crate::data::read_regular_file(path)?;
    decode(&bytes, path)
}
