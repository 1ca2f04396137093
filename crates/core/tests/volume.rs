//! The core without a kernel: a real image in a real local store, a real disk cache, the real fetch engine, and
//! fault injection between engine and store. Front-end tests (FUSE) live with the CLI.

use hydrate_builder::{build_dir, BuildOptions, NoProgress};
use hydrate_cache::{CacheConfig, DiskCache};
use hydrate_core::{load_manifest, FileKind, ImageId, Ino, Volume, VolumeConfig};
use hydrate_fetch::{FetchConfig, FetchEngine};
use hydrate_store::{BlobStore, CountingStore, ErrorKind, FaultyStore, LocalStore};
use hydrate_testkit::rng::{random_bytes, Rng};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

struct Fixture {
    _dir: tempfile::TempDir,
    vol: Volume,
    faulty: Arc<FaultyStore<Arc<CountingStore<LocalStore>>>>,
    counting: Arc<CountingStore<LocalStore>>,
    _rt: tokio::runtime::Runtime,
}

fn fixture(files: &[(&str, Vec<u8>)], config: VolumeConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for (name, data) in files {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let local = LocalStore::open(&dir.path().join("store")).unwrap();
    let report = rt
        .block_on(build_dir(
            &src,
            &local,
            &BuildOptions::default(),
            &NoProgress,
        ))
        .unwrap();
    let counting = Arc::new(CountingStore::new(local));
    let faulty = Arc::new(FaultyStore::new(Arc::clone(&counting)));
    let store: Arc<dyn BlobStore> = faulty.clone();
    let manifest = rt
        .block_on(load_manifest(
            store.as_ref(),
            &report.image,
            &dir.path().join("manifests"),
        ))
        .unwrap();
    let cache = DiskCache::open(CacheConfig {
        dir: dir.path().join("cache"),
        quota_bytes: 1 << 30,
        flush_interval: Duration::from_millis(50),
    })
    .unwrap();
    let fetch_config = FetchConfig {
        retries: 1,
        backoff_base: Duration::from_millis(1),
        ..FetchConfig::default()
    };
    let engine = FetchEngine::new(store, fetch_config);
    let vol = Volume::new(
        report.image,
        manifest,
        cache,
        engine,
        rt.handle().clone(),
        config,
    );
    Fixture {
        _dir: dir,
        vol,
        faulty,
        counting,
        _rt: rt,
    }
}

fn ino_of(vol: &Volume, path: &str) -> Ino {
    let mut ino = Ino::ROOT;
    for part in path.split('/') {
        ino = vol.lookup(ino, part.as_bytes()).unwrap().ino;
    }
    ino
}

fn read_all_at(vol: &Volume, fh: u64, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    let n = vol.read(fh, offset, &mut buf).map_err(|e| e.errno())?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn reads_match_source_at_any_offset_and_size() {
    let data = random_bytes(1, 3 << 20);
    let f = fixture(
        &[("dir/file", data.clone()), ("empty", Vec::new())],
        VolumeConfig::default(),
    );
    let ino = ino_of(&f.vol, "dir/file");
    let opened = f.vol.open(ino).unwrap();
    assert!(!opened.complete);
    let mut rng = Rng::new(7);
    for _ in 0..300 {
        let offset = rng.below(data.len() as u64 + 100);
        let len = rng.below(300_000) as usize;
        let got = read_all_at(&f.vol, opened.fh, offset, len).unwrap();
        let start = (offset as usize).min(data.len());
        let end = (start + len).min(data.len());
        assert_eq!(got, &data[start..end], "offset {offset} len {len}");
    }
    // After reading everything, the content is complete and the next open says so (passthrough may be used).
    read_all_at(&f.vol, opened.fh, 0, data.len()).unwrap();
    f.vol.release(opened.fh);
    assert!(f.vol.open(ino).unwrap().complete);
    let empty = f.vol.open(ino_of(&f.vol, "empty")).unwrap();
    assert_eq!(read_all_at(&f.vol, empty.fh, 0, 10).unwrap(), b"");
}

#[test]
fn random_reads_fetch_only_covering_chunks_and_streams_read_ahead() {
    let data = random_bytes(2, 8 << 20);
    let f = fixture(&[("big", data.clone())], VolumeConfig::default());
    let ino = ino_of(&f.vol, "big");
    let fh = f.vol.open(ino).unwrap().fh;
    // One 4 KiB read in the middle: at most two chunks (if it straddles a boundary), no readahead.
    read_all_at(&f.vol, fh, 5_000_000, 4096).unwrap();
    let stats = f.vol.stats();
    assert!(stats.ondemand_chunks.load(Ordering::Relaxed) <= 2);
    assert_eq!(stats.readahead_chunks.load(Ordering::Relaxed), 0);
    assert!(f.counting.stats().bytes_read <= 2 * 256 * 1024);
    // A sequential stream from the start schedules background readahead.
    for i in 0..8u64 {
        read_all_at(&f.vol, fh, i * 131072, 131072).unwrap();
    }
    assert!(
        stats.readahead_chunks.load(Ordering::Relaxed) > 0,
        "no readahead for a sequential stream"
    );
}

#[test]
fn corrupt_store_bytes_give_eio_and_are_never_cached() {
    let data = random_bytes(3, 2 << 20);
    let f = fixture(&[("file", data.clone())], VolumeConfig::default());
    let ino = ino_of(&f.vol, "file");
    let m = f.vol.manifest();
    let chunks = m.file_chunks(ino);
    assert!(chunks.len() > 3);
    let victim = m.chunk(chunks[1].chunk_index());
    let blob_key = hydrate_store::keys::blob(&m.blob(victim.blob_index()).id());
    // Flip a byte inside chunk 1 on every read: the engine's re-fetch sees it again and gives up.
    f.faulty.corrupt_byte(
        &blob_key,
        victim.blob_offset() + u64::from(victim.stored_len()) / 2,
        u32::MAX,
    );
    let fh = f.vol.open(ino).unwrap().fh;
    let bad_start = chunks[1].file_offset();
    let bad_end = bad_start + u64::from(victim.plain_len());
    assert_eq!(read_all_at(&f.vol, fh, bad_start + 10, 100), Err(libc::EIO));
    // Ranges outside the bad chunk still read correctly.
    let good = read_all_at(&f.vol, fh, 0, bad_start as usize).unwrap();
    assert_eq!(good, &data[..bad_start as usize]);
    let tail = read_all_at(&f.vol, fh, bad_end, 4096).unwrap();
    assert_eq!(tail, &data[bad_end as usize..bad_end as usize + 4096]);
    // Nothing of the bad chunk was cached; once the store heals, the same read succeeds without a remount.
    f.faulty.clear();
    let healed = read_all_at(&f.vol, fh, bad_start, (bad_end - bad_start) as usize).unwrap();
    assert_eq!(healed, &data[bad_start as usize..bad_end as usize]);
}

#[test]
fn temporary_store_failures_are_retried_and_permanent_ones_fail() {
    let data = random_bytes(4, 500_000);
    // No readahead: a background fetch of the rest of the file would race the injected failures.
    let config = VolumeConfig {
        readahead_max: 0,
        ..VolumeConfig::default()
    };
    let f = fixture(&[("file", data.clone())], config);
    let fh = f.vol.open(ino_of(&f.vol, "file")).unwrap().fh;
    f.faulty.fail_next_reads(1, ErrorKind::Temporary);
    assert_eq!(read_all_at(&f.vol, fh, 0, 1000).unwrap(), &data[..1000]);
    f.faulty.fail_next_reads(1, ErrorKind::Permanent);
    assert_eq!(read_all_at(&f.vol, fh, 400_000, 1000), Err(libc::EIO));
    assert_eq!(
        read_all_at(&f.vol, fh, 400_000, 1000).unwrap(),
        &data[400_000..401_000]
    );
}

#[test]
fn metadata_and_directory_cookies() {
    let files: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| (format!("d/f{i:02}"), vec![i as u8; i]))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let f = fixture(&refs, VolumeConfig::default());
    let dir = ino_of(&f.vol, "d");
    assert_eq!(f.vol.attr(dir).unwrap().kind, FileKind::Directory);
    // Read the directory in pieces of 7 entries, resuming from each batch's last cookie.
    let mut names = Vec::new();
    let mut cookie = 0;
    loop {
        let mut batch = Vec::new();
        f.vol
            .read_dir(dir, cookie, |e| {
                batch.push((String::from_utf8(e.name.to_vec()).unwrap(), e.next_offset));
                batch.len() < 7
            })
            .unwrap();
        if batch.is_empty() {
            break;
        }
        cookie = batch.last().unwrap().1;
        names.extend(batch.into_iter().map(|(n, _)| n));
    }
    let mut expected = vec![".".to_owned(), "..".to_owned()];
    expected.extend((0..50).map(|i| format!("f{i:02}")));
    assert_eq!(names, expected);
    assert_eq!(
        f.vol.lookup(dir, b"nope").unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(
        f.vol
            .lookup(ino_of(&f.vol, "d/f01"), b"x")
            .unwrap_err()
            .errno(),
        libc::ENOTDIR
    );
    assert_eq!(f.vol.open(dir).unwrap_err().errno(), libc::EISDIR);
    assert_eq!(
        f.vol.read(12345, 0, &mut [0u8; 10]).unwrap_err().errno(),
        libc::EBADF
    );
}

#[test]
fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = LocalStore::open(&dir.path().join("store")).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let image = rt
        .block_on(build_dir(
            &src,
            &store,
            &BuildOptions::default(),
            &NoProgress,
        ))
        .unwrap()
        .image;
    let path = store
        .path_of(&hydrate_store::keys::manifest(&image))
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&path, &bytes).unwrap();
    let err = rt
        .block_on(load_manifest(
            &store,
            &image,
            Path::new(&dir.path().join("m")),
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    let other: ImageId = "0".repeat(64).parse().unwrap();
    assert!(rt
        .block_on(load_manifest(&store, &other, &dir.path().join("m")))
        .is_err());
}
