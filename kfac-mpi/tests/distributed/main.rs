//! Data-parallel K-FAC and EKFAC over MPI, against one process.
//!
//! A harness-free test binary (MPI allows one initialisation per process).
//! Run plainly (`cargo test -p kfac-mpi`), it is the driver: it relaunches
//! itself under `mpirun -np 2` for the suite and for each fault, and prints
//! `N passed, N failed`. Under `mpirun` (`OMPI_COMM_WORLD_SIZE` set) it runs
//! what its argument names: `suite`, or a fault (`exit`, `kill`, `abort`).

mod compare;
mod faults;
mod net;
mod suite;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let under_mpirun = std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() || std::env::var_os("PMI_SIZE").is_some();
    let (passed, failed) = if under_mpirun {
        match args.first().map(String::as_str) {
            Some("suite") | None => suite::run(),
            Some(fault) => faults::on_rank(fault),
        }
    } else {
        faults::drive()
    };
    if !under_mpirun || std::env::var("OMPI_COMM_WORLD_RANK").as_deref() == Ok("0") {
        println!("{passed} passed, {failed} failed");
    }
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
