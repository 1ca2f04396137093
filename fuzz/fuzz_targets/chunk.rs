//! Fuzz target: decode_chunk with arbitrary records and stored bytes must never panic or allocate beyond
//! the record's bounded plain length; and any plain input must survive encode → decode unchanged.

#![no_main]

use hydrate_format::{decode_chunk, encode_chunk, ChunkId, ChunkRecord, Digest, CHUNK_MAX};
use libfuzzer_sys::fuzz_target;

fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let [mode] = take::<1>(&mut rest);
    if mode & 1 == 0 {
        // Arbitrary record over arbitrary stored bytes: Err or verified data, nothing else.
        let id = ChunkId(Digest(take::<32>(&mut rest)));
        let [compression] = take::<1>(&mut rest);
        let plain_len = u32::from_le_bytes(take::<4>(&mut rest));
        // Half of the time, make the stored length match so decompression is actually exercised.
        let stored_len = if mode & 2 == 0 {
            rest.len() as u32
        } else {
            u32::from_le_bytes(take::<4>(&mut rest))
        };
        let rec = ChunkRecord::new(id, 0, compression % 3, 0, stored_len, plain_len);
        if let Ok(plain) = decode_chunk(&rec, rest) {
            assert_eq!(plain.len() as u64, u64::from(plain_len));
            assert!(plain.len() <= CHUNK_MAX as usize);
            assert_eq!(ChunkId(Digest::of(&plain)), id);
        }
    } else if !rest.is_empty() && rest.len() <= CHUNK_MAX as usize {
        let level = i32::from(mode >> 4) - 2;
        let (id, compression, stored) = encode_chunk(rest, level);
        let rec = ChunkRecord::new(
            id,
            0,
            compression,
            0,
            stored.len() as u32,
            rest.len() as u32,
        );
        assert_eq!(decode_chunk(&rec, &stored).unwrap(), rest);
    }
});
