//! Real mounts (root): BlobFs on FUSE, erofs on top, checked against the source tree; then the connection is
//! aborted (every hydrate process dead, no fd holder) and unread data must fail, never read as zeros.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hydrate_fuse::HydrateFs;
use hydrate_fuse_transport::SessionConfig;
use hydrate_kernel::BlobFsConfig;
use hydrate_store::ErrorKind;

use crate::fixture::{self, FuseMount, Image, KernelMode};

fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all: Vec<_> = xattr::list(path)
        .unwrap()
        .map(|name| {
            let value = xattr::get(path, &name).unwrap().unwrap_or_default();
            (name.as_encoded_bytes().to_vec(), value)
        })
        .collect();
    all.sort();
    all
}

fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names
}

/// Every path of `src` looked up by name under `root` and compared: type and mode, ids, mtime to the
/// nanosecond, size, link count, device number, hard links' shared inode, symlink targets, xattrs, directory
/// listings, and the bytes of every regular file not in `unread`.
fn compare_tree(src: &Path, root: &Path, unread: &[&str]) -> usize {
    let mut paths = Vec::new();
    fixture::collect(src, &mut paths);
    paths.push(src.to_path_buf());
    let mut inodes: HashMap<(u64, u64), u64> = HashMap::new();
    let mut read = 0;
    for path in &paths {
        let rel = path.strip_prefix(src).unwrap();
        let mounted = root.join(rel);
        let what = format!("/{}", rel.display());
        let s = std::fs::symlink_metadata(path).unwrap();
        let m = std::fs::symlink_metadata(&mounted).unwrap_or_else(|e| panic!("lstat {what}: {e}"));
        assert_eq!(m.mode(), s.mode(), "{what}: mode");
        assert_eq!((m.uid(), m.gid()), (s.uid(), s.gid()), "{what}: owner");
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            (s.mtime(), s.mtime_nsec()),
            "{what}: mtime"
        );
        assert_eq!(m.nlink(), s.nlink(), "{what}: link count");
        let kind = s.file_type();
        if !kind.is_dir() {
            assert_eq!(m.size(), s.size(), "{what}: size");
        }
        if kind.is_char_device() || kind.is_block_device() {
            assert_eq!(m.rdev(), s.rdev(), "{what}: device number");
        }
        if !kind.is_dir() && s.nlink() > 1 {
            let first = *inodes.entry((s.dev(), s.ino())).or_insert(m.ino());
            assert_eq!(m.ino(), first, "{what}: hard links share an inode");
        }
        assert_eq!(xattrs(&mounted), xattrs(path), "{what}: xattrs");
        if kind.is_symlink() {
            assert_eq!(
                std::fs::read_link(&mounted).unwrap(),
                std::fs::read_link(path).unwrap(),
                "{what}: target"
            );
        } else if kind.is_dir() {
            assert_eq!(names(&mounted), names(path), "{what}: entries");
        } else if kind.is_file() && !unread.iter().any(|u| rel == Path::new(u)) {
            let got = std::fs::read(&mounted).unwrap_or_else(|e| panic!("read {what}: {e}"));
            assert!(got == std::fs::read(path).unwrap(), "{what}: contents");
            read += 1;
        }
    }
    read
}

