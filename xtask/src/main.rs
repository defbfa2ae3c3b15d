//! `cargo xtask`: the project's automation, in Rust so that it runs wherever
//! cargo does.
//!
//! - `cargo xtask test`: formatting, clippy with warnings denied, the tests of
//!   every crate (both backends, both precisions: the conformance suite
//!   instantiates each pair; the `kfac` facade is tested with each backend
//!   feature), and the docs with warnings denied.
//! - `cargo xtask bench [--quick]`: the criterion benchmarks, the optimizer
//!   race, the Fisher-fidelity study, the soak and the empirical-Fisher
//!   figures (Kunstner et al.); everything lands in
//!   `target/kfac-bench/` (see the README). `--quick` shortens the criterion
//!   measurements and runs the race for 100 steps instead of 200.
//! - `cargo xtask mpi`: the `kfac-mpi` crate, which needs Open MPI and
//!   libclang (`.ci/run` installs them): clippy, its test binary (which
//!   relaunches itself under `mpirun -np 2`) and its docs. `test` leaves
//!   it out, so that a machine without MPI can run `test`.
//! - `cargo xtask ci`: what `.ci/run` calls: `test`, then `mpi`.
//!
//! `kfac-candle` is left out of `test` (candle's build is heavy on the
//! 2-core machines); `.ci/run` builds, lints and tests it in a step of its own.

use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let result = match task {
        "test" => test(),
        "mpi" => mpi(),
        "ci" => test().and_then(|()| mpi()),
        "bench" => bench(args[1..].iter().any(|a| a == "--quick")),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|mpi|bench [--quick]|ci>\n  test   fmt, clippy -D warnings, all tests (both backends), docs -D warnings (all crates but kfac-mpi)\n  mpi    kfac-mpi and `kfac train` over MPI (needs Open MPI and libclang): clippy, tests under mpirun -np 2, docs\n  bench  criterion benchmarks, the optimizer race, the fidelity study, the soak, the empirical-Fisher figures -> target/kfac-bench/\n  ci     what .ci/run calls (test, then mpi)"
            );
            return if task == "help" || task == "--help" { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One step: a command with its arguments and extra environment.
struct Step<'a> {
    name: &'a str,
    args: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
}

fn run(step: &Step<'_>) -> Result<(), String> {
    let start = Instant::now();
    eprintln!("==> {}: cargo {}", step.name, step.args.join(" "));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(step.args).current_dir(root());
    for (k, v) in step.env {
        cmd.env(k, v);
    }
    let status = cmd.status().map_err(|e| format!("{}: could not start cargo: {e}", step.name))?;
    eprintln!("<== {} ({:.0} s)", step.name, start.elapsed().as_secs_f64());
    if status.success() { Ok(()) } else { Err(format!("{} failed ({status})", step.name)) }
}

/// The workspace root (xtask lives one level below it).
fn root() -> std::path::PathBuf {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(std::path::Path::to_path_buf).unwrap_or(manifest)
}

/// A few lines about the machine, written beside the results.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc =
        Command::new("rustc").arg("-V").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    format!("cpu: {cpu}\nthreads: {threads}\nrustc: {}\n", rustc.unwrap_or_default())
}

