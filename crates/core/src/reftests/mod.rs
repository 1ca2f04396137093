//! Reference-model tests of the core, after mountpoint-s3's `reftests`: random sequences of operations run
//! against the real [`Volume`] and [`DiskCache`] over an in-memory store, compared after every step with a
//! plain model — the image's tree and bytes, kept in vectors.
//!
//! Operations: lookup (of real names, missing names, and under non-directories), getattr, readlink, open,
//! read at random ranges (also past the end of file) through any open handle, two such reads at once (they
//! share fetches), readdir from any cookie with
//! any buffer size, release, eviction under a small quota (the flusher also evicts on its own), flush, a
//! worker crash (the cache loses what it had not made durable), a crash after which a cache data file is
//! deleted, truncated or grown, a graceful hand-over to a new worker (the cache is closed and reopened), and
//! switching the store between healthy, failing and corrupting. The quota, the flusher's interval and
//! readahead vary between sequences.
//!
//! What must hold after every step:
//! - a read returns exactly the image's bytes (short only at end of file), or an error; an error only while
//!   the store fails or corrupts data, never with a healthy one; never zeros or wrong bytes;
//! - every byte the cache claims present is the image's byte at that offset;
//! - lookup, getattr, readlink and readdir agree with the image's tree;
//! - handles the kernel holds survive a crash or hand-over: the next worker reopens them by inode on first
//!   use, as the FUSE adapter does with handles it did not issue.
//!
//! The background tasks of the volume that are deterministic to start (readahead) are on in half of the
//! sequences; plan replay, directory prefetch, ELF prefetch and the fill are off, so that a worker can be
//! stopped by waiting for its tasks. Default: 40 sequences of up to 60 operations (a few seconds);
//! `PROPTEST_CASES` raises the number of sequences.

mod model;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hydrate_cache::{CacheConfig, CacheError, DiskCache};
use hydrate_fetch::{FetchConfig, FetchEngine};
use hydrate_format::{FileKind, Ino};
use proptest::prelude::*;
use tempfile::TempDir;

use crate::{load_manifest, CoreError, Volume, VolumeConfig};
use model::{Fixture, What};
use store::{StoreMode, SwitchedStore};

/// Sequences run by default (`PROPTEST_CASES` overrides).
const DEFAULT_CASES: u32 = 40;
/// How a sequence's worker is set up.
#[derive(Debug, Clone, Copy)]
struct Setup {
    /// Background readahead of sequential reads.
    readahead: bool,
    /// The cache quota: smaller than the image (about 1 MiB), so eviction is frequent.
    quota: u64,
    /// How often the cache's flusher runs (it also evicts when over quota).
    flush_interval: Duration,
}

fn setup() -> impl Strategy<Value = Setup> {
    (any::<bool>(), 64u64..1024, 1u64..100).prop_map(|(readahead, quota_kib, flush_ms)| Setup {
        readahead,
        quota: quota_kib << 10,
        flush_interval: Duration::from_millis(flush_ms),
    })
}

// The operations.

#[derive(Debug, Clone)]
enum Op {
    /// 0: the node's own name in its parent; 1: a name missing from its parent; 2: a name under the node.
    Lookup {
        node: usize,
        how: u8,
    },
    Getattr {
        node: usize,
    },
    Readlink {
        node: usize,
    },
    Open {
        node: usize,
    },
    /// `at` is in thousandths of the file size (up to 1.1: past the end).
    Read {
        handle: usize,
        at: u32,
        len: u32,
    },
    /// Two reads at once: (handle, at, len) each.
    ReadTwo {
        a: (usize, u32, u32),
        b: (usize, u32, u32),
    },
    ReadDir {
        node: usize,
        cookie: u8,
        max: u8,
    },
    Release {
        handle: usize,
    },
    Evict,
    Flush,
    Crash,
    /// A crash, then a data file of the cache is deleted (`how` 0), truncated (1) or grown (2) before the
    /// next worker starts: its recovery must drop what it can no longer trust.
    DamageAfterCrash {
        which: usize,
        how: u8,
    },
    HandOver,
    Store(StoreMode),
}

