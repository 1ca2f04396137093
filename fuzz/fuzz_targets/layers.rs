//! Fuzz target: arbitrary bytes as one to three uncompressed tar layers of a container image, applied by the
//! converter's layer rules (whiteouts, opaque directories, hard links, symlinked parents, pax headers) and
//! emitted as a manifest tree. A hostile layer must give an error, never a panic, a hang or unbounded memory.
//!
//! Input: the first byte picks the number of layers (1-3); the rest is cut into that many parts at 512-byte
//! block boundaries (so each part is a well-formed-sized tar stream the fuzzer can fill in).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let count = 1 + usize::from(first % 3);
    let blocks = rest.len().div_ceil(512);
    let per = blocks.div_ceil(count).max(1) * 512;
    let layers: Vec<&[u8]> = rest.chunks(per).collect();
    let _ = hydrate_convert::fuzzing::merge_tar_layers(&layers);
});
