//! Not a criterion benchmark: the optimizer race, the Fisher-fidelity study,
//! the soak, the empirical-Fisher figures and the criterion summary, run
//! through `cargo bench` by `cargo xtask
//! bench` so that they share the benchmarks' build (one compilation).
//!
//! It runs only with `KFAC_BENCH_STUDIES=1` (a plain `cargo bench` skips
//! it: the race takes minutes). Other variables: `KFAC_BENCH_QUICK=1` (the
//! 100-step race), `KFAC_BENCH_OUT` (default `target/kfac-bench` in the
//! workspace), `KFAC_CRITERION_DIR` (criterion's output, default
//! `target/criterion`). The same studies are subcommands of the
//! `kfac-bench` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use kfac_bench::{criterion_summary, empirical_fisher, fidelity, race, soak};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn dir(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(default))
}

fn run() -> kfac_nn::Result<()> {
    let out = dir("KFAC_BENCH_OUT", "target/kfac-bench");
    let quick = std::env::var_os("KFAC_BENCH_QUICK").is_some_and(|v| v == "1");
    let config = if quick { race::RaceConfig::quick() } else { race::RaceConfig::full() };
    let result = race::run(&config, &mut |name, m| {
        eprintln!("race: {name:<16} final train loss {:8.3}, {:5.1} s", m.final_loss, m.seconds)
    })?;
    race::write(&out, &result)?;
    println!("{}", std::fs::read_to_string(out.join("race.md")).unwrap_or_default());
    let study = fidelity::study(&fidelity::FidelityConfig::default())?;
    fidelity::write(&out, &study)?;
    println!("{}", std::fs::read_to_string(out.join("fidelity.md")).unwrap_or_default());
    let soaked = soak::run(&soak::SoakConfig::default(), &out)?;
    soak::write(&out, &soaked)?;
    println!("{}", soak::table(&soaked));
    let failures = soaked.failures();
    if !failures.is_empty() {
        return Err(kfac_nn::Error::Config { what: "soak", value: failures.join("; "), why: "the soak failed".into() });
    }
    let ef = empirical_fisher::run(&empirical_fisher::EmpiricalFisherConfig::default())?;
    empirical_fisher::write(&out, &ef)?;
    println!("{}", empirical_fisher::table(&ef));
    let n = criterion_summary::write(&dir("KFAC_CRITERION_DIR", "target/criterion"), &out)?;
    println!("{n} criterion benchmarks summarised; results in {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var_os("KFAC_BENCH_STUDIES").is_none_or(|v| v != "1") {
        println!("studies: skipped (set KFAC_BENCH_STUDIES=1, or run `cargo xtask bench`)");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("studies: {e}");
            ExitCode::FAILURE
        }
    }
}
