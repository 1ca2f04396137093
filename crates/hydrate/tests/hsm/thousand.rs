//! The main scenario: 1,000 files of mixed sizes archived and released, random ranges of random files
//! read with every kind of reader (pread, mmap, O_DIRECT, sendfile lazily; cp, rsync -S, tar -S, sha256sum
//! whole), `du` watched throughout, and every byte checked at the end.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hydrate_format::oci::sha256_digest;
use hydrate_hsm::{Request, Residency};

use crate::support::*;

/// A tree of `n` files of mixed sizes (some empty, some compressible, some duplicates), made old.
pub fn make_tree(root: &Path, n: usize, big: usize) -> BTreeMap<PathBuf, (u64, usize, bool)> {
    let mut files: BTreeMap<PathBuf, (u64, usize, bool)> = BTreeMap::new();
    for i in 0..n {
        let rel = PathBuf::from(format!("d{:02}/f{i:04}", i % 10));
        let r = (i as u64).wrapping_mul(2654435761) % 1000;
        let len = match r {
            0..=9 => 0,
            10..=699 => (r as usize * 37) % (16 << 10) + 1,
            700..=949 => (16 << 10) + (r as usize * 1237) % (496 << 10),
            _ => (512 << 10) + (r as usize * 7919) % big,
        };
        // Every 25th file duplicates another's content: dedup across files.
        let seed = if i % 25 == 24 {
            (i - 1) as u64
        } else {
            i as u64
        };
        let text = i % 3 == 0;
        let len = if i % 25 == 24 {
            files[&PathBuf::from(format!("d{:02}/f{:04}", (i - 1) % 10, i - 1))].1
        } else {
            len
        };
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content(seed, len, text)).unwrap();
        filetime::set_file_times(&path, days_ago(40), days_ago(40)).unwrap();
        files.insert(rel, (seed, len, text));
    }
    files
}

