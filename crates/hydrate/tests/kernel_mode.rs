//! `hydrate mount --kernel` end to end, with real processes and real mounts (root, /dev/fuse and erofs with
//! file-backed mounts required): the image appears as erofs on the mount point, its data comes from the
//! mount's private blob FUSE mount; the tree is exact, reads are lazy, failures fail closed, unmounting by any
//! means ends the daemon, and killing workers under verified readers fails no read.

mod common;

use common::*;
use hydrate_control::mount::kernel_blob_dir;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIG: u64 = 48 << 20;

/// A scratch dir with a source tree and its image `k:1` in a local store.
struct Env {
    s: Scratch,
    small_files: usize,
}

impl Env {
    fn new(small_files: usize) -> Env {
        assert!(
            fs::read_to_string("/proc/filesystems")
                .unwrap()
                .contains("erofs"),
            "this kernel has no erofs: kernel mode cannot be tested here"
        );
        let s = Scratch::new("hydrate-kernel");
        let src = s.p("src");
        make_tree(
            &src,
            &TreeSpec {
                small_files,
                big_file: None,
                depth: 12,
            },
        );
        write_random(&src.join("big"), BIG, 5);
        write_random(&src.join("mapped"), (3 << 20) + 123, 6);
        hydrate_ok(&[
            "build",
            &s.s("src"),
            "--store",
            &s.s("store"),
            "--tag",
            "k:1",
        ]);
        Env { s, small_files }
    }

    fn mount(&self, extra: &[&str]) -> Mount {
        let mut args = vec!["--kernel"];
        args.extend_from_slice(extra);
        Mount::new(
            &self.s.p("store"),
            "k:1",
            &self.s.p("mnt"),
            &self.s.p("cache"),
            &args,
        )
    }

    fn src(&self, rel: &str) -> PathBuf {
        self.s.p("src").join(rel)
    }
}