fn read_args() -> impl Strategy<Value = (usize, u32, u32)> {
    (any::<usize>(), 0u32..=1100, 1u32..(300 << 10))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..3).prop_map(|(node, how)| Op::Lookup { node, how }),
        1 => any::<usize>().prop_map(|node| Op::Getattr { node }),
        1 => any::<usize>().prop_map(|node| Op::Readlink { node }),
        4 => any::<usize>().prop_map(|node| Op::Open { node }),
        12 => (any::<usize>(), 0u32..=1100, 1u32..(300 << 10))
            .prop_map(|(handle, at, len)| Op::Read { handle, at, len }),
        3 => (read_args(), read_args()).prop_map(|(a, b)| Op::ReadTwo { a, b }),
        2 => (any::<usize>(), any::<u8>(), 1u8..6)
            .prop_map(|(node, cookie, max)| Op::ReadDir { node, cookie, max }),
        2 => any::<usize>().prop_map(|handle| Op::Release { handle }),
        1 => Just(Op::Evict),
        1 => Just(Op::Flush),
        1 => Just(Op::Crash),
        1 => (any::<usize>(), 0u8..3).prop_map(|(which, how)| Op::DamageAfterCrash { which, how }),
        1 => Just(Op::HandOver),
        2 => prop_oneof![
            2 => Just(StoreMode::Healthy),
            1 => Just(StoreMode::Failing),
            1 => Just(StoreMode::Corrupting),
        ]
        .prop_map(Op::Store),
    ]
}

// The system under test, driven like the front-ends drive it.

/// A handle the kernel holds: it outlives workers. `vol_fh` is the current worker's handle, if it opened one.
#[derive(Debug, Clone, Copy)]
struct KernelHandle {
    node: usize,
    vol_fh: Option<u64>,
}

struct Harness {
    f: &'static Fixture,
    store: Arc<SwitchedStore>,
    cache_dir: TempDir,
    setup: Setup,
    vol: Option<Volume>,
    /// Inode number of every node, resolved by lookups at the start.
    inos: Vec<Ino>,
    handles: Vec<KernelHandle>,
}

impl Harness {
    fn new(setup: Setup) -> Harness {
        let f = Fixture::get();
        let mut h = Harness {
            f,
            store: Arc::new(SwitchedStore::new(f.store.clone())),
            cache_dir: tempfile::tempdir().unwrap(),
            setup,
            vol: None,
            inos: Vec::new(),
            handles: Vec::new(),
        };
        h.start_worker();
        h.resolve_all();
        h
    }

    fn vol(&self) -> &Volume {
        self.vol.as_ref().expect("a worker runs")
    }