fn bench(quick: bool) -> Result<(), String> {
    let root = root();
    let out = root.join("target/kfac-bench");
    let criterion = root.join("target/criterion");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let out_s = out.to_string_lossy().into_owned();
    let crit_s = criterion.to_string_lossy().into_owned();
    let mut criterion_args = vec![
        "bench",
        "-p",
        "kfac-bench",
        "--bench",
        "linalg",
        "--bench",
        "mlp",
        "--bench",
        "optim",
        "--bench",
        "conv",
        "--",
    ];
    if quick {
        criterion_args.extend(["--warm-up-time", "0.5", "--measurement-time", "1"]);
    }
    let quick_flag = if quick { "1" } else { "0" };
    let studies_env: &[(&str, &str)] = &[
        ("KFAC_BENCH_STUDIES", "1"),
        ("KFAC_BENCH_QUICK", quick_flag),
        ("KFAC_BENCH_OUT", &out_s),
        ("KFAC_CRITERION_DIR", &crit_s),
    ];
    // The studies are a `harness = false` bench target, so they reuse the
    // benchmarks' build instead of compiling the workspace a second time.
    let steps = [
        Step { name: "criterion benchmarks", args: &criterion_args, env: &[("CRITERION_HOME", &crit_s)] },
        Step {
            name: "optimizer race, fidelity study, soak, empirical-Fisher figures, criterion summary",
            args: &["bench", "-p", "kfac-bench", "--bench", "studies"],
            env: studies_env,
        },
    ];
    let start = Instant::now();
    for s in &steps {
        run(s)?;
    }
    std::fs::write(out.join("machine.txt"), machine()).map_err(|e| format!("machine.txt: {e}"))?;
    eprintln!(
        "xtask bench{}: done in {:.0} s; results in {} (race.json, race_*.png, fidelity.json, fidelity*.png, soak.json, empirical_fisher*.png, empirical_fisher.json, empirical_fisher.md, criterion.json, criterion.md, machine.txt)",
        if quick { " --quick" } else { "" },
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn mpi() -> Result<(), String> {
    let steps = [
        Step {
            name: "clippy (kfac-mpi)",
            args: &["clippy", "-p", "kfac-mpi", "--all-targets", "--", "-D", "warnings"],
            env: &[],
        },
        Step { name: "tests (kfac-mpi, under mpirun -np 2)", args: &["test", "-p", "kfac-mpi"], env: &[] },
        Step {
            name: "clippy (kfac-nn with MPI)",
            args: &["clippy", "-p", "kfac-nn", "--features", "mpi", "--all-targets", "--", "-D", "warnings"],
            env: &[],
        },
        Step {
            name: "tests (mpirun -np 2 kfac train against one process)",
            args: &["test", "-p", "kfac-nn", "--features", "mpi", "--test", "mpi", "--", "--test-threads=1"],
            env: &[],
        },
        Step {
            name: "docs (kfac-mpi)",
            args: &["doc", "-p", "kfac-mpi", "--no-deps"],
            env: &[("RUSTDOCFLAGS", "-D warnings")],
        },
    ];
    let start = Instant::now();
    for s in &steps {
        run(s)?;
    }
    eprintln!("xtask mpi: all {} steps passed in {:.0} s", steps.len(), start.elapsed().as_secs_f64());
    Ok(())
}

fn test() -> Result<(), String> {
    let steps = [
        Step { name: "format", args: &["fmt", "--all", "--check"], env: &[] },
        Step {
            name: "clippy",
            args: &[
                "clippy",
                "--workspace",
                "--exclude",
                "kfac-mpi",
                "--exclude",
                "kfac-candle",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            env: &[],
        },
        Step {
            name: "tests (faer default)",
            args: &["test", "--workspace", "--exclude", "kfac-mpi", "--exclude", "kfac-candle"],
            env: &[],
        },
        Step {
            name: "tests (kfac facade, nalgebra feature only)",
            args: &["test", "-p", "kfac", "--no-default-features", "--features", "nalgebra"],
            env: &[],
        },
        Step {
            name: "tests (kfac-nn, nalgebra feature only)",
            args: &["test", "-p", "kfac-nn", "--no-default-features", "--features", "nalgebra,cli"],
            env: &[],
        },
        Step {
            name: "docs",
            args: &[
                "doc",
                "--workspace",
                "--exclude",
                "kfac-mpi",
                "--exclude",
                "kfac-candle",
                "--no-deps",
                "--all-features",
            ],
            env: &[("RUSTDOCFLAGS", "-D warnings")],
        },
    ];
    let start = Instant::now();
    for s in &steps {
        run(s)?;
    }
    eprintln!("xtask test: all {} steps passed in {:.0} s", steps.len(), start.elapsed().as_secs_f64());
    Ok(())
}
