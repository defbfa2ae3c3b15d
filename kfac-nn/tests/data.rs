//! Tests of `kfac_nn::data`: the IDX parser (valid, malformed and hostile
//! input), the embedded data sets, `mnist_dir`, splits and batches.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use kfac_nn::Error;
use kfac_nn::data::{self, BatchState, Batches, Dataset, Idx, MAX_IDX_BYTES, parse_idx, read_idx};
use ndarray::{Array2, array};
use proptest::prelude::*;

// ---------------------------------------------------------------- helpers

/// An IDX file written independently of the library's encoder.
fn idx_bytes(type_byte: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, type_byte, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), below `modulus`.
fn bytes(n: usize, seed: u64, modulus: u16) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 32) % u64::from(modulus)) as u8
        })
        .collect()
}

/// The reason of an `Error::Idx`, panicking on anything else.
fn idx_reason(r: kfac_nn::Result<Idx>) -> String {
    match r {
        Err(Error::Idx { reason, .. }) => reason,
        other => panic!("expected Error::Idx, got {other:?}"),
    }
}

/// Asserts that parsing `bytes` fails with `Error::Idx` whose reason contains
/// `word`, quickly (no huge allocation or decompression).
fn assert_idx_err(bytes: &[u8], word: &str) -> String {
    let start = Instant::now();
    let reason = idx_reason(parse_idx(bytes, "test.idx"));
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert!(reason.to_lowercase().contains(word), "reason {reason:?} lacks {word:?}");
    reason
}

