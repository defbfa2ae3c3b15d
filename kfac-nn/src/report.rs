//! Writing results: atomic files, `metrics.json` / `metrics.csv`, and plots.
//!
//! Every file is written to a temporary name in the same directory, synced
//! to disk and renamed over the target, so a crash never leaves a truncated
//! file behind and an existing file is replaced only by a complete one.
//!
//! - **Targets.** A target must be a regular file or not exist: a
//!   directory, a FIFO, a device or a socket is refused
//!   ([`destination`]), and is never replaced. A symbolic link is followed:
//!   the file it names is replaced (atomically, in that file's directory)
//!   and the link stays; a dangling link is refused.
//! - **Modes.** A replaced file keeps its permission bits (a checkpoint
//!   made private with `chmod 600` stays so). A new file gets the default
//!   of the process, `0666` less the umask (`0644` with the usual umask
//!   `022`).
//! - **Temporary files** are named `.<start of the name>.<pid>.<n>.tmp`
//!   (with the target's extension when it is short, which the plotting
//!   library needs): at most 80 bytes, so any legal target name works. A
//!   failed write (a full disk, say) removes its temporary file;
//!   [`remove_temporaries`] removes those in progress (the command calls
//!   it on SIGINT and SIGTERM). Only a process killed outright (SIGKILL,
//!   a power cut) can leave one behind.
//! - **Completion.** [`write_run`] writes `metrics.json` last, and removes
//!   the previous one first: a directory whose `metrics.json` exists holds
//!   the `metrics.csv` and `loss.png` of the same run. [`write_comparison`]
//!   does the same with `compare.json`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::train::Metrics;

/// The font used for the plots' text (DejaVu Sans, embedded; its licence is
/// in `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Registration only fails for unparsable font data; the embedded
        // font parses (checked by the tests), so the result is ignored.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The temporary files being written, and whether new ones are refused
/// (after [`remove_temporaries`]).
static TEMPORARIES: Mutex<(Vec<PathBuf>, bool)> = Mutex::new((Vec::new(), false));

fn temporaries() -> std::sync::MutexGuard<'static, (Vec<PathBuf>, bool)> {
    TEMPORARIES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes every temporary file being written and refuses new ones: what
/// the command does when it is interrupted (SIGINT, SIGTERM) before it
/// exits. Writes in progress then fail; the files they were replacing are
/// left as they were.
pub fn remove_temporaries() {
    let mut t = temporaries();
    t.1 = true;
    for p in t.0.drain(..) {
        let _ = fs::remove_file(p);
    }
}

/// A temporary file beside `dest`: created (so it exists, empty), and
/// removed on drop unless it was renamed over its target.
struct Temporary {
    path: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Temporary {
    /// A new temporary name in the directory of `dest` (the resolved
    /// target), registered for [`remove_temporaries`].
    fn beside(dest: &Path) -> std::io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut cut = name.len().min(32);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let ext = dest.extension().map(|e| e.to_string_lossy().into_owned()).filter(|e| e.len() <= 8);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = format!(
            ".{}.{}.{n}.tmp{}",
            &name[..cut],
            std::process::id(),
            ext.map(|e| format!(".{e}")).unwrap_or_default()
        );
        let path = dest.with_file_name(tmp);
        let mut t = temporaries();
        if t.1 {
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"));
        }
        t.0.push(path.clone());
        Ok(Self { path, dest: dest.to_path_buf(), done: false })
    }

    /// Syncs the temporary file and renames it over its target, then syncs
    /// the directory.
    fn commit(mut self) -> std::io::Result<()> {
        fs::File::open(&self.path)?.sync_all()?;
        fs::rename(&self.path, &self.dest)?;
        self.done = true;
        // Make the rename itself durable (a crash after it keeps the new file).
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        let mut t = temporaries();
        t.0.retain(|p| p != &self.path);
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn not_regular(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what} (a directory, FIFO, device or socket): refusing to replace it"),
    )
}

