//! Writing results: `metrics.json` / `metrics.csv`, comparison tables and
//! plots.
//!
//! Every file is written atomically ([`write_atomic`], see [`crate::fs`]
//! for targets, modes, temporary files and the completion marker).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::fs::{Staged, commit_all, stage, stage_bytes};
pub use crate::fs::{
    check_output_dir, check_output_file, destination, ensure_dir, remove_temporaries, resolved, write_atomic,
};
use crate::records::Metrics;

/// The font used for the plots' text (DejaVu Sans, embedded; its licence is
/// in `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font as `"sans-serif"` for plotters, once per
/// process. Call it before drawing any text.
pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Registration only fails for unparsable font data; the embedded
        // font parses (checked by the tests), so the result is ignored.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The files [`write_run`] writes, `metrics.json` (written last) first.
pub const RUN_FILES: [&str; 3] = ["metrics.json", "metrics.csv", "loss.png"];

/// The files [`write_comparison`] writes, `compare.json` (written last) first.
pub const COMPARISON_FILES: [&str; 3] = ["compare.json", "compare_steps.png", "compare_seconds.png"];

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
    let title = format!("{} on {:?}", metrics.config.optimizer.name(), metrics.config.task);
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
    let integral = series.iter().flat_map(|(_, s)| s.iter()).all(|p| p.0.fract() == 0.0);
    let (y_lo, y_hi) = (y0 * 0.95, y1 * 1.05);
    let (y_major, y_minor) = log_ticks(y_lo, y_hi);
    let err = |e: &dyn std::fmt::Display| Error::Plot { path: path.to_path_buf(), reason: e.to_string() };
    {
        let root = BitMapBackend::new(tmp, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, (y_lo..y_hi).log_scale().with_key_points(y_major).with_light_points(y_minor))
            .map_err(|e| err(&e))?;
        let integer_label = |x: &f64| format!("{x:.0}");
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_label)
            .y_desc("loss (log scale)")
            .label_style(("sans-serif", 15))
            .y_label_formatter(&|y| log_tick_label(*y));
        if integral {
            // At most one label per integer, so that no two read the same.
            mesh.x_labels(((x1 - x0) as usize + 1).min(10)).x_label_formatter(&integer_label);
        }
        mesh.draw().map_err(|e| err(&e))?;
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

/// Ticks of a logarithmic axis over `[lo, hi]` (`0 < lo < hi`): labelled
/// ticks at $m \cdot 10^k$ for $m \in \{1, 2, 5\}$ (every $m$ from 1 to 9 when
/// that gives fewer than three), and light grid lines at every
/// $m \cdot 10^k$, $m = 1, \dots, 9$.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let in_range = |v: &f64| *v >= lo && *v <= hi;
    let decades = lo.log10().floor() as i32..=hi.log10().ceil() as i32;
    let at = |ms: &[f64]| -> Vec<f64> {
        decades.clone().flat_map(|k| ms.iter().map(move |m| m * 10f64.powi(k))).filter(in_range).collect()
    };
    let all: Vec<f64> = at(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    let major = at(&[1.0, 2.0, 5.0]);
    if major.len() < 3 { (all.clone(), all) } else { (major, all) }
}

/// A tick of a logarithmic axis written with the decimals it needs and no
/// more: 200, 5, 0.5, 0.02.
fn log_tick_label(v: f64) -> String {
    let decimals = (-(v.log10() + 1e-9).floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// One row of the comparison table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ComparisonRow {
    /// The optimizer.
    pub optimizer: String,
    /// Its learning rate (`None` for the adaptive rule, which has none).
    #[serde(with = "crate::nonfinite::option")]
    pub lr: Option<f64>,
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
                optimizer: m.config.optimizer.name().into(),
                lr: m.config.optimizer.lr(),
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
            .map(|m| (m.config.optimizer.name().to_string(), m.steps.iter().map(|s| (f(s), s.loss)).collect()))
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
            r.optimizer,
            r.lr.map_or_else(|| "adaptive".to_string(), |l| l.to_string()),
            r.final_loss,
            r.final_test_loss,
            r.seconds,
            r.median_step_seconds,
            r.step_cost_ratio
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Log axes label 1-2-5 ticks once each, with no trailing zeros.
    #[test]
    fn log_axes_have_distinct_clean_labels() {
        for (lo, hi) in [(52.0, 1150.0), (0.0007, 5.0), (60.0, 190.0), (0.9, 1.1)] {
            let (major, minor) = log_ticks(lo, hi);
            let labels: Vec<String> = major.iter().map(|&v| log_tick_label(v)).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique, labels, "{lo}..{hi}");
            assert!(major.iter().all(|v| minor.contains(v)));
            assert!(major.iter().all(|&v| v >= lo && v <= hi));
        }
        let (major, _) = log_ticks(52.0, 1150.0);
        let labels: Vec<String> = major.iter().map(|&v| log_tick_label(v)).collect();
        assert_eq!(labels, ["100", "200", "500", "1000"]);
        let (major, _) = log_ticks(0.0007, 5.0);
        let labels: Vec<String> = major.iter().map(|&v| log_tick_label(v)).collect();
        assert_eq!(labels, ["0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "5"]);
    }
}