fn data_reason(r: kfac_nn::Result<Dataset>) -> String {
    match r {
        Err(Error::Data { reason, .. }) => reason,
        other => panic!("expected Error::Data, got {other:?}"),
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("kfac-nn-data-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tiny data set: `n` images of 2×3 with grey levels ≤ 255 and labels < 10.
fn tiny(n: usize, seed: u64) -> (Idx, Idx) {
    let images = Idx { dims: vec![n, 2, 3], data: bytes(n * 6, seed, 256) };
    let labels = Idx { dims: vec![n], data: bytes(n, seed + 1, 10) };
    (images, labels)
}

fn tiny_dataset(n: usize) -> Dataset {
    let (images, labels) = tiny(n, 5);
    Dataset::from_idx("tiny", images, labels, 255.0, 10).unwrap()
}

// ---------------------------------------------------------------- embedded data

#[test]
fn embedded_mnist5k() {
    let d = data::mnist5k().unwrap();
    assert_eq!((d.len(), d.rows, d.cols, d.dim(), d.classes), (5000, 28, 28, 784, 10));
    assert_eq!(d.images.dim(), (5000, 784));
    assert_eq!(d.name, "mnist5k");
    let mut counts = [0usize; 10];
    for &l in &d.labels {
        counts[usize::from(l)] += 1;
    }
    assert_eq!(counts, [500; 10]);
    assert!(d.labels.is_sorted(), "stored sorted by class");
    assert!(d.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert!(d.images.iter().any(|&v| v == 1.0), "some pixels are 255");
    assert!(d.images.iter().any(|&v| v == 0.0));
    // Grey levels are k/255 exactly.
    assert!(d.images.iter().all(|&v| ((v * 255.0).round() / 255.0 - v).abs() < 1e-7));
    // A plausible MNIST: mean intensity about 0.13, corners blank.
    let mean = d.images.mean().unwrap();
    assert!((0.08..0.2).contains(&mean), "{mean}");
    assert!(d.images.column(0).iter().all(|&v| v == 0.0));
    let oh = d.one_hot();
    assert_eq!(oh.dim(), (5000, 10));
    assert_eq!(oh.sum(), 5000.0);
    assert_eq!(oh[[4999, 9]], 1.0);
}

#[test]
fn embedded_digits8x8() {
    let d = data::digits8x8().unwrap();
    assert_eq!((d.len(), d.rows, d.cols, d.dim(), d.classes), (1797, 8, 8, 64, 10));
    assert_eq!(d.name, "digits8x8");
    let mut counts = [0usize; 10];
    for &l in &d.labels {
        counts[usize::from(l)] += 1;
    }
    assert!(counts.iter().all(|&c| (170..=190).contains(&c)), "{counts:?}");
    assert!(d.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert_eq!(d.images.iter().cloned().fold(0.0f32, f32::max), 1.0);
    // Grey levels are k/16 exactly.
    assert!(d.images.iter().all(|&v| (v * 16.0).fract() == 0.0));
    let d64: Array2<f64> = d.images_as::<f64>();
    assert_eq!(d64, d.images.mapv(f64::from));
}

// ---------------------------------------------------------------- round trips

#[test]
fn round_trip_raw_and_gzip_files() {
    let dir = TempDir::new("roundtrip");
    let shapes: &[&[usize]] = &[&[7], &[5, 3], &[4, 3, 2], &[2, 3, 2, 2], &[0, 28, 28]];
    for (k, dims) in shapes.iter().enumerate() {
        let len: usize = dims.iter().product();
        let idx = Idx { dims: dims.to_vec(), data: bytes(len, k as u64, 256) };
        let dims32: Vec<u32> = dims.iter().map(|&d| d as u32).collect();
        let raw = idx_bytes(0x08, &dims32, &idx.data);
        assert_eq!(idx.to_bytes().unwrap(), raw, "the library's encoder agrees");
        let gz = gzip(&raw);
        assert_eq!(parse_idx(&raw, "mem").unwrap(), idx);
        assert_eq!(parse_idx(&gz, "mem").unwrap(), idx);
        for (name, content) in [(format!("f{k}.idx"), &raw), (format!("f{k}.idx.gz"), &gz)] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_idx(&path).unwrap(), idx);
        }
    }
    // A multi-member gzip stream (as `cat a.gz b.gz` makes) is one file.
    let raw = idx_bytes(0x08, &[6], &[1, 2, 3, 4, 5, 6]);
    let mut two = gzip(&raw[..7]);
    two.extend(gzip(&raw[7..]));
    assert_eq!(parse_idx(&two, "mem").unwrap().data, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn to_bytes_rejects_inconsistent_idx() {
    assert!(Idx { dims: vec![2, 2], data: vec![0; 3] }.to_bytes().is_err());
    assert!(Idx { dims: vec![], data: vec![] }.to_bytes().is_err());
    assert!(Idx { dims: vec![1; 5], data: vec![0] }.to_bytes().is_err());
}

#[test]
fn mnist_dir_with_mixed_raw_and_gzip_names() {
    let dir = TempDir::new("mnistdir");
    let (tr_i, tr_l) = tiny(12, 1);
    let (te_i, te_l) = tiny(4, 2);
    let write = |name: &str, idx: &Idx, gz: bool| {
        let raw = idx.to_bytes().unwrap();
        std::fs::write(dir.path().join(name), if gz { gzip(&raw) } else { raw }).unwrap();
    };
    write("train-images-idx3-ubyte.gz", &tr_i, true);
    write("train-labels-idx1-ubyte", &tr_l, false);
    write("t10k-images-idx3-ubyte", &te_i, false);
    write("t10k-labels-idx1-ubyte.gz", &te_l, true);
    let (train, test) = data::mnist_dir(dir.path()).unwrap();
    assert_eq!(train, Dataset::from_idx("mnist:train", tr_i, tr_l.clone(), 255.0, 10).unwrap());
    assert_eq!(test, Dataset::from_idx("mnist:test", te_i, te_l, 255.0, 10).unwrap());
    assert_eq!((train.len(), test.len(), train.rows, train.cols), (12, 4, 2, 3));

    // The raw file wins when both exist.
    let other = Idx { dims: vec![12], data: vec![3; 12] };
    write("train-labels-idx1-ubyte.gz", &other, true);
    assert_eq!(data::mnist_dir(dir.path()).unwrap().0.labels, tr_l.data);
    std::fs::remove_file(dir.path().join("train-labels-idx1-ubyte")).unwrap();
    assert_eq!(data::mnist_dir(dir.path()).unwrap().0.labels, vec![3; 12]);

    // A missing file is named, with the names tried.
    std::fs::remove_file(dir.path().join("t10k-images-idx3-ubyte")).unwrap();
    match data::mnist_dir(dir.path()) {
        Err(e @ Error::Io { .. }) => {
            let Error::Io { path, source } = &e else { unreachable!() };
            assert_eq!(path, &dir.path().join("t10k-images-idx3-ubyte"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            let msg = e.to_string();
            assert!(msg.contains("t10k-images-idx3-ubyte.gz"), "{msg}");
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

#[test]
fn missing_file_is_io_error_with_path() {
    let path = std::env::temp_dir().join("kfac-nn-data-surely-missing/no-such-file.idx");
    match read_idx(&path) {
        Err(e @ Error::Io { .. }) => {
            assert!(e.to_string().contains("no-such-file.idx"), "{e}");
            let Error::Io { path: p, .. } = e else { unreachable!() };
            assert_eq!(p, path);
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

// ---------------------------------------------------------------- malformed input

#[test]
fn malformed_headers() {
    let good = idx_bytes(0x08, &[2, 2], &[1, 2, 3, 4]);
    assert!(parse_idx(&good, "ok").is_ok());

    let mut bad = good.clone();
    bad[0] = 0x12;
    assert_idx_err(&bad, "magic");
    assert_idx_err(b"hello, world", "magic");
    assert_idx_err(&[], "truncated");
    assert_idx_err(&[0, 0, 8], "truncated");
    assert_idx_err(&[0, 0, 8, 2, 0, 0, 0], "truncated");

    let float = assert_idx_err(&idx_bytes(0x0D, &[1], &[0; 4]), "not supported");
    assert!(float.contains("0x0d") && float.contains("float"), "{float}");
    assert_idx_err(&idx_bytes(0x0B, &[1], &[0; 2]), "16-bit");
    assert_idx_err(&idx_bytes(0x42, &[1], &[0]), "unknown element type 0x42");

    assert_idx_err(&idx_bytes(0x08, &[], &[]), "0 dimensions");
    assert_idx_err(&idx_bytes(0x08, &[1; 9], &[0]), "9 dimensions");
    assert_idx_err(&idx_bytes(0x08, &[1; 5], &[0]), "5 dimensions");

    let short = assert_idx_err(&idx_bytes(0x08, &[2, 3], &[0; 5]), "truncated");
    assert!(short.contains('6') && short.contains('5'), "expected and found: {short}");
    let long = assert_idx_err(&idx_bytes(0x08, &[2, 3], &[0; 9]), "trailing");
    assert!(long.contains('3'), "{long}");
}

#[test]
fn huge_headers_are_rejected_without_allocating() {
    let two31 = 1u32 << 31;
    // 2^31 · 2^31 · 2^31 overflows a 64-bit usize.
    assert_idx_err(&idx_bytes(0x08, &[two31, two31, two31], &[0; 16]), "overflow");
    assert_idx_err(&idx_bytes(0x08, &[u32::MAX; 4], &[]), "overflow");
    // 65536 · 65536 = 2^32 fits but is above the cap.
    assert_idx_err(&idx_bytes(0x08, &[65536, 65536], &[1, 2, 3]), "too large");
    assert_idx_err(&idx_bytes(0x08, &[two31, 2, 1], &[1, 2, 3]), "too large");
    // Exactly at the cap is allowed by the header check (then truncated).
    assert_eq!(MAX_IDX_BYTES, 1 << 31);
    assert_idx_err(&idx_bytes(0x08, &[two31], &[1, 2, 3]), "truncated");
    // The same through gzip.
    assert_idx_err(&gzip(&idx_bytes(0x08, &[two31, two31, two31], &[])), "overflow");
    assert_idx_err(&gzip(&idx_bytes(0x08, &[65536, 65536, 1], &[0; 100])), "too large");
}

#[test]
fn gzip_truncated_corrupt_and_lying() {
    let raw = idx_bytes(0x08, &[20, 28, 28], &bytes(20 * 784, 9, 256));
    let gz = gzip(&raw);
    assert!(parse_idx(&gz, "ok").is_ok());

    // A gzip stream cut short, at several places (header, data, trailer).
    for cut in [2, 5, 12, gz.len() / 2, gz.len() - 5, gz.len() - 1] {
        let reason = idx_reason(parse_idx(&gz[..cut], "cut.gz"));
        assert!(reason.contains("gzip") || reason.contains("truncated"), "cut at {cut}: {reason}");
    }
    // A corrupted CRC in the trailer.
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 6] ^= 0xff;
    assert_idx_err(&bad, "gzip");

    // The header claims 1000 images, the stream holds 20: truncated, and
    // quickly (the checked size is not preallocated and not waited for).
    let mut lying = raw.clone();
    lying[4..8].copy_from_slice(&1000u32.to_be_bytes());
    let reason = assert_idx_err(&gzip(&lying), "truncated");
    assert!(reason.contains(&(1000 * 784).to_string()) && reason.contains(&(20 * 784).to_string()), "{reason}");
    // The header claims at most the cap, the stream holds almost nothing.
    assert_idx_err(&gzip(&idx_bytes(0x08, &[1 << 16, 1 << 15], &[7; 10])), "truncated");

    // The header claims 1 byte, the stream decompresses to 64 MiB (a small
    // "gzip bomb"): rejected as trailing data after reading 2 bytes of it.
    let bomb = {
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        enc.write_all(&idx_bytes(0x08, &[1], &[0])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        enc.finish().unwrap()
    };
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    let start = Instant::now();
    assert_idx_err(&bomb, "trailing");
    assert!(start.elapsed() < Duration::from_millis(200), "{:?}", start.elapsed());
}

// ---------------------------------------------------------------- Dataset::from_idx

#[test]
fn from_idx_checks() {
    let (images, labels) = tiny(6, 3);
    let ok = Dataset::from_idx("t", images.clone(), labels.clone(), 255.0, 10).unwrap();
    assert_eq!((ok.len(), ok.rows, ok.cols, ok.dim()), (6, 2, 3, 6));
    assert_eq!(ok.images[[2, 4]], f32::from(images.data[2 * 6 + 4]) / 255.0);
    assert!(!ok.is_empty());

    // Label out of range.
    let mut l = labels.clone();
    l.data[4] = 10;
    let r = data_reason(Dataset::from_idx("t", images.clone(), l, 255.0, 10));
    assert!(r.contains("label 10") && r.contains("example 4") && r.contains("range"), "{r}");
    // Fewer classes than the labels need.
    assert!(Dataset::from_idx("t", images.clone(), labels.clone(), 255.0, 1).is_err());

    // Count mismatch.
    let l5 = Idx { dims: vec![5], data: labels.data[..5].to_vec() };
    let r = data_reason(Dataset::from_idx("t", images.clone(), l5, 255.0, 10));
    assert!(r.contains("6 images but 5 labels"), "{r}");

    // Wrong number of dimensions.
    let flat = Idx { dims: vec![6, 6], data: images.data.clone() };
    assert!(data_reason(Dataset::from_idx("t", flat, labels.clone(), 255.0, 10)).contains("3 dimensions"));
    let l2 = Idx { dims: vec![6, 1], data: labels.data.clone() };
    assert!(data_reason(Dataset::from_idx("t", images.clone(), l2, 255.0, 10)).contains("1 dimension"));

    // Inconsistent Idx (built by hand).
    let short = Idx { dims: vec![6, 2, 3], data: vec![0; 35] };
    assert!(data_reason(Dataset::from_idx("t", short, labels.clone(), 255.0, 10)).contains("do not match"));

    // Pixel above the stated maximum grey level.
    let mut img16 = Idx { dims: vec![6, 2, 3], data: vec![16; 36] };
    assert_eq!(Dataset::from_idx("t", img16.clone(), labels.clone(), 16.0, 10).unwrap().images.sum(), 36.0);
    img16.data[8] = 17;
    let r = data_reason(Dataset::from_idx("t", img16, labels.clone(), 16.0, 10));
    assert!(r.contains("17") && r.contains("example 1") && r.contains("maximum"), "{r}");

    // Empty and bad parameters.
    let none = Dataset::from_idx(
        "t",
        Idx { dims: vec![0, 2, 3], data: vec![] },
        Idx { dims: vec![0], data: vec![] },
        255.0,
        10,
    );
    assert!(data_reason(none).contains("empty"));
    assert!(matches!(Dataset::from_idx("t", images.clone(), labels.clone(), 0.0, 10), Err(Error::Config { .. })));
    assert!(matches!(Dataset::from_idx("t", images.clone(), labels.clone(), f32::NAN, 10), Err(Error::Config { .. })));
    assert!(matches!(Dataset::from_idx("t", images, labels, 255.0, 0), Err(Error::Config { .. })));
}

#[test]
fn subset_gather_one_hot() {
    let d = tiny_dataset(5);
    let s = d.subset(&[4, 0, 4]);
    assert_eq!(s.labels, [d.labels[4], d.labels[0], d.labels[4]]);
    assert_eq!(s.images.row(0), d.images.row(4));
    assert_eq!(s.images.row(1), d.images.row(0));
    assert!(d.subset(&[]).is_empty());

    let x = array![[1.0f64, 2.0], [3.0, 4.0], [5.0, 6.0]];
    assert_eq!(data::gather(&x, &[2, 0]), array![[5.0, 6.0], [1.0, 2.0]]);
    assert_eq!(data::gather(&x.view(), &[1]), array![[3.0, 4.0]]);
    assert_eq!(data::gather(&x, &[]).dim(), (0, 2));
    let xf = x.mapv(|v| v as f32);
    assert_eq!(data::gather(&xf, &[1, 1]), array![[3.0f32, 4.0], [3.0, 4.0]]);

    let oh = d.one_hot();
    assert_eq!(oh.dim(), (5, 10));
    for (i, &l) in d.labels.iter().enumerate() {
        assert_eq!(oh.row(i).sum(), 1.0);
        assert_eq!(oh[[i, usize::from(l)]], 1.0);
    }
}

#[test]
#[should_panic(expected = "out of range")]
fn gather_panics_out_of_range() {
    data::gather(&array![[1.0f32], [2.0]], &[2]);
}

// ---------------------------------------------------------------- split

/// Identifies examples by their image row (the tiny images are distinct).
fn keys(d: &Dataset) -> Vec<Vec<u32>> {
    d.images.rows().into_iter().map(|r| r.iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn split_is_reproducible_disjoint_and_covering() {
    let d = tiny_dataset(50);
    let all: HashSet<_> = keys(&d).into_iter().collect();
    assert_eq!(all.len(), 50, "the tiny images are distinct");

    let (train, test) = d.split(0.2, 7).unwrap();
    assert_eq!((train.len(), test.len()), (40, 10));
    assert_eq!((train.name.as_str(), test.name.as_str()), ("tiny:train", "tiny:test"));
    let (train2, test2) = d.split(0.2, 7).unwrap();
    assert_eq!((&train, &test), (&train2, &test2), "same seed, same split");
    let (train3, _) = d.split(0.2, 8).unwrap();
    assert_ne!(train, train3, "another seed, another split");

    let tr: HashSet<_> = keys(&train).into_iter().collect();
    let te: HashSet<_> = keys(&test).into_iter().collect();
    assert!(tr.is_disjoint(&te));
    assert_eq!(tr.union(&te).cloned().collect::<HashSet<_>>(), all);
    // Labels travel with their images.
    for (k, l) in keys(&train).iter().zip(&train.labels) {
        let i = keys(&d).iter().position(|x| x == k).unwrap();
        assert_eq!(d.labels[i], *l);
    }

    // Rounding and bounds.
    assert_eq!(d.split(0.33, 1).unwrap().1.len(), 17); // 16.5 rounds to 17
    assert_eq!(d.split(0.98, 1).unwrap().0.len(), 1);
    assert!(matches!(d.split(0.005, 1), Err(Error::Data { .. })), "empty test set");
    assert!(matches!(d.split(0.995, 1), Err(Error::Data { .. })), "empty training set");
    for f in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        assert!(matches!(d.split(f, 1), Err(Error::Config { .. })), "{f}");
    }
    assert!(tiny_dataset(1).split(0.5, 1).is_err());
}

#[test]
fn split_of_embedded_digits() {
    let d = data::digits8x8().unwrap();
    let (train, test) = d.split(0.2, 0).unwrap();
    assert_eq!((train.len(), test.len()), (1438, 359));
    // Shuffled: all ten digits in the test set.
    let classes: HashSet<u8> = test.labels.iter().cloned().collect();
    assert_eq!(classes.len(), 10);
}

// ---------------------------------------------------------------- batches

#[test]
fn batches_cover_each_epoch() {
    // b divides n: each index exactly once per epoch.
    let mut b = Batches::new(12, 4, 3);
    assert_eq!((b.n(), b.batch_size(), b.len_batch(), b.batches_per_epoch()), (12, 4, 4, 3));
    let mut epochs = Vec::new();
    for epoch in 0..5u64 {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let batch = b.next_batch();
            assert_eq!(batch.len(), 4);
            assert_eq!(b.epoch(), epoch);
            seen.extend(batch);
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>(), "epoch {epoch}");
        epochs.push(seen);
    }
    assert!(epochs.windows(2).all(|w| w[0] != w[1]), "a fresh permutation each epoch");

    // b does not divide n: the n mod b leftovers are skipped.
    let mut b = Batches::new(10, 4, 3);
    assert_eq!(b.batches_per_epoch(), 2);
    let mut skipped = HashSet::new();
    for epoch in 0..50u64 {
        let (x, y) = (b.next_batch(), b.next_batch());
        assert_eq!(b.epoch(), epoch);
        let set: HashSet<_> = x.iter().chain(&y).cloned().collect();
        assert_eq!(set.len(), 8, "distinct within an epoch");
        assert!(set.iter().all(|&i| i < 10));
        skipped.extend((0..10).filter(|i| !set.contains(i)));
    }
    assert_eq!(skipped.len(), 10, "the skipped examples change from epoch to epoch");

    // batch_size >= n: each batch is the whole set, newly permuted.
    let mut b = Batches::new(5, 100, 1);
    assert_eq!((b.len_batch(), b.batches_per_epoch()), (5, 1));
    let (x, y) = (b.next_batch(), b.next_batch());
    assert_eq!(b.epoch(), 1);
    for batch in [&x, &y] {
        let mut s = batch.clone();
        s.sort_unstable();
        assert_eq!(s, [0, 1, 2, 3, 4]);
    }
    assert_eq!(Batches::new(1, 1, 0).next_batch(), [0]);
}

#[test]
fn batches_are_reproducible_and_restorable() {
    let stream = |seed| {
        let mut b = Batches::new(37, 8, seed);
        (0..40).map(|_| b.next_batch()).collect::<Vec<_>>()
    };
    assert_eq!(stream(11), stream(11));
    assert_ne!(stream(11), stream(12));

    // Save after every number of steps (mid-epoch, at an epoch's end) and
    // continue identically.
    let full = stream(11);
    for k in 0..=20 {
        let mut b = Batches::new(37, 8, 11);
        for _ in 0..k {
            b.next_batch();
        }
        let state = b.state();
        assert_eq!((state.epoch, state.position, state.rng_state), (b.epoch(), b.position(), b.rng_state()));
        let mut restored = Batches::from_state(state).unwrap();
        assert_eq!(restored.state(), state);
        let rest: Vec<_> = (k..40).map(|_| restored.next_batch()).collect();
        assert_eq!(rest, full[k..], "restored after {k} batches");
    }
    assert_eq!(Batches::new(37, 8, 11).rng_state(), 11, "epoch 0 is drawn from the seed");

    // Invalid states are errors, not panics.
    let good = BatchState { n: 10, batch_size: 3, epoch: 2, position: 10, rng_state: 5 };
    assert!(Batches::from_state(good).is_ok());
    for bad in [BatchState { n: 0, ..good }, BatchState { batch_size: 0, ..good }, BatchState { position: 11, ..good }]
    {
        assert!(matches!(Batches::from_state(bad), Err(Error::Config { .. })), "{bad:?}");
    }
}

/// The batches of a seed are fixed forever (this pins SplitMix64 and the
/// shuffle): a change here changes every experiment's data order.
#[test]
fn batches_golden() {
    let mut b = Batches::new(10, 4, 42);
    let got: Vec<Vec<usize>> = (0..3).map(|_| b.next_batch()).collect();
    assert_eq!(got, GOLDEN);
    // The split draws the same permutation as epoch 0 of the batches.
    let d = tiny_dataset(10);
    let (train, test) = d.split(0.3, 42).unwrap();
    let expected = d.subset(&[0, 9, 5, 8, 6, 4, 7]);
    assert_eq!((train.images, train.labels), (expected.images, expected.labels));
    assert_eq!(test.len(), 3);
}

const GOLDEN: [[usize; 4]; 3] = [[0, 9, 5, 8], [6, 4, 7, 2], [0, 9, 3, 2]];

// ---------------------------------------------------------------- fuzzing

fn valid_small() -> Vec<u8> {
    idx_bytes(0x08, &[3, 4, 5], &bytes(60, 4, 256))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_idx(&input, "fuzz");
        // With a plausible prefix, to reach the later checks.
        let mut prefixed = vec![0, 0, 8, input.first().map_or(1, |b| b % 6)];
        prefixed.extend(&input);
        let _ = parse_idx(&prefixed, "fuzz");
        let _ = parse_idx(&gzip(&prefixed), "fuzz");
    }

    #[test]
    fn truncations_and_bit_flips_never_panic(
        gz in any::<bool>(),
        cut in 0usize..400,
        flips in proptest::collection::vec((0usize..400, 0u8..8), 0..4),
    ) {
        let raw = valid_small();
        let mut file = if gz { gzip(&raw) } else { raw.clone() };
        for (pos, bit) in flips.iter().cloned() {
            let n = file.len();
            file[pos % n] ^= 1 << bit;
        }
        let keep = if cut < 20 { file.len() - cut.min(file.len()) } else { cut % (file.len() + 1) };
        file.truncate(keep);
        let start = Instant::now();
        let result = parse_idx(&file, "fuzz");
        prop_assert!(start.elapsed() < Duration::from_secs(1));
        if let Ok(idx) = &result {
            prop_assert_eq!(Some(idx.data.len()), idx.expected_len());
            prop_assert!(idx.data.len() <= MAX_IDX_BYTES);
        }
        if flips.is_empty() && cut == 0 {
            prop_assert_eq!(result.unwrap().data.len(), 60);
        }
    }
}
