//! The IDX reader must turn any bytes into a parsed file or an error: no
//! panic, no allocation from an unchecked header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = kfac_nn::data::parse_idx(data, "fuzz") {
        // A parsed file is self-consistent: it re-encodes to bytes that
        // parse to the same file.
        let bytes = idx.to_bytes().expect("a parsed IDX file re-encodes");
        let again = kfac_nn::data::parse_idx(&bytes, "again").expect("a re-encoded IDX file parses");
        assert_eq!(again.to_bytes().ok(), Some(bytes));
    }
});
