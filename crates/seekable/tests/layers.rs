//! Index real layer blobs (gzip/pigz CLIs, flate2, multi-member gzip, zstd frames, plain tar), then read
//! every span and random ranges back from the fetch ranges alone, and check corruption fails closed.

mod support;

use std::path::Path;

use hydrate_seekable::{
    index_layer, read_span, Compression, EntryKind, Error, LayerIndex, Options, Seekability,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use support::*;

const SPACING: u64 = 128 * 1024;
const BIG: usize = 3 << 20;

fn fetch<'a>(index: &LayerIndex, blob: &'a [u8], span: usize) -> &'a [u8] {
    let range = index.fetch_range(span).unwrap();
    &blob[range.start as usize..range.end as usize]
}

/// Reads uncompressed `range` of the layer through spans, as a caller would.
fn read_range(index: &LayerIndex, blob: &[u8], range: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for span in index.spans_for(range.clone()) {
        let bytes = read_span(index, span, fetch(index, blob, span)).unwrap();
        let start = index.span_range(span).unwrap().start;
        let from = range.start.max(start) - start;
        let to = range.end.min(start + bytes.len() as u64) - start;
        out.extend_from_slice(&bytes[from as usize..to as usize]);
    }
    out
}

/// Indexes `blob` (whose uncompressed stream is `layer.tar`) and checks everything the index promises.
fn check_blob(layer: &Layer, blob: &[u8], compression: Compression) -> LayerIndex {
    let index = index_layer(blob, &Options::with_spacing(SPACING)).unwrap();
    assert_eq!(index.compression, compression);
    assert_eq!(index.compressed_size, blob.len() as u64);
    assert_eq!(
        index.compressed_sha256,
        <[u8; 32]>::from(Sha256::digest(blob))
    );
    assert_eq!(index.uncompressed_size, layer.tar.len() as u64);
    assert_eq!(index.spans[0].checkpoint.uncompressed_offset, 0);

    // Every span, from its fetch range alone.
    let mut rebuilt = Vec::new();
    for span in 0..index.spans.len() {
        let bytes = read_span(&index, span, fetch(&index, blob, span)).unwrap();
        let range = index.span_range(span).unwrap();
        assert_eq!(bytes.len() as u64, range.end - range.start);
        rebuilt.extend_from_slice(&bytes);
    }
    assert!(rebuilt == layer.tar, "spans do not rebuild the tar");

    // Every regular file's data, where the index says it is.
    for (path, data) in &layer.files {
        let entry = index
            .entries
            .iter()
            .find(|entry| &entry.path == path)
            .unwrap_or_else(|| panic!("{path:?} not indexed"));
        assert_eq!(entry.size, data.len() as u64, "{path:?}");
        assert!(
            read_range(&index, blob, entry.data_range()) == *data,
            "{path:?}"
        );
    }

    // Random 4 KiB-ish reads.
    let mut rng = StdRng::seed_from_u64(42);
    for _ in 0..50 {
        let start = rng.random_range(0..index.uncompressed_size);
        let end = (start + rng.random_range(1..20_000)).min(index.uncompressed_size);
        let expected = &layer.tar[start as usize..end as usize];
        assert!(read_range(&index, blob, start..end) == expected);
    }
    index
}

fn spans_with_bits(index: &LayerIndex) -> usize {
    index.spans.iter().filter(|s| s.checkpoint.bits > 0).count()
}

#[test]
fn gzip_cli_levels_1_and_9() {
    let layer = sample_layer(BIG);
    for level in ["-1", "-9"] {
        let blob = pipe("gzip", &[level, "-c", "-n"], &layer.tar);
        let index = check_blob(&layer, &blob, Compression::Gzip);
        assert!(
            index.spans.len() > 20,
            "{level}: {} spans",
            index.spans.len()
        );
        assert!(
            spans_with_bits(&index) > 0,
            "no mid-byte checkpoint exercised"
        );
        assert!(index.spans[1..]
            .iter()
            .all(|s| !s.checkpoint.window.is_empty()));
    }
}

#[test]
fn pigz_default_and_independent() {
    let layer = sample_layer(BIG);
    for args in [
        &["-c"][..],
        &["-c", "--independent"],
        &["-c", "-p", "2", "-b", "64"],
    ] {
        let blob = pipe("pigz", args, &layer.tar);
        let index = check_blob(&layer, &blob, Compression::Gzip);
        assert!(
            index.spans.len() > 20,
            "pigz {args:?}: {} spans",
            index.spans.len()
        );
    }
}

