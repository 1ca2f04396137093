//! Measures indexing and random reads on a real layer blob at several checkpoint spacings:
//!
//!   tar --sort=name -cf - -C / usr/lib/python3.11 ... | gzip -6 -n > layer.tar.gz
//!   cargo run --release -p hydrate-seekable --example zran_numbers -- layer.tar.gz
//!
//! `SPACINGS_KIB=1024,2048` picks the spacings, `WINDOW_LEVEL=19` the zstd level of the stored windows.
//! Index size is measured on a plain binary encoding (fixed-width fields, the stored windows as they are,
//! entry paths as bytes), raw and zstd-compressed: the real format is the caller's, this is its order of size.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use hydrate_seekable::{index_layer, read_span, LayerIndex, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KIB: u64 = 1024;
const READS: usize = 2000;

/// (spans part, entries part) of a plain encoding of the index.
fn encode(index: &LayerIndex) -> (Vec<u8>, Vec<u8>) {
    let mut spans = Vec::new();
    for span in &index.spans {
        let checkpoint = &span.checkpoint;
        spans.extend_from_slice(&checkpoint.compressed_offset.to_le_bytes());
        spans.push(checkpoint.bits);
        spans.extend_from_slice(&checkpoint.uncompressed_offset.to_le_bytes());
        spans.extend_from_slice(&span.digest);
        spans.extend_from_slice(&(checkpoint.window.len() as u32).to_le_bytes());
        spans.extend_from_slice(&checkpoint.window);
    }
    let mut entries = Vec::new();
    for entry in &index.entries {
        let path = entry.path.as_os_str().as_encoded_bytes();
        entries.extend_from_slice(&(path.len() as u16).to_le_bytes());
        entries.extend_from_slice(path);
        entries.push(format!("{:?}", entry.kind).as_bytes()[0]);
        entries.extend_from_slice(&entry.mode.to_le_bytes());
        entries.extend_from_slice(&entry.uid.to_le_bytes());
        entries.extend_from_slice(&entry.gid.to_le_bytes());
        entries.extend_from_slice(&entry.mtime.to_le_bytes());
        entries.extend_from_slice(&entry.size.to_le_bytes());
        entries.extend_from_slice(&entry.data_offset.to_le_bytes());
        let link = entry
            .link_target
            .as_ref()
            .map_or(&[][..], |link| link.as_os_str().as_encoded_bytes());
        entries.extend_from_slice(&(link.len() as u16).to_le_bytes());
        entries.extend_from_slice(link);
        entries.push(entry.xattrs.len() as u8);
        for (name, value) in &entry.xattrs {
            entries.extend_from_slice(&(name.len() as u16).to_le_bytes());
            entries.extend_from_slice(name);
            entries.extend_from_slice(&(value.len() as u16).to_le_bytes());
            entries.extend_from_slice(value);
        }
        if let Some((major, minor)) = entry.device {
            entries.extend_from_slice(&major.to_le_bytes());
            entries.extend_from_slice(&minor.to_le_bytes());
        }
    }
    (spans, entries)
}

fn pct(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole as f64
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: zran_numbers LAYER_BLOB");
    let blob = File::open(&path).expect("open layer blob");
    let size = blob.metadata().unwrap().len();
    println!("layer {path}: {:.1} MB compressed", size as f64 / 1e6);
    println!(
        "{:>8} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>8} {:>10} {:>10} {:>9}",
        "spacing",
        "index s",
        "MB/s",
        "spans",
        "win B/cp",
        "spans %",
        "entries%",
        "total %",
        "total zst%",
        "fetch/4K",
        "read ms"
    );
    let spacings: Vec<u64> = match std::env::var("SPACINGS_KIB") {
        Ok(list) => list
            .split(',')
            .map(|kib| kib.parse::<u64>().unwrap() * KIB)
            .collect(),
        Err(_) => vec![512 * KIB, 1024 * KIB, 2048 * KIB, 4096 * KIB],
    };
    for spacing in spacings {
        let file = File::open(&path).unwrap();
        let mut options = Options::with_spacing(spacing);
        if let Some(level) = std::env::var("WINDOW_LEVEL")
            .ok()
            .and_then(|l| l.parse().ok())
        {
            options.window_level = level;
        }
        let started = Instant::now();
        let index = index_layer(BufReader::with_capacity(1 << 20, file), &options)
            .expect("index the layer");
        let elapsed = started.elapsed().as_secs_f64();
        let (spans, entries) = encode(&index);
        let mut whole = spans.clone();
        whole.extend_from_slice(&entries);
        let compressed = zstd::bulk::compress(&whole, 19).unwrap().len() as u64;
        let windows: Vec<_> = index
            .spans
            .iter()
            .filter(|span| !span.checkpoint.window.is_empty())
            .collect();
        let window_avg = windows
            .iter()
            .map(|span| span.checkpoint.window.len() as u64)
            .sum::<u64>()
            / windows.len().max(1) as u64;

        // Random 4 KiB reads: compressed bytes fetched, and a verified decode of each span touched.
        let mut rng = StdRng::seed_from_u64(1);
        let mut fetched = 0u64;
        let mut decode_time = 0.0;
        let mut decodes = 0u32;
        let blob = File::open(&path).unwrap();
        for read in 0..READS {
            let start = rng.random_range(0..index.uncompressed_size / 4096) * 4096;
            for span in index.spans_for(start..start + 4096) {
                let range = index.fetch_range(span).unwrap();
                fetched += range.end - range.start;
                if read % 10 == 0 {
                    let mut bytes = vec![0u8; (range.end - range.start) as usize];
                    blob.read_exact_at(&mut bytes, range.start).unwrap();
                    let started = Instant::now();
                    read_span(&index, span, &bytes).expect("verified span");
                    decode_time += started.elapsed().as_secs_f64();
                    decodes += 1;
                }
            }
        }
        println!(
            "{:>6}Ki {:>9.2} {:>7.0} {:>10} {:>9} {:>8.2}% {:>8.2}% {:>7.2}% {:>9.2}% {:>7.0} KiB {:>9.1}",
            spacing / KIB,
            elapsed,
            index.uncompressed_size as f64 / 1e6 / elapsed,
            index.spans.len(),
            window_avg,
            pct(spans.len() as u64, size),
            pct(entries.len() as u64, size),
            pct(whole.len() as u64, size),
            pct(compressed, size),
            fetched as f64 / READS as f64 / 1024.0,
            decode_time * 1e3 / f64::from(decodes),
        );
        if spacing == 512 * KIB {
            println!(
                "   uncompressed {:.1} MB, {} entries, compressed/uncompressed {:.3}; MB/s counts uncompressed bytes",
                index.uncompressed_size as f64 / 1e6,
                index.entries.len(),
                size as f64 / index.uncompressed_size as f64
            );
        }
    }
}
