//! The image builder and BlobFs without a kernel: determinism, the blob's bytes, errors as EIO.

use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hydrate_fuse_transport::{Errno, Filesystem, RequestCtx};
use hydrate_kernel::{BlobFs, BlobFsConfig, KernelImage, BLOB_INO};
use hydrate_store::ErrorKind;
use hydrate_testkit::rng::Rng;

use crate::fixture::{self, Image};

fn ctx() -> RequestCtx {
    RequestCtx {
        unique: 1,
        uid: 0,
        gid: 0,
        pid: 0,
        opcode: 15,
        resent: false,
    }
}

/// The blob as it must read: every extent filled from the source file of its first inode, zeros elsewhere.
fn expected_blob(image: &Image, built: &KernelImage) -> Vec<u8> {
    let vol = image.volume("expected");
    let manifest = vol.manifest();
    let mut by_ino = std::collections::HashMap::new();
    let mut paths = Vec::new();
    fixture::collect(&image.src, &mut paths);
    for path in paths {
        let rel = path.strip_prefix(&image.src).unwrap();
        let ino = manifest.resolve(rel.as_os_str().as_bytes()).unwrap();
        by_ino.entry(ino).or_insert(path);
    }
    let mut blob = vec![0u8; built.blob_size() as usize];
    for extent in built.blob().extents() {
        let data = std::fs::read(&by_ino[&extent.files[0]]).unwrap();
        assert_eq!(data.len() as u64, extent.size);
        let at = extent.offset() as usize;
        blob[at..at + data.len()].copy_from_slice(&data);
    }
    blob
}

#[test]
fn the_same_manifest_gives_the_same_erofs_bytes() {
    let image = Image::build(None);
    let vol = image.volume("a");
    let first = KernelImage::build(vol.manifest()).unwrap();
    let second = KernelImage::build(image.volume("b").manifest()).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    first.write(&mut a).unwrap();
    second.write(&mut b).unwrap();
    assert!(a == b, "two builds of one manifest differ");
    let stats = first.stats();
    eprintln!(
        "{stats:?}, metadata {} bytes, blob {} bytes",
        a.len(),
        first.blob_size()
    );
    assert_eq!(
        stats.hard_links, 2,
        "sub/hard-big and sub/deeper/hard-small"
    );
    // odd-copy.bin repeats odd.bin; "file N\n" contents are all distinct.
    assert_eq!(stats.shared, 1);
    assert_eq!(
        first.blob().extents().len() as u64,
        stats.files - stats.shared
    );
    // Every extent is block-aligned and they do not overlap.
    let mut end = 0;
    for extent in first.blob().extents() {
        assert!(extent.offset() >= end);
        end = extent.offset() + extent.blocks() * 4096;
    }
    assert_eq!(end, first.blob_size());
}

#[test]
fn the_blob_reads_as_file_bytes_with_zeros_between() {
    let image = Image::build(None);
    let vol = image.volume("blobfs");
    let built = KernelImage::build(vol.manifest()).unwrap();
    let expected = expected_blob(&image, &built);
    let fs = BlobFs::new(vol, Arc::new(built.into_blob()), BlobFsConfig::default());
    assert_eq!(fs.size(), expected.len() as u64);
    let mut rng = Rng::new(11);
    let mut buf = vec![0u8; 1 << 20];
    for round in 0..400 {
        let offset = rng.below(fs.size() + 8192);
        let len = 1 + rng.below(if round % 2 == 0 { 300_000 } else { 9000 }) as usize;
        buf[..len].fill(0xAA);
        let n = fs
            .read(&ctx(), BLOB_INO, 0, offset, &mut buf[..len])
            .unwrap();
        let start = (offset as usize).min(expected.len());
        let end = (start + len).min(expected.len());
        assert_eq!(n, end - start, "read of {len} at {offset}");
        assert!(
            buf[..n] == expected[start..end],
            "bytes of {len} at {offset}"
        );
    }
    // The whole blob front to back, in erofs-sized requests.
    let mut offset = 0;
    while offset < fs.size() {
        let n = fs
            .read(&ctx(), BLOB_INO, 0, offset, &mut buf[..128 << 10])
            .unwrap();
        assert!(buf[..n] == expected[offset as usize..offset as usize + n]);
        offset += n as u64;
    }
    assert_eq!(fs.stats().failed_reads.load(Ordering::Relaxed), 0);
    assert!(fs.open_files() <= BlobFsConfig::default().open_files);
}

#[test]
fn every_file_in_the_blob_knows_where_it_is_named() {
    let image = Image::build(None);
    let vol = image.volume("parents");
    let manifest = vol.manifest();
    let (blob, parents) = KernelImage::build(manifest).unwrap().into_parts();
    let mut files = 0;
    for extent in blob.extents() {
        for ino in &extent.files {
            let &(dir, index) = parents.get(ino).expect("a placed file without a parent");
            let (_, named) = manifest.dir_entry(dir, index as usize).unwrap();
            assert_eq!(named, *ino);
            files += 1;
        }
    }
    assert!(files >= fixture::MANY, "{files}");
}

