//! The checkpoint loader must turn any bytes into a checkpoint or an
//! error, in both precisions: no panic, no allocation from an unchecked
//! size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = kfac_nn::checkpoint::decode::<f32>(data, Path::new("fuzz"));
    let _ = kfac_nn::checkpoint::decode::<f64>(data, Path::new("fuzz"));
});
