//! End-to-end tests of `hydrate build` + `hydrate mount` with real FUSE mounts (root and /dev/fuse required).

mod common;

use common::*;
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn build(src: &Path, store: &Path, tag: &str) -> String {
    hydrate_ok(&[
        "build",
        src.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--tag",
        tag,
    ])
}

/// Chunk map rows of a file from `hydrate inspect`: (file offset, plain len, stored len, blob prefix, blob offset).
fn chunk_map(store: &Path, image: &str, path: &str) -> Vec<(u64, u64, u64, String, u64)> {
    let out = hydrate_ok(&["inspect", "--store", store.to_str().unwrap(), image, path]);
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 6 || f[0].parse::<u64>().is_err() {
                return None;
            }
            Some((
                f[0].parse().ok()?,
                f[1].parse().ok()?,
                f[2].parse().ok()?,
                f[4].to_owned(),
                f[5].parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn whole_tree_is_exact_lazy_cached_and_passed_through() {
    let env = Scratch::new("hydrate-test");
    let (src, store) = (env.p("src"), env.p("store"));
    let big_len = (1u64 << 30) + 12_345;
    make_tree(
        &src,
        &TreeSpec {
            small_files: 3000,
            big_file: Some(big_len),
            depth: 40,
        },
    );
    build(&src, &store, "tree:1");

    // Mounting reads only the manifest (with the background fill off: this test is about what reads fetch).
    let m = Mount::new(
        &store,
        "tree:1",
        &env.p("mnt"),
        &env.p("cache"),
        &["--fill-budget", "0"],
    );
    let start = m.metrics();
    assert_eq!(start["store_range_requests"], 0, "mount fetched file data");

    // A 4 KiB read in the middle of the 1 GiB file moves at most a few chunks.
    assert_small_read_is_lazy(&m, "b/big.bin", &src.join("b/big.bin"), big_len / 2 + 777);

    // Every path, attribute, xattr and byte equals the source.
    let compared = compare_trees(&src, &m.mountpoint);
    assert!(compared > 3000, "compared only {compared} paths");
    let first = m.metrics();
    assert!(first["fuse_requests_read"] > 0);
    m.unmount();

    // Remount on the same cache: no store reads, and complete files are read by the kernel (passthrough).
    let m = Mount::new(&store, "tree:1", &env.p("mnt"), &env.p("cache"), &[]);
    let base = m.metrics();
    compare_trees(&src, &m.mountpoint);
    let end = m.metrics();
    assert_eq!(
        end["store_range_requests"], base["store_range_requests"],
        "cached data was fetched again"
    );
    assert_eq!(
        end["fuse_requests_read"], base["fuse_requests_read"],
        "complete files still caused READ upcalls"
    );
    assert!(
        end["fuse_passthrough_opens"] > 3000,
        "passthrough was not used"
    );
}

#[test]
fn corrupt_blob_fails_only_the_affected_chunk() {
    let env = Scratch::new("hydrate-test");
    let (src, store) = (env.p("src"), env.p("store"));
    fs::create_dir_all(&src).unwrap();
    write_random(&src.join("data"), 3 << 20, 99);
    fs::write(src.join("other"), b"untouched file").unwrap();
    build(&src, &store, "c:1");
    let chunks = chunk_map(&store, "c:1", "data");
    assert!(
        chunks.len() >= 4,
        "expected several chunks, got {}",
        chunks.len()
    );
    let (bad_off, bad_len, stored, blob_prefix, blob_off) = chunks[2].clone();
    let blob = fs::read_dir(store.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&blob_prefix)
        })
        .expect("blob file");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&blob)
        .unwrap();
    let at = blob_off + stored / 2;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    drop(f);

    let m = Mount::new(&store, "c:1", &env.p("mnt"), &env.p("cache"), &[]);
    let expected = fs::read(src.join("data")).unwrap();
    let bad = bad_off..bad_off + bad_len;
    for round in 0..2 {
        let mut page = 0;
        while page < expected.len() as u64 {
            let got = pread(&m.path("data"), page, 4096);
            let in_bad = bad.start < page + 4096 && page < bad.end;
            match got {
                Ok(bytes) => {
                    assert!(
                        !in_bad,
                        "round {round}: read of corrupt chunk at {page} succeeded"
                    );
                    let end = (page as usize + 4096).min(expected.len());
                    assert_eq!(
                        bytes,
                        &expected[page as usize..end],
                        "round {round}: wrong bytes at {page}"
                    );
                }
                Err(err) => {
                    assert!(
                        in_bad,
                        "round {round}: read at {page} outside the bad chunk failed: {err}"
                    );
                    assert_eq!(err.raw_os_error(), Some(libc::EIO));
                }
            }
            page += 4096;
        }
    }
    assert_eq!(fs::read(m.path("other")).unwrap(), b"untouched file");
    assert!(m.metric("volume_read_errors") > 0);
    m.unmount();
    let log = fs::read_to_string(env.p("cache/daemon.log")).unwrap();
    assert!(
        log.contains(&blob_prefix),
        "log does not name the blob:\n{log}"
    );
}

