//! The timed I/O: sequential reads with 1 MiB buffers, 4 KiB preads at random offsets, and the kernel knobs
//! around them (dropping the page cache, dropping one file's pages, the process's device read counter).
//!
//! The same functions time hydrate's mount and the native ext4 file, so both sides do exactly the same work
//! (including the checksum of cold reads, which proves the lazily fetched bytes are the right ones).

use crate::cancel;
use crate::tree::Rng;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

/// Buffer of every sequential read.
pub const SEQ_BUF: usize = 1 << 20;
/// Size of every random read.
pub const RANDOM_LEN: usize = 4096;

/// Writes dirty pages, then drops the page cache, dentries and inodes: the next read of anything comes from
/// the device (or, through a mount, from the store).
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .context("writing 3 to /proc/sys/vm/drop_caches (needs root)")
}

/// Drops the cached pages of one file (POSIX_FADV_DONTNEED). On a FUSE file without passthrough these are the
/// mount's own pages, so the next read goes to the daemon again; its cache file stays in memory.
pub fn drop_file_pages(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .with_context(|| format!("dropping the cached pages of {}", path.display()))
}

/// One sequential read of a whole file.
#[derive(Debug, Clone, Copy)]
pub struct SeqRead {
    pub bytes: u64,
    pub secs: f64,
    pub checksum: Option<u64>,
}

impl SeqRead {
    pub fn mb_per_s(&self) -> f64 {
        mb_per_s(self.bytes, self.secs)
    }
}

pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// Reads `path` from open to EOF with [`SEQ_BUF`] buffers; with `checksum`, also folds every byte into
/// [`Checksum`] (a few percent of CPU at disk speeds; used on cold reads only, on both sides).
pub fn read_seq(path: &Path, checksum: bool) -> Result<SeqRead> {
    let mut buf = vec![0u8; SEQ_BUF];
    let mut sum = Checksum::default();
    let started = Instant::now();
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {} at {bytes}", path.display()))?;
        if n == 0 {
            break;
        }
        if checksum {
            sum.update(&buf[..n]);
        }
        bytes += n as u64;
        cancel::check()?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(SeqRead {
        bytes,
        secs,
        checksum: checksum.then(|| sum.finish()),
    })
}

/// The fastest of several reads, the usual way to report a hot-cache figure (slower runs measure interference).
#[derive(Debug, Clone, Copy, Default)]
pub struct Best(Option<SeqRead>);

impl Best {
    pub fn add(&mut self, r: SeqRead) {
        if self.0.is_none_or(|b| r.secs < b.secs) {
            self.0 = Some(r);
        }
    }

    pub fn get(&self) -> Result<SeqRead> {
        self.0.context("no read was timed")
    }
}

/// A cheap order-sensitive checksum: four independent multiply-xor lanes over 32-byte blocks, so it keeps up
/// with memory bandwidth. It only has to tell a wrong or zero-filled range from the right bytes.
#[derive(Debug, Clone)]
pub struct Checksum {
    lanes: [u64; 4],
    pending: Vec<u8>,
    len: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum {
            lanes: [1, 2, 3, 4],
            pending: Vec::with_capacity(32),
            len: 0,
        }
    }
}

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl Checksum {
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (32 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == 32 {
                let block: [u8; 32] = self.pending[..].try_into().expect("32 bytes");
                self.block(&block);
                self.pending.clear();
            }
        }
        let mut blocks = data.chunks_exact(32);
        for b in &mut blocks {
            self.block(b.try_into().expect("32 bytes"));
        }
        self.pending.extend_from_slice(blocks.remainder());
    }

    fn block(&mut self, b: &[u8; 32]) {
        for (lane, word) in self.lanes.iter_mut().zip(b.chunks_exact(8)) {
            let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            *lane = (*lane ^ w).wrapping_mul(MIX).rotate_left(29);
        }
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.len.wrapping_mul(MIX);
        for (i, b) in self.pending.iter().enumerate() {
            h = (h ^ u64::from(*b) ^ ((i as u64) << 8)).wrapping_mul(MIX);
        }
        for lane in self.lanes {
            h = (h ^ lane).wrapping_mul(MIX).rotate_left(31);
        }
        h
    }
}

/// `count` offsets aligned to [`RANDOM_LEN`], uniform over the file (the same list for hydrate and ext4).
pub fn random_offsets(file_size: u64, count: usize, seed: u64) -> Result<Vec<u64>> {
    let slots = file_size / RANDOM_LEN as u64;
    if slots == 0 {
        bail!("a file of {file_size} bytes is too small for {RANDOM_LEN}-byte random reads");
    }
    let mut rng = Rng::new(seed);
    Ok((0..count)
        .map(|_| rng.below(slots) * RANDOM_LEN as u64)
        .collect())
}

/// The outcome of a series of random preads.
#[derive(Debug, Clone)]
pub struct RandomRun {
    /// Latency of each pread, nanoseconds, sorted.
    pub latencies_ns: Vec<u64>,
    /// The bytes read, concatenated in offset-list order (to compare hydrate with the source).
    pub data: Vec<u8>,
    /// Bytes this process caused to be read from block devices (/proc/self/io read_bytes): native reads only.
    pub device_bytes: u64,
    pub secs: f64,
}

