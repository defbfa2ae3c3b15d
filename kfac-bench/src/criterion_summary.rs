//! Collects criterion's results into one table: `criterion.json` and
//! `criterion.md`.
//!
//! Criterion writes `<target>/criterion/<group>/<function>/<value>/new/`
//! with `benchmark.json` (the identifiers and the throughput) and
//! `estimates.json` (the statistics, in nanoseconds). The summary keeps,
//! per benchmark, the median and the mean time and, where a throughput in
//! elements (FLOPs in our benchmarks) was declared, the rate at the median.

use std::fs;
use std::path::{Path, PathBuf};

use kfac_nn::report;
use kfac_nn::{Error, Result};
use serde_json::Value;

/// One benchmark's summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// `group/function/value`.
    pub id: String,
    /// The group (the operation).
    pub group: String,
    /// The function (the backend or variant).
    pub function: String,
    /// The parameter (the size).
    pub value: String,
    /// Median time in milliseconds.
    pub median_ms: f64,
    /// Mean time in milliseconds.
    pub mean_ms: f64,
    /// Elements (FLOPs) per second at the median, in units of 10⁹, when a throughput was declared.
    pub giga_per_second: Option<f64>,
}

fn find_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "new") && p.join("estimates.json").is_file() {
                out.push(p);
            } else {
                find_dirs(&p, out);
            }
        }
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(serde_json::from_str(&text)?)
}

/// Reads every benchmark under `criterion_dir` (criterion's output folder).
pub fn collect(criterion_dir: &Path) -> Result<Vec<Row>> {
    let mut dirs = vec![];
    find_dirs(criterion_dir, &mut dirs);
    let mut rows = vec![];
    for d in dirs {
        let bench = read_json(&d.join("benchmark.json"))?;
        let est = read_json(&d.join("estimates.json"))?;
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let point = |k: &str| est.get(k).and_then(|v| v.get("point_estimate")).and_then(Value::as_f64);
        let (Some(median), Some(mean)) = (point("median"), point("mean")) else { continue };
        let elements = bench.get("throughput").and_then(|t| t.get("Elements")).and_then(Value::as_f64);
        rows.push(Row {
            id: text(&bench, "full_id"),
            group: text(&bench, "group_id"),
            function: text(&bench, "function_id"),
            value: text(&bench, "value_str"),
            median_ms: median * 1e-6,
            mean_ms: mean * 1e-6,
            giga_per_second: elements.map(|e| e / median),
        });
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(rows)
}

/// The rows as a Markdown table, one line per benchmark.
pub fn table(rows: &[Row]) -> String {
    let mut t = String::from("| group | function | size | median ms | mean ms | G/s |\n|---|---|---|---|---|---|\n");
    for r in rows {
        let rate = r.giga_per_second.map_or(String::new(), |g| format!("{g:.1}"));
        t.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} | {} |\n",
            r.group, r.function, r.value, r.median_ms, r.mean_ms, rate
        ));
    }
    t
}

/// Collects `criterion_dir` and writes `criterion.json` and `criterion.md` into `out`.
pub fn write(criterion_dir: &Path, out: &Path) -> Result<usize> {
    let rows = collect(criterion_dir)?;
    report::ensure_dir(out)?;
    report::write_atomic(&out.join("criterion.json"), serde_json::to_string_pretty(&rows)?.as_bytes())?;
    report::write_atomic(&out.join("criterion.md"), table(&rows).as_bytes())?;
    Ok(rows.len())
}