#[test]
fn erofs_over_blobfs_serves_the_tree_and_fails_closed() {
    if !hydrate_testkit::require_root(hydrate_testkit::test_name!(), "FUSE and erofs mounts") {
        return;
    }
    let image = Image::build(None);
    let mut kernel = KernelMode::start(&image, image.volume("kernel"), "kernel");
    let root = kernel.root().to_path_buf();
    let unread = [
        "mmap.bin",
        "cold/a.bin",
        "cold/b.bin",
        "cold/c.bin",
        "cold/other-user.bin",
    ];
    let read = compare_tree(&image.src, &root, &unread);
    eprintln!("{read} files read byte for byte through erofs");
    assert!(read > fixture::MANY);
    assert_eq!(
        std::fs::metadata(root.join("sub/hard-big")).unwrap().ino(),
        std::fs::metadata(root.join("big.bin")).unwrap().ino()
    );

    // A file never read before, through page faults of a shared mapping.
    let file = File::open(root.join("mmap.bin")).unwrap();
    // SAFETY: the file is on a read-only mount; nothing can change it while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    assert!(
        map[..] == std::fs::read(image.src.join("mmap.bin")).unwrap()[..],
        "mmap.bin through mmap"
    );
    drop(map);
    drop(file);
    let stats = kernel.fs.stats();
    eprintln!(
        "BlobFs: {} reads, {} bytes, {} failed, {} volume opens, {} open now",
        stats.reads.load(Ordering::Relaxed),
        stats.bytes.load(Ordering::Relaxed),
        stats.failed_reads.load(Ordering::Relaxed),
        stats.volume_opens.load(Ordering::Relaxed),
        kernel.fs.open_files()
    );
    assert_eq!(stats.failed_reads.load(Ordering::Relaxed), 0);
    assert_eq!(
        stats.multi_extent_reads.load(Ordering::Relaxed),
        0,
        "erofs asks for one file's data at a time"
    );

    // Cache eviction: contents no BlobFs handle pins leave the cache (block.bin and the small files were read
    // before 256 later files took over the handle table). Once erofs drops its pages too, the next read is a
    // miss that goes to the store: with the store failing it is an error (never zeros), then the right bytes.
    let freed = kernel.vol.cache().evict_to(0).unwrap();
    assert!(freed > 4096, "nothing evicted");
    let evicted = ["block.bin", "many/f00007"];
    let reread = |rel: &str| {
        let file = File::open(root.join(rel)).unwrap();
        nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        let mut got = Vec::new();
        (&file).read_to_end(&mut got).map(|_| got)
    };
    image.store.fail_next_reads(1_000_000, ErrorKind::Permanent);
    for rel in evicted {
        let err = reread(rel).expect_err("an evicted file read with the store down");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{rel}: {err}");
    }
    image.store.clear();
    for rel in evicted {
        assert!(
            reread(rel).unwrap() == std::fs::read(image.src.join(rel)).unwrap(),
            "{rel}"
        );
    }
    eprintln!("evicted {freed} bytes; evicted files failed with EIO while the store was down, then read back");
    let failed = kernel.fs.stats().failed_reads.load(Ordering::Relaxed);
    assert!(failed >= 2, "BlobFs answered {failed} reads with EIO");

    // A user other than the one who mounted BlobFs (root) reads unread data: erofs reads the blob through
    // the file it opened at mount time, so the FUSE mount needs no allow_other.
    std::fs::set_permissions(
        image.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(root.join("cold/other-user.bin"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "read as nobody: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout == std::fs::read(image.src.join("cold/other-user.bin")).unwrap());

    // The worker stops while a holder keeps the connection (the supervisor): a reader of unread data waits,
    // and gets the right bytes once another worker serves the connection.
    let (dev, negotiated) = kernel.blobfs.stop();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let path = root.join("cold/c.bin");
    let reader = std::thread::spawn(move || done_tx.send(std::fs::read(path)).unwrap());
    let waited = Duration::from_millis(500);
    assert!(
        done_rx.recv_timeout(waited).is_err(),
        "a read completed with no server"
    );
    let resumed = Instant::now();
    kernel.take_over(dev, negotiated);
    let got = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the blocked read completes after the takeover")
        .expect("and succeeds");
    reader.join().unwrap();
    assert!(got == std::fs::read(image.src.join("cold/c.bin")).unwrap());
    eprintln!(
        "reader blocked {waited:?} without a server, done {:?} after the takeover",
        resumed.elapsed()
    );

    // Every hydrate process dies and nothing holds the connection: the kernel aborts it.
    kernel.blobfs.abort();
    let started = Instant::now();
    // Metadata is the kernel's own: still there.
    let meta = std::fs::metadata(root.join("cold/a.bin")).unwrap();
    assert_eq!(meta.len(), (1 << 20) + 5);
    // Data erofs has cached is still served.
    assert_eq!(
        std::fs::read(root.join("small.txt")).unwrap(),
        b"hello, erofs\n"
    );
    // Data it has not: an error, not zeros.
    for (rel, offset) in [("cold/a.bin", 0u64), ("cold/b.bin", 100 << 10)] {
        let file = File::open(root.join(rel)).unwrap();
        let mut buf = vec![0xAAu8; 64 << 10];
        match file.read_at(&mut buf, offset) {
            Err(e) => eprintln!("after abort, read of unread {rel} at {offset}: {e}"),
            Ok(n) => panic!(
                "after abort, read of unread {rel} returned {n} bytes (all zeros: {})",
                buf[..n].iter().all(|&b| b == 0)
            ),
        }
    }
    let mut whole = Vec::new();
    let err = File::open(root.join("cold/a.bin"))
        .unwrap()
        .read_to_end(&mut whole)
        .unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::ENOTCONN)),
        "{err}"
    );
    eprintln!("errors came back in {:?}", started.elapsed());
    kernel.stop();
}