#[test]
fn flate2_gzip_including_stored_blocks() {
    let layer = sample_layer(BIG);
    for level in [0, 1, 6, 9] {
        let blob = flate2_gzip(&layer.tar, level);
        let index = check_blob(&layer, &blob, Compression::Gzip);
        // zlib-rs level 1 (zlib-ng's deflate_quick) writes blocks of megabytes: checkpoints can only sit
        // between blocks, so its spans are as large. Go's and GNU gzip's levels end a block every ≤ 64 KiB.
        let least = if level == 1 { 1 } else { 10 };
        assert!(
            index.spans.len() > least,
            "level {level}: {} spans",
            index.spans.len()
        );
    }
}

#[test]
fn multi_member_gzip_spans_cross_members() {
    let layer = sample_layer(BIG);
    // Members smaller and larger than the spacing, cut at arbitrary (non-tar-aligned) points.
    for piece in [50_000, 700_001] {
        let blob = multi_member_gzip(&layer.tar, piece);
        let index = check_blob(&layer, &blob, Compression::Gzip);
        assert!(index.spans.len() > 10);
    }
    // A concatenation made by the CLI.
    let half = layer.tar.len() / 2;
    let mut blob = pipe("gzip", &["-c", "-n"], &layer.tar[..half]);
    blob.extend(pipe("gzip", &["-c", "-n"], &layer.tar[half..]));
    check_blob(&layer, &blob, Compression::Gzip);
}

#[test]
fn zstd_multi_frame_checkpoints_at_frames() {
    let layer = sample_layer(BIG);
    let blob = multi_frame_zstd(&layer.tar, 100_000);
    let index = check_blob(&layer, &blob, Compression::Zstd);
    assert_eq!(index.seekability, Seekability::Checkpoints);
    assert!(index.spans.len() > 10);
    assert!(index
        .spans
        .iter()
        .all(|s| s.checkpoint.window.is_empty() && s.checkpoint.bits == 0));
}

#[test]
fn zstd_single_frame_is_from_start_only() {
    let layer = sample_layer(BIG);
    let blob = zstd::bulk::compress(&layer.tar, 3).unwrap();
    let index = check_blob(&layer, &blob, Compression::Zstd);
    assert_eq!(index.seekability, Seekability::FromStartOnly);
    assert_eq!(index.spans.len(), 1);
    assert_eq!(index.fetch_range(0).unwrap(), 0..blob.len() as u64);
}

#[test]
fn uncompressed_tar_is_identity() {
    let layer = sample_layer(BIG);
    let index = check_blob(&layer, &layer.tar, Compression::None);
    for span in 0..index.spans.len() {
        assert_eq!(
            index.fetch_range(span).unwrap(),
            index.span_range(span).unwrap()
        );
    }
}

#[test]
fn entries_carry_metadata() {
    let layer = sample_layer(10_000);
    let index = index_layer(layer.tar.as_slice(), &Options::default()).unwrap();
    let find = |path: &str| {
        index
            .entries
            .iter()
            .find(|entry| entry.path == Path::new(path))
            .unwrap_or_else(|| panic!("{path} missing"))
    };
    assert_eq!(find("usr/bin/").kind, EntryKind::Directory);
    let empty = find("empty");
    assert_eq!((empty.kind, empty.size), (EntryKind::File, 0));
    let pax = find(&format!("pax/{}/file", "p".repeat(200)));
    assert_eq!(
        (pax.uid, pax.gid, pax.mtime, pax.mode),
        (3_000_000, 3_000_001, 1_700_000_000, 0o600)
    );
    let small = find("usr/bin/small");
    assert_eq!(
        (small.uid, small.gid, small.mtime, small.mode),
        (1000, 1000, 1_600_000_000, 0o644)
    );
    assert!(find(&format!("gnu/{}/file", "g".repeat(150))).size == 5000);
    let ping = find("usr/bin/ping");
    assert_eq!(ping.xattrs.len(), 2);
    assert_eq!(ping.xattrs[0].0, b"security.capability");
    assert_eq!(ping.xattrs[0].1[..4], [1, 0, 0, 2]);
    assert_eq!(
        ping.xattrs[1],
        (b"user.comment".to_vec(), b"hello".to_vec())
    );
    let link = find("usr/bin/link");
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.link_target.as_deref(), Some(Path::new("small")));
    let hard = find("usr/bin/hard");
    assert_eq!(hard.kind, EntryKind::HardLink);
    assert_eq!(
        hard.link_target.as_deref(),
        Some(Path::new("usr/bin/small"))
    );
    assert_eq!(find("etc/.wh.removed").kind, EntryKind::File);
    assert_eq!(find("var/.wh..wh..opq").kind, EntryKind::File);
    let null = find("dev/null");
    assert_eq!(
        (null.kind, null.device),
        (EntryKind::CharDevice, Some((1, 3)))
    );
    // No PAX header or long-name record shows up as an entry of its own.
    assert_eq!(index.entries.len(), 14);
}