impl RandomRun {
    pub fn bytes(&self) -> u64 {
        self.data.len() as u64
    }

    pub fn p(&self, quantile: f64) -> u64 {
        percentile(&self.latencies_ns, quantile)
    }
}

/// One open, then a pread of [`RANDOM_LEN`] at each offset, timed one by one, with the kernel's default
/// readahead policy (what an application gets without tuning).
pub fn read_random(path: &Path, offsets: &[u64]) -> Result<RandomRun> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let io_before = proc_io_read_bytes()?;
    let mut data = vec![0u8; offsets.len() * RANDOM_LEN];
    let mut latencies_ns = Vec::with_capacity(offsets.len());
    let started = Instant::now();
    for (buf, &offset) in data.chunks_exact_mut(RANDOM_LEN).zip(offsets) {
        let t = Instant::now();
        f.read_exact_at(buf, offset)
            .with_context(|| format!("pread of {} at {offset}", path.display()))?;
        latencies_ns.push(t.elapsed().as_nanos() as u64);
        cancel::check()?;
    }
    let secs = started.elapsed().as_secs_f64();
    let device_bytes = proc_io_read_bytes()?.saturating_sub(io_before);
    latencies_ns.sort_unstable();
    Ok(RandomRun {
        latencies_ns,
        data,
        device_bytes,
        secs,
    })
}

/// Nearest-rank percentile of sorted values (`quantile` in 0..=1); 0 for an empty list.
pub fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (quantile.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `read_bytes` of /proc/self/io: bytes this process made the block layer read.
pub fn proc_io_read_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/io").context("reading /proc/self/io")?;
    parse_read_bytes(&text).context("/proc/self/io has no read_bytes line")
}

fn parse_read_bytes(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn checksum_ignores_how_data_is_split_but_not_order_or_zeros() {
        let mut rng = Rng::new(5);
        let mut data = vec![0u8; 100_003];
        rng.fill(&mut data);
        let whole = {
            let mut c = Checksum::default();
            c.update(&data);
            c.finish()
        };
        for split in [1, 31, 32, 33, 4096, 99_999] {
            let mut c = Checksum::default();
            for part in data.chunks(split) {
                c.update(part);
            }
            assert_eq!(c.finish(), whole, "split {split}");
        }
        let mut swapped = data.clone();
        swapped[..64].rotate_left(32);
        let mut zeroed = data.clone();
        zeroed[50_000..54_096].fill(0);
        for other in [swapped, zeroed, data[..100_002].to_vec()] {
            let mut c = Checksum::default();
            c.update(&other);
            assert_ne!(c.finish(), whole);
        }
    }

    #[test]
    fn random_offsets_are_aligned_in_range_and_reproducible() {
        let size = 10 * RANDOM_LEN as u64 + 100;
        let a = random_offsets(size, 500, 3).unwrap();
        assert_eq!(a, random_offsets(size, 500, 3).unwrap());
        assert!(a
            .iter()
            .all(|o| o % RANDOM_LEN as u64 == 0 && o + RANDOM_LEN as u64 <= size));
        assert_eq!(
            a.iter().collect::<std::collections::HashSet<_>>().len(),
            10,
            "all slots are used"
        );
        assert!(random_offsets(100, 1, 3).is_err());
    }

    #[test]
    fn timed_reads_return_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        crate::tree::write_random_file(&path, 3 * SEQ_BUF as u64 + 5, 11).unwrap();
        let content = std::fs::read(&path).unwrap();
        let r = read_seq(&path, true).unwrap();
        assert_eq!(r.bytes, content.len() as u64);
        let mut c = Checksum::default();
        c.update(&content);
        assert_eq!(r.checksum, Some(c.finish()));
        let offsets = random_offsets(content.len() as u64, 50, 1).unwrap();
        let run = read_random(&path, &offsets).unwrap();
        assert_eq!(run.latencies_ns.len(), 50);
        assert!(run.latencies_ns.windows(2).all(|w| w[0] <= w[1]));
        for (got, &o) in run.data.chunks(RANDOM_LEN).zip(&offsets) {
            assert_eq!(got, &content[o as usize..o as usize + RANDOM_LEN]);
        }
    }

    #[test]
    fn best_keeps_the_fastest_read() {
        let mut best = Best::default();
        assert!(best.get().is_err());
        for (bytes, secs) in [(1, 2.0), (2, 0.5), (3, 1.0)] {
            best.add(SeqRead {
                bytes,
                secs,
                checksum: None,
            });
        }
        assert_eq!(best.get().unwrap().bytes, 2);
    }

    #[test]
    fn parses_proc_io() {
        let text = "rchar: 10\nwchar: 2\nsyscr: 1\nread_bytes: 4096\nwrite_bytes: 0\n";
        assert_eq!(parse_read_bytes(text), Some(4096));
        assert_eq!(parse_read_bytes("rchar: 1\n"), None);
    }
}