#[test]
fn damaged_manifests_are_refused_at_mount() {
    let env = Scratch::new("hydrate-test");
    let (src, store) = (env.p("src"), env.p("store"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"content").unwrap();
    let out = build(&src, &store, "m:1");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    let manifest = store.join("manifests").join(&id);
    let bytes = fs::read(&manifest).unwrap();

    // Truncated: the digest no longer matches.
    fs::write(&manifest, &bytes[..bytes.len() / 2]).unwrap();
    let err = Mount::try_new(&store, "m:1", &env.p("mnt"), &env.p("cache"), &[])
        .err()
        .expect("mount succeeded");
    assert!(
        err.contains("manifest") && err.contains("digest"),
        "unclear error: {err}"
    );
    assert!(!is_mounted(&fs::canonicalize(env.p("mnt")).unwrap()));

    // Garbage whose digest is right (a hostile store): the parser refuses it.
    let garbage = b"HYDRATE? this is not a manifest at all".repeat(10);
    let gid = blake3::hash(&garbage).to_hex().to_string();
    fs::write(store.join("manifests").join(&gid), &garbage).unwrap();
    let err = Mount::try_new(&store, &gid, &env.p("mnt"), &env.p("cache2"), &[])
        .err()
        .expect("mount succeeded");
    assert!(err.contains("manifest"), "unclear error: {err}");
    assert!(!is_mounted(&fs::canonicalize(env.p("mnt")).unwrap()));
}

#[test]
fn bad_arguments_get_clear_errors() {
    let env = Scratch::new("hydrate-test");
    fs::create_dir_all(env.p("src")).unwrap();
    fs::write(env.p("src/f"), b"x").unwrap();
    fs::write(env.p("file"), b"x").unwrap();
    let err = hydrate_err(&["build", &env.s("nope"), "--store", &env.s("store")]);
    assert!(err.contains("nope"), "{err}");
    let err = hydrate_err(&["build", &env.s("file"), "--store", &env.s("store")]);
    assert!(err.contains("not a directory"), "{err}");
    let err = hydrate_err(&[
        "build",
        &env.s("src"),
        "--store",
        &env.s("store"),
        "--blob-size",
        "12Q",
    ]);
    assert!(err.contains("12Q"), "{err}");
    let err = hydrate_err(&[
        "build",
        &env.s("src"),
        "--store",
        &env.s("store"),
        "--tag",
        "../evil",
    ]);
    assert!(err.contains("evil"), "{err}");
    let err = hydrate_err(&["build", &env.s("src"), "--store", "ftp://x/y"]);
    assert!(err.contains("ftp://x/y"), "{err}");
    build(&env.p("src"), &env.p("store"), "ok:1");
    let err = hydrate_err(&[
        "mount",
        "--store",
        &env.s("store"),
        "missing:1",
        &env.s("src"),
    ]);
    assert!(err.contains("missing:1"), "{err}");
    let err = hydrate_err(&["mount", "--store", &env.s("store"), "ok:1", &env.s("file")]);
    assert!(err.contains("not a directory"), "{err}");
    let err = hydrate_err(&[
        "inspect",
        "--store",
        &env.s("store"),
        "ok:1",
        "no/such/path",
    ]);
    assert!(err.contains("no/such/path"), "{err}");
    let err = hydrate_err(&["umount", &env.s("src")]);
    assert!(
        err.contains("src") && err.contains("is not a mount point"),
        "{err}"
    );
}

#[test]
fn cache_stays_within_quota() {
    let env = Scratch::new("hydrate-test");
    let (src, store) = (env.p("src"), env.p("store"));
    fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        write_random(&src.join(format!("f{i}")), 1 << 20, i);
    }
    build(&src, &store, "q:1");
    let m = Mount::new(
        &store,
        "q:1",
        &env.p("mnt"),
        &env.p("cache"),
        &["--cache-size", "4M"],
    );
    for i in 0..12 {
        let name = format!("f{i}");
        assert_eq!(
            fs::read(m.path(&name)).unwrap(),
            fs::read(src.join(&name)).unwrap()
        );
    }
    // Content still open is never evicted, and the kernel releases a closed file asynchronously: the last
    // files may hold the cache over its quota until the background flusher's next pass after their release.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut metrics = m.metrics();
    while metrics["cache_used_bytes"] > 4 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        metrics = m.metrics();
    }
    assert!(
        metrics["cache_used_bytes"] <= 4 << 20,
        "cache holds {} bytes",
        metrics["cache_used_bytes"]
    );
    assert!(metrics["cache_evictions"] > 0);
    // Evicted content is fetched again, correctly.
    assert_eq!(
        fs::read(m.path("f0")).unwrap(),
        fs::read(src.join("f0")).unwrap()
    );
}