fn top_fs_type(mountpoint: &Path) -> Option<String> {
    hydrate_mountinfo::MountInfo::read_self()
        .unwrap()
        .top_at(mountpoint)
        .map(|m| m.fs_type.clone())
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The mount's daemon and its blob mount are gone, and nothing is left on the mount point.
fn assert_all_gone(m: &Mount, pid: i32) {
    let blob = kernel_blob_dir(&m.mountpoint, pid as u32);
    wait_until("daemon exit", Duration::from_secs(15), || !pid_alive(pid));
    assert_eq!(
        mounts_at(&m.mountpoint),
        0,
        "something left on the mount point"
    );
    assert_eq!(
        mounts_at(&blob),
        0,
        "blob FUSE mount left at {}",
        blob.display()
    );
    assert!(!blob.exists(), "blob directory {} left", blob.display());
}

/// Drops the page cache of `path` (erofs' copy), so the next read of it asks the blob again.
fn drop_pages(file: &File) {
    nix::fcntl::posix_fadvise(
        file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

#[test]
fn kernel_mount_is_an_exact_erofs_tree_with_status_and_unmounts() {
    let env = Env::new(300);
    let mut m = env.mount(&[]);
    let pid = m.pid.unwrap();
    assert_eq!(top_fs_type(&m.mountpoint).as_deref(), Some("erofs"));
    let blob = kernel_blob_dir(&m.mountpoint, pid as u32);
    let blob_mount = hydrate_mountinfo::MountInfo::read_self()
        .unwrap()
        .top_at(&blob)
        .cloned()
        .expect("the blob FUSE mount");
    assert_eq!(blob_mount.fs_type, "fuse.hydrate-blob");
    // nosuid and nodev as for a FUSE mount of the image; the tree keeps its modes and device numbers.
    let erofs = hydrate_mountinfo::MountInfo::read_self()
        .unwrap()
        .top_at(&m.mountpoint)
        .cloned()
        .unwrap();
    for opt in ["ro", "nosuid", "nodev"] {
        assert!(
            erofs.mount_options.iter().any(|o| o == opt),
            "{opt}: {erofs:?}"
        );
    }

    let compared = compare_trees(&env.s.p("src"), &m.mountpoint);
    assert!(compared > 300, "compared only {compared} paths");

    // Status and metrics answer at the user's mount point; the data came through BlobFs and the Volume.
    let info = mount_info(&m.mountpoint);
    let worker = info.worker.expect("the worker answers");
    assert_eq!(worker.cache_dir, m.cache_dir);
    assert!(worker.kernel);
    let status = hydrate_ok(&["status", m.mountpoint.to_str().unwrap()]);
    assert!(status.contains("\nmode=kernel\n"), "{status}");
    let metrics = m.metrics();
    assert!(metrics["blobfs_reads"] > 0, "{metrics:?}");
    assert_eq!(metrics["blobfs_failed_reads"], 0);
    assert!(metrics["fuse_requests_read"] > 0);
    assert!(metrics["store_bytes_read"] > 0);
    // erofs answers lookups itself: the blob filesystem saw one (of `blob`).
    assert!(metrics["fuse_requests_lookup"] <= 2, "{metrics:?}");

    hydrate_ok(&["umount", m.mountpoint.to_str().unwrap()]);
    m.pid = None;
    assert_all_gone(&m, pid);

    // A second mount reuses the metadata file (not rewritten) and the cache: no store reads for what was read.
    let metadata: Vec<PathBuf> = fs::read_dir(&m.cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".erofs-v"))
        .collect();
    assert_eq!(metadata.len(), 1, "{metadata:?}");
    let written = fs::metadata(&metadata[0]).unwrap().modified().unwrap();
    let m = env.mount(&[]);
    assert_eq!(
        fs::metadata(&metadata[0]).unwrap().modified().unwrap(),
        written
    );
    let before = m.metric("store_bytes_read");
    compare_trees(&env.s.p("src"), &m.mountpoint);
    assert_eq!(
        m.metric("store_bytes_read"),
        before,
        "cached data fetched again"
    );
}

#[test]
fn a_small_read_is_lazy_and_a_never_read_file_maps() {
    let env = Env::new(10);
    let m = env.mount(&[
        "--fill-budget",
        "0",
        "--readahead",
        "0",
        "--no-prefetch",
        "--dir-prefetch",
        "0",
    ]);
    assert_eq!(
        m.metric("store_range_requests"),
        0,
        "mount fetched file data"
    );
    let (requests, bytes) = assert_small_read_is_lazy(&m, "big", &env.src("big"), BIG / 2 + 777);
    eprintln!(
        "4 KiB read: {requests} store requests, {bytes} bytes, blob reads {}",
        m.metric("blobfs_reads")
    );

    // mmap of a file nobody read: page faults go erofs → blob → fetch.
    let want = fs::read(env.src("mapped")).unwrap();
    let file = File::open(m.path("mapped")).unwrap();
    // SAFETY: the mapping is read-only and the file is on a read-only mount nothing changes.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    assert_eq!(map.len(), want.len());
    let mut at = 0;
    while at < want.len() {
        let end = (at + (256 << 10)).min(want.len());
        assert!(map[at..end] == want[at..end], "mapped bytes differ at {at}");
        at = end;
    }
    drop(map);
    assert!(m.metric("store_bytes_read") > bytes + want.len() as u64 / 2);
}

#[test]
fn the_first_read_of_a_small_file_prefetches_its_directory() {
    let env = Env::new(60);
    let m = env.mount(&["--fill-budget", "0", "--elf-prefetch", "0"]);
    assert_eq!(m.metric("volume_dir_prefetch_windows"), 0);
    // Small files of `many` have their neighbours fetched when erofs first asks for one of them.
    // (f00000 is empty: erofs reads no data for it.)
    let first = fs::read(m.path("many/f00001")).unwrap();
    assert_eq!(first, fs::read(env.src("many/f00001")).unwrap());
    wait_until("directory prefetch", Duration::from_secs(10), || {
        m.metric("volume_dir_prefetch_chunks") > 0
    });
    assert!(m.metric("volume_dir_prefetch_windows") >= 1);
    // A neighbour is then read without fetching.
    let fetched = m.metric("store_range_requests");
    wait_until("prefetch done", Duration::from_secs(10), || {
        let before = m.metric("store_range_requests");
        std::thread::sleep(Duration::from_millis(200));
        m.metric("store_range_requests") == before
    });
    let before = m.metric("store_range_requests");
    assert!(before >= fetched);
    assert_eq!(
        fs::read(m.path("many/f00002")).unwrap(),
        fs::read(env.src("many/f00002")).unwrap()
    );
    assert_eq!(
        m.metric("store_range_requests"),
        before,
        "the neighbour was fetched again"
    );
}

#[test]
fn a_corrupt_store_fails_reads_with_eio_never_wrong_bytes() {
    let env = Env::new(10);
    // Flip a byte in the middle of every blob: every chunk read from them fails verification.
    for entry in fs::read_dir(env.s.p("store/blobs")).unwrap() {
        let path = entry.unwrap().path();
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let len = f.metadata().unwrap().len();
        let mut at = 4096;
        while at < len {
            let mut byte = [0u8];
            f.read_exact_at(&mut byte, at).unwrap();
            f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
            at += 64 << 10;
        }
    }
    let m = env.mount(&["--fill-budget", "0", "--read-deadline", "5s"]);
    let want = fs::read(env.src("big")).unwrap();
    let mut failed = 0;
    for round in 0..2 {
        for off in [0u64, BIG / 3, BIG - 5000] {
            match pread(&m.path("big"), off, 4096) {
                Ok(bytes) => assert_eq!(
                    bytes,
                    &want[off as usize..off as usize + bytes.len()],
                    "round {round}: wrong bytes at {off}"
                ),
                Err(err) => {
                    assert_eq!(err.raw_os_error(), Some(libc::EIO), "at {off}: {err}");
                    failed += 1;
                }
            }
        }
    }
    assert!(failed >= 4, "only {failed} reads of corrupt data failed");
    assert!(m.metric("blobfs_failed_reads") > 0);
    assert!(m.metric("fetch_verify_failures") > 0);
}

#[test]
fn a_plain_umount_ends_the_daemon_and_a_lazy_one_waits_for_open_files() {
    let env = Env::new(10);
    let mut m = env.mount(&[]);
    let pid = m.pid.unwrap();
    assert_eq!(fs::read(m.path("tiny")).unwrap(), b"x");
    run(std::process::Command::new("umount").arg(&m.mountpoint));
    m.pid = None;
    assert_all_gone(&m, pid);

    // umount -l with a file open: the daemon serves that file's unread data until it is closed.
    let mut m = env.mount(&[]);
    let pid = m.pid.unwrap();
    let held = File::open(m.path("big")).unwrap();
    run(std::process::Command::new("umount")
        .arg("-l")
        .arg(&m.mountpoint));
    m.pid = None;
    assert_eq!(mounts_at(&m.mountpoint), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        pid_alive(pid),
        "the daemon exited while a file of the detached mount is open"
    );
    let want = fs::read(env.src("big")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    held.read_exact_at(&mut buf, BIG - (1 << 20)).unwrap();
    assert!(
        buf == want[want.len() - (1 << 20)..],
        "detached mount read wrong bytes"
    );
    drop(held);
    assert_all_gone(&m, pid);
}

/// Reader threads verifying every byte until `stop`: random ranges of the big file (erofs' pages dropped
/// after each read, so every read asks the blob again), and whole small files.
fn start_readers(
    env: &Env,
    m: &Mount,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    let big = Arc::new(fs::read(env.src("big")).unwrap());
    let mut threads = Vec::new();
    for seed in 0..3u64 {
        let (stop, tally, big) = (stop.clone(), tally.clone(), big.clone());
        let path = m.path("big");
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng::new(seed + 1);
            let held = File::open(&path).expect("open big");
            while !stop.load(Ordering::Relaxed) {
                let len = 4096 + rng.below(512 << 10) as usize;
                let off = rng.below(BIG - len as u64);
                let mut buf = vec![0u8; len];
                let t = Instant::now();
                let got = held.read_exact_at(&mut buf, off).map(|()| buf);
                let took = t.elapsed();
                drop_pages(&held);
                let want = &big[off as usize..off as usize + len];
                tally.check(&format!("big at {off}+{len}"), got, want, took);
            }
        }));
    }
    {
        let (stop, tally) = (stop.clone(), tally.clone());
        let (dir, src) = (m.path("many"), env.src("many"));
        let files = env.small_files.min(40);
        threads.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("f{:05}", i % files);
                let want = fs::read(src.join(&name)).unwrap();
                let t = Instant::now();
                let got = File::open(dir.join(&name)).and_then(|mut f| {
                    let mut got = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut got)?;
                    drop_pages(&f);
                    Ok(got)
                });
                tally.check(&format!("many/{name}"), got, &want, t.elapsed());
                i += 1;
            }
        }));
    }
    threads
}

