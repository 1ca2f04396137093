//! Tests of the core without a kernel: a real image built into a LocalStore, a real DiskCache and FetchEngine.
//! They check what prefetch and readahead claim through the counters (never through timing): a replayed
//! plan makes the traced reads cache hits, readahead grows and resets, a listing prefetches small files, and a
//! 100k-file image walks correctly.

use crate::{load_manifest, TraceRecorder, Volume, VolumeConfig};
use hydrate_builder::{attach_trace, build_dir, BuildOptions, NoProgress};
use hydrate_cache::{CacheConfig, DiskCache};
use hydrate_fetch::{FetchConfig, FetchEngine};
use hydrate_format::{FileKind, ImageId, Ino, PlanOptions};
use hydrate_store::{BlobStore, CountingStore, LocalStore};
use hydrate_testkit::rng::random_bytes;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// A store with one image of: lib/ with 40 small modules, big (4 MiB), and a 3-level tree of empty files.
struct Fixture {
    _dirs: (TempDir, TempDir),
    root: TempDir,
    store: Arc<CountingStore<Arc<dyn BlobStore>>>,
    image: ImageId,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("lib")).unwrap();
        for i in 0..40u64 {
            let len = 1000 + (i as usize * 997) % 20_000;
            std::fs::write(
                src.path().join(format!("lib/mod{i:02}.py")),
                random_bytes(i, len),
            )
            .unwrap();
        }
        std::fs::write(src.path().join("big"), random_bytes(99, 4 << 20)).unwrap();
        Self::from_source(src)
    }

    fn from_source(src: TempDir) -> Fixture {
        let store_dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn BlobStore> = Arc::new(LocalStore::open(store_dir.path()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let opts = BuildOptions {
            blob_target_size: 1 << 20,
            threads: 2,
            ..BuildOptions::default()
        };
        let report = rt
            .block_on(build_dir(src.path(), local.as_ref(), &opts, &NoProgress))
            .unwrap();
        Fixture {
            _dirs: (store_dir, tempfile::tempdir().unwrap()),
            root: src,
            store: Arc::new(CountingStore::new(local)),
            image: report.image,
            rt,
        }
    }

    /// A volume of `image` over a fresh cache directory under `cache`.
    fn volume(&self, image: &ImageId, cache: &Path, config: VolumeConfig) -> Volume {
        let manifest = self
            .rt
            .block_on(load_manifest(
                self.store.as_ref(),
                image,
                &cache.join("manifests"),
            ))
            .unwrap();
        let cache = DiskCache::open(CacheConfig {
            dir: cache.to_path_buf(),
            quota_bytes: 1 << 30,
            flush_interval: Duration::from_secs(1),
        })
        .unwrap();
        let engine = FetchEngine::new(
            Arc::clone(&self.store) as Arc<dyn BlobStore>,
            FetchConfig::default(),
        );
        Volume::new(
            *image,
            manifest,
            cache,
            engine,
            self.rt.handle().clone(),
            config,
        )
    }
}

fn resolve(vol: &Volume, path: &str) -> Ino {
    vol.manifest().resolve(path.as_bytes()).unwrap()
}

/// Opens `path`, reads `[offset, offset+len)` in 16 KiB reads, checks the bytes against the source tree.
fn read_range(vol: &Volume, root: &Path, path: &str, offset: u64, len: usize) {
    let opened = vol.open(resolve(vol, path)).unwrap();
    let want = std::fs::read(root.join(path)).unwrap();
    let end = (offset as usize + len).min(want.len());
    let mut at = offset as usize;
    while at < end {
        let mut buf = vec![0u8; (end - at).min(16 << 10)];
        let n = vol.read(opened.fh, at as u64, &mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(buf[..n], want[at..at + n], "{path} at {at}");
        at += n;
    }
    vol.release(opened.fh);
}

fn stat(vol: &Volume, name: &str) -> u64 {
    vol.stats()
        .snapshot()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
}

/// Waits (generously) until `done` holds; background fetches have no completion handle.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

fn no_heuristics() -> VolumeConfig {
    VolumeConfig {
        readahead_max: 0,
        dir_prefetch_file_max: 0,
        elf_whole_max: 0,
        ..VolumeConfig::default()
    }
}

#[test]
fn a_replayed_plan_makes_the_traced_reads_cache_hits() {
    let fx = Fixture::new();
    let cache1 = tempfile::tempdir().unwrap();
    let recorder = Arc::new(TraceRecorder::new());
    let vol = fx
        .volume(&fx.image, cache1.path(), no_heuristics())
        .with_trace(Arc::clone(&recorder));
    // The workload: three modules whole, a part of the big file, a module opened and not read.
    let workload = |vol: &Volume| {
        read_range(vol, fx.root.path(), "lib/mod03.py", 0, usize::MAX);
        read_range(vol, fx.root.path(), "big", 1 << 20, 300_000);
        read_range(vol, fx.root.path(), "lib/mod17.py", 0, usize::MAX);
        read_range(vol, fx.root.path(), "lib/mod05.py", 0, 100);
        let f = vol.open(resolve(vol, "lib/mod30.py")).unwrap();
        vol.release(f.fh);
    };
    workload(&vol);
    let trace = recorder.to_trace(vol.manifest());
    assert_eq!(trace.events.len(), 9, "{}", trace.to_text());
    let file = cache1.path().join("trace");
    recorder.save(vol.manifest(), &file).unwrap();
    assert_eq!(crate::read_trace(&file).unwrap(), trace);

    let attached = fx
        .rt
        .block_on(attach_trace(
            fx.store.inner().as_ref(),
            &fx.image,
            &trace,
            PlanOptions::default(),
            None,
        ))
        .unwrap();
    assert_eq!(attached.unresolved, 0);

    // A second mount of the image with the plan, with a cold cache: replay, then the same workload.
    let cache2 = tempfile::tempdir().unwrap();
    let vol = Arc::new(fx.volume(&attached.image, cache2.path(), no_heuristics()));
    let replay = vol.start_plan().expect("the image has a plan");
    let outcome = fx.rt.block_on(replay).unwrap();
    assert_eq!(outcome.failed, 0);
    assert!(outcome.chunks > 0 && outcome.bytes >= attached.bytes.min(outcome.bytes));
    assert_eq!(stat(&vol, "plan_done"), 1);
    assert_eq!(stat(&vol, "plan_chunks"), outcome.chunks);
    workload(&vol);
    assert!(stat(&vol, "reads") > 0);
    assert_eq!(stat(&vol, "cache_hit_reads"), stat(&vol, "reads"));
    assert_eq!(stat(&vol, "ondemand_chunks"), 0);
    // The module opened but not read was small: the plan took it whole.
    let f = vol.open(resolve(&vol, "lib/mod30.py")).unwrap();
    assert!(f.complete);
    // A file outside the trace was not fetched.
    let f = vol.open(resolve(&vol, "lib/mod31.py")).unwrap();
    assert!(!f.complete);
}

#[test]
fn readahead_window_grows_while_sequential_and_resets_on_a_seek() {
    let fx = Fixture::new();
    let cache = tempfile::tempdir().unwrap();
    let vol = fx.volume(
        &fx.image,
        cache.path(),
        VolumeConfig {
            readahead_min: 64 << 10,
            readahead_max: 256 << 10,
            dir_prefetch_file_max: 0,
            ..VolumeConfig::default()
        },
    );
    let f = vol.open(resolve(&vol, "big")).unwrap();
    let mut buf = vec![0u8; 16 << 10];
    let mut windows = Vec::new();
    for i in 0..5u64 {
        vol.read(f.fh, i * (16 << 10), &mut buf).unwrap();
        windows.push(vol.readahead_window(f.fh).unwrap() >> 10);
    }
    assert_eq!(windows, [64, 128, 256, 256, 256]);
    assert_eq!(stat(&vol, "readahead_grows"), 3);
    assert_eq!(stat(&vol, "readahead_resets"), 0);
    assert!(stat(&vol, "readahead_bytes") >= 256 << 10);
    assert!(stat(&vol, "readahead_chunks") > 0);
    // A seek resets the window; the next sequential read starts it again at the minimum.
    vol.read(f.fh, 3 << 20, &mut buf).unwrap();
    assert_eq!(vol.readahead_window(f.fh).unwrap(), 0);
    assert_eq!(stat(&vol, "readahead_resets"), 1);
    assert_eq!(stat(&vol, "random_reads"), 1);
    vol.read(f.fh, (3 << 20) + (16 << 10), &mut buf).unwrap();
    assert_eq!(vol.readahead_window(f.fh).unwrap(), 64 << 10);
    // Readahead data arrives in the background: the stream's next reads become cache hits.
    let hits = stat(&vol, "cache_hit_reads");
    wait_until("readahead of the stream", || {
        vol.open(resolve(&vol, "big"))
            .map(|g| {
                let mut b = vec![0u8; 4096];
                let before = stat(&vol, "cache_hit_reads");
                vol.read(g.fh, (3 << 20) + (40 << 10), &mut b).unwrap();
                vol.release(g.fh);
                stat(&vol, "cache_hit_reads") > before
            })
            .unwrap()
    });
    assert!(stat(&vol, "cache_hit_reads") > hits);

    // With readahead off, a stream schedules nothing.
    let cache = tempfile::tempdir().unwrap();
    let vol = fx.volume(&fx.image, cache.path(), no_heuristics());
    let f = vol.open(resolve(&vol, "big")).unwrap();
    for i in 0..4u64 {
        vol.read(f.fh, i * (16 << 10), &mut buf).unwrap();
    }
    assert_eq!(vol.readahead_window(f.fh).unwrap(), 0);
    assert_eq!(stat(&vol, "readahead_chunks"), 0);
}

#[test]
fn readahead_stops_where_the_plan_says_the_stream_stopped() {
    let fx = Fixture::new();
    // A plan that read the first MiB of the big file (recorded through a volume without readahead).
    let recorder = Arc::new(TraceRecorder::new());
    let cache = tempfile::tempdir().unwrap();
    let vol = fx
        .volume(&fx.image, cache.path(), no_heuristics())
        .with_trace(Arc::clone(&recorder));
    read_range(&vol, fx.root.path(), "big", 0, 1 << 20);
    let trace = recorder.to_trace(vol.manifest());
    let attached = fx
        .rt
        .block_on(attach_trace(
            fx.store.inner().as_ref(),
            &fx.image,
            &trace,
            PlanOptions::default(),
            None,
        ))
        .unwrap();
    let config = VolumeConfig {
        readahead_min: 64 << 10,
        readahead_max: 4 << 20,
        dir_prefetch_file_max: 0,
        elf_whole_max: 0,
        ..VolumeConfig::default()
    };
    let cache = tempfile::tempdir().unwrap();
    let vol = fx.volume(&attached.image, cache.path(), config.clone());
    let f = vol.open(resolve(&vol, "big")).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    // The plan covers the first MiB up to the end of the chunk holding its last byte.
    let big = resolve(&vol, "big");
    let planned_end = vol
        .manifest()
        .prefetch()
        .iter()
        .filter(|e| e.ino() == big)
        .map(|e| e.offset() + e.len())
        .max()
        .unwrap();
    assert!((1 << 20..(1 << 20) + (1 << 20)).contains(&planned_end));
    // The window grew, but what it scheduled ends where the plan does.
    let mut at = 0;
    while at < planned_end {
        let n = vol.read(f.fh, at, &mut buf).unwrap() as u64;
        at += n;
    }
    assert!(stat(&vol, "readahead_grows") >= 2);
    let scheduled = stat(&vol, "readahead_bytes");
    assert!(scheduled < planned_end, "{scheduled} >= {planned_end}");
    // Past the plan, the stream reads ahead again from its second read there, from a new window.
    at += vol.read(f.fh, at, &mut buf).unwrap() as u64;
    assert_eq!(vol.readahead_window(f.fh).unwrap(), 0);
    assert_eq!(stat(&vol, "readahead_bytes"), scheduled);
    at += vol.read(f.fh, at, &mut buf).unwrap() as u64;
    assert_eq!(vol.readahead_window(f.fh).unwrap(), 64 << 10);
    for _ in 0..4 {
        at += vol.read(f.fh, at, &mut buf).unwrap() as u64;
    }
    assert!(stat(&vol, "readahead_bytes") > scheduled);

    // Without replay, the plan bounds nothing: the same reads schedule past the first MiB.
    let cache = tempfile::tempdir().unwrap();
    let vol = fx.volume(
        &attached.image,
        cache.path(),
        VolumeConfig {
            replay_plan: false,
            ..config
        },
    );
    let f = vol.open(resolve(&vol, "big")).unwrap();
    for i in 0..16u64 {
        vol.read(f.fh, i * (64 << 10), &mut buf).unwrap();
    }
    assert!(stat(&vol, "readahead_bytes") > 1 << 20);
}

#[test]
fn opening_a_file_prefetches_its_small_neighbours_and_listing_does_not() {
    let fx = Fixture::new();
    let cache = tempfile::tempdir().unwrap();
    let vol = fx.volume(
        &fx.image,
        cache.path(),
        VolumeConfig {
            readahead_max: 0,
            dir_prefetch_file_max: 10_000,
            dir_prefetch_budget: 1 << 20,
            ..VolumeConfig::default()
        },
    );
    let lib = resolve(&vol, "lib");
    // A walk (listing and lookups, no open) fetches nothing.
    let mut names = Vec::new();
    vol.read_dir(lib, 0, |e| {
        names.push(e.name.to_vec());
        true
    })
    .unwrap();
    assert_eq!(names.len(), 42);
    for name in &names[2..] {
        vol.lookup(lib, name).unwrap();
    }
    assert_eq!(stat(&vol, "dir_prefetch_dirs"), 0);
    // The first open of one of its files prefetches the directory's small files, once.
    let first = vol.lookup(lib, b"mod00.py").unwrap();
    let f = vol.open(first.ino).unwrap();
    vol.release(f.fh);
    assert_eq!(stat(&vol, "dir_prefetch_dirs"), 1);
    let again = vol.lookup(lib, b"mod01.py").unwrap();
    let f = vol.open(again.ino).unwrap();
    vol.release(f.fh);
    assert_eq!(stat(&vol, "dir_prefetch_dirs"), 1);
    let small: Vec<(Ino, u64)> = (0..vol.manifest().dir_len(lib))
        .filter_map(|i| vol.manifest().dir_entry(lib, i))
        .map(|(_, ino)| (ino, vol.attr(ino).unwrap().size))
        .collect();
    wait_until("the small files of lib/", || {
        small
            .iter()
            .filter(|(_, size)| *size <= 10_000)
            .all(|(ino, _)| {
                let f = vol.open(*ino).unwrap();
                vol.release(f.fh);
                f.complete
            })
    });
    // Larger files were left alone, and reading a prefetched file fetches nothing.
    for (ino, size) in &small {
        let f = vol.open(*ino).unwrap();
        assert_eq!(f.complete, *size <= 10_000, "inode {ino} of {size} bytes");
        vol.release(f.fh);
    }
    let ondemand = stat(&vol, "ondemand_chunks");
    read_range(&vol, fx.root.path(), "lib/mod00.py", 0, usize::MAX);
    assert_eq!(stat(&vol, "ondemand_chunks"), ondemand);
}

#[test]
fn a_recorder_continues_a_saved_trace_and_skips_reads_already_seen() {
    let fx = Fixture::new();
    let cache = tempfile::tempdir().unwrap();
    let rec = TraceRecorder::new();
    let vol = fx.volume(&fx.image, cache.path(), no_heuristics());
    let big = resolve(&vol, "big");
    rec.read(big, 0..100);
    rec.read(big, 100..300);
    rec.read(big, 50..400);
    rec.open(big);
    rec.open(big);
    assert!(rec.take_dirty());
    assert!(!rec.take_dirty());
    let trace = rec.to_trace(vol.manifest());
    let text = trace.to_text();
    assert_eq!(text, "# hydrate-trace 1\nread 0 400 big\nopen big\n");
    let again = TraceRecorder::continuing(&trace, vol.manifest());
    assert!(!again.take_dirty());
    again.read(big, 0..400);
    assert!(!again.take_dirty(), "nothing new was read");
    assert_eq!(again.to_trace(vol.manifest()), trace);
}

#[test]
fn a_100k_file_image_walks_correctly() {
    // Generating and chunking 100k files takes minutes in a debug build; the manifest is written directly
    // instead: 100 directories of 1000 files, all sharing the one chunk of a small built image.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("seed"), b"shared content\n").unwrap();
    let fx = Fixture::from_source(src);
    let seed = fx
        .rt
        .block_on(fx.store.get(&hydrate_store::keys::manifest(&fx.image)))
        .unwrap();
    let seed = hydrate_format::Manifest::parse(seed).unwrap();
    let seed_ino = seed.resolve(b"seed").unwrap();
    let meta = |mode: u32| hydrate_format::NodeMeta {
        mode,
        uid: 0,
        gid: 0,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
        xattrs: vec![],
    };
    let mut w = hydrate_format::ManifestWriter::new(meta(0o755));
    let blob = seed.blob(0);
    let b = w.add_blob(blob.id(), blob.size());
    let rec = seed.chunk(seed.file_chunks(seed_ino)[0].chunk_index());
    let c = w.add_chunk(hydrate_format::ChunkRecord::new(
        rec.id(),
        b,
        rec.compression(),
        rec.blob_offset(),
        rec.stored_len(),
        rec.plain_len(),
    ));
    let content = seed.content(seed_ino).unwrap();
    let root = w.root();
    for d in 0..100 {
        let dir = w
            .add_dir(root, format!("d{d:03}").as_bytes(), meta(0o755))
            .unwrap();
        for f in 0..1000 {
            w.add_file(
                dir,
                format!("f{f:04}").as_bytes(),
                meta(0o644),
                content,
                vec![c],
            )
            .unwrap();
        }
    }
    let bytes = w.finish().unwrap();
    let image = ImageId(hydrate_format::Digest::of(&bytes));
    fx.rt
        .block_on(
            fx.store
                .put(&hydrate_store::keys::manifest(&image), bytes.into()),
        )
        .unwrap();

    let cache = tempfile::tempdir().unwrap();
    let vol = fx.volume(&image, cache.path(), no_heuristics());
    let (mut files, mut dirs, mut bytes) = (0u64, 0u64, 0u64);
    let mut stack = vec![Ino(1)];
    while let Some(dir) = stack.pop() {
        dirs += 1;
        let mut children = Vec::new();
        vol.read_dir(dir, 0, |e| {
            if e.name != b"." && e.name != b".." {
                children.push((e.name.to_vec(), e.ino, e.kind));
            }
            true
        })
        .unwrap();
        for (name, ino, kind) in children {
            let attr = vol.lookup(dir, &name).unwrap();
            assert_eq!((attr.ino, attr.kind), (ino, kind));
            match kind {
                FileKind::Directory => stack.push(ino),
                _ => {
                    files += 1;
                    bytes += attr.size;
                }
            }
        }
    }
    assert_eq!((files, dirs), (100_000, 101));
    assert_eq!(vol.totals().inodes, 100_101);
    assert_eq!(vol.totals().bytes, bytes);
    assert_eq!(bytes, 100_000 * 15);
    // Every file reads the shared content; the first read fetches it, the rest hit the cache.
    for path in ["d000/f0000", "d042/f0999", "d099/f0500"] {
        let f = vol.open(resolve(&vol, path)).unwrap();
        let mut buf = [0u8; 64];
        let n = vol.read(f.fh, 0, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"shared content\n");
        vol.release(f.fh);
    }
    assert_eq!(stat(&vol, "ondemand_chunks"), 1);
}

#[test]
fn directory_prefetch_windows_start_at_the_opened_file_and_grow() {
    let fx = Fixture::new();
    let cache = tempfile::tempdir().unwrap();
    let vol = fx.volume(
        &fx.image,
        cache.path(),
        VolumeConfig {
            readahead_max: 0,
            dir_prefetch_file_max: 30_000,
            dir_prefetch_budget: 16 << 10,
            ..VolumeConfig::default()
        },
    );
    let lib = resolve(&vol, "lib");
    let open = |name: &str| {
        let attr = vol.lookup(lib, name.as_bytes()).unwrap();
        let f = vol.open(attr.ino).unwrap();
        vol.release(f.fh);
        f.complete
    };
    // mod00..mod04 (14,970 bytes) fit the first 16 KiB window; mod03 is inside it.
    open("mod00.py");
    open("mod03.py");
    assert_eq!(stat(&vol, "dir_prefetch_windows"), 1);
    // mod20 is outside: a second window starts there, twice as large (mod20 + mod21 fit in 32 KiB).
    open("mod20.py");
    open("mod21.py");
    assert_eq!(stat(&vol, "dir_prefetch_windows"), 2);
    assert_eq!(stat(&vol, "dir_prefetch_dirs"), 1);
    wait_until("the windows' files", || {
        ["mod01.py", "mod04.py", "mod21.py"]
            .iter()
            .all(|name| open(name))
    });
    // Between the windows nothing was fetched.
    let f = vol.open(resolve(&vol, "lib/mod10.py")).unwrap();
    assert!(!f.complete, "mod10 lies outside both windows");
    vol.release(f.fh);
}

/// Every regular file of the fixture's image, by path relative to the source root.
fn regular_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && entry.metadata().unwrap().len() > 0 {
                let rel = entry.path().strip_prefix(root).unwrap().to_owned();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_fill_fetches_an_image_within_its_budget_whole_and_reads_then_fetch_nothing() {
    let fx = Fixture::new();
    let cache = tempfile::tempdir().unwrap();
    let vol = Arc::new(fx.volume(
        &fx.image,
        cache.path(),
        VolumeConfig {
            fill_budget: 64 << 20,
            ..no_heuristics()
        },
    ));
    let fill = vol.start_fill(None).expect("a budget starts the fill");
    let outcome = fx.rt.block_on(fill).unwrap();
    assert!(outcome.whole_image, "{outcome:?}");
    assert_eq!(outcome.failed, 0);
    // 40 modules and the big file (the empty files hold nothing to fetch).
    assert_eq!(outcome.files, 41, "{outcome:?}");
    assert_eq!(stat(&vol, "fill_done"), 1);
    assert_eq!(stat(&vol, "fill_chunks"), outcome.chunks);
    assert_eq!(stat(&vol, "fill_bytes"), outcome.bytes);
    let requests = fx.store.stats().range_requests;
    for path in regular_files(fx.root.path()) {
        let opened = vol.open(resolve(&vol, &path)).unwrap();
        assert!(opened.complete, "{path} is not complete after the fill");
        vol.release(opened.fh);
        read_range(&vol, fx.root.path(), &path, 0, usize::MAX);
    }
    assert_eq!(stat(&vol, "ondemand_chunks"), 0);
    assert_eq!(
        fx.store.stats().range_requests,
        requests,
        "reads after the fill fetched"
    );
    // A second fill over the complete cache fetches nothing.
    let again = fx.rt.block_on(vol.start_fill(None).unwrap()).unwrap();
    assert_eq!((again.chunks, again.bytes), (0, 0));
}

#[test]
fn an_image_over_the_fill_budget_gets_only_its_small_files() {
    let fx = Fixture::new();
    let cache = tempfile::tempdir().unwrap();
    // The image stores ~4.4 MiB (the 4 MiB big file does not compress): over a 2 MiB budget, so only the
    // small files (the modules, ~400 KiB) are fetched, and never the big one.
    let vol = Arc::new(fx.volume(
        &fx.image,
        cache.path(),
        VolumeConfig {
            fill_budget: 2 << 20,
            fill_small_max: 1 << 20,
            ..no_heuristics()
        },
    ));
    let outcome = fx.rt.block_on(vol.start_fill(None).unwrap()).unwrap();
    assert!(!outcome.whole_image, "{outcome:?}");
    assert_eq!((outcome.files, outcome.failed), (40, 0), "{outcome:?}");
    for i in 0..40 {
        let f = vol
            .open(resolve(&vol, &format!("lib/mod{i:02}.py")))
            .unwrap();
        assert!(f.complete, "lib/mod{i:02}.py");
        vol.release(f.fh);
    }
    let big = vol.open(resolve(&vol, "big")).unwrap();
    assert!(!big.complete, "the big file was fetched over the budget");
    vol.release(big.fh);
    // A budget smaller than the small files stops where they no longer fit, in layout order.
    let cache = tempfile::tempdir().unwrap();
    let vol = Arc::new(fx.volume(
        &fx.image,
        cache.path(),
        VolumeConfig {
            fill_budget: 100 << 10,
            ..no_heuristics()
        },
    ));
    let outcome = fx.rt.block_on(vol.start_fill(None).unwrap()).unwrap();
    assert!(outcome.files > 0 && outcome.files < 40, "{outcome:?}");
    assert!(outcome.bytes <= 100 << 10, "{outcome:?}");
    // Off: no task at all.
    let vol = Arc::new(fx.volume(
        &fx.image,
        tempfile::tempdir().unwrap().path(),
        no_heuristics(),
    ));
    assert!(vol.start_fill(None).is_none());
}

#[test]
fn the_fill_walks_files_in_stored_order_with_documentation_marked_cold() {
    let src = tempfile::tempdir().unwrap();
    for (path, len) in [
        ("b.py", 10),
        ("a.py", 20),
        ("lib/z.so", 30),
        ("lib/sub/m.py", 40),
        ("usr/share/doc/pkg/README", 50),
        ("usr/share/locale/de/x.mo", 60),
        ("usr/share/zoneinfo/UTC", 70),
    ] {
        let path = src.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, random_bytes(len, len as usize)).unwrap();
    }
    let fx = Fixture::from_source(src);
    let cache = tempfile::tempdir().unwrap();
    let vol = fx.volume(&fx.image, cache.path(), no_heuristics());
    let walked: Vec<(String, bool)> = crate::fill::walk_for_tests(vol.manifest())
        .into_iter()
        .map(|(ino, cold)| {
            let path = [
                "a.py",
                "b.py",
                "lib/z.so",
                "lib/sub/m.py",
                "usr/share/doc/pkg/README",
                "usr/share/locale/de/x.mo",
                "usr/share/zoneinfo/UTC",
            ]
            .into_iter()
            .find(|p| resolve(&vol, p) == ino)
            .unwrap();
            (path.to_owned(), cold)
        })
        .collect();
    let want = [
        ("a.py", false),
        ("b.py", false),
        ("lib/z.so", false),
        ("lib/sub/m.py", false),
        ("usr/share/doc/pkg/README", true),
        ("usr/share/locale/de/x.mo", true),
        ("usr/share/zoneinfo/UTC", false),
    ];
    let want: Vec<(String, bool)> = want.iter().map(|(p, c)| (p.to_string(), *c)).collect();
    assert_eq!(walked, want);
}

/// The host's `ls` and the libraries its loader maps (from `ldd`, the host loader's own answer), laid out in a
/// merged-/usr tree as Debian has it (`lib`, `lib64` and `bin` symlinks into `usr`), plus a library nothing
/// needs. Returns the source tree and the image paths of the libraries `ls` needs.
fn ls_tree() -> (TempDir, Vec<String>) {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    for dir in ["usr/bin", "usr/lib/x86_64-linux-gnu", "usr/lib64"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(target, root.join(link)).unwrap();
    }
    let ls = std::fs::canonicalize("/usr/bin/ls").unwrap();
    std::fs::copy(&ls, root.join("usr/bin/ls")).unwrap();
    let ldd = std::process::Command::new("ldd").arg(&ls).output().unwrap();
    assert!(ldd.status.success(), "ldd {}", ls.display());
    let mut needed = Vec::new();
    for line in String::from_utf8(ldd.stdout).unwrap().lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)".
        let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) else {
            continue; // linux-vdso.so.1: in the kernel, not a file
        };
        let name = Path::new(path).file_name().unwrap().to_str().unwrap();
        let image_path = format!("usr/lib/x86_64-linux-gnu/{name}");
        std::fs::copy(std::fs::canonicalize(path).unwrap(), root.join(&image_path)).unwrap();
        needed.push(image_path);
    }
    // The interpreter is named as /lib64/ld-linux-x86-64.so.2: a symlink into the multiarch directory.
    std::os::unix::fs::symlink(
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        root.join("usr/lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    std::fs::write(
        root.join("usr/lib/x86_64-linux-gnu/libunused.so.1"),
        random_bytes(7, 300_000),
    )
    .unwrap();
    (src, needed)
}

