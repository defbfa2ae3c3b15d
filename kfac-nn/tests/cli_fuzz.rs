//! A bounded fuzz of the command line (issue 22).
//!
//! Random option sets, each option drawn (when present) from its domain:
//! typical values, its edges, and malformed or out-of-range ones. Every
//! run must either train (exit 0, with complete and consistent outputs) or
//! exit 1 or 2 with a one-line error message; never panic (exit 101), die
//! of a signal, or run past a timeout; and it must leave no temporary file
//! and no inconsistent output (a `metrics.json` is always a complete one,
//! with its `metrics.csv` and `loss.png`; a checkpoint always loads).
//!
//! The runs are small (the 8×8 digits, a few steps, small batches), two at
//! a time. The generator is seeded (`KFAC_FUZZ_SEED`, default 22) and the
//! time budget is `KFAC_FUZZ_SECONDS` (default 60): the cases are the same
//! from run to run, and how many run depends on the machine's speed. Valid
//! step counts are kept small, so that a run that does not end is a hang,
//! not a long run (the huge ones are the subject of
//! `attack.rs::huge_step_counts_do_not_preallocate`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kfac_nn::rng::Rng;

/// A run that has not ended after this long is a hang.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Worker processes at a time.
const PARALLEL: usize = 2;

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len())]
}

/// Each option with its domain: values the parser takes (typical ones and
/// the edges of the range, some beyond it), and malformed ones, drawn
/// rarely (a malformed value ends the run at the parser).
const OPTIONS: &[(&str, &[&str], &[&str])] = &[
    ("--optimizer", &["sgd", "adam", "kfac", "ekfac"], &["lbfgs", ""]),
    ("--steps", &["1", "2", "3", "5", "8", "0"], &["-1", "x", "18446744073709551616"]),
    ("--batch-size", &["1", "2", "7", "32", "64", "100000", "0"], &["-3", "1.5"]),
    ("--lr", &["1e-3", "0.1", "1", "0", "-1", "1e-46", "3e38", "3.5e38", "1e308", "NaN", "inf", "-0"], &["x"]),
    ("--momentum", &["0", "0.5", "0.9", "0.99999999999", "1", "-0.1", "NaN"], &["high"]),
    ("--damping", &["0", "1e-12", "1e-3", "1", "1e30", "1e308", "-1", "NaN"], &[""]),
    ("--damping-kind", &["tikhonov", "factored"], &["other"]),
    ("--fisher", &["true", "empirical"], &["false"]),
    ("--decay", &["0", "0.5", "0.95", "1", "1.5", "-0.1"], &["x"]),
    ("--stats-period", &["1", "2", "3", "0"], &["99999999999999999999"]),
    ("--refresh-period", &["1", "2", "20", "0"], &["-2"]),
    ("--scalings-period", &["1", "3", "0"], &["x"]),
    ("--kl-clip", &["none", "off", "1", "1e-3", "1e30", "0", "-1", "big", "NaN"], &[]),
    ("--stats-fraction", &["1e-9", "0.25", "0.5", "1", "0", "1.5"], &["x"]),
    ("--l2", &["0", "1e-5", "1", "1e39", "-1"], &["x"]),
    ("--seed", &["0", "1", "7", "18446744073709551615"], &["-1"]),
    ("--backend", &["faer", "nalgebra"], &["lapack"]),
    ("--threads", &["1", "2", "3", "0", "9", "1000"], &["-1"]),
    ("--precision", &["f32", "f64"], &["f16"]),
    ("--parallelism", &["products", "shards"], &["none"]),
    ("--eval-every", &["1", "3", "20", "0", "18446744073709551615"], &["x"]),
    ("--on-non-finite", &["skip", "error"], &["ignore"]),
    ("--structure", &["diagonal", "tridiagonal"], &["dense"]),
];

/// The knobs of `--adaptive` (the parser refuses them without it).
const ADAPTIVE: &[(&str, &[&str], &[&str])] = &[
    ("--adaptive-lambda", &["auto", "0", "1", "150", "-1", "1e308", "x"], &[]),
    ("--adaptive-omega", &["0.5", "0.9", "0.95", "0", "1", "1.5"], &["x"]),
    ("--adaptive-t1", &["1", "2", "5", "0", "2147483648"], &["-1"]),
    ("--adaptive-t2", &["1", "3", "20", "0", "4294967296"], &["x"]),
    ("--adaptive-gamma", &["1e-3", "1", "0", "-1"], &["x"]),
    ("--adaptive-bounds", &["1e-8,1e8", "1e-3,1e3", "1,0", "0,1e308", "5", "-1,5", "1,2,3"], &["a,b"]),
    ("--adaptive-reject", &["true", "false"], &["maybe"]),
];