#[test]
fn gnu_tar_formats() {
    let dir = tempfile::tempdir().unwrap();
    let long_dir = dir.path().join("d".repeat(120));
    std::fs::create_dir_all(&long_dir).unwrap();
    std::fs::write(long_dir.join("f".repeat(130)), mixed_data(8, 400_000)).unwrap();
    std::fs::write(dir.path().join("zero"), b"").unwrap();
    std::os::unix::fs::symlink("z".repeat(150), dir.path().join("long-link")).unwrap();
    std::fs::hard_link(dir.path().join("zero"), dir.path().join("zero-hard")).unwrap();
    for format in ["gnu", "posix"] {
        let tar = gnu_tar(dir.path(), format);
        let blob = pipe("gzip", &["-c", "-n"], &tar);
        let index = index_layer(blob.as_slice(), &Options::with_spacing(64 * 1024)).unwrap();
        let long = format!("./{}/{}", "d".repeat(120), "f".repeat(130));
        let entry = index
            .entries
            .iter()
            .find(|e| e.path == Path::new(&long))
            .unwrap_or_else(|| panic!("{format}: long name missing: {:?}", index.entries));
        let mut data = Vec::new();
        for span in index.spans_for(entry.data_range()) {
            data.extend(read_span(&index, span, fetch(&index, &blob, span)).unwrap());
        }
        let start = index
            .span_range(index.span_at(entry.data_offset).unwrap())
            .unwrap()
            .start;
        let from = (entry.data_offset - start) as usize;
        assert!(data[from..from + entry.size as usize] == mixed_data(8, 400_000));
        let link = index
            .entries
            .iter()
            .find(|e| e.path == Path::new("./long-link"))
            .unwrap();
        assert_eq!(
            link.link_target.as_deref(),
            Some(Path::new(&"z".repeat(150)))
        );
        let hard = index
            .entries
            .iter()
            .find(|e| e.kind == EntryKind::HardLink)
            .unwrap();
        assert!(hard.link_target.is_some());
    }
}