/// The file that writing `path` replaces: `path` itself if it is a regular
/// file or does not exist, the file a symbolic link names (which must be a
/// regular file) otherwise.
///
/// # Errors
///
/// [`Error::Io`] naming `path` if it is not a regular file, or a link to
/// something that is not, or a dangling link.
pub fn destination(path: &Path) -> Result<PathBuf> {
    let io = |e| Error::io(path, e);
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(io(e)),
        Ok(m) if m.file_type().is_symlink() => {
            let target = fs::canonicalize(path).map_err(|e| {
                io(std::io::Error::new(e.kind(), format!("a dangling symbolic link ({e}): refusing to follow it")))
            })?;
            match fs::metadata(&target) {
                Ok(t) if t.is_file() => Ok(target),
                Ok(_) => Err(io(not_regular(&format!("a symbolic link to {}, not a regular file", target.display())))),
                Err(e) => Err(io(e)),
            }
        }
        Ok(m) if m.is_file() => Ok(path.to_path_buf()),
        Ok(_) => Err(io(not_regular("not a regular file"))),
    }
}

/// A file written completely to a temporary name, renamed over its target
/// by [`Staged::commit`] (or removed, if dropped).
struct Staged {
    tmp: Temporary,
    target: PathBuf,
}

impl Staged {
    fn commit(self) -> Result<()> {
        let target = self.target;
        self.tmp.commit().map_err(|e| Error::io(&target, e))
    }
}

/// Writes a temporary file beside `path` (resolved by [`destination`]) with
/// `write`, which gets its name; `plot` names the target in plot errors.
fn stage(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<Staged> {
    let dest = destination(path)?;
    let tmp = Temporary::beside(&dest).map_err(|e| Error::io(path, e))?;
    write(&tmp.path)?;
    // The mode of the file it replaces.
    if let Ok(m) = fs::metadata(&dest) {
        fs::set_permissions(&tmp.path, m.permissions()).map_err(|e| Error::io(path, e))?;
    }
    Ok(Staged { tmp, target: path.to_path_buf() })
}

fn stage_bytes(path: &Path, bytes: &[u8]) -> Result<Staged> {
    stage(path, |tmp| {
        let mut f = fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
        f.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}

/// Replaces `path` by a complete file with `bytes`: write to a temporary
/// file beside it, sync, rename, sync the directory. A crash at any point
/// leaves either the old file or the new one, never a partial file. See
/// the [module docs](self) for targets, modes and temporary files.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    stage_bytes(path, bytes)?.commit()
}

/// Creates `dir` (and its parents) if needed.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Checks, before a run, that `dir` can receive `files`: it is (or is
/// created as) a directory in which a file can be written, and each of
/// `files` in it is a regular file or absent ([`destination`]).
///
/// # Errors
///
/// [`Error::Io`] naming what is wrong.
pub fn check_output_dir(dir: &Path, files: &[&str]) -> Result<()> {
    if let Ok(m) = fs::metadata(dir)
        && !m.is_dir()
    {
        return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory")));
    }
    ensure_dir(dir)?;
    probe(dir)?;
    for f in files {
        destination(&dir.join(f))?;
    }
    Ok(())
}

/// Checks, before a run, that `path` can be written: [`destination`]
/// accepts it and its directory exists and can receive a file. Returns the
/// file that will be replaced.
///
/// # Errors
///
/// [`Error::Io`] naming what is wrong.
pub fn check_output_file(path: &Path) -> Result<PathBuf> {
    let dest = destination(path)?;
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory")));
        }
        Err(e) => {
            return Err(Error::io(
                path,
                std::io::Error::new(e.kind(), format!("its directory {}: {e}", dir.display())),
            ));
        }
    }
    let tmp = Temporary::beside(&dest).map_err(|e| Error::io(path, e))?;
    fs::File::create(&tmp.path).map_err(|e| Error::io(path, e))?;
    Ok(dest)
}

/// Writes and removes a temporary file in `dir`.
fn probe(dir: &Path) -> Result<()> {
    let tmp = Temporary::beside(&dir.join("probe")).map_err(|e| Error::io(dir, e))?;
    fs::File::create(&tmp.path).map_err(|e| Error::io(dir, e))?;
    Ok(())
}