#[test]
fn killed_daemon_leaves_a_consistent_cache() {
    let env = Scratch::new("hydrate-test");
    let (src, store) = (env.p("src"), env.p("store"));
    fs::create_dir_all(&src).unwrap();
    write_random(&src.join("big"), 64 << 20, 5);
    build(&src, &store, "k:1");
    let m = Mount::new(&store, "k:1", &env.p("mnt"), &env.p("cache"), &[]);
    let pid = m.pid.expect("daemon pid");
    let path = m.path("big");
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = std::thread::spawn({
        let read = read.clone();
        move || {
            let mut buf = vec![0u8; 1 << 20];
            if let Ok(mut f) = fs::File::open(&path) {
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    read.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    // Kill the daemon mid-stream: once part of the file was read (and cached), well before all of it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while read.load(std::sync::atomic::Ordering::Relaxed) < 4 << 20 {
        assert!(
            !reader.is_finished() && std::time::Instant::now() < deadline,
            "the reader ended or made no progress before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    reader.join().unwrap();
    drop(m); // detaches the dead mount
    let m = Mount::new(&store, "k:1", &env.p("mnt"), &env.p("cache"), &[]);
    assert!(
        fs::read(m.path("big")).unwrap() == fs::read(src.join("big")).unwrap(),
        "content differs after crash"
    );
}

#[test]
fn sigterm_unmounts_cleanly() {
    let env = Scratch::new("hydrate-test");
    fs::create_dir_all(env.p("src")).unwrap();
    fs::write(env.p("src/f"), b"x").unwrap();
    build(&env.p("src"), &env.p("store"), "t:1");
    let mut m = Mount::new(&env.p("store"), "t:1", &env.p("mnt"), &env.p("cache"), &[]);
    let pid = nix::unistd::Pid::from_raw(m.pid.take().unwrap());
    assert!(is_mounted(&m.mountpoint));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while nix::sys::signal::kill(pid, None).is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        nix::sys::signal::kill(pid, None).is_err(),
        "daemon still running after SIGTERM"
    );
    assert!(!is_mounted(&m.mountpoint), "still mounted after SIGTERM");
}

#[test]
fn builds_are_reproducible_and_dedup_across_images() {
    let env = Scratch::new("hydrate-test");
    // Two copies of one tree created in different orders build to the same image digest in separate stores.
    for (dir, order) in [("one", [0, 1, 2, 3]), ("two", [3, 1, 0, 2])] {
        let root = env.p(dir);
        fs::create_dir_all(root.join("sub")).unwrap();
        for i in order {
            write_random(&root.join(format!("sub/f{i}")), 300_000 + i * 1000, i);
            fs::write(root.join(format!("n{i}")), format!("file {i}")).unwrap();
        }
        for p in [
            "sub", "n0", "n1", "n2", "n3", "sub/f0", "sub/f1", "sub/f2", "sub/f3",
        ] {
            let t = filetime::FileTime::from_unix_time(1_700_000_000, 5);
            filetime::set_file_times(root.join(p), t, t).unwrap();
        }
        let t = filetime::FileTime::from_unix_time(1_700_000_000, 5);
        filetime::set_file_times(&root, t, t).unwrap();
    }
    let a = build(&env.p("one"), &env.p("store-a"), "r:1");
    let b = build(&env.p("two"), &env.p("store-b"), "r:1");
    let id = |out: &str| out.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(id(&a), id(&b), "same tree, different image digest");

    // A second image sharing most content stores only the new chunks.
    write_random(&env.p("one/sub/extra"), 200_000, 77);
    let c = build(&env.p("one"), &env.p("store-a"), "r:2");
    let stored = |out: &str| -> String { out.lines().nth(1).unwrap().to_owned() };
    assert!(stored(&c).contains("reused from the store"), "{c}");
    let new_bytes: u64 = fs::read_dir(env.p("store-a/blobs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        new_bytes < 1_500_000 + 300_000,
        "second image stored {new_bytes} bytes in all; no cross-image dedup"
    );
}

/// Resident memory of the mount's daemon (supervisor + worker) in KiB: (VmHWM peak, VmRSS now).
fn daemon_memory_kib(m: &Mount) -> (u64, u64) {
    let pids = [
        mount_info(&m.mountpoint).supervisor.pid as i32,
        mount_info(&m.mountpoint)
            .supervisor
            .worker_pid
            .expect("worker pid") as i32,
    ];
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
    };
    pids.iter().fold((0, 0), |(peak, rss), pid| {
        let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        (peak + field(&text, "VmHWM:"), rss + field(&text, "VmRSS:"))
    })
}

/// Reads `rel` through the mount and the source side by side in 1 MiB pieces and checks every byte.
fn read_and_compare(m: &Mount, src: &Path, rel: &str) {
    let (mut a, mut b) = (
        fs::File::open(m.path(rel)).unwrap(),
        fs::File::open(src.join(rel)).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let n = read_full(&mut a, &mut x);
        let k = read_full(&mut b, &mut y);
        assert_eq!(n, k, "{rel}: lengths differ at {at}");
        assert!(x[..n] == y[..k], "{rel}: bytes differ in the MiB at {at}");
        if n == 0 {
            break;
        }
        at += n as u64;
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]).unwrap() {
            0 => break,
            n => done += n,
        }
    }
    done
}

/// Issue 16: a cold sequential read of a large file, then parallel streams over other files, keep the daemon
/// (supervisor + worker) within `--memory-limit` plus its fixed buffers and code, and it gives the memory back
/// afterwards. Before the byte budget (and the allocator settings), one cold 1 GiB read left the worker at
/// ~150 MiB for good.
#[test]
fn daemon_memory_stays_within_the_memory_limit() {
    const MIB: u64 = 1024;
    let env = Scratch::new("hydrate-test");
    let (src, store) = (env.p("src"), env.p("store"));
    fs::create_dir_all(&src).unwrap();
    write_random(&src.join("big"), 768 << 20, 7);
    let streams = 4;
    for i in 0..streams {
        write_random(&src.join(format!("s{i}")), 128 << 20, 100 + i);
    }
    build(&src, &store, "mem:1");
    let limit_mib = 16;
    let m = Mount::new(
        &store,
        "mem:1",
        &env.p("mnt"),
        &env.p("cache"),
        &["--memory-limit", &format!("{limit_mib}M")],
    );
    let (_, idle) = daemon_memory_kib(&m);
    // Buffers that do not scale with the data read: FUSE request and reply buffers of the worker threads,
    // thread stacks, the runtime's and the allocator's own. Generous, but far below what an unbounded read
    // path holds.
    let bound = idle + limit_mib * MIB + 24 * MIB;

    read_and_compare(&m, &src, "big");
    let (peak, _) = daemon_memory_kib(&m);
    assert!(
        peak <= bound,
        "cold sequential read: daemon peak {peak} KiB over {bound} KiB (idle {idle} KiB, limit {limit_mib} MiB)"
    );

    std::thread::scope(|s| {
        for i in 0..streams {
            let (m, src) = (&m, &src);
            s.spawn(move || read_and_compare(m, src, &format!("s{i}")));
        }
    });
    let (peak, _) = daemon_memory_kib(&m);
    assert!(
        peak <= bound,
        "{streams} parallel streams: daemon peak {peak} KiB over {bound} KiB (idle {idle} KiB)"
    );
    let metrics = m.metrics();
    assert!(
        metrics["fetch_budget_peak_bytes"] <= limit_mib << 20,
        "the byte budget was exceeded: {}",
        metrics["fetch_budget_peak_bytes"]
    );

    // At rest again, the daemon returns to near its idle size.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut rss = daemon_memory_kib(&m).1;
    while rss > idle + 12 * MIB && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        rss = daemon_memory_kib(&m).1;
    }
    assert!(
        rss <= idle + 12 * MIB,
        "daemon keeps {rss} KiB after the reads (idle {idle} KiB)"
    );
}

/// Names (relative paths) and kinds of every entry below `root`, as listed by readdir.
fn listing(root: &Path) -> Vec<(std::path::PathBuf, bool)> {
    let mut out = Vec::new();
    walk(root, &mut |p, meta| {
        out.push((p.strip_prefix(root).unwrap().to_path_buf(), meta.is_dir()))
    });
    out
}

/// `(OPENDIR, RELEASEDIR, READDIR + READDIRPLUS)` served by the mount's current worker so far.
fn dir_upcalls(m: &Mount) -> (u64, u64, u64) {
    let c = m.metrics();
    (
        c["fuse_requests_opendir"],
        c["fuse_requests_releasedir"],
        c["fuse_requests_readdir"] + c["fuse_requests_readdirplus"],
    )
}

#[test]
fn directories_open_without_upcalls_across_takeovers() {
    let env = Scratch::new("hydrate-test");
    let (src, store) = (env.p("src"), env.p("store"));
    make_tree(
        &src,
        &TreeSpec {
            small_files: 300,
            big_file: None,
            depth: 12,
        },
    );
    fs::create_dir_all(src.join("later/x/y")).unwrap();
    for i in 0..150 {
        fs::write(src.join(format!("later/x/n{i:03}")), b"").unwrap();
    }
    build(&src, &store, "dirs:1");
    let m = Mount::new(
        &store,
        "dirs:1",
        &env.p("mnt"),
        &env.p("cache"),
        &["--dir-prefetch", "0"],
    );
    let mnt = m.mountpoint.clone();
    let in_src = |rel: &str| listing(&src.join(rel));
    let in_mnt = |rel: &str| listing(&mnt.join(rel));

    // The first walk: the kernel asks once whether directories need opening, is told no (ENOSYS), and never asks
    // again; the listings themselves are read once.
    compare_trees(&src.join("b"), &mnt.join("b"));
    let (opendir, releasedir, _) = dir_upcalls(&m);
    assert!(opendir <= 1, "{opendir} OPENDIRs on the first walk");
    assert_eq!(releasedir, 0, "RELEASEDIR without OPENDIR");
    assert_eq!(in_mnt("many"), in_src("many"));
    assert_eq!(in_mnt("deep"), in_src("deep"));
    let first = dir_upcalls(&m);
    assert_eq!(
        (first.0, first.1),
        (opendir, 0),
        "directories opened through the server"
    );
    // Walking again: no OPENDIR, no RELEASEDIR, and the contents are the same.
    for _ in 0..3 {
        assert_eq!(in_mnt("many"), in_src("many"));
        assert_eq!(in_mnt("deep"), in_src("deep"));
    }
    let again = dir_upcalls(&m);
    assert_eq!(
        (again.0, again.1),
        (opendir, 0),
        "a hot walk sent OPENDIR/RELEASEDIR"
    );
    // Listings stay cached in the kernel (unless something dropped the caches meanwhile, which other processes on
    // a shared machine do: then the listing is read again, still without OPENDIR).
    if again.2 != first.2 {
        eprintln!("hot walk re-read listings: {} -> {}", first.2, again.2);
    }

    // A new worker inherits the connection, not the kernel's question: it is never asked to open a directory,
    // and serves listings it was never asked for before (fh 0), with a directory kept open across the upgrade.
    let held = fs::read_dir(mnt.join("deep")).unwrap();
    hydrate_ok(&["upgrade", mnt.to_str().unwrap()]);
    assert_eq!(mount_info(&mnt).supervisor.generation, 2);
    assert_eq!(in_mnt("later"), in_src("later"));
    assert_eq!(compare_trees(&src, &mnt), in_src("").len());
    let names: Vec<_> = held.map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), fs::read_dir(src.join("deep")).unwrap().count());
    let after_upgrade = dir_upcalls(&m);
    assert!(after_upgrade.2 > 0, "the new worker served no listing");
    assert_eq!(
        (after_upgrade.0, after_upgrade.1),
        (0, 0),
        "the new worker was asked to open or release a directory"
    );

    // Same after a crash of the worker.
    let worker = mount_info(&mnt).supervisor.worker_pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !mount_info(&mnt).supervisor.worker_serving
        || mount_info(&mnt).supervisor.worker_pid == Some(worker)
    {
        assert!(std::time::Instant::now() < deadline, "no worker restarted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(compare_trees(&src, &mnt), in_src("").len());
    let after_crash = dir_upcalls(&m);
    assert_eq!((after_crash.0, after_crash.1), (0, 0));
    m.unmount();
}

/// A full disk under the log file costs log lines, never reads: the daemon logs every request (-vv) into a
/// file on a 64 KiB tmpfs that fills at once, and every file still reads right, from one worker that never
/// restarted. (The log subscriber used to report a failed write with eprintln!, which panics when stderr is
/// that same full file: a FUSE thread died and the mount hung.)
#[test]
fn a_full_log_disk_costs_log_lines_not_reads() {
    let env = Scratch::new("hydrate-test");
    let (src, store) = (env.p("src"), env.p("store"));
    fs::create_dir_all(&src).unwrap();
    for i in 0..20 {
        write_random(&src.join(format!("f{i}")), 512 << 10, 300 + i);
    }
    build(&src, &store, "log:1");
    let logs = env.p("logs");
    fs::create_dir_all(&logs).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &logs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(logs.clone());
    // Full before the daemon starts: every line it logs fails to be written.
    let filler = logs.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut f, &[0u8; 4096]).is_ok() {}
    drop(f);
    let log = logs.join("daemon.log");
    let m = Mount::new(
        &store,
        "log:1",
        &env.p("mnt"),
        &env.p("cache"),
        &[
            "-vv",
            "--log-file",
            log.to_str().unwrap(),
            "--fill-budget",
            "0",
        ],
    );
    for i in 0..20 {
        let name = format!("f{i}");
        assert_eq!(
            fs::read(m.path(&name)).unwrap(),
            fs::read(src.join(&name)).unwrap(),
            "{name}"
        );
    }
    let free = nix::sys::statvfs::statvfs(&logs).unwrap();
    assert!(
        free.blocks_available() == 0,
        "the log's disk is not full: the test proves nothing"
    );
    let info = mount_info(&m.mountpoint);
    assert_eq!(info.supervisor.restarts, 0, "the worker died: {info:?}");
    assert_eq!(info.supervisor.generation, 1);
    m.unmount();
}
