//! `kfac-bench`: the optimizer race, the Fisher-fidelity study, the soak,
//! the adaptive-defaults study, the empirical-Fisher figures and the summary
//! of the criterion benchmarks. `cargo xtask bench` runs them (all but the
//! adaptive-defaults study).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kfac_bench::{criterion_summary, defaults, empirical_fisher, fidelity, race, soak};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kfac-bench", about = "The kfac race, fidelity study and benchmark summary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// SGD, Adam, K-FAC and EKFAC (true and empirical Fisher) on the MNIST
    /// autoencoder: race.json, race.md, race_steps.png, race_seconds.png.
    Race {
        /// 100 steps instead of 200.
        #[arg(long)]
        quick: bool,
        /// Steps per optimizer (overrides --quick).
        #[arg(long)]
        steps: Option<usize>,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory.
        #[arg(long, default_value = "target/kfac-bench")]
        out: PathBuf,
    },
    /// The exact Fisher blocks of a small autoencoder against K-FAC and
    /// EKFAC, and the middle layers' inverse Fisher against block-diagonal and
    /// block-tridiagonal K-FAC: fidelity.json, fidelity.png,
    /// fidelity_empirical.png, fidelity_chain.png.
    Fidelity {
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The damping of the inverses, relative to the mean eigenvalue tr(F)/P.
        #[arg(long, default_value_t = 0.1)]
        relative_damping: f64,
        /// Output directory.
        #[arg(long, default_value = "target/kfac-bench")]
        out: PathBuf,
    },
    /// 10,000 EKFAC steps with damping 1e-8 on the digits classifier:
    /// soak.json, soak.md (the health report), soak.safetensors. Fails if a
    /// loss or a weight is not finite or the classifier did not learn.
    Soak {
        /// Steps.
        #[arg(long, default_value_t = 10_000)]
        steps: usize,
        /// Tikhonov damping.
        #[arg(long, default_value_t = 1e-8)]
        damping: f64,
        /// Output directory.
        #[arg(long, default_value = "target/kfac-bench")]
        out: PathBuf,
    },
    /// The study that chooses the adaptive defaults (omega and the initial
    /// lambda) on problems other than the race (72 runs, about 37 minutes of
    /// training on 2 cores): defaults.json, defaults.md.
    AdaptiveDefaults {
        /// Output directory.
        #[arg(long, default_value = "target/kfac-bench")]
        out: PathBuf,
    },
    /// Kunstner et al.'s figures on the empirical Fisher, computed with
    /// kfac-core's blocks (about 10 s, and 1.5 min more for the seed sweep):
    /// empirical_fisher.json, empirical_fisher.md, empirical_fisher.png,
    /// empirical_fisher_misspec.png.
    EmpiricalFisher {
        /// Seed of the data sets and the bootstrap (6: see the study's docs).
        #[arg(long, default_value_t = empirical_fisher::DEFAULT_SEED)]
        seed: u64,
        /// Also measure seeds 0 to N-1 (0: no sweep).
        #[arg(long, default_value_t = 10)]
        sweep: u64,
        /// The Euler step size of the trajectories (the authors' code: 1e-3;
        /// their appendix: 1e-4).
        #[arg(long, default_value_t = 1e-3)]
        step_size: f64,
        /// Output directory.
        #[arg(long, default_value = "target/kfac-bench")]
        out: PathBuf,
    },
    /// Gathers criterion's results into criterion.json and criterion.md.
    Summary {
        /// Criterion's output folder.
        #[arg(long, default_value = "target/criterion")]
        criterion: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "target/kfac-bench")]
        out: PathBuf,
    },
}

fn run(cli: Cli) -> kfac_nn::Result<()> {
    match cli.command {
        Command::Race { quick, steps, seed, out } => {
            let mut config = if quick { race::RaceConfig::quick() } else { race::RaceConfig::full() };
            if let Some(s) = steps {
                config.steps = s;
            }
            config.seed = seed;
            let result = race::run(&config, &mut |name, m| {
                eprintln!(
                    "race: {name:<16} final train loss {:8.3}, {:5.1} s ({:.4} s/step)",
                    m.final_loss,
                    m.seconds,
                    m.seconds / m.steps.len().max(1) as f64
                )
            })?;
            race::write(&out, &result)?;
            println!("{}", std::fs::read_to_string(out.join("race.md")).unwrap_or_default());
            println!("wrote {} (race.json, race.md, race_steps.png, race_seconds.png)", out.display());
        }
        Command::Fidelity { seed, relative_damping, out } => {
            if !(relative_damping.is_finite() && relative_damping > 0.0) {
                return Err(kfac_nn::Error::Config {
                    what: "relative-damping",
                    value: relative_damping.to_string(),
                    why: "must be positive".into(),
                });
            }
            let config = fidelity::FidelityConfig { seed, relative_damping, ..Default::default() };
            let study = fidelity::study(&config)?;
            fidelity::write(&out, &study)?;
            print!("{}", fidelity::table(&study));
            if let Some(c) = &study.chain {
                print!("\n{}", fidelity::chain_table(c));
            }
            println!("EKFAC never worse than K-FAC: {}", study.ekfac_never_worse());
            println!(
                "wrote {} (fidelity.json, fidelity.png, fidelity_empirical.png, fidelity_chain.png)",
                out.display()
            );
        }
        Command::Soak { steps, damping, out } => {
            let config = soak::SoakConfig { steps, damping, ..Default::default() };
            let result = soak::run(&config, &out)?;
            soak::write(&out, &result)?;
            print!("{}", soak::table(&result));
            let failures = result.failures();
            if !failures.is_empty() {
                return Err(kfac_nn::Error::Config {
                    what: "soak",
                    value: failures.join("; "),
                    why: "the soak failed".into(),
                });
            }
            println!("wrote {} (soak.json, soak.md, soak.safetensors)", out.display());
        }
        Command::AdaptiveDefaults { out } => {
            let config = defaults::DefaultsConfig::protocol();
            let study = defaults::run(&config, &mut |r| {
                eprintln!(
                    "adaptive-defaults: {:<20} {:<6} seed {} {:<34} score {:10.4} final {:10.4}{}",
                    r.problem,
                    r.optimizer.name(),
                    r.seed,
                    r.candidate,
                    r.score,
                    r.final_loss,
                    r.error.as_deref().map_or(String::new(), |e| format!(" failed: {e}"))
                )
            })?;
            defaults::write(&out, &study)?;
            print!("{}", defaults::table(&study));
            println!("wrote {} (defaults.json, defaults.md)", out.display());
        }
        Command::EmpiricalFisher { seed, sweep, step_size, out } => {
            let config = empirical_fisher::EmpiricalFisherConfig {
                seed,
                sweep_seeds: (0..sweep).collect(),
                step_size,
                ..Default::default()
            };
            let study = empirical_fisher::run(&config)?;
            empirical_fisher::write(&out, &study)?;
            print!("{}", empirical_fisher::table(&study));
            println!(
                "wrote {} (empirical_fisher.json, empirical_fisher.md, empirical_fisher.png, empirical_fisher_misspec.png)",
                out.display()
            );
        }
        Command::Summary { criterion, out } => {
            let n = criterion_summary::write(&criterion, &out)?;
            println!("{n} benchmarks summarised into {}", out.join("criterion.md").display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kfac-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
