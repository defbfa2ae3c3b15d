//! The cases run on every rank under `mpirun -np 2`.

use kfac_core::comm::{Communicator, Reducer, Reduction, SingleProcess, check_agreement};
use kfac_core::optim::{AdaptiveConfig, KfacConfig};
use kfac_core::{LinAlg, Real};
use kfac_linalg_faer::Faer;
use kfac_mpi::MpiCommunicator;

use super::compare::{identical, relative_weight_diff};
use super::net::{Run, train};

const STEPS: usize = 50;
/// The global batch: four shards of 16.
const N: usize = 64;
const SHARD: usize = 16;

fn configs() -> Vec<(&'static str, KfacConfig)> {
    let short = |mut c: KfacConfig| {
        // Refreshes every 5 steps: ten refreshes, split between the owners.
        c.curvature.refresh_period = 5;
        c
    };
    vec![
        ("kfac fixed", short(KfacConfig::kfac())),
        ("ekfac fixed", short(KfacConfig::ekfac())),
        ("kfac adaptive", short(KfacConfig::kfac().with_adaptive(AdaptiveConfig::default()))),
        ("ekfac adaptive", short(KfacConfig::ekfac().with_adaptive(AdaptiveConfig::default()))),
    ]
}

/// The rows of `count` consecutive shards starting at shard `first`.
fn shards(first: usize, count: usize) -> Vec<(usize, usize)> {
    (first..first + count).map(|s| (s * SHARD, SHARD)).collect()
}

fn la<T: Real>() -> Faer
where
    Faer: LinAlg<T>,
{
    Faer::new()
}

/// `Reduction::Ordered`, two shards per rank, against one process holding
/// all four: identical to the last bit.
fn ordered_is_bitwise<T: Real>(comm: &dyn Communicator, config: &KfacConfig) -> Result<String, String>
where
    Faer: LinAlg<T>,
{
    let err = |e: kfac_core::Error| e.to_string();
    let per_rank = N / SHARD / comm.size();
    let reducer = Reducer::new(comm, Reduction::Ordered, per_rank).map_err(err)?;
    let run: Run<T> =
        train(&la::<T>(), &reducer, config, N, &shards(comm.rank() * per_rank, per_rank), STEPS, None).map_err(err)?;
    let single = Reducer::new(&SingleProcess, Reduction::Ordered, N / SHARD).map_err(err)?;
    let reference: Run<T> = train(&la::<T>(), &single, config, N, &shards(0, N / SHARD), STEPS, None).map_err(err)?;
    identical(&run, &reference)?;
    Ok(format!("final loss {:.6e}", run.losses[STEPS - 1]))
}

/// The tolerance of `Reduction::Sum` against one process after 50 steps,
/// relative to the largest weight: $\sqrt{\epsilon}$ of `T`, half the digits.
fn sum_tolerance<T: Real>() -> f64 {
    T::EPSILON.to_f64_exact().sqrt()
}

/// `Reduction::Sum`, one half of the batch per rank, against one process
/// stepping on the whole batch (`KfacOptimizer::step`'s arithmetic).
fn sum_is_close<T: Real>(comm: &dyn Communicator, config: &KfacConfig) -> Result<String, String>
where
    Faer: LinAlg<T>,
{
    let err = |e: kfac_core::Error| e.to_string();
    let half = N / comm.size();
    let reducer = Reducer::new(comm, Reduction::Sum, 1).map_err(err)?;
    let run: Run<T> =
        train(&la::<T>(), &reducer, config, N, &[(comm.rank() * half, half)], STEPS, None).map_err(err)?;
    let single = Reducer::new(&SingleProcess, Reduction::Sum, 1).map_err(err)?;
    let reference: Run<T> = train(&la::<T>(), &single, config, N, &[(0, N)], STEPS, None).map_err(err)?;
    let d = relative_weight_diff(&run, &reference);
    if d <= sum_tolerance::<T>() {
        Ok(format!("relative weight difference {d:.2e} <= {:.2e}", sum_tolerance::<T>()))
    } else {
        Err(format!("relative weight difference {d:.2e} > {:.2e}", sum_tolerance::<T>()))
    }
}