#[test]
fn killing_the_worker_repeatedly_under_verified_readers_fails_no_read() {
    let kills_wanted: u64 = std::env::var("HYDRATE_KERNEL_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let env = Env::new(40);
    // Store latency keeps reads in flight in the worker when it is killed.
    let m = env.mount(&["--test-store-latency-ms", "5", "--fill-budget", "0"]);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let readers = start_readers(&env, &m, &stop, &tally);
    let started = Instant::now();
    let mut rng = Rng::new(3);
    let mut kills = 0u64;
    while kills < kills_wanted {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "too slow: {kills} kills"
        );
        std::thread::sleep(Duration::from_millis(60 + rng.below(200)));
        let info = mount_info(&m.mountpoint);
        if !info.supervisor.worker_serving {
            continue;
        }
        let Some(pid) = info.supervisor.worker_pid else {
            continue;
        };
        let before = tally.get(&tally.reads);
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
        {
            kills += 1;
        }
        // Readers must get through between kills, or the kills only ever hit idle workers.
        wait_until(
            "readers progress after a kill",
            Duration::from_secs(30),
            || tally.get(&tally.reads) > before + 3,
        );
    }
    // And an upgrade (a planned hand-over) under the same readers.
    hydrate_ok(&["upgrade", m.mountpoint.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in readers {
        t.join().unwrap();
    }
    let info = mount_info(&m.mountpoint);
    let blocked = tally.slower_than(Duration::from_millis(50));
    tally.assert_clean(&format!(
        "kills={kills} restarts={} upgrades={} took={:?} reads over 50 ms={blocked}",
        info.supervisor.restarts,
        info.supervisor.upgrades,
        started.elapsed()
    ));
    assert!(info.supervisor.restarts >= kills, "{info:?}");
    assert_eq!(info.supervisor.upgrades, 1, "{info:?}");
    assert!(tally.get(&tally.reads) > kills * 3);
    // The kills hit readers: some reads waited for the next worker (and got the right bytes).
    assert!(blocked > 0, "no read was ever in flight during a kill");
}

#[test]
fn killing_every_hydrate_process_fails_uncached_reads_never_with_wrong_bytes() {
    let env = Env::new(10);
    let mut m = env.mount(&["--test-store-latency-ms", "50", "--fill-budget", "0"]);
    let pid = m.pid.unwrap();
    let worker = mount_info(&m.mountpoint).supervisor.worker_pid.unwrap() as i32;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let readers = start_readers(&env, &m, &stop, &tally);
    wait_until("cold reads under way", Duration::from_secs(30), || {
        tally.get(&tally.reads) >= 4
    });
    for p in [pid, worker] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_until(
        "supervisor and worker dead",
        Duration::from_secs(10),
        || !pid_alive(pid) && !pid_alive(worker),
    );
    // Readers keep going: what they read must be right or an error.
    wait_until("reads fail after the kill", Duration::from_secs(10), || {
        tally.get(&tally.failures) >= 3
    });
    stop.store(true, Ordering::Relaxed);
    for t in readers {
        t.join().unwrap();
    }
    eprintln!(
        "after SIGKILL of supervisor and worker: reads={} failures={} wrong={}",
        tally.get(&tally.reads),
        tally.get(&tally.failures),
        tally.get(&tally.wrong)
    );
    assert_eq!(tally.get(&tally.wrong), 0, "wrong bytes after SIGKILL");
    // A read of data never fetched fails (EIO, or ENOTCONN from the dead blob connection); never zeros.
    let err =
        pread(&m.path("mapped"), 1 << 20, 4096).expect_err("read of unfetched data succeeded");
    assert!(
        matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::ENOTCONN)),
        "{err}"
    );
    // Metadata is erofs' own: it still answers.
    assert_eq!(
        fs::metadata(m.path("mapped")).unwrap().len(),
        (3 << 20) + 123
    );
    // `hydrate umount` cleans up what the killed daemon left: erofs and the dead blob mount.
    hydrate_ok(&["umount", m.mountpoint.to_str().unwrap()]);
    m.pid = None;
    assert_all_gone(&m, pid);
}

