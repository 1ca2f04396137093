//! The generated source tree: one big incompressible file (`big.bin`, the subject of the read benchmarks) and
//! a few thousand small files under `small/`, a mix of random bytes, compressible text and exact duplicates of
//! earlier files, so a build shows both compression and dedup. Content is a pure function of the seed, so two
//! runs with the same options build the same image.

use crate::cancel;
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

pub use hydrate_testkit::rng::Rng;

/// Files per directory under `small/` (real trees are not one flat directory).
const FILES_PER_DIR: usize = 100;

#[derive(Debug, Clone, Copy)]
pub struct TreeSpec {
    pub big_size: u64,
    pub small_files: usize,
    pub seed: u64,
}

/// What was generated, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub files: u64,
    pub logical_bytes: u64,
    pub big_bytes: u64,
    pub small_bytes: u64,
    /// Small files whose content repeats an earlier file byte for byte.
    pub duplicate_files: u64,
    pub duplicate_bytes: u64,
}

/// Path of the big file relative to the tree (and the image) root.
pub const BIG_FILE: &str = "big.bin";

/// Writes the tree under `root` (created) and syncs it to disk, so later cold reads find it on the device.
pub fn generate(root: &Path, spec: &TreeSpec) -> Result<TreeStats> {
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let mut stats = TreeStats::default();
    write_random_file(&root.join(BIG_FILE), spec.big_size, spec.seed)?;
    stats.files += 1;
    stats.big_bytes = spec.big_size;

    let mut rng = Rng::new(spec.seed ^ 0x5EED);
    // Contents already written, to pick duplicates from; small files only, so this stays a few hundred MB at most.
    let mut written: Vec<Vec<u8>> = Vec::with_capacity(spec.small_files);
    for i in 0..spec.small_files {
        cancel::check()?;
        let dir = root
            .join("small")
            .join(format!("d{:03}", i / FILES_PER_DIR));
        if i % FILES_PER_DIR == 0 {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let data = small_content(&mut rng, i, &written);
        let duplicate = i % 10 < 2 && i > 0;
        if duplicate {
            stats.duplicate_files += 1;
            stats.duplicate_bytes += data.len() as u64;
        }
        let path = dir.join(format!("f{i:05}"));
        fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
        stats.files += 1;
        stats.small_bytes += data.len() as u64;
        written.push(data);
    }
    stats.logical_bytes = stats.big_bytes + stats.small_bytes;
    nix::unistd::sync();
    Ok(stats)
}

/// Content of small file `i`: 20% copies of a recent file, 40% compressible text, 40% random bytes. Sizes are
/// skewed like source trees: most files under 4 KiB, some tens of KiB, a few hundreds of KiB.
fn small_content(rng: &mut Rng, i: usize, written: &[Vec<u8>]) -> Vec<u8> {
    if i % 10 < 2 && i > 0 {
        let back = 1 + rng.below(i.min(50) as u64) as usize;
        return written[i - back].clone();
    }
    let size = match rng.below(10) {
        0..=5 => rng.below(4096),
        6..=8 => 4096 + rng.below(60 * 1024),
        _ => 64 * 1024 + rng.below(448 * 1024),
    } as usize;
    let mut data = vec![0u8; size];
    if i % 10 < 6 {
        rng.fill_text(&mut data);
    } else {
        rng.fill(&mut data);
    }
    data
}

pub fn write_random_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        cancel::check()?;
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Reads every regular file below `root` to the end (the native baseline of a build, which must read it all).
/// Returns (files, bytes).
pub fn read_tree(root: &Path) -> Result<(u64, u64)> {
    let mut buf = vec![0u8; 1 << 20];
    let mut totals = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        cancel::check()?;
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let kind = entry
                .file_type()
                .with_context(|| format!("stat {}", entry.path().display()))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                let mut f =
                    File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                loop {
                    let n = f
                        .read(&mut buf)
                        .with_context(|| format!("reading {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    totals.1 += n as u64;
                }
                totals.0 += 1;
            }
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(seed: u64) -> (tempfile::TempDir, TreeStats) {
        let dir = tempfile::tempdir().unwrap();
        let stats = generate(
            dir.path(),
            &TreeSpec {
                big_size: 300_000,
                small_files: 120,
                seed,
            },
        )
        .unwrap();
        (dir, stats)
    }

    #[test]
    fn generated_tree_matches_its_stats_and_has_duplicates() {
        let (dir, stats) = tree(3);
        assert_eq!(stats.files, 121);
        assert_eq!(
            fs::metadata(dir.path().join(BIG_FILE)).unwrap().len(),
            300_000
        );
        assert_eq!(
            read_tree(dir.path()).unwrap(),
            (stats.files, stats.logical_bytes)
        );
        assert!(stats.duplicate_files >= 20, "{stats:?}");
        // Every file declared a duplicate really repeats an earlier one.
        let f = |i: usize| {
            fs::read(
                dir.path()
                    .join(format!("small/d{:03}/f{i:05}", i / FILES_PER_DIR)),
            )
            .unwrap()
        };
        for i in (1..120).filter(|i| i % 10 < 2) {
            let me = f(i);
            assert!(
                (i.saturating_sub(50)..i).any(|j| f(j) == me),
                "file {i} repeats no earlier file"
            );
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, _) = tree(9);
        let (b, _) = tree(9);
        let (c, _) = tree(10);
        let big = |d: &tempfile::TempDir| fs::read(d.path().join(BIG_FILE)).unwrap();
        assert_eq!(big(&a), big(&b));
        assert_ne!(big(&a), big(&c));
        assert_eq!(
            fs::read(a.path().join("small/d001/f00117")).unwrap(),
            fs::read(b.path().join("small/d001/f00117")).unwrap()
        );
    }

    #[test]
    fn random_bytes_do_not_repeat_and_text_does() {
        let mut rng = Rng::new(1);
        let mut buf = vec![0u8; 1 << 16];
        rng.fill(&mut buf);
        let zeros = buf.iter().filter(|&&b| b == 0).count();
        // About 1/256 of random bytes are zero; far more would mean a broken generator.
        assert!(
            zeros < buf.len() / 100,
            "{zeros} zero bytes in 64 KiB of random data"
        );
        let mut text = vec![0u8; 4096];
        rng.fill_text(&mut text);
        assert!(text.windows(7).any(|w| w == b"hydrate"));
    }
}