/// The whole test of the issue on one store: archive + release 1,000 files, read random ranges of random
/// files with every kind of reader, compare everything, and watch `du`.
pub fn thousand_files(store: &str, root: &Path, big: usize) {
    let hsm = Hsm::init(root, store, "30s");
    let files = make_tree(root, 1000, big);
    let du_full = du_bytes(root);
    let r = hsm.ok(Request::Archive(vec![hsm.root.clone()]));
    let report = r.archive.expect("archive report");
    assert_eq!(report.archived, 1000, "{:?}", r.lines);
    assert!(
        report.dedup_chunks > 0,
        "duplicate files must dedup: {report:?}"
    );
    // Incremental: a second run reads nothing.
    let again = hsm
        .ok(Request::Archive(vec![hsm.root.clone()]))
        .archive
        .unwrap();
    assert_eq!(
        (again.archived, again.unchanged, again.bytes_read),
        (0, 1000, 0)
    );

    hsm.ok(Request::Release(vec![hsm.root.clone()]));
    let du_released = du_bytes(root);
    let nonempty = files.values().filter(|f| f.1 > 0).count();
    let status = hsm.status();
    assert_eq!(
        status
            .values()
            .filter(|s| residency(s) == Residency::Released)
            .count(),
        nonempty
    );
    assert!(
        du_released < du_full / 50,
        "du must drop: {du_full} bytes before release, {du_released} after"
    );

    // Random reads of random files, each with one kind of reader.
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path();
    let candidates: Vec<_> = files.iter().filter(|(_, f)| f.1 > 0).collect();
    let mut rng = 0x1234_5678_u64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m.max(1)
    };
    let (mut whole_bytes, mut lazy_ranges) = (0u64, 0u64);
    // Ranges read lazily, per file, merged (reads of one file may overlap).
    let mut lazy_read: BTreeMap<PathBuf, Vec<(u64, u64)>> = BTreeMap::new();
    let mut used = std::collections::HashSet::new();
    for k in 0..140u64 {
        let (rel, &(seed, len, text)) = candidates[next(candidates.len() as u64) as usize];
        if !used.insert(rel.clone()) {
            continue;
        }
        let path = root.join(rel);
        let want = content(seed, len, text);
        let method = k % 9;
        match method {
            0 | 1 => {
                // pread of a few random ranges (lazy: recalled by range).
                let f = File::open(&path).unwrap();
                for _ in 0..3 {
                    let off = next(len as u64);
                    let n = (next(200_000) + 1).min(len as u64 - off) as usize;
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, off).unwrap();
                    assert!(
                        buf == want[off as usize..off as usize + n],
                        "{rel:?} pread {off}+{n}"
                    );
                    lazy_read
                        .entry(rel.clone())
                        .or_default()
                        .push((off, off + n as u64));
                    lazy_ranges += 1;
                }
            }
            2 => {
                // mmap of a range: one event for the whole mapping, page faults raise none.
                let f = File::open(&path).unwrap();
                let off = (next(len as u64) / 4096) * 4096;
                let n = (len as u64 - off).min(300_000) as usize;
                let map =
                    unsafe { memmap2::MmapOptions::new().offset(off).len(n).map(&f) }.unwrap();
                assert!(
                    map[..] == want[off as usize..off as usize + n],
                    "{rel:?} mmap {off}+{n}"
                );
                lazy_read
                    .entry(rel.clone())
                    .or_default()
                    .push((off, off + n as u64));
                lazy_ranges += 1;
            }
            3 => {
                // O_DIRECT of an aligned range.
                let f = File::options()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)
                    .unwrap();
                let off = (next(len as u64) / 4096) * 4096;
                let n = 65536usize;
                let layout = std::alloc::Layout::from_size_align(n, 4096).unwrap();
                let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
                let buf = unsafe { std::slice::from_raw_parts_mut(ptr, n) };
                let got = f.read_at(buf, off).unwrap();
                let end = (off as usize + got).min(len);
                assert!(
                    buf[..end - off as usize] == want[off as usize..end],
                    "{rel:?} O_DIRECT {off}"
                );
                unsafe { std::alloc::dealloc(ptr, layout) };
                lazy_read
                    .entry(rel.clone())
                    .or_default()
                    .push((off, end as u64));
                lazy_ranges += 1;
            }
            4 => {
                let dst = out.join(format!("cp-{k}"));
                sh("cp", &[path.as_os_str(), dst.as_os_str()]);
                assert!(std::fs::read(&dst).unwrap() == want, "{rel:?} cp");
                whole_bytes += len as u64;
            }
            5 => {
                let dst = out.join(format!("rsync-{k}"));
                sh("rsync", &["-S".as_ref(), path.as_os_str(), dst.as_os_str()]);
                assert!(std::fs::read(&dst).unwrap() == want, "{rel:?} rsync -S");
                whole_bytes += len as u64;
            }
            6 => {
                let tar = out.join(format!("t-{k}.tar"));
                let x = out.join(format!("x-{k}"));
                std::fs::create_dir(&x).unwrap();
                sh(
                    "tar",
                    &[
                        "-S".as_ref(),
                        "-cf".as_ref(),
                        tar.as_os_str(),
                        "-C".as_ref(),
                        root.as_os_str(),
                        rel.as_os_str(),
                    ],
                );
                sh(
                    "tar",
                    &[
                        "-xf".as_ref(),
                        tar.as_os_str(),
                        "-C".as_ref(),
                        x.as_os_str(),
                    ],
                );
                assert!(
                    std::fs::read(x.join(rel)).unwrap() == want,
                    "{rel:?} tar -S"
                );
                whole_bytes += len as u64;
            }
            8 => {
                // sendfile from the stub (lazy: recalled by range) into a scratch file.
                let src = File::open(&path).unwrap();
                let dst_path = out.join(format!("sendfile-{k}"));
                let dst = File::create(&dst_path).unwrap();
                let off = next(len as u64);
                let n = (len as u64 - off).min(150_000) as usize;
                let mut at = off as libc::off_t;
                let mut left = n;
                while left > 0 {
                    let r =
                        unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut at, left) };
                    assert!(r > 0, "sendfile: {}", std::io::Error::last_os_error());
                    left -= r as usize;
                }
                assert!(
                    std::fs::read(&dst_path).unwrap() == want[off as usize..off as usize + n],
                    "{rel:?} sendfile"
                );
                lazy_read
                    .entry(rel.clone())
                    .or_default()
                    .push((off, off + n as u64));
                lazy_ranges += 1;
            }
            _ => {
                assert_eq!(sha256sum(&path), sha256_digest(&want), "{rel:?} sha256sum");
                whole_bytes += len as u64;
            }
        }
    }
    let lazy_bytes: u64 = lazy_read.values().map(|v| union_len(v.clone())).sum();
    let du_read = du_bytes(root);
    let grown = du_read - du_released;
    // Whole-file readers bring back whole files; lazy readers what they read rounded out to chunks (at most
    // CHUNK_MAX on each side of a range), plus block rounding.
    let low = whole_bytes + lazy_bytes;
    let high = whole_bytes + lazy_bytes + lazy_ranges * 2 * (256 << 10) + used.len() as u64 * 8192;
    assert!(
        (low..=high).contains(&grown),
        "du grew by {grown}; expected between {low} and {high} (whole {whole_bytes}, lazy {lazy_bytes} in {lazy_ranges} ranges)"
    );
    // Finally every file, checksum for checksum.
    for (rel, &(seed, len, text)) in &files {
        let got = std::fs::read(root.join(rel)).unwrap();
        assert_eq!(got.len(), len);
        assert!(
            got == content(seed, len, text),
            "{rel:?} differs after recall"
        );
    }
}