#[test]
fn flipped_bits_and_wrong_windows_never_return_bytes() {
    let layer = sample_layer(1 << 20);
    // Only the first has back-references into windows (stored blocks and zstd frames need none).
    let blobs = [
        (pipe("gzip", &["-6", "-c", "-n"], &layer.tar), true),
        (flate2_gzip(&layer.tar, 0), false),
        (multi_frame_zstd(&layer.tar, 100_000), false),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    for (blob, gzip) in blobs {
        let index = index_layer(blob.as_slice(), &Options::with_spacing(SPACING)).unwrap();
        let mut failures = 0;
        for span in 0..index.spans.len() {
            let good = read_span(&index, span, fetch(&index, &blob, span)).unwrap();
            for _ in 0..8 {
                let mut bad = fetch(&index, &blob, span).to_vec();
                let bit = rng.random_range(0..bad.len() * 8 / 2);
                bad[bit / 8] ^= 1 << (bit % 8);
                match read_span(&index, span, &bad) {
                    // A bit deflate skips (stored-block alignment padding) changes nothing: still verified.
                    Ok(bytes) => assert!(bytes == good),
                    Err(
                        Error::DigestMismatch { .. }
                        | Error::Inflate { .. }
                        | Error::Zstd { .. }
                        | Error::ShortSpan { .. }
                        | Error::Gzip { .. }
                        | Error::Truncated { .. },
                    ) => failures += 1,
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
        }
        assert!(failures > index.spans.len() * 6, "{failures} failures");
        if gzip {
            // Swap windows between spans: the wrong history decodes to wrong bytes, caught by the digest.
            let mut wrong = index.clone();
            let n = wrong.spans.len();
            for span in 1..n - 1 {
                wrong.spans[span].checkpoint.window =
                    index.spans[span + 1].checkpoint.window.clone();
            }
            let mut rejected = 0;
            for span in 1..n - 1 {
                match read_span(&wrong, span, fetch(&index, &blob, span)) {
                    // A span of stored blocks (the random file) reads no history: its bytes are right.
                    Ok(bytes) => assert!(
                        bytes == read_span(&index, span, fetch(&index, &blob, span)).unwrap()
                    ),
                    Err(_) => rejected += 1,
                }
            }
            assert!(rejected > 0);
            // A garbled stored window is a typed error of its own.
            wrong.spans[1].checkpoint.window[4] ^= 0xff;
            assert!(read_span(&wrong, 1, fetch(&index, &blob, 1)).is_err());
        }
    }
}

#[test]
fn wrong_windows_are_rejected_by_digest() {
    let layer = sample_layer(1 << 20);
    let blob = pipe("gzip", &["-6", "-c", "-n"], &layer.tar);
    let mut index = index_layer(blob.as_slice(), &Options::with_spacing(SPACING)).unwrap();
    // A window of zeros: the decoder runs but back-references copy wrong bytes.
    let zeros = zstd::bulk::compress(&[0u8; 32 * 1024], 3).unwrap();
    let mut mismatches = 0;
    for span in 1..index.spans.len() {
        index.spans[span].checkpoint.window = zeros.clone();
        match read_span(&index, span, fetch(&index, &blob, span)) {
            Err(Error::DigestMismatch { .. } | Error::Inflate { .. }) => mismatches += 1,
            // Spans inside the random file are stored blocks: no history read, right bytes.
            Ok(bytes) => assert!(
                bytes == layer.tar[index.span_range(span).unwrap().start as usize..][..bytes.len()]
            ),
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(mismatches > 0);
}

#[test]
fn truncated_blobs_fail_indexing_clearly() {
    let layer = sample_layer(1 << 20);
    let gzip = pipe("gzip", &["-c", "-n"], &layer.tar);
    for cut in [5, gzip.len() / 2, gzip.len() - 4] {
        let err = index_layer(&gzip[..cut], &Options::default()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Truncated {
                    compression: Compression::Gzip,
                    ..
                }
            ),
            "cut at {cut}: {err}"
        );
    }
    let zstd = multi_frame_zstd(&layer.tar, 100_000);
    let err = index_layer(&zstd[..zstd.len() / 2], &Options::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                compression: Compression::Zstd,
                ..
            }
        ),
        "{err}"
    );
    let err = index_layer(&layer.tar[..layer.tar.len() / 2], &Options::default()).unwrap_err();
    assert!(matches!(err, Error::Tar(_)), "{err}");
    // Garbage after the last member is an error too, not silently ignored.
    let mut trailing = gzip.clone();
    trailing.extend_from_slice(b"garbage");
    let err = index_layer(trailing.as_slice(), &Options::default()).unwrap_err();
    assert!(matches!(err, Error::Gzip { .. }), "{err}");
}

#[test]
fn wrong_fetch_lengths_and_spans_are_errors() {
    let layer = sample_layer(1 << 20);
    let blob = flate2_gzip(&layer.tar, 6);
    let index = index_layer(blob.as_slice(), &Options::with_spacing(SPACING)).unwrap();
    let bytes = fetch(&index, &blob, 1);
    assert!(matches!(
        read_span(&index, 1, &bytes[..bytes.len() - 1]),
        Err(Error::FetchLength { .. })
    ));
    let spans = index.spans.len();
    assert!(matches!(
        read_span(&index, spans, bytes),
        Err(Error::NoSuchSpan { .. })
    ));
}

#[test]
fn indexing_is_deterministic() {
    let layer = sample_layer(1 << 20);
    let blob = pipe("gzip", &["-c", "-n"], &layer.tar);
    let a = index_layer(blob.as_slice(), &Options::with_spacing(SPACING)).unwrap();
    let b = index_layer(
        std::io::BufReader::with_capacity(777, blob.as_slice()),
        &Options::with_spacing(SPACING),
    )
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn empty_gzip_and_tar() {
    let tar = tar::Builder::new(Vec::new()).into_inner().unwrap();
    for blob in [flate2_gzip(&tar, 6), tar.clone()] {
        let index = index_layer(blob.as_slice(), &Options::default()).unwrap();
        assert!(index.entries.is_empty());
        assert_eq!(index.uncompressed_size, tar.len() as u64);
        assert_eq!(read_span(&index, 0, fetch(&index, &blob, 0)).unwrap(), tar);
    }
}

#[test]
fn empty_blob_is_an_empty_uncompressed_layer() {
    let index = index_layer(&[][..], &Options::default()).unwrap();
    assert_eq!(index.compression, Compression::None);
    assert_eq!((index.uncompressed_size, index.spans.len()), (0, 1));
    assert_eq!(read_span(&index, 0, &[]).unwrap(), Vec::<u8>::new());
}

#[test]
fn indexes_validate_and_corrupt_ones_do_not() {
    let layer = sample_layer(1 << 20);
    let blob = pipe("gzip", &["-c", "-n"], &layer.tar);
    let index = index_layer(blob.as_slice(), &Options::with_spacing(SPACING)).unwrap();
    index.validate().unwrap();
    let mut bits = index.clone();
    bits.spans[1].checkpoint.bits = 9;
    assert!(matches!(bits.validate(), Err(Error::InvalidIndex(_))));
    assert!(matches!(
        read_span(&bits, 1, fetch(&index, &blob, 1)),
        Err(Error::InvalidIndex(_))
    ));
    let mut order = index.clone();
    order.spans.swap(1, 2);
    assert!(matches!(order.validate(), Err(Error::InvalidIndex(_))));
    // Reading a misordered index fails, never panics.
    assert!(read_span(&order, 1, &blob[..10]).is_err());
    let mut entry = index.clone();
    entry.entries[1].size = u64::MAX;
    assert!(matches!(entry.validate(), Err(Error::InvalidIndex(_))));
}