/// One case: the arguments, and what to check afterwards.
struct Case {
    args: Vec<String>,
    dir: PathBuf,
    out: PathBuf,
    save: Option<PathBuf>,
    compare: bool,
    precision_f64: bool,
    /// Run it twice: with `--save` first, then resumed with two more steps.
    resume: bool,
}

fn case(seed: u64, index: usize, root: &Path) -> Case {
    let mut rng = Rng::stream(seed, index as u64);
    let dir = root.join(format!("case{index}"));
    std::fs::create_dir_all(&dir).unwrap();
    let compare = rng.uniform() < 0.1;
    // Options by name (clap refuses one given twice), then flags.
    let mut opts: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| {
        opts.retain(|(n, _)| n != name);
        opts.push((name.into(), value.into()));
    };
    for (name, value) in [("--task", "classifier"), ("--steps", "3"), ("--batch-size", "32")] {
        set(name, value);
    }
    let mut precision_f64 = false;
    let adaptive = rng.uniform() < 0.3;
    let knobs = OPTIONS.iter().chain(if adaptive { ADAPTIVE } else { &[] });
    for (name, good, bad) in knobs {
        if rng.uniform() < 0.2 {
            let v = if bad.is_empty() || rng.uniform() > 0.03 { pick(&mut rng, good) } else { pick(&mut rng, bad) };
            precision_f64 = if *name == "--precision" { v == "f64" } else { precision_f64 };
            set(name, v);
        }
    }
    // Now and then an adaptive knob without `--adaptive`.
    if !adaptive && rng.uniform() < 0.02 {
        set("--adaptive-omega", "0.9");
    }
    // The larger networks, with few steps and small batches whatever was
    // drawn above (their refreshes are the expensive part).
    if rng.uniform() < 0.05 {
        for (name, value) in
            [("--task", "autoencoder"), ("--dataset", "digits"), ("--batch-size", "16"), ("--steps", "2")]
        {
            set(name, value);
        }
    } else if rng.uniform() < 0.03 {
        for (name, value) in [("--dataset", "mnist5k"), ("--steps", "2"), ("--batch-size", "64")] {
            set(name, value);
        }
    }
    if compare && rng.uniform() < 0.5 {
        set("--optimizers", pick(&mut rng, &["sgd,adam", "kfac,ekfac", "sgd", "", "adam,,sgd", "sgd,x"]));
    }
    let mut args: Vec<String> = vec![if compare { "compare" } else { "train" }.into()];
    for (n, v) in opts {
        args.push(n);
        args.push(v);
    }
    args.push("--quiet".into());
    if adaptive {
        args.push("--adaptive".into());
    }
    if rng.uniform() < 0.2 {
        args.push("--nesterov".into());
    }
    let out = match rng.below(10) {
        0 => {
            std::fs::write(dir.join("a-file"), b"x").unwrap();
            dir.join("a-file")
        }
        1 => dir.join("deep/er/out"),
        _ => dir.join("out"),
    };
    args.push("--out".into());
    args.push(out.display().to_string());
    let mut save = None;
    let resume = !compare && rng.uniform() < 0.15;
    if !compare && (resume || rng.uniform() < 0.25) {
        let target = match rng.below(8) {
            0 => dir.join("missing/ck.safetensors"),
            1 => out.join("metrics.json"),
            2 => dir.clone(),
            _ => dir.join("ck.safetensors"),
        };
        args.push("--save".into());
        args.push(target.display().to_string());
        if rng.uniform() < 0.5 {
            args.push("--save-every".into());
            args.push(pick(&mut rng, &["1", "2", "0", "-1"]).into());
        }
        save = Some(target);
    }
    if !compare && !resume && rng.uniform() < 0.05 {
        let junk = dir.join("junk.safetensors");
        std::fs::write(&junk, b"not a checkpoint").unwrap();
        args.push("--resume".into());
        args.push(junk.display().to_string());
    }
    Case { args, dir, out, save, compare, precision_f64, resume }
}

/// Files whose name marks them as temporary, anywhere under `dir`.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return found };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(temporaries(&p));
        } else if p.file_name().is_some_and(|n| n.to_string_lossy().contains(".tmp")) {
            found.push(p);
        }
    }
    found
}

/// Runs `args`; the exit code and standard error, or why it failed.
fn run(args: &[String]) -> Result<(i32, String), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kfac"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = reader.join().unwrap_or_default();
    let code = status.code().ok_or_else(|| format!("killed by a signal: {status:?}: {stderr}"))?;
    Ok((code, stderr))
}