/// The path `p` will be written at, for comparing outputs: its resolved
/// destination with the directory made absolute.
pub fn resolved(p: &Path) -> Option<PathBuf> {
    let dest = destination(p).ok()?;
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(fs::canonicalize(dir).ok()?.join(dest.file_name()?))
}

/// The files [`write_run`] writes, `metrics.json` (written last) first.
pub const RUN_FILES: [&str; 3] = ["metrics.json", "metrics.csv", "loss.png"];

/// The files [`write_comparison`] writes, `compare.json` (written last) first.
pub const COMPARISON_FILES: [&str; 3] = ["compare.json", "compare_steps.png", "compare_seconds.png"];

/// Renames `staged` over their targets in order, after removing `marker`
/// (the last of them): until the last rename the directory has no marker.
fn commit_all(marker: &Path, staged: Vec<Staged>) -> Result<()> {
    match fs::remove_file(marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(marker, e)),
        _ => {}
    }
    for s in staged {
        s.commit()?;
    }
    Ok(())
}

/// Writes `metrics.json`, `metrics.csv` and `loss.png` into `dir`:
/// all three to temporary files first, then renamed with `metrics.json`
/// last (the run's completion marker; see the [module docs](self)).
pub fn write_run(dir: &Path, metrics: &Metrics) -> Result<()> {
    ensure_dir(dir)?;
    let json = stage_bytes(&dir.join("metrics.json"), serde_json::to_string_pretty(metrics)?.as_bytes())?;
    let mut csv = String::from("step,loss,seconds,test_loss,test_accuracy\n");
    let mut tests = metrics.test.iter().peekable();
    for s in &metrics.steps {
        let (tl, ta) = match tests.next_if(|t| t.step == s.step) {
            Some(t) => (t.loss.to_string(), t.accuracy.map(|a| a.to_string()).unwrap_or_default()),
            None => (String::new(), String::new()),
        };
        csv.push_str(&format!("{},{},{},{},{}\n", s.step, s.loss, s.seconds, tl, ta));
    }
    let csv = stage_bytes(&dir.join("metrics.csv"), csv.as_bytes())?;
    let train: Vec<(f64, f64)> = metrics.steps.iter().map(|s| (s.step as f64, s.loss)).collect();
    let test: Vec<(f64, f64)> = metrics.test.iter().map(|t| (t.step as f64, t.loss)).collect();
    let title = format!("{} on {:?}", metrics.config.optimizer.kind.name(), metrics.config.task);
    let series = [("train (batch)".into(), train), ("test".into(), test)];
    let png = stage_plot(&dir.join("loss.png"), &title, "step", &series)?;
    commit_all(&dir.join("metrics.json"), vec![csv, png, json])
}

/// A line plot of several series with a logarithmic loss axis, written
/// atomically as a PNG.
pub fn plot(path: &Path, title: &str, x_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    stage_plot(path, title, x_label, series)?.commit()
}

