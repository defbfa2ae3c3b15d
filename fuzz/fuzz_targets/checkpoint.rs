//! The checkpoint loader must turn any bytes into a checkpoint or an
//! error, in both precisions: no panic, no allocation from an unchecked
//! size.
//!
//! Random changes to a checkpoint almost never keep its SHA-256 valid, so
//! the loader would refuse them at the checksum and the parser behind it
//! would go untested. Each input is therefore decoded twice: as it is, and
//! with its checksum field (if it has one) recomputed, which sends the
//! mutated header and tensors on to the safetensors parser, the metadata
//! and the checks of every array. Seed the corpus with real checkpoints
//! (`kfac train --task classifier --steps 1 --save corpus/checkpoint/sgd.safetensors`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::path::Path;

const SUM_KEY: &[u8] = b"\"sha256\":\"";

/// The input with the 64 hex digits after `"sha256":"` in its header set to
/// the SHA-256 of the file with those digits zeroed (the loader's rule),
/// or `None` without such a field.
fn with_valid_checksum(data: &[u8]) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let end = usize::try_from(n).ok()?.checked_add(8)?;
    let header = data.get(8..end)?;
    let first = header.windows(SUM_KEY.len()).position(|w| w == SUM_KEY)?;
    let at = 8 + first + SUM_KEY.len();
    if at + 64 > end {
        return None;
    }
    let mut fixed = data.to_vec();
    fixed[at..at + 64].fill(b'0');
    let digest = Sha256::digest(&fixed);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    fixed[at..at + 64].copy_from_slice(hex.as_bytes());
    Some(fixed)
}

fuzz_target!(|data: &[u8]| {
    let _ = kfac_nn::checkpoint::decode::<f32>(data, Path::new("fuzz"));
    let _ = kfac_nn::checkpoint::decode::<f64>(data, Path::new("fuzz"));
    if let Some(fixed) = with_valid_checksum(data) {
        let _ = kfac_nn::checkpoint::decode::<f32>(&fixed, Path::new("fuzz"));
        let _ = kfac_nn::checkpoint::decode::<f64>(&fixed, Path::new("fuzz"));
    }
});