    /// Opens the cache (waiting for a stopped worker to let go of its lock) and a volume over it.
    fn start_worker(&mut self) {
        let config = CacheConfig {
            dir: self.cache_dir.path().join("cache"),
            quota_bytes: self.setup.quota,
            flush_interval: self.setup.flush_interval,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let cache = loop {
            match DiskCache::open(config.clone()) {
                Ok(cache) => break cache,
                Err(CacheError::Locked { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("reopening the cache: {e}"),
            }
        };
        // The manifest is not what these sequences test: it is loaded from the healthy store.
        let manifest = self
            .f
            .rt
            .block_on(load_manifest(
                self.f.store.as_ref(),
                &self.f.image,
                &self.cache_dir.path().join("manifests"),
            ))
            .unwrap();
        let engine = FetchEngine::new(
            self.store.store(),
            FetchConfig {
                retries: 0,
                backoff_base: Duration::from_millis(1),
                request_timeout: Duration::from_secs(10),
                deadline: Duration::from_secs(10),
                ..FetchConfig::default()
            },
        );
        let config = VolumeConfig {
            readahead_min: 64 << 10,
            readahead_max: if self.setup.readahead { 256 << 10 } else { 0 },
            replay_plan: false,
            dir_prefetch_file_max: 0,
            dir_prefetch_budget: 0,
            elf_whole_max: 0,
            fill_budget: 0,
            fill_small_max: 0,
        };
        self.vol = Some(Volume::new(
            self.f.image,
            manifest,
            cache,
            engine,
            self.f.rt.handle().clone(),
            config,
        ));
    }

    /// Stops the worker: its volume goes, its background tasks finish, then its cache is closed cleanly
    /// (hand-over) or abandoned without a last flush (crash). The kernel's handles stay, now unknown to
    /// any worker.
    fn stop_worker(&mut self, crash: bool) {
        let vol = self.vol.take().expect("a worker runs");
        let cache = vol.cache().clone();
        let engine = vol.engine().clone();
        drop(vol);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&engine) > 1 {
            assert!(
                Instant::now() < deadline,
                "the worker's background fetches did not finish"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(engine);
        if crash {
            cache.simulate_crash();
        } else {
            cache.close().expect("closing the cache");
            drop(cache);
        }
        for h in &mut self.handles {
            h.vol_fh = None;
        }
    }

    /// Deletes, truncates or grows one data file of the (stopped) cache, if it has any.
    fn damage_a_data_file(&self, which: usize, how: u8) {
        let data = self.cache_dir.path().join("cache/data");
        let mut files = Vec::new();
        for sub in std::fs::read_dir(&data).unwrap() {
            let sub = sub.unwrap().path();
            if sub.is_dir() {
                for f in std::fs::read_dir(&sub).unwrap() {
                    files.push(f.unwrap().path());
                }
            }
        }
        files.sort();
        let Some(victim) = files.get(which % files.len().max(1)) else {
            return;
        };
        let len = std::fs::metadata(victim).unwrap().len();
        match how {
            0 => std::fs::remove_file(victim).unwrap(),
            1 => std::fs::File::options()
                .write(true)
                .open(victim)
                .unwrap()
                .set_len(len / 2)
                .unwrap(),
            _ => std::fs::File::options()
                .write(true)
                .open(victim)
                .unwrap()
                .set_len(len + 1)
                .unwrap(),
        }
    }

    /// Looks every node up from the root, checking kinds and sizes against the model.
    fn resolve_all(&mut self) {
        let mut inos = vec![Ino::ROOT; self.f.nodes.len()];
        for i in 1..self.f.nodes.len() {
            let n = &self.f.nodes[i];
            let parent = inos[self.f.index_of(n.parent_path())];
            let attr = self
                .vol()
                .lookup(parent, n.name())
                .unwrap_or_else(|e| panic!("lookup of {}: {e}", n.path));
            assert_eq!(attr.kind, self.f.kind(i), "{}", n.path);
            if let Some(data) = self.f.data(i) {
                assert_eq!(attr.size, data.len() as u64, "{}", n.path);
            }
            inos[i] = attr.ino;
        }
        let hard = self.f.index_of("dir/hard");
        assert_eq!(inos[hard], inos[self.f.index_of("small")], "a hard link");
        self.inos = inos;
    }

    fn apply(&mut self, op: &Op) {
        let nodes = self.f.nodes.len();
        match *op {
            Op::Lookup { node, how } => self.lookup(node % nodes, how),
            Op::Getattr { node } => {
                let node = node % nodes;
                let attr = self.vol().attr(self.inos[node]).unwrap();
                assert_eq!(attr.ino, self.inos[node]);
                assert_eq!(attr.kind, self.f.kind(node));
                if let Some(data) = self.f.data(node) {
                    assert_eq!(attr.size, data.len() as u64);
                }
            }
            Op::Readlink { node } => {
                let node = node % nodes;
                let got = self.vol().readlink(self.inos[node]);
                match (&self.f.nodes[node].what, got) {
                    (What::Symlink(target), Ok(got)) => assert_eq!(&got[..], *target),
                    (What::Symlink(_), Err(e)) => panic!("readlink of a symlink: {e}"),
                    (_, Err(CoreError::NotSymlink(_))) => {}
                    (_, other) => panic!("readlink of a non-symlink: {other:?}"),
                }
            }
            Op::Open { node } => self.open(node % nodes),
            Op::Read { handle, at, len } => {
                if !self.handles.is_empty() {
                    self.read(handle % self.handles.len(), at, len);
                }
            }
            Op::ReadTwo { a, b } => {
                let n = self.handles.len();
                if n > 0 {
                    self.read_two((a.0 % n, a.1, a.2), (b.0 % n, b.1, b.2));
                }
            }
            Op::ReadDir { node, cookie, max } => self.read_dir(node % nodes, cookie, max),
            Op::Release { handle } => {
                if !self.handles.is_empty() {
                    let h = self.handles.remove(handle % self.handles.len());
                    if let Some(fh) = h.vol_fh {
                        self.vol().release(fh);
                    }
                }
            }
            Op::Evict => {
                self.vol().cache().evict_to(0).expect("eviction");
            }
            Op::Flush => self.vol().cache().flush().expect("flush"),
            Op::Crash => {
                self.stop_worker(true);
                self.start_worker();
            }
            Op::DamageAfterCrash { which, how } => {
                self.stop_worker(true);
                self.damage_a_data_file(which, how);
                self.start_worker();
            }
            Op::HandOver => {
                self.stop_worker(false);
                self.start_worker();
            }
            Op::Store(mode) => self.store.set(mode),
        }
    }

    fn lookup(&self, node: usize, how: u8) {
        let n = &self.f.nodes[node];
        let (parent, name, expect): (Ino, Vec<u8>, Option<usize>) = match how {
            0 if node != 0 => (
                self.inos[self.f.index_of(n.parent_path())],
                n.name().to_vec(),
                Some(node),
            ),
            1 if node != 0 => (
                self.inos[self.f.index_of(n.parent_path())],
                [n.name(), b"~missing"].concat(),
                None,
            ),
            _ => (self.inos[node], b"x".to_vec(), None),
        };
        let got = self.vol().lookup(parent, &name);
        let parent_is_dir = matches!(
            self.f.nodes[self.inos.iter().position(|&i| i == parent).unwrap()].what,
            What::Dir
        );
        match (expect, got) {
            (Some(want), Ok(attr)) => {
                assert_eq!(attr.ino, self.inos[want], "{}", n.path);
                assert_eq!(attr.kind, self.f.kind(want), "{}", n.path);
            }
            (None, Err(CoreError::NotFound { .. })) if parent_is_dir => {}
            (None, Err(CoreError::NotDir(_))) if !parent_is_dir => {}
            (expect, got) => panic!(
                "lookup of {:?} in {parent}: expected {expect:?}, got {got:?}",
                String::from_utf8_lossy(&name)
            ),
        }
    }

    fn open(&mut self, node: usize) {
        let got = self.vol().open(self.inos[node]);
        match (self.f.kind(node), got) {
            (FileKind::Regular, Ok(opened)) => self.handles.push(KernelHandle {
                node,
                vol_fh: Some(opened.fh),
            }),
            (FileKind::Directory, Err(CoreError::IsDir(_))) => {}
            (FileKind::Symlink, Err(CoreError::NotRegular(_))) => {}
            (kind, got) => panic!(
                "open of {} ({kind:?}): {:?}",
                self.f.nodes[node].path,
                got.map(|o| o.fh)
            ),
        }
    }

    /// The current worker's handle behind kernel handle `handle` (a handle of an earlier worker is reopened
    /// by inode on first use, as the FUSE adapter does) and its node.
    fn volume_handle(&mut self, handle: usize) -> (usize, u64) {
        let KernelHandle { node, vol_fh } = self.handles[handle];
        let fh = match vol_fh {
            Some(fh) => fh,
            None => {
                let opened = self
                    .vol()
                    .open(self.inos[node])
                    .unwrap_or_else(|e| panic!("reopening an inherited handle: {e}"));
                self.handles[handle].vol_fh = Some(opened.fh);
                opened.fh
            }
        };
        (node, fh)
    }

    fn read(&mut self, handle: usize, at: u32, len: u32) {
        let (node, fh) = self.volume_handle(handle);
        self.check_read(node, fh, at, len);
    }

    /// Two reads at once, on two threads, through the same or different handles: they may share fetches
    /// (single flight) and store each other's chunks.
    fn read_two(&mut self, a: (usize, u32, u32), b: (usize, u32, u32)) {
        let (node_a, fh_a) = self.volume_handle(a.0);
        let (node_b, fh_b) = self.volume_handle(b.0);
        let this = &*self;
        std::thread::scope(|s| {
            s.spawn(|| this.check_read(node_a, fh_a, a.1, a.2));
            this.check_read(node_b, fh_b, b.1, b.2);
        });
    }

    /// Reads `len` bytes at `at` thousandths of the file through `fh` and checks them against the image.
    fn check_read(&self, node: usize, fh: u64, at: u32, len: u32) {
        let data = self.f.data(node).expect("handles are of files");
        let size = data.len() as u64;
        let offset = size * u64::from(at) / 1000;
        let mut buf = vec![0xa5u8; len as usize];
        let mode = self.store.mode();
        match self.vol().read(fh, offset, &mut buf) {
            Ok(n) => {
                let from = offset.min(size) as usize;
                let to = (offset + u64::from(len)).min(size) as usize;
                assert_eq!(n, to - from, "read length at {offset}+{len} of {size}");
                assert!(
                    buf[..n] == data[from..to],
                    "read of {} at {offset}+{len} returned other bytes than the image's (store {mode:?})",
                    self.f.nodes[node].path
                );
            }
            Err(e) => {
                assert!(
                    mode != StoreMode::Healthy,
                    "read of {} at {offset}+{len} failed with a healthy store: {e}",
                    self.f.nodes[node].path
                );
                assert!(
                    matches!(e, CoreError::Fetch { .. }),
                    "a store fault must fail the read as a fetch error: {e}"
                );
            }
        }
    }

    fn read_dir(&self, node: usize, cookie: u8, max: u8) {
        let ino = self.inos[node];
        if !matches!(self.f.nodes[node].what, What::Dir) {
            let got = self.vol().read_dir(ino, 0, |_| true);
            assert!(matches!(got, Err(CoreError::NotDir(_))), "{got:?}");
            return;
        }
        let parent = if node == 0 {
            ino
        } else {
            self.inos[self.f.index_of(self.f.nodes[node].parent_path())]
        };
        let mut want: Vec<(Vec<u8>, Ino, FileKind)> = vec![
            (b".".to_vec(), ino, FileKind::Directory),
            (b"..".to_vec(), parent, FileKind::Directory),
        ];
        for c in self.f.children(node) {
            want.push((
                self.f.nodes[c].name().to_vec(),
                self.inos[c],
                self.f.kind(c),
            ));
        }
        let cookie = u64::from(cookie) % (want.len() as u64 + 2);
        let mut got = Vec::new();
        self.vol()
            .read_dir(ino, cookie, |e| {
                if got.len() == usize::from(max) {
                    return false;
                }
                got.push((e.name.to_vec(), e.ino, e.kind, e.next_offset));
                true
            })
            .unwrap();
        let expected: Vec<_> = want
            .iter()
            .enumerate()
            .skip(cookie as usize)
            .take(usize::from(max))
            .map(|(i, (name, ino, kind))| (name.clone(), *ino, *kind, i as u64 + 1))
            .collect();
        assert_eq!(
            got, expected,
            "readdir of {:?} from cookie {cookie}",
            self.f.nodes[node].path
        );
    }

    /// Every byte the cache claims present is the image's.
    fn check_cache(&self) {
        let vol = self.vol();
        let mut seen = std::collections::HashSet::new();
        for node in 0..self.f.nodes.len() {
            let Some(data) = self.f.data(node) else {
                continue;
            };
            let attr = vol.attr(self.inos[node]).unwrap();
            if !seen.insert(attr.content) {
                continue;
            }
            let file = vol.cache().file(&attr.content, attr.size).unwrap();
            let mut at = 0;
            let mut present = Vec::new();
            for gap in file
                .missing(0..attr.size)
                .into_iter()
                .chain(std::iter::once(attr.size..attr.size))
            {
                if gap.start > at {
                    present.push(at..gap.start);
                }
                at = gap.end;
            }
            for r in present {
                let mut buf = vec![0u8; (r.end - r.start) as usize];
                let mut done = 0;
                while done < buf.len() {
                    let n = file
                        .read_at(&mut buf[done..], r.start + done as u64)
                        .expect("reading a cache file");
                    assert!(
                        n > 0,
                        "cache file of {} ends inside {r:?}",
                        self.f.nodes[node].path
                    );
                    done += n;
                }
                assert!(
                    buf[..] == data[r.start as usize..r.end as usize],
                    "the cache claims {} {r:?} present but holds other bytes",
                    self.f.nodes[node].path
                );
            }
        }
    }

    fn finish(mut self) {
        for h in std::mem::take(&mut self.handles) {
            if let Some(fh) = h.vol_fh {
                self.vol().release(fh);
            }
        }
        self.store.set(StoreMode::Healthy);
        // A clean stop keeps what was flushed, and a new worker trusts only what is true.
        self.stop_worker(false);
        self.start_worker();
        self.check_cache();
        self.stop_worker(false);
    }
}

fn run(setup: Setup, ops: &[Op]) {
    let mut h = Harness::new(setup);
    for op in ops {
        h.apply(op);
        h.check_cache();
    }
    h.finish();
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn operation_sequences_match_the_model(
        setup in setup(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(setup, &ops);
    }
}

/// A fixed sequence through what random ones reach less often: reads through a handle inherited across a
/// crash, an eviction while it is held, and a hand-over.
#[test]
fn a_crash_with_handles_open_then_reads_through_them() {
    run(
        Setup {
            readahead: true,
            quota: 384 << 10,
            flush_interval: Duration::from_millis(50),
        },
        &[
            Op::Open { node: 7 },
            Op::Read {
                handle: 0,
                at: 0,
                len: 100_000,
            },
            Op::Crash,
            Op::Read {
                handle: 0,
                at: 100,
                len: 300_000,
            },
            Op::Evict,
            Op::HandOver,
            Op::Read {
                handle: 0,
                at: 0,
                len: 300_000,
            },
        ],
    );
}