#[test]
fn reading_a_programs_elf_header_fetches_its_interpreter_and_libraries_whole() {
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipped: the test lays out an x86_64 multiarch tree");
        return;
    }
    let (src, needed) = ls_tree();
    assert!(needed.len() >= 3, "ldd listed {needed:?}");
    let fx = Fixture::from_source(src);
    let cache = tempfile::tempdir().unwrap();
    let vol = Arc::new(fx.volume(
        &fx.image,
        cache.path(),
        VolumeConfig {
            dir_prefetch_file_max: 0,
            ..VolumeConfig::default()
        },
    ));
    vol.start_elf_deps();
    // What the loader does first: read the program's ELF header.
    read_range(&vol, fx.root.path(), "usr/bin/ls", 0, 832);
    let complete = |path: &str| {
        let opened = vol.open(resolve(&vol, path)).unwrap();
        vol.release(opened.fh);
        opened.complete
    };
    for path in &needed {
        wait_until(&format!("{path} fetched whole"), || complete(path));
    }
    // ls and its libraries followed (those ldd lists without ls' own loader, reached through its symlink).
    wait_until("every file followed", || {
        stat(&vol, "elf_followed") as usize == needed.len() + 1
    });
    assert_eq!(stat(&vol, "elf_dep_files") as usize, needed.len());
    assert!(!complete("usr/lib/x86_64-linux-gnu/libunused.so.1"));
    assert_eq!(
        stat(&vol, "ondemand_chunks"),
        1,
        "only the header read waited"
    );
    for path in &needed {
        read_range(&vol, fx.root.path(), path, 0, usize::MAX);
    }
    assert_eq!(stat(&vol, "ondemand_chunks"), 1, "the libraries were local");
    // A second read of the header follows nothing again.
    read_range(&vol, fx.root.path(), "usr/bin/ls", 0, 832);
    assert_eq!(stat(&vol, "elf_followed") as usize, needed.len() + 1);
}