/// The message rules: no panic; exit 1 ends with one `error:` line (after
/// any warnings); exit 2 (clap) starts with one.
fn check_message(code: i32, stderr: &str) -> Result<(), String> {
    if stderr.contains("panicked") || code == 101 {
        return Err(format!("panic: {stderr}"));
    }
    let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
    match code {
        0 => Ok(()),
        1 if errors == 1 && stderr.trim_end().lines().last().is_some_and(|l| l.starts_with("error: ")) => Ok(()),
        2 if stderr.starts_with("error:") => Ok(()),
        _ => Err(format!("exit {code} with: {stderr}")),
    }
}

/// A `metrics.json` in `dir`, if any, is complete, and its CSV and plot
/// are beside it; with `steps`, it has that many records.
fn check_run_dir(dir: &Path, steps: Option<usize>) -> Result<(), String> {
    let json = dir.join("metrics.json");
    if !json.exists() {
        return if steps.is_some() { Err(format!("{}: missing", json.display())) } else { Ok(()) };
    }
    let text = std::fs::read_to_string(&json).map_err(|e| e.to_string())?;
    let m: kfac_nn::train::Metrics = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    if let Some(n) = steps
        && m.steps.len() != n
    {
        return Err(format!("{} records, {n} steps", m.steps.len()));
    }
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).map_err(|e| format!("metrics.csv: {e}"))?;
    if csv.lines().count() != m.steps.len() + 1 {
        return Err("metrics.csv does not match metrics.json".into());
    }
    let png = std::fs::read(dir.join("loss.png")).map_err(|e| format!("loss.png: {e}"))?;
    if !png.starts_with(b"\x89PNG") {
        return Err("loss.png is not a PNG".into());
    }
    Ok(())
}

fn check_outputs(c: &Case, code: i32, steps: usize) -> Result<(), String> {
    let tmp = temporaries(&c.dir);
    if !tmp.is_empty() {
        return Err(format!("temporary files left: {tmp:?}"));
    }
    if c.compare {
        if code == 0 {
            let t = std::fs::read_to_string(c.out.join("compare.json")).map_err(|e| format!("compare.json: {e}"))?;
            serde_json::from_str::<serde_json::Value>(&t).map_err(|e| format!("compare.json: {e}"))?;
        }
        for opt in ["sgd", "adam", "kfac", "ekfac"] {
            check_run_dir(&c.out.join(opt), None)?;
        }
        return Ok(());
    }
    check_run_dir(&c.out, (code == 0).then_some(steps))?;
    if let Some(save) = c.save.as_ref().filter(|p| p.is_file()) {
        let ok = if c.precision_f64 {
            kfac_nn::checkpoint::load::<f64>(save).map(|_| ())
        } else {
            kfac_nn::checkpoint::load::<f32>(save).map(|_| ())
        };
        ok.map_err(|e| format!("the checkpoint does not load: {e}"))?;
    }
    Ok(())
}

/// The value of `--steps` in `args`.
fn steps_of(args: &[String]) -> usize {
    args.windows(2).find(|w| w[0] == "--steps").and_then(|w| w[1].parse().ok()).unwrap_or(0)
}

fn one(c: &Case) -> Result<(i32, String), String> {
    let (code, stderr) = run(&c.args)?;
    check_message(code, &stderr)?;
    check_outputs(c, code, steps_of(&c.args))?;
    if c.resume && code == 0 {
        let steps = steps_of(&c.args) + 2;
        let mut args = c.args.clone();
        let at = args.iter().position(|a| a == "--steps").unwrap() + 1;
        args[at] = steps.to_string();
        args.push("--resume".into());
        args.push(c.save.as_ref().unwrap().display().to_string());
        let (code2, stderr2) = run(&args)?;
        check_message(code2, &stderr2)?;
        if code2 != 0 {
            return Err(format!("the resume of a successful run failed: {stderr2}"));
        }
        check_outputs(c, code2, steps)?;
    }
    Ok((code, stderr))
}

#[test]
fn the_command_line_survives_random_options() {
    let seed = std::env::var("KFAC_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(22);
    let budget = std::env::var("KFAC_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60.0);
    let root = std::env::temp_dir().join(format!("kfac-cli-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let codes = Mutex::new([0usize; 3]);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                while start.elapsed().as_secs_f64() < budget {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let c = case(seed, i, &root);
                    match one(&c) {
                        Ok((code, _)) => {
                            codes.lock().unwrap()[code as usize] += 1;
                            let _ = std::fs::remove_dir_all(&c.dir);
                        }
                        Err(why) => failures.lock().unwrap().push(format!("case {i}: {:?}: {why}", c.args)),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let codes = codes.into_inner().unwrap();
    eprintln!(
        "cli fuzz (seed {seed}): {} cases in {:.0} s: {} trained, {} exit 1, {} exit 2, {} failed",
        next.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        codes[0],
        codes[1],
        codes[2],
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures; the first:\n{}",
        failures.len(),
        failures[..failures.len().min(8)].join("\n")
    );
    let _ = std::fs::remove_dir_all(&root);
}