#[test]
fn an_image_without_file_data_mounts_with_an_empty_blob() {
    if !hydrate_testkit::require_root(hydrate_testkit::test_name!(), "FUSE and erofs mounts") {
        return;
    }
    let image = Image::from_tree(|src| {
        std::fs::write(src.join("empty"), b"").unwrap();
        std::fs::create_dir(src.join("dir")).unwrap();
        std::os::unix::fs::symlink("empty", src.join("dir/link")).unwrap();
    });
    let kernel = KernelMode::start(&image, image.volume("kernel"), "kernel");
    assert_eq!(kernel.fs.size(), 0);
    compare_tree(&image.src, kernel.root(), &[]);
    assert_eq!(std::fs::read(kernel.root().join("empty")).unwrap(), b"");
    kernel.stop();
}

/// Cold and warm sequential read of one 64 MiB file: erofs over BlobFs against hydrate's FUSE mount, each on
/// its own fresh cache. Run with `--ignored --nocapture`; prints the figures.
#[test]
#[ignore = "measurement: run explicitly"]
fn measure_64mib_cold_read_erofs_vs_fuse() {
    if !hydrate_testkit::require_root(hydrate_testkit::test_name!(), "FUSE and erofs mounts") {
        return;
    }
    const SIZE: usize = 64 << 20;
    let image = Image::build(Some(SIZE));
    let want = std::fs::read(image.src.join("large.bin")).unwrap();
    let timed_read = |path: &Path| {
        let mut file = File::open(path).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = Vec::with_capacity(SIZE);
        let started = Instant::now();
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let took = started.elapsed();
        assert!(got == want, "{}: contents", path.display());
        // Drop the kernel's page cache of the file for the next (warm-cache) read.
        nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        SIZE as f64 / took.as_secs_f64() / f64::from(1 << 20)
    };

    for round in 0..3 {
        let fuse_vol = image.volume(&format!("fuse-{round}"));
        let mut fuse = FuseMount::serve(
            image.dir.path().join(format!("fuse-mnt-{round}")),
            SessionConfig {
                threads: 2,
                stateless_dirs: true,
                ..SessionConfig::default()
            },
            |session| {
                Arc::new(HydrateFs::new(
                    fuse_vol,
                    session.dev().try_clone().unwrap(),
                    false,
                ))
            },
        );
        let cold = timed_read(&fuse.mountpoint.join("large.bin"));
        let warm = timed_read(&fuse.mountpoint.join("large.bin"));
        fuse.unmount();
        eprintln!(
            "round {round}: hydrate FUSE mount: cold {cold:.0} MiB/s, warm-cache {warm:.0} MiB/s"
        );

        // (direct I/O on the blob, erofs readahead in KiB: None keeps the kernel's 128)
        for (direct_io, readahead_kb) in [
            (true, None),
            (true, Some(1024)),
            (false, None),
            (false, Some(1024)),
        ] {
            let name = format!("kernel-{round}-{direct_io}-{}", readahead_kb.unwrap_or(0));
            let config = BlobFsConfig {
                direct_io,
                ..BlobFsConfig::default()
            };
            let kernel =
                KernelMode::start_with(&image, image.volume(&name), &name, config, readahead_kb);
            assert!(
                readahead_kb.is_none() || kernel.bdi.is_some(),
                "erofs bdi not found"
            );
            let cold = timed_read(&kernel.root().join("large.bin"));
            let warm = timed_read(&kernel.root().join("large.bin"));
            let reads = kernel.fs.stats().reads.load(Ordering::Relaxed);
            kernel.stop();
            eprintln!(
                "round {round}: erofs over BlobFs, direct_io {direct_io}, readahead {readahead_kb:?} KiB: \
                 cold {cold:.0} MiB/s, warm-cache {warm:.0} MiB/s, {reads} BlobFs reads"
            );
        }
    }
}