/// A 3:1 split of the batch gives the factors of a 2:2 split: the same
/// weights and counts exactly, the same sums up to their rounding
/// ($N\epsilon$ of the largest entry).
fn unequal_shards(comm: &dyn Communicator) -> Result<String, String> {
    let err = |e: kfac_core::Error| e.to_string();
    let reducer = Reducer::new(comm, Reduction::Sum, 1).map_err(err)?;
    let config = KfacConfig::kfac();
    let split = |first: usize| if comm.rank() == 0 { (0, first) } else { (first, N - first) };
    let a: Run<f64> = train(&la::<f64>(), &reducer, &config, N, &[split(3 * N / 4)], 1, None).map_err(err)?;
    let b: Run<f64> = train(&la::<f64>(), &reducer, &config, N, &[split(N / 2)], 1, None).map_err(err)?;
    let mut worst = 0.0f64;
    for (x, y) in a.state.preconditioner.blocks.iter().zip(&b.state.preconditioner.blocks) {
        if x.scalars != y.scalars {
            return Err("the factors' weights or counters differ".into());
        }
        for name in ["A", "B"] {
            let (p, q) = (&x.tensors[name], &y.tensors[name]);
            let scale = p.iter().map(|v| v.abs()).fold(0.0, f64::max);
            let d = p.iter().zip(q).map(|(u, v)| (u - v).abs()).fold(0.0, f64::max) / scale;
            worst = worst.max(d);
        }
    }
    let tol = N as f64 * f64::EPSILON;
    if worst <= tol {
        Ok(format!("factors within {worst:.2e} <= {tol:.2e}"))
    } else {
        Err(format!("{worst:.2e} > {tol:.2e}"))
    }
}

/// A state saved by the ranks after 25 steps, resumed by one process
/// holding all the shards, ends where 50 steps on the ranks end.
fn resume_with_one_process(comm: &dyn Communicator) -> Result<String, String> {
    let err = |e: kfac_core::Error| e.to_string();
    let config = KfacConfig::ekfac().with_adaptive(AdaptiveConfig::default());
    let per_rank = N / SHARD / comm.size();
    let mine = shards(comm.rank() * per_rank, per_rank);
    let reducer = Reducer::new(comm, Reduction::Ordered, per_rank).map_err(err)?;
    let half: Run<f64> = train(&la::<f64>(), &reducer, &config, N, &mine, STEPS / 2, None).map_err(err)?;
    let full: Run<f64> = train(&la::<f64>(), &reducer, &config, N, &mine, STEPS, None).map_err(err)?;
    let single = Reducer::new(&SingleProcess, Reduction::Ordered, N / SHARD).map_err(err)?;
    let resumed: Run<f64> =
        train(&la::<f64>(), &single, &config, N, &shards(0, N / SHARD), STEPS, Some(&half)).map_err(err)?;
    identical(&resumed, &full)?;
    Ok("identical".into())
}

/// Ranks that hold different numbers of parts, use different reductions or
/// different configurations are refused on every rank.
fn disagreement_is_refused(comm: &dyn Communicator) -> Result<String, String> {
    let r = comm.rank();
    if Reducer::new(comm, Reduction::Sum, 1 + r).is_ok() {
        return Err("different part counts were accepted".into());
    }
    let mode = if r == 0 { Reduction::Sum } else { Reduction::Ordered };
    if Reducer::new(comm, mode, 1).is_ok() {
        return Err("different reductions were accepted".into());
    }
    check_agreement(comm, "configuration", b"lr = 0.3").map_err(|e| e.to_string())?;
    let mine = format!("lr = 0.{r}");
    match check_agreement(comm, "configuration", mine.as_bytes()) {
        Ok(()) => Err("different configurations were accepted".into()),
        Err(e) => Ok(e.to_string()),
    }
}

/// One case's outcome on every rank: a case fails when it fails on any rank.
fn record(comm: &dyn Communicator, name: &str, result: Result<String, String>, tally: &mut (usize, usize)) {
    let mut failed = [f64::from(u8::from(result.is_err()))];
    comm.all_reduce_sum_f64(&mut failed).expect("all-reduce");
    match (&result, failed[0] > 0.0) {
        (Err(e), _) => eprintln!("FAIL {name} (rank {}): {e}", comm.rank()),
        (Ok(_), true) => {}
        (Ok(msg), false) if comm.rank() == 0 => println!("ok   {name}: {msg}"),
        _ => {}
    }
    if failed[0] > 0.0 {
        tally.1 += 1;
    } else {
        tally.0 += 1;
    }
}

pub fn run() -> (usize, usize) {
    let comm = match MpiCommunicator::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return (0, 1);
        }
    };
    let mut tally = (0, 0);
    for (name, config) in configs() {
        record(
            &comm,
            &format!("ordered {name} f64: -np 2 = -np 1 bitwise"),
            ordered_is_bitwise::<f64>(&comm, &config),
            &mut tally,
        );
        record(
            &comm,
            &format!("ordered {name} f32: -np 2 = -np 1 bitwise"),
            ordered_is_bitwise::<f32>(&comm, &config),
            &mut tally,
        );
        record(&comm, &format!("sum {name} f64: within tolerance"), sum_is_close::<f64>(&comm, &config), &mut tally);
        record(&comm, &format!("sum {name} f32: within tolerance"), sum_is_close::<f32>(&comm, &config), &mut tally);
    }
    record(&comm, "unequal shards 3:1 = 2:2", unequal_shards(&comm), &mut tally);
    record(&comm, "resume a 2-rank state with 1 process", resume_with_one_process(&comm), &mut tally);
    record(&comm, "disagreeing ranks are refused", disagreement_is_refused(&comm), &mut tally);
    tally
}