#[test]
fn runc_runs_a_container_on_a_kernel_mode_rootfs() {
    let Some(runc) =
        hydrate_testkit::require_binary("runc", "runc_runs_a_container_on_a_kernel_mode_rootfs")
    else {
        return;
    };
    let s = Scratch::new("hydrate-kernel-runc");
    let root = s.p("root");
    hydrate_testkit::oci_image::host_program_rootfs(
        &root,
        &[Path::new("/bin/sh"), Path::new("/bin/cat")],
        &[],
    )
    .unwrap();
    write_random(&root.join("data.bin"), 5 << 20, 9);
    fs::write(root.join("hello.txt"), b"hello from erofs\n").unwrap();
    hydrate_ok(&[
        "build",
        &s.s("root"),
        "--store",
        &s.s("store"),
        "--tag",
        "r:1",
    ]);
    let bundle = s.p("bundle");
    hydrate_ok(&[
        "rootfs",
        "--kernel",
        "--store",
        &s.s("store"),
        "r:1",
        bundle.to_str().unwrap(),
        "--cache-dir",
        &s.s("cache"),
        "--",
        "/bin/sh",
        "-c",
        "cat /hello.txt && echo written > /new.txt && cat /new.txt && cat /data.bin > /copy.bin",
    ]);
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let out = hydrate(&["rootfs".as_ref(), "--remove".as_ref(), self.0.as_os_str()]);
            if !out.status.success() {
                eprintln!("cleanup: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    let guard = Remove(bundle.clone());
    // The lower is erofs, its metadata file in the cache directory.
    let erofs_in_cache = || {
        hydrate_mountinfo::MountInfo::read_self()
            .unwrap()
            .entries()
            .iter()
            .filter(|m| m.fs_type == "erofs" && m.source.starts_with(s.s("cache").as_str()))
            .count()
    };
    assert_eq!(erofs_in_cache(), 1, "no kernel-mode lower");
    let id = format!("hydrate-kernel-{}", std::process::id());
    let out = run(std::process::Command::new(&runc).args([
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        &id,
    ]));
    let _ = std::process::Command::new(&runc)
        .args(["delete", "-f", &id])
        .output();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from erofs\nwritten\n"
    );
    // The container's writes went to the upper directory, the lower's bytes came through erofs intact.
    let copy = fs::read(bundle.join(".hydrate/upper/copy.bin")).unwrap();
    assert!(
        copy == fs::read(root.join("data.bin")).unwrap(),
        "copied bytes differ"
    );
    drop(guard);
    assert_eq!(erofs_in_cache(), 0, "the erofs lower outlived --remove");
}

#[test]
fn a_stop_signal_or_an_abort_ends_a_kernel_mount_and_leaves_nothing() {
    let env = Env::new(10);
    let mut m = env.mount(&[]);
    let pid = m.pid.unwrap();
    assert_eq!(fs::read(m.path("tiny")).unwrap(), b"x");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    m.pid = None;
    assert_all_gone(&m, pid);

    // `hydrate abort` ends the blob connection: reads of uncached data fail, and the daemon cleans up.
    let mut m = env.mount(&["--fill-budget", "0"]);
    let pid = m.pid.unwrap();
    let out = hydrate_ok(&["abort", m.mountpoint.to_str().unwrap()]);
    assert!(out.contains("aborted"), "{out}");
    match pread(&m.path("big"), BIG / 2, 4096) {
        Ok(bytes) => panic!("read after abort returned {} bytes", bytes.len()),
        Err(err) => assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::EIO) | Some(libc::ENOTCONN) | Some(libc::ENOENT)
            ),
            "{err}"
        ),
    }
    m.pid = None;
    assert_all_gone(&m, pid);
}

