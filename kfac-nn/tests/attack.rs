//! The command under attack: what an adversarial run of `kfac` found
//! (issue 22), one test per problem. Each failed before its fix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn kfac() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kfac"))
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kfac-attack-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small classifier run: the 8×8 digits, batch 32.
fn small(steps: &str) -> Vec<String> {
    ["train", "--task", "classifier", "--batch-size", "32", "--quiet", "--steps", steps].map(String::from).to_vec()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cmd`, killing it after `limit`; `None` if it had to be killed.
fn run_within(mut cmd: Command, limit: Duration) -> Option<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The run fails with exit code 1, quickly (before training: the run asks
/// for far more steps than `limit` allows), with a one-line message that
/// contains every word of `needles`.
fn refused_early(cmd: Command, limit: Duration, needles: &[&str]) -> String {
    let what = format!("{cmd:?}");
    let o = run_within(cmd, limit).unwrap_or_else(|| panic!("{what}: still running after {limit:?}"));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: no `{n}` in: {err}");
    }
    err
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".tmp")).collect()
        })
        .unwrap_or_default()
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success());
}

fn metrics(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

/// SGD with a learning rate near f32's largest value: the first step
/// works, the later ones overflow the logits, so their loss is NaN and
/// they are skipped.
fn nan_run(steps: &str) -> Vec<String> {
    let mut a = small(steps);
    a.extend(["--optimizer", "sgd", "--lr", "3e38", "--momentum", "0"].map(String::from));
    a
}

/// Finding 1: a skipped step's NaN loss made every later checkpoint one
/// that its loader refused as damaged; metrics.json had `null` losses.
#[test]
fn a_run_with_skipped_steps_saves_checkpoints_that_resume() {
    let dir = tempdir("nan-resume");
    let ck = dir.join("ck.safetensors");
    let o = kfac()
        .args(nan_run("4"))
        .arg("--save")
        .arg(&ck)
        .args(["--save-every", "2", "--out"])
        .arg(dir.join("a"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics(&dir.join("a"));
    assert!(m["skipped_steps"].as_u64().unwrap() >= 1);
    let skipped = &m["steps"][1];
    assert_eq!(skipped["skipped"], "the loss");
    assert!(matches!(skipped["loss"].as_str(), Some("NaN" | "inf" | "-inf")), "{skipped}");
    // metrics.json reads back, the non-finite loss included.
    let back: kfac_nn::train::Metrics = serde_json::from_value(m.clone()).unwrap();
    assert!(!back.steps[1].loss.is_finite());
    let o = kfac().args(nan_run("6")).arg("--resume").arg(&ck).arg("--out").arg(dir.join("b")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&dir.join("b"))["resumed_from"], 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 3: an f32 run checked its knobs in f64: `--lr 3.5e38` is
/// infinite in f32, `--lr 1e-46` is zero, `--damping 1e308` infinite.
#[test]
fn knobs_are_checked_in_the_precision_of_the_run() {
    let dir = tempdir("f32-knobs");
    for (args, what) in [
        (&["--lr", "3.5e38"][..], "lr"),
        (&["--lr", "1e-46"][..], "lr"),
        (&["--optimizer", "kfac", "--damping", "1e308"][..], "damping"),
        (&["--optimizer", "ekfac", "--damping", "1e-46"][..], "damping"),
        (&["--l2", "1e39"][..], "l2"),
        (&["--optimizer", "sgd", "--momentum", "0.99999999999"][..], "momentum"),
    ] {
        let mut cmd = kfac();
        cmd.args(small("100000")).args(args).arg("--out").arg(dir.join("o"));
        refused_early(cmd, Duration::from_secs(20), &[what, "f32"]);
    }
    // In f64 the same learning rate is a number like any other.
    let o = kfac().args(small("1")).args(["--lr", "3.5e38", "--precision", "f64", "--out"]).arg(dir.join("o")).output();
    assert!(o.unwrap().status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 4: `--save` replaced whatever its path named. A FIFO or a
/// directory is refused before the first step and left as it was; a
/// symbolic link is followed: the file it names is replaced atomically and
/// the link stays.
#[test]
fn save_targets_that_are_not_regular_files() {
    let dir = tempdir("save-targets");
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let sub = dir.join("subdir");
    std::fs::create_dir(&sub).unwrap();
    for target in [&fifo, &sub] {
        let mut cmd = kfac();
        cmd.args(small("100000")).arg("--save").arg(target).arg("--out").arg(dir.join("o"));
        refused_early(cmd, Duration::from_secs(20), &["regular file"]);
    }
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo_like());
    assert!(sub.is_dir());
    // A symbolic link to a checkpoint elsewhere.
    let elsewhere = tempdir("save-targets-real");
    let real = elsewhere.join("real.safetensors");
    std::fs::write(&real, b"old").unwrap();
    let link = dir.join("link.safetensors");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let o = kfac().args(small("3")).arg("--save").arg(&link).arg("--out").arg(dir.join("o")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert!(kfac_nn::checkpoint::load::<f32>(&real).is_ok(), "the link's target was not replaced");
    assert!(temporaries(&dir).is_empty() && temporaries(&elsewhere).is_empty());
    // A dangling link is refused.
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink(dir.join("nowhere/ck"), &dangling).unwrap();
    let mut cmd = kfac();
    cmd.args(small("100000")).arg("--save").arg(&dangling).arg("--out").arg(dir.join("o"));
    refused_early(cmd, Duration::from_secs(20), &["dangling"]);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&elsewhere).unwrap();
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

/// Finding 5: a closed standard error (`kfac ... 2>&1 | head -n 1`)
/// panicked the run at its next warning, and nothing was written.
#[test]
fn a_closed_stderr_does_not_stop_the_run() {
    let dir = tempdir("closed-stderr");
    let mut child = kfac()
        .args(nan_run("6"))
        .arg("--out")
        .arg(dir.join("o"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert_eq!(metrics(&dir.join("o"))["steps"].as_array().unwrap().len(), 6);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 6: `--steps` preallocated one record per step: the largest
/// values panicked (capacity overflow) at once.
#[test]
fn huge_step_counts_do_not_preallocate() {
    let dir = tempdir("huge-steps");
    let mut cmd = kfac();
    cmd.args(small("18446744073709551615")).arg("--out").arg(dir.join("o"));
    // It trains (for ever): still running after two seconds, not crashed.
    assert!(run_within(cmd, Duration::from_secs(2)).is_none(), "the run ended");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn gzip_file(path: &Path, chunks: impl IntoIterator<Item = Vec<u8>>) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    for c in chunks {
        enc.write_all(&c).unwrap();
    }
    enc.finish().unwrap();
}

fn idx_header(dims: &[u32]) -> Vec<u8> {
    let mut h = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        h.extend_from_slice(&d.to_be_bytes());
    }
    h
}

/// A directory of MNIST-named IDX files: `n` training and `m` test
/// examples of 8×8 pixels drawn from `seed`.
fn small_mnist_dir(dir: &Path, n: u32, m: u32, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = kfac_nn::rng::Rng::new(seed);
    for (prefix, count) in [("train", n), ("t10k", m)] {
        let mut images = idx_header(&[count, 8, 8]);
        images.extend((0..count * 64).map(|_| (rng.next_u64() % 256) as u8));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        let mut labels = idx_header(&[count]);
        labels.extend((0..count).map(|_| (rng.next_u64() % 10) as u8));
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

/// Finding 7: IDX images became `f32` pixels (4 bytes each) beside the
/// bytes read: a gzip of 2³¹ zero pixels (a few MB) asked for 8.6 GB and aborted
/// (here under a 3-GB address-space limit). The budget is checked from the
/// header, before the payload is decompressed.
#[test]
fn data_beyond_the_memory_budget_is_refused_from_its_header() {
    let dir = tempdir("idx-budget");
    let data = dir.join("data");
    small_mnist_dir(&data, 20, 10, 1);
    let n: u32 = (1u32 << 31) / 784;
    let zeros = vec![0u8; 1 << 20];
    let total = n as usize * 784;
    let chunks = std::iter::once(idx_header(&[n, 28, 28]))
        .chain((0..total / zeros.len()).map(|_| zeros.clone()))
        .chain(std::iter::once(vec![0u8; total % zeros.len()]));
    gzip_file(&data.join("train-images-idx3-ubyte.gz"), chunks);
    std::fs::remove_file(data.join("train-images-idx3-ubyte")).unwrap();
    let mut labels = idx_header(&[n]);
    labels.resize(labels.len() + n as usize, 0);
    gzip_file(&data.join("train-labels-idx1-ubyte.gz"), [labels]);
    std::fs::remove_file(data.join("train-labels-idx1-ubyte")).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(format!(
        "ulimit -v 3000000; exec '{}' train --task classifier --quiet --steps 2 --data '{}' --out '{}'",
        env!("CARGO_BIN_EXE_kfac"),
        data.display(),
        dir.join("o").display()
    ));
    refused_early(cmd, Duration::from_secs(60), &["train-images-idx3-ubyte.gz", "limit"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 8: the output paths were checked after training, and the run's
/// results were then lost (or `--save` overwrote the run's own
/// metrics.json). Now every output is checked before the first step.
#[test]
fn outputs_are_checked_before_the_first_step() {
    let dir = tempdir("outputs-first");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = dir.join("o");
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (vec!["--out".into(), file.clone().into()], "a-file"),
        (vec!["--out".into(), file.join("below").into()], "a-file"),
        (vec!["--out".into(), out.clone().into(), "--save".into(), dir.join("missing/ck").into()], "missing"),
        (vec!["--out".into(), out.clone().into(), "--save".into(), out.join("metrics.json").into()], "metrics.json"),
        (vec!["--out".into(), out.clone().into(), "--save".into(), out.join("loss.png").into()], "loss.png"),
    ];
    for (args, needle) in cases {
        let mut cmd = kfac();
        cmd.args(small("100000")).args(&args);
        refused_early(cmd, Duration::from_secs(20), &[needle]);
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    // A metrics.json of the output directory that is a directory.
    std::fs::create_dir_all(out.join("metrics.json")).unwrap();
    let mut cmd = kfac();
    cmd.args(small("100000")).arg("--out").arg(&out);
    refused_early(cmd, Duration::from_secs(20), &["metrics.json"]);
    // compare checks its directories too.
    let mut cmd = kfac();
    cmd.args(["compare", "--task", "classifier", "--quiet", "--steps", "100000", "--out"]).arg(&file);
    refused_early(cmd, Duration::from_secs(20), &["a-file"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 9: a full disk left half-written temporary files behind (here
/// `ulimit -f 20`: files beyond 20 KiB fail to write, as on a full disk).
#[test]
fn a_full_disk_leaves_no_temporary_file() {
    let dir = tempdir("full-disk");
    let out = dir.join("o");
    let cmd = format!(
        "trap '' XFSZ; ulimit -f 20; exec '{}' train --task classifier --quiet --steps 3 --batch-size 32 --out '{}' --save '{}'",
        env!("CARGO_BIN_EXE_kfac"),
        out.display(),
        dir.join("ck.safetensors").display()
    );
    let o = Command::new("bash").arg("-c").arg(&cmd).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(temporaries(&dir).is_empty(), "{:?}", temporaries(&dir));
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    // Without the checkpoint, metrics.json and metrics.csv fit, loss.png
    // does not: no temporary file, and no metrics.json (the completion
    // marker, written last) beside a missing plot.
    let cmd = cmd.replace(&format!(" --save '{}'", dir.join("ck.safetensors").display()), "");
    let o = Command::new("bash").arg("-c").arg(&cmd).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    assert!(!out.join("metrics.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 9: SIGTERM (and SIGINT) during a run that saves every step
/// removes the temporary file of the save in progress; the checkpoint left
/// is the last complete one.
#[test]
fn sigterm_leaves_no_temporary_file() {
    let dir = tempdir("sigterm");
    let ck = dir.join("ck.safetensors");
    for (i, delay) in [300u64, 450, 600, 750, 900, 1100].into_iter().enumerate() {
        let child = kfac()
            .args(["train", "--task", "classifier", "--dataset", "mnist5k", "--optimizer", "kfac", "--quiet"])
            .args(["--batch-size", "64", "--steps", "100000", "--save-every", "1", "--save"])
            .arg(&ck)
            .arg("--out")
            .arg(dir.join("o"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let signal = if i % 2 == 0 { "-TERM" } else { "-INT" };
        Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(matches!(o.status.code(), Some(130 | 143)), "{:?}: {}", o.status, stderr(&o));
        assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
        assert!(temporaries(&dir).is_empty(), "after {delay} ms: {:?}", temporaries(&dir));
        if ck.exists() {
            kfac_nn::checkpoint::load::<f32>(&ck).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGKILL cannot be handled: a temporary file may stay behind, but every
/// output is either absent, the previous complete one, or the new complete
/// one (writes are atomic).
#[test]
fn sigkill_leaves_outputs_old_or_new_never_damaged() {
    let dir = tempdir("sigkill");
    let ck = dir.join("ck.safetensors");
    let out = dir.join("o");
    for delay in [200u64, 350, 500, 650, 800] {
        let mut child = kfac()
            .args(["train", "--task", "classifier", "--optimizer", "ekfac", "--quiet", "--batch-size", "64"])
            .args(["--steps", "40", "--eval-every", "1", "--save-every", "1", "--save"])
            .arg(&ck)
            .arg("--out")
            .arg(&out)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        if ck.exists() {
            kfac_nn::checkpoint::load::<f32>(&ck).unwrap();
        }
        if out.join("metrics.json").exists() {
            let m: kfac_nn::train::Metrics =
                serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
            assert_eq!(m.steps.len(), 40);
            let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
            assert_eq!(csv.lines().count(), 41);
            assert_eq!(&std::fs::read(out.join("loss.png")).unwrap()[..4], b"\x89PNG");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 10: the nalgebra backend stopped the MNIST-5k classifier at its
/// first step ("eigh did not converge").
#[test]
fn the_mnist_classifier_trains_on_nalgebra() {
    let dir = tempdir("nalgebra-mnist");
    let o = kfac()
        .args(["train", "--task", "classifier", "--dataset", "mnist5k", "--backend", "nalgebra", "--quiet"])
        .args(["--steps", "2", "--seed", "0", "--batch-size", "256", "--out"])
        .arg(dir.join("o"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 11: K-FAC with `--damping 1e-12` stopped the autoencoder at its
/// first step: a damped factor was not positive definite in f32, nor in
/// f64 from the rounded f32 matrix. Now its inverse comes from its
/// eigendecomposition (clamped), counted in the health report.
#[test]
fn kfac_with_tiny_damping_trains_the_autoencoder() {
    let dir = tempdir("tiny-damping");
    let o = kfac()
        .args(["train", "--optimizer", "kfac", "--damping", "1e-12", "--steps", "1", "--batch-size", "100"])
        .args(["--quiet", "--out"])
        .arg(dir.join("o"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let m = metrics(&dir.join("o"));
    let fallbacks: u64 = m["health"].as_array().unwrap().iter().map(|h| h["eigen_fallbacks"].as_u64().unwrap()).sum();
    assert!(fallbacks >= 1, "{}", m["health"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 12: `--threads` in the hundreds made a 0.15-s job take minutes.
#[test]
fn absurd_thread_counts_are_refused() {
    let dir = tempdir("threads");
    let mut cmd = kfac();
    cmd.args(small("100000")).args(["--threads", "500", "--out"]).arg(dir.join("o"));
    refused_early(cmd, Duration::from_secs(20), &["threads", "500"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 13: a FIFO given as data or as `--resume` blocked for ever.
#[test]
fn fifos_as_inputs_are_refused_without_blocking() {
    let dir = tempdir("fifo-inputs");
    let data = dir.join("data");
    small_mnist_dir(&data, 40, 10, 2);
    std::fs::remove_file(data.join("train-images-idx3-ubyte")).unwrap();
    mkfifo(&data.join("train-images-idx3-ubyte"));
    let mut cmd = kfac();
    cmd.args(["train", "--task", "classifier", "--quiet", "--steps", "2", "--data"]).arg(&data);
    cmd.arg("--out").arg(dir.join("o"));
    refused_early(cmd, Duration::from_secs(20), &["train-images-idx3-ubyte", "regular file"]);
    let fifo = dir.join("ck");
    mkfifo(&fifo);
    let mut cmd = kfac();
    cmd.args(small("2")).arg("--resume").arg(&fifo).arg("--out").arg(dir.join("o"));
    refused_early(cmd, Duration::from_secs(20), &["regular file"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 14: the documented `--adaptive-bounds MIN,MAX` was refused
/// (only `MIN MAX` worked). It is one value now, so that a negative MIN
/// gets the real message (`--adaptive-bounds -1,5`).
#[test]
fn adaptive_bounds_take_min_comma_max() {
    let dir = tempdir("bounds");
    let o = kfac()
        .args(small("2"))
        .args(["--optimizer", "kfac", "--adaptive", "--adaptive-bounds", "1e-6,1e6", "--out"])
        .arg(dir.join("o"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let a = &metrics(&dir.join("o"))["config"]["optimizer"]["rule"]["adaptive"];
    assert_eq!((a["lambda_min"].as_f64(), a["lambda_max"].as_f64()), (Some(1e-6), Some(1e6)));
    for bad in ["1", "1,2,3", "2,1"] {
        let o = kfac().args(small("2")).args(["--optimizer", "kfac", "--adaptive", "--adaptive-bounds", bad]).output();
        let o = o.unwrap();
        assert!(matches!(o.status.code(), Some(1 | 2)), "{bad}");
        assert!(stderr(&o).contains("bounds") || stderr(&o).contains("lambda"), "{bad}: {}", stderr(&o));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 15: `--adaptive-t1` of 2³¹ or more wrapped to a negative
/// exponent (`powi(t1 as i32)`), so a rejected step lowered λ.
#[test]
fn adaptive_periods_beyond_i32_are_refused() {
    let dir = tempdir("t1");
    for (arg, name) in [("--adaptive-t1", "adaptive.t1"), ("--adaptive-t2", "adaptive.t2")] {
        let mut cmd = kfac();
        cmd.args(small("100000")).args(["--optimizer", "kfac", "--adaptive", arg, "2147483648", "--out"]);
        cmd.arg(dir.join("o"));
        refused_early(cmd, Duration::from_secs(20), &[name]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 15: a resume did not notice that the data files had changed.
#[test]
fn a_resume_notices_replaced_data() {
    let dir = tempdir("replaced-data");
    let data = dir.join("data");
    small_mnist_dir(&data, 200, 50, 3);
    let ck = dir.join("ck.safetensors");
    let run = |steps: &str, extra: &[&std::ffi::OsStr]| {
        kfac()
            .args(["train", "--task", "classifier", "--quiet", "--batch-size", "16", "--steps", steps, "--data"])
            .arg(&data)
            .arg("--out")
            .arg(dir.join("o"))
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run("3", &["--save".as_ref(), ck.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // One pixel of one image changes.
    let images = data.join("train-images-idx3-ubyte");
    let mut bytes = std::fs::read(&images).unwrap();
    bytes[16 + 5 * 64 + 7] ^= 1;
    std::fs::write(&images, bytes).unwrap();
    let o = run("6", &["--resume".as_ref(), ck.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("data"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 15: saving over a checkpoint changed its mode from 0600 to 0644.
#[test]
fn saving_over_a_file_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("mode");
    let ck = dir.join("ck.safetensors");
    std::fs::write(&ck, b"old").unwrap();
    std::fs::set_permissions(&ck, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = dir.join("o");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.json"), b"{}").unwrap();
    std::fs::set_permissions(out.join("metrics.json"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = kfac().args(small("2")).arg("--save").arg(&ck).arg("--out").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ck), 0o600);
    assert_eq!(mode(&out.join("metrics.json")), 0o640);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 15: a legal 243-byte file name was refused: the temporary name
/// added more than 12 bytes, beyond the 255 of NAME_MAX.
#[test]
fn long_file_names_can_be_saved() {
    let dir = tempdir("long-name");
    let ck = dir.join(format!("{}.safetensors", "c".repeat(243 - ".safetensors".len())));
    assert_eq!(ck.file_name().unwrap().len(), 243);
    let o = kfac().args(small("2")).arg("--save").arg(&ck).arg("--out").arg(dir.join("o")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(kfac_nn::checkpoint::load::<f32>(&ck).is_ok());
    let name = dir.join("n".repeat(255));
    let o = kfac().args(small("2")).arg("--save").arg(&name).arg("--out").arg(dir.join("o")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 15: `--lr -0.1` said "unexpected argument '-0'": negative
/// numbers were not taken as values, so the real message was hidden.
#[test]
fn negative_numbers_get_the_real_message() {
    let dir = tempdir("negative");
    for (args, needle) in [
        (&["--lr", "-0.1"][..], "must be positive"),
        (&["--momentum", "-0.5"][..], "momentum"),
        (&["--damping", "-1"][..], "damping"),
        (&["--optimizer", "kfac", "--adaptive", "--adaptive-bounds", "-1,5"][..], "lambda_min"),
    ] {
        let mut cmd = kfac();
        cmd.args(small("100000")).args(args).arg("--out").arg(dir.join("o"));
        refused_early(cmd, Duration::from_secs(20), &[needle]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
