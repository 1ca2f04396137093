//! Throughput of the per-chunk build steps on this machine (one thread): FastCDC, BLAKE3, zstd at a few levels.
//! `cargo run --release -p hydrate-format --example chunk_costs [FILE]` (random bytes without FILE).
use std::time::Instant;

fn main() {
    let data = match std::env::args().nth(1) {
        Some(p) => std::fs::read(p).unwrap(),
        None => {
            let mut d = vec![0u8; 256 << 20];
            blake3::Hasher::new()
                .update(b"x")
                .finalize_xof()
                .fill(&mut d);
            d
        }
    };
    let mb = data.len() as f64 / 1e6;
    let t = Instant::now();
    let lens: Vec<usize> = hydrate_format::Chunker::new(&data[..])
        .map(|c| c.unwrap().data.len())
        .collect();
    println!(
        "StreamCDC chunker  {:8.0} MB/s ({} chunks)",
        mb / t.elapsed().as_secs_f64(),
        lens.len()
    );
    let t = Instant::now();
    let cdc = fastcdc::v2020::FastCDC::with_level(
        &data,
        16384,
        65536,
        262144,
        fastcdc::v2020::Normalization::Level1,
    );
    let n = cdc.count();
    println!(
        "FastCDC in memory  {:8.0} MB/s ({n})",
        mb / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let _ = blake3::hash(&data);
    println!(
        "blake3 whole       {:8.0} MB/s",
        mb / t.elapsed().as_secs_f64()
    );
    let mut off = 0;
    let chunks: Vec<&[u8]> = lens
        .iter()
        .map(|&l| {
            let s = &data[off..off + l];
            off += l;
            s
        })
        .collect();
    let t = Instant::now();
    for c in &chunks {
        std::hint::black_box(blake3::hash(c));
    }
    println!(
        "blake3 per chunk   {:8.0} MB/s",
        mb / t.elapsed().as_secs_f64()
    );
    for level in [-5, -1, 1, 3] {
        let t = Instant::now();
        let mut out = 0usize;
        for c in &chunks {
            out += zstd::bulk::compress(c, level).unwrap().len();
        }
        println!(
            "zstd {level:2}            {:8.0} MB/s ratio {:.3}",
            mb / t.elapsed().as_secs_f64(),
            out as f64 / data.len() as f64
        );
    }
    let t = Instant::now();
    let mut raw = 0;
    for c in &chunks {
        if hydrate_format::compress_chunk(c, 3).0 == 0 {
            raw += 1;
        }
    }
    println!(
        "compress_chunk 3   {:8.0} MB/s ({raw} raw of {})",
        mb / t.elapsed().as_secs_f64(),
        chunks.len()
    );
}