/// [`plot`] to a temporary file, not yet renamed.
fn stage_plot(path: &Path, title: &str, x_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<Staged> {
    stage(path, |tmp| draw_plot(tmp, path, title, x_label, series))
}

/// Draws [`plot`]'s image into the file `tmp`; `path` names it in errors.
fn draw_plot(tmp: &Path, path: &Path, title: &str, x_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    register_font();
    let finite = |v: f64| v.is_finite() && v > 0.0;
    let points = series.iter().flat_map(|(_, s)| s.iter()).filter(|p| finite(p.1) && p.0.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0.partial_cmp(&x1) != Some(std::cmp::Ordering::Less) {
        (x0, x1) = (0.0, 1.0);
    }
    if y0.partial_cmp(&y1) != Some(std::cmp::Ordering::Less) {
        (y0, y1) = (if y0.is_finite() { y0 * 0.5 } else { 0.1 }, if y1.is_finite() { y1 * 2.0 } else { 10.0 });
    }
    let err = |e: &dyn std::fmt::Display| Error::Plot { path: path.to_path_buf(), reason: e.to_string() };
    {
        let root = BitMapBackend::new(tmp, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, (y0 * 0.95..y1 * 1.05).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("loss (log scale)")
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| err(&e))?;
        let palette = [
            &BLUE,
            &RED,
            &GREEN,
            &MAGENTA,
            &CYAN,
            &BLACK,
            &RGBColor(255, 140, 0),
            &RGBColor(128, 0, 128),
            &RGBColor(139, 69, 19),
            &RGBColor(128, 128, 128),
        ];
        for (i, (name, s)) in series.iter().enumerate() {
            let color = palette[i % palette.len()];
            let pts: Vec<(f64, f64)> = s.iter().copied().filter(|p| finite(p.1)).collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(())
}

/// One row of the comparison table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ComparisonRow {
    /// The optimizer.
    pub optimizer: String,
    /// Its learning rate.
    #[serde(with = "crate::nonfinite")]
    pub lr: f64,
    /// Loss on the whole training split after the last step.
    #[serde(with = "crate::nonfinite")]
    pub final_loss: f64,
    /// Test loss after the last step.
    #[serde(with = "crate::nonfinite")]
    pub final_test_loss: f64,
    /// Training seconds.
    #[serde(with = "crate::nonfinite")]
    pub seconds: f64,
    /// Median seconds per step.
    #[serde(with = "crate::nonfinite")]
    pub median_step_seconds: f64,
    /// Median step time relative to the first optimizer's.
    #[serde(with = "crate::nonfinite")]
    pub step_cost_ratio: f64,
}

/// Median of the per-step durations of a run.
pub fn median_step_seconds(m: &Metrics) -> f64 {
    let mut d: Vec<f64> = m.steps.windows(2).map(|w| w[1].seconds - w[0].seconds).collect();
    if let Some(first) = m.steps.first() {
        d.push(first.seconds);
    }
    if d.is_empty() {
        return f64::NAN;
    }
    d.sort_by(f64::total_cmp);
    d[d.len() / 2]
}

/// Writes `compare.json`, `compare_steps.png` and `compare_seconds.png` into
/// `dir` and returns the table as text.
pub fn write_comparison(dir: &Path, runs: &[Metrics]) -> Result<String> {
    ensure_dir(dir)?;
    let base = runs.first().map(median_step_seconds).unwrap_or(f64::NAN);
    let rows: Vec<ComparisonRow> = runs
        .iter()
        .map(|m| {
            let med = median_step_seconds(m);
            ComparisonRow {
                optimizer: m.config.optimizer.kind.name().into(),
                lr: m.config.optimizer.lr,
                final_loss: m.final_loss,
                final_test_loss: m.final_test_loss,
                seconds: m.seconds,
                median_step_seconds: med,
                step_cost_ratio: med / base,
            }
        })
        .collect();
    let json = serde_json::json!({
        "task": runs.first().map(|m| m.config.task),
        "steps": runs.first().map(|m| m.config.steps),
        "batch_size": runs.first().map(|m| m.config.batch_size),
        "seed": runs.first().map(|m| m.config.seed),
        "threads": runs.first().map(|m| m.threads),
        "rows": rows,
    });
    let json = stage_bytes(&dir.join("compare.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    let by = |f: &dyn Fn(&crate::train::StepRecord) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        runs.iter()
            .map(|m| (m.config.optimizer.kind.name().to_string(), m.steps.iter().map(|s| (f(s), s.loss)).collect()))
            .collect()
    };
    let task = runs.first().map(|m| format!("{:?}", m.config.task)).unwrap_or_default();
    let title = format!("{task}: batch loss");
    let steps = stage_plot(&dir.join("compare_steps.png"), &title, "step", &by(&|s| s.step as f64))?;
    let seconds = stage_plot(&dir.join("compare_seconds.png"), &title, "seconds", &by(&|s| s.seconds))?;
    commit_all(&dir.join("compare.json"), vec![steps, seconds, json])?;
    let mut table = format!(
        "| optimizer | lr | final train loss | final test loss | seconds | median s/step | step cost vs {} |\n|---|---|---|---|---|---|---|\n",
        rows.first().map_or("-", |r| r.optimizer.as_str())
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:.1} | {:.4} | {:.2} |\n",
            r.optimizer, r.lr, r.final_loss, r.final_test_loss, r.seconds, r.median_step_seconds, r.step_cost_ratio
        ));
    }
    Ok(table)
}

/// One panel of [`heatmaps`]: a title, a matrix, and the magnitude drawn
/// darkest (entries are shown by $|x|$, see [`heatmaps`]).
#[derive(Debug, Clone)]
pub struct Panel {
    /// Shown above the panel.
    pub title: String,
    /// The matrix, row 0 at the top.
    pub matrix: ndarray::Array2<f64>,
    /// The magnitude that maps to the darkest colour (panels compared with
    /// each other should share it).
    pub scale: f64,
}

/// Draws rows of matrix panels as heatmaps of $\sqrt{|x| / \text{scale}}$
/// (white for 0, dark blue for `scale` and beyond; the square root keeps the
/// small off-diagonal structure visible), with a title and a label per row,
/// written atomically as a PNG. Each panel is `cell` pixels square; a
/// matrix larger than that is subsampled, a smaller one is drawn with
/// square blocks.
pub fn heatmaps(path: &Path, title: &str, rows: &[(String, Vec<Panel>)], cell: u32) -> Result<()> {
    stage(path, |tmp| draw_heatmaps(tmp, path, title, rows, cell))?.commit()
}

fn draw_heatmaps(tmp: &Path, path: &Path, title: &str, rows: &[(String, Vec<Panel>)], cell: u32) -> Result<()> {
    register_font();
    let cols = rows.iter().map(|(_, p)| p.len()).max().unwrap_or(0).max(1) as u32;
    let (label_w, title_h, caption_h, gap) = (170u32, 50u32, 26u32, 12u32);
    let width = label_w + cols * (cell + gap) + gap;
    let height = title_h + rows.len().max(1) as u32 * (cell + caption_h + gap) + gap;
    let err = |e: &dyn std::fmt::Display| Error::Plot { path: path.to_path_buf(), reason: e.to_string() };
    {
        let root = BitMapBackend::new(tmp, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let centre = |x: i32, w: u32| x + w as i32 / 2;
        let text = |size: u32| {
            TextStyle::from(("sans-serif", size).into_font()).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            ))
        };
        root.draw(&Text::new(title.to_string(), (width as i32 / 2, 12), text(22))).map_err(|e| err(&e))?;
        for (r, (label, panels)) in rows.iter().enumerate() {
            let y0 = (title_h + r as u32 * (cell + caption_h + gap)) as i32;
            let label_style = TextStyle::from(("sans-serif", 16).into_font());
            root.draw(&Text::new(label.clone(), (10, y0 + caption_h as i32 + cell as i32 / 2 - 8), label_style))
                .map_err(|e| err(&e))?;
            for (c, panel) in panels.iter().enumerate() {
                let x0 = (label_w + gap + c as u32 * (cell + gap)) as i32;
                root.draw(&Text::new(panel.title.clone(), (centre(x0, cell), y0 + 4), text(15)))
                    .map_err(|e| err(&e))?;
                let (m, n) = panel.matrix.dim();
                let top = y0 + caption_h as i32;
                let scale = if panel.scale > 0.0 && panel.scale.is_finite() { panel.scale } else { 1.0 };
                for py in 0..cell {
                    let i = (py as usize * m) / cell as usize;
                    for px in 0..cell {
                        let j = (px as usize * n) / cell as usize;
                        let v = panel.matrix.get((i, j)).copied().unwrap_or(0.0);
                        let t = if v.is_finite() { (v.abs() / scale).sqrt().min(1.0) } else { 1.0 };
                        // White to dark blue; non-finite entries in red.
                        let color = if v.is_finite() {
                            RGBColor(
                                (255.0 * (1.0 - t) + 8.0 * t) as u8,
                                (255.0 * (1.0 - t) + 29.0 * t) as u8,
                                (255.0 * (1.0 - t) + 88.0 * t) as u8,
                            )
                        } else {
                            RGBColor(220, 20, 20)
                        };
                        root.draw_pixel((x0 + px as i32, top + py as i32), &color).map_err(|e| err(&e))?;
                    }
                }
                root.draw(&Rectangle::new(
                    [(x0 - 1, top - 1), (x0 + cell as i32, top + cell as i32)],
                    BLACK.stroke_width(1),
                ))
                .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(())
}
