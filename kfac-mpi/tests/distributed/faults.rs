//! The driver (run without `mpirun`), and the faults it provokes: a rank
//! that exits, is killed, or aborts in the middle of training must end the
//! whole job with an error, not leave the other rank waiting forever.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kfac_core::comm::{Communicator, Reducer, Reduction};
use kfac_core::optim::KfacConfig;
use kfac_linalg_faer::Faer;
use kfac_mpi::MpiCommunicator;

use super::net::train;

/// The longest a faulty job may take to stop.
const DEADLINE: Duration = Duration::from_secs(120);
/// The step at which rank 1 fails.
const FAULT_STEP: usize = 5;

/// `mpirun -np 2` of this binary with `arg`: exit status (None: still
/// running at the deadline, then killed) and the combined output.
fn launch(arg: &str) -> (Option<std::process::ExitStatus>, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mpirun = std::env::var("MPIRUN").unwrap_or_else(|_| "mpirun".into());
    let mut child = Command::new(mpirun)
        .args(["-np", "2", "--allow-run-as-root", "--bind-to", "none", "--oversubscribe"])
        .arg(exe)
        .arg(arg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (install openmpi-bin)");
    let start = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for mpirun") {
            Some(s) => break Some(s),
            None if start.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let out = child
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr));
    (status, out.unwrap_or_default())
}

/// The suite under `mpirun`, then each fault; returns the tally.
pub fn drive() -> (usize, usize) {
    let (status, out) = launch("suite");
    print!("{out}");
    let mut tally = out
        .lines()
        .rev()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w[..] {
                [p, "passed,", f, "failed"] => Some((p.parse().ok()?, f.parse().ok()?)),
                _ => None,
            }
        })
        .unwrap_or((0, 1));
    if !status.is_some_and(|s| s.success()) && tally.1 == 0 {
        tally.1 += 1;
    }
    for (fault, expect) in [("exit", None), ("kill", None), ("abort", Some("rank 1: simulated failure"))] {
        let start = Instant::now();
        let (status, out) = launch(fault);
        let secs = start.elapsed().as_secs_f64();
        let stopped = status.is_some_and(|s| !s.success());
        let said = expect.is_none_or(|m| out.contains(m));
        if stopped && said {
            println!("ok   a rank that fails ({fault}) stops the job with an error in {secs:.1} s ({status:?})");
            tally.0 += 1;
        } else {
            println!("FAIL a rank that fails ({fault}): status {status:?} after {secs:.1} s\n{out}");
            tally.1 += 1;
        }
    }
    tally
}

/// Trains on both ranks; rank 1 fails at [`FAULT_STEP`] as `fault` says,
/// rank 0 goes on (and would wait forever in its next collective).
pub fn on_rank(fault: &str) -> (usize, usize) {
    let comm = MpiCommunicator::new().expect("MPI");
    let reducer = Reducer::new(&comm, Reduction::Sum, 1).expect("reducer");
    let config = KfacConfig::ekfac();
    let part = [(comm.rank() * 32, 32)];
    for step in 1..10_000 {
        if comm.rank() == 1 && step == FAULT_STEP {
            match fault {
                "exit" => std::process::exit(3),
                "kill" => {
                    let _ = Command::new("kill").args(["-KILL", &std::process::id().to_string()]).status();
                }
                _ => {
                    eprintln!("rank 1: simulated failure");
                    comm.abort(2);
                }
            }
        }
        if let Err(e) = train::<f64>(&Faer::new(), &reducer, &config, 64, &part, step, None) {
            eprintln!("rank {}: {e}", comm.rank());
            comm.abort(1);
        }
    }
    let _ = comm.barrier();
    (0, 1)
}