#[test]
fn the_cache_quota_evicts_and_a_trace_records_in_kernel_mode() {
    let env = Env::new(10);
    let trace = env.s.p("kernel.trace");
    let mut m = env.mount(&[
        "--cache-size",
        "8M",
        "--fill-budget",
        "0",
        "--elf-prefetch",
        "0",
        "--record-trace",
        trace.to_str().unwrap(),
    ]);
    // The 48 MiB file against an 8 MiB quota: pinned while erofs reads it, so the cache overshoots.
    let big = fs::read(env.src("big")).unwrap();
    assert!(fs::read(m.path("big")).unwrap() == big, "big");
    assert!(m.metric("cache_used_bytes") > 8 << 20);
    // Once BlobFs has released its idle handle, the next write to the cache (reading `mapped` and `tiny`)
    // brings it under its quota by evicting `big`.
    std::thread::sleep(Duration::from_secs(3));
    for rel in ["mapped", "tiny"] {
        assert!(
            fs::read(m.path(rel)).unwrap() == fs::read(env.src(rel)).unwrap(),
            "{rel}"
        );
    }
    wait_until("cache under its quota", Duration::from_secs(10), || {
        m.metric("cache_used_bytes") <= 8 << 20
    });
    let metrics = m.metrics();
    eprintln!(
        "48 MiB read under an 8 MiB quota: evictions={} evicted bytes={} used={} store bytes={}",
        metrics["cache_evictions"],
        metrics["cache_evicted_bytes"],
        metrics["cache_used_bytes"],
        metrics["store_bytes_read"]
    );
    assert!(metrics["cache_evicted_bytes"] >= 40 << 20, "{metrics:?}");
    // Evicted data is fetched again when erofs asks for it (its pages dropped): the same bytes.
    let fetched = metrics["store_bytes_read"];
    let file = File::open(m.path("big")).unwrap();
    drop_pages(&file);
    let mut buf = vec![0u8; 1 << 20];
    file.read_exact_at(&mut buf, BIG / 2).unwrap();
    assert!(buf[..] == big[BIG as usize / 2..BIG as usize / 2 + (1 << 20)]);
    assert!(
        m.metric("store_bytes_read") > fetched,
        "evicted data was not fetched again"
    );
    drop(file);

    let pid = m.pid.unwrap();
    hydrate_ok(&["umount", m.mountpoint.to_str().unwrap()]);
    m.pid = None;
    assert_all_gone(&m, pid);
    // The trace names what the workload read, first touch first.
    let recorded = hydrate_core::read_trace(&trace).unwrap();
    let paths: Vec<String> = recorded
        .events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    let position = |name: &str| paths.iter().position(|p| p.trim_start_matches('/') == name);
    let (big, mapped, tiny) = (position("big"), position("mapped"), position("tiny"));
    assert!(
        big.is_some() && mapped.is_some() && tiny.is_some(),
        "trace: {paths:?}"
    );
    assert!(big < mapped && mapped < tiny, "trace order: {paths:?}");
}
