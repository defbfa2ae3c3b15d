//! `cargo xtask`: the project's automation, in Rust so that it runs wherever
//! cargo does.
//!
//! - `cargo xtask test`: formatting, clippy with warnings denied, the tests of
//!   every crate (both backends, both precisions: the conformance suite
//!   instantiates each pair; the `kfac` facade is tested with each backend
//!   feature), and the docs with warnings denied.
//! - `cargo xtask ci`: what `.ci/run` calls; currently `test`.

use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let result = match task {
        "test" | "ci" => test(),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|ci>\n  test  fmt, clippy -D warnings, all tests (both backends), docs -D warnings\n  ci    what .ci/run calls (= test)"
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
    cmd.args(step.args);
    for (k, v) in step.env {
        cmd.env(k, v);
    }
    let status = cmd.status().map_err(|e| format!("{}: could not start cargo: {e}", step.name))?;
    eprintln!("<== {} ({:.0} s)", step.name, start.elapsed().as_secs_f64());
    if status.success() { Ok(()) } else { Err(format!("{} failed ({status})", step.name)) }
}

fn test() -> Result<(), String> {
    let steps = [
        Step { name: "format", args: &["fmt", "--all", "--check"], env: &[] },
        Step { name: "clippy", args: &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], env: &[] },
        Step { name: "tests (faer default)", args: &["test", "--workspace"], env: &[] },
        Step {
            name: "tests (kfac facade, nalgebra feature only)",
            args: &["test", "-p", "kfac", "--no-default-features", "--features", "nalgebra"],
            env: &[],
        },
        Step {
            name: "tests (kfac-nn, nalgebra feature only)",
            args: &["test", "-p", "kfac-nn", "--no-default-features", "--features", "nalgebra"],
            env: &[],
        },
        Step {
            name: "docs",
            args: &["doc", "--workspace", "--no-deps", "--all-features"],
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