#[test]
fn elf_dependencies_are_not_followed_when_elf_prefetch_is_off() {
    let (src, needed) = ls_tree();
    let fx = Fixture::from_source(src);
    let cache = tempfile::tempdir().unwrap();
    let vol = Arc::new(fx.volume(&fx.image, cache.path(), no_heuristics()));
    vol.start_elf_deps();
    read_range(&vol, fx.root.path(), "usr/bin/ls", 0, 832);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(stat(&vol, "elf_followed"), 0);
    let opened = vol.open(resolve(&vol, &needed[0])).unwrap();
    assert!(!opened.complete);
}

#[test]
fn an_images_command_is_fetched_with_its_libraries_before_anything_reads() {
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipped: the test lays out an x86_64 multiarch tree");
        return;
    }
    let (src, needed) = ls_tree();
    // A script whose interpreter is ls: the script, ls and ls' libraries are fetched.
    std::fs::write(src.path().join("usr/bin/run.sh"), "#!/usr/bin/ls -l\n").unwrap();
    let fx = Fixture::from_source(src);
    for program in ["usr/bin/ls", "usr/bin/run.sh"] {
        let cache = tempfile::tempdir().unwrap();
        let vol = Arc::new(fx.volume(
            &fx.image,
            cache.path(),
            VolumeConfig {
                dir_prefetch_file_max: 0,
                ..VolumeConfig::default()
            },
        ));
        vol.start_elf_deps();
        vol.follow_program(resolve(&vol, program));
        let complete = |path: &str| {
            let opened = vol.open(resolve(&vol, path)).unwrap();
            vol.release(opened.fh);
            opened.complete
        };
        for path in needed
            .iter()
            .map(String::as_str)
            .chain(["usr/bin/ls", program])
        {
            wait_until(&format!("{path} fetched whole for {program}"), || {
                complete(path)
            });
        }
        assert_eq!(stat(&vol, "elf_dep_files") as usize, needed.len());
        assert_eq!(stat(&vol, "elf_followed") as usize, needed.len() + 1);
        assert!(!complete("usr/lib/x86_64-linux-gnu/libunused.so.1"));
        assert_eq!(
            stat(&vol, "ondemand_chunks"),
            0,
            "{program}: nothing waited"
        );
        for path in needed
            .iter()
            .map(String::as_str)
            .chain(["usr/bin/ls", program])
        {
            read_range(&vol, fx.root.path(), path, 0, usize::MAX);
        }
        assert_eq!(stat(&vol, "ondemand_chunks"), 0, "{program}: all local");
    }
}