#[test]
fn idle_handles_are_released_so_their_contents_can_be_evicted() {
    let image = Image::build(None);
    let vol = image.volume("idle");
    let built = KernelImage::build(vol.manifest()).unwrap();
    let config = BlobFsConfig {
        idle_release: std::time::Duration::from_millis(50),
        ..BlobFsConfig::default()
    };
    let fs = BlobFs::new(Arc::clone(&vol), Arc::new(built.into_blob()), config);
    let mut buf = vec![0u8; 1 << 20];
    fs.read(&ctx(), BLOB_INO, 0, 0, &mut buf).unwrap();
    let open = fs.open_files();
    assert!(open > 0);
    // Used just now: kept, and its content is pinned.
    assert_eq!(fs.release_idle(), 0);
    assert_eq!(
        vol.cache().evict_to(0).unwrap(),
        0,
        "evicted pinned content"
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(fs.release_idle(), open);
    assert_eq!(fs.open_files(), 0);
    assert!(
        vol.cache().evict_to(0).unwrap() > 0,
        "released content stayed pinned"
    );
    // Read again after eviction: fetched again, the same bytes.
    let mut again = vec![0u8; 1 << 20];
    fs.read(&ctx(), BLOB_INO, 0, 0, &mut again).unwrap();
    assert!(again == buf);
}

#[test]
fn store_failures_become_eio_never_zeros() {
    let image = Image::build(None);
    let vol = image.volume("failing");
    let built = KernelImage::build(vol.manifest()).unwrap();
    let expected = expected_blob(&image, &built);
    // The big file: surely not prefetched by anything yet.
    let big = built
        .blob()
        .extents()
        .iter()
        .find(|e| e.size == fixture::BIG as u64)
        .unwrap()
        .clone();
    let fs = BlobFs::new(vol, Arc::new(built.into_blob()), BlobFsConfig::default());
    image.store.fail_next_reads(10_000, ErrorKind::Permanent);
    let mut buf = vec![0u8; 128 << 10];
    let err = fs
        .read(&ctx(), BLOB_INO, 0, big.offset() + 65536, &mut buf)
        .unwrap_err();
    assert_eq!(err, Errno::EIO);
    assert_eq!(fs.stats().failed_reads.load(Ordering::Relaxed), 1);
    // The store recovers; the same read now gives the file's bytes.
    image.store.clear();
    let n = fs
        .read(&ctx(), BLOB_INO, 0, big.offset() + 65536, &mut buf)
        .unwrap();
    let at = (big.offset() + 65536) as usize;
    assert!(buf[..n] == expected[at..at + n]);
}

/// Peak resident memory of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// How the build scales: a synthetic manifest of `dirs × per_dir` files (all distinct contents), its erofs
/// image built and written, with time and peak memory. Run alone with `--ignored --nocapture`.
#[test]
#[ignore = "measurement: run explicitly and alone (peak RSS is per process)"]
fn measure_build_scale() {
    use hydrate_format::{
        BlobId, ChunkId, ChunkRecord, ContentId, Digest, Manifest, ManifestWriter, NodeMeta,
        COMPRESSION_NONE,
    };
    for (dirs, per_dir) in [(100u32, 1000u32), (1000, 1000)] {
        let meta = |mode| NodeMeta {
            mode,
            uid: 1000,
            gid: 1000,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 1,
            xattrs: Vec::new(),
        };
        let mut w = ManifestWriter::new(meta(0o755));
        let blob = w.add_blob(BlobId(Digest::of(b"blob")), 10_000);
        let chunk = w.add_chunk(ChunkRecord::new(
            ChunkId(Digest::of(b"chunk")),
            blob,
            COMPRESSION_NONE,
            0,
            10_000,
            10_000,
        ));
        let root = w.root();
        for d in 0..dirs {
            let dir = w
                .add_dir(root, format!("directory-{d:05}").as_bytes(), meta(0o755))
                .unwrap();
            for f in 0..per_dir {
                let name = format!("some-file-name-{f:06}.txt");
                let content = ContentId(Digest::of(&(d * per_dir + f).to_le_bytes()));
                w.add_file(dir, name.as_bytes(), meta(0o644), content, vec![chunk])
                    .unwrap();
            }
        }
        let manifest = Manifest::parse(w.finish().unwrap()).unwrap();
        let files = u64::from(dirs * per_dir);
        let rss_before = peak_rss_kib();
        let started = std::time::Instant::now();
        let built = KernelImage::build(&manifest).unwrap();
        let built_in = started.elapsed();
        let mut out = std::io::sink();
        let info = built.write(&mut std::io::BufWriter::new(&mut out)).unwrap();
        let written_in = started.elapsed() - built_in;
        let peak = peak_rss_kib();
        let blob = built.into_blob();
        eprintln!(
            "{files} files: manifest {} MiB; build {built_in:?}, write {written_in:?}; metadata {} MiB; \
             peak RSS +{} MiB ({} bytes/file); blob {} extents, {} GiB",
            manifest.as_bytes().len() >> 20,
            (info.blocks * 4096) >> 20,
            peak.saturating_sub(rss_before) >> 10,
            peak.saturating_sub(rss_before) * 1024 / files,
            blob.extents().len(),
            (blob.blocks() * 4096) >> 30,
        );
    }
}
