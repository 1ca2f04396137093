//! End-to-end tests of `hydrate hsm` with real fanotify pre-content events on a real file system (ext4: the root
//! file system, or small ext4 images the tests format and loop-mount; with `HYDRATE_HSM_FS=xfs` or `btrfs`,
//! loop-mounted images of that type, see `support::FsKind`), the real `hydrate` binary, and the real
//! tools users run on stubs (cp, tar -S, rsync -S, sha256sum, dd, truncate).
//!
//! The test process itself is configured as a *lazy reader* (its opens of stubs recall by range, not whole),
//! so pread/mmap/O_DIRECT/sendfile here exercise partial recall while every other program exercises the
//! whole-file recall on open that closes the hole-skipping hazard. Needs root and Linux 6.14+; every daemon,
//! loop device and mount is cleaned up by guards, also when a test fails.

mod fdstore;
mod support;
mod thousand;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hydrate_format::oci::sha256_digest;
use hydrate_hsm::{call, Request, Residency};
use hydrate_testkit::rng::{random_bytes, text_bytes};
use support::*;

/// Every test here needs root; without it they skip (or fail under `HYDRATE_REQUIRE_SERVERS`), by testkit's one
/// skip policy.
macro_rules! require_root {
    () => {
        hydrate_testkit::require_root!("fanotify pre-content events, loop-mounted file systems")
    };
}

#[test]
fn thousand_files_local_store() {
    require_root!();
    let dir = TestDir::new();
    let store = dir.path().join("store");
    thousand::thousand_files(store.to_str().unwrap(), &dir.path().join("data"), 2 << 20);
}

#[test]
fn thousand_files_garage_store() {
    require_root!();
    let Some(garage) = garage() else { return };
    let dir = TestDir::new();
    let store = garage.store_addr(0, "hsm-thousand");
    thousand::thousand_files(&store, &dir.path().join("data"), 1 << 20);
}

/// Zeros hazard 2. First the fact: lseek(SEEK_DATA) on a stub raises no event and finds no data, so a
/// hole-skipping copier would write zeros without reading. Then the cure: such tools open the file, and the
/// open recalls it whole before they can look for holes.
#[test]
fn hole_skipping_tools_get_real_bytes() {
    require_root!();
    let (_dir, root, hsm) = local_hsm("30s");
    let want = random_bytes(7, 3 << 20);
    for name in ["a", "b", "c", "d", "e"] {
        std::fs::write(root.join(name), &want).unwrap();
    }
    hsm.archive_and_release();
    assert_eq!(
        std::fs::metadata(root.join("a")).unwrap().blocks(),
        0,
        "a released stub holds no block"
    );

    let before = hsm.counters();
    let f = File::open(root.join("a")).unwrap(); // lazy reader: no recall at open
    let r = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(
        (r, errno),
        (-1, Some(libc::ENXIO)),
        "SEEK_DATA sees only holes in a stub"
    );
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(hole, 0);
    let after = hsm.counters();
    let range_events = |s: &str| {
        s.split("range ")
            .nth(1)
            .and_then(|t| t.split(')').next())
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        range_events(&before),
        range_events(&after),
        "lseek raised a pre-content event"
    );
    drop(f);

    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    sh("cp", &[root.join("a").as_os_str(), o.join("a").as_os_str()]);
    sh(
        "cp",
        &[
            "--sparse=always".as_ref(),
            root.join("b").as_os_str(),
            o.join("b").as_os_str(),
        ],
    );
    sh(
        "tar",
        &[
            "-S".as_ref(),
            "-cf".as_ref(),
            o.join("c.tar").as_os_str(),
            "-C".as_ref(),
            root.as_os_str(),
            "c".as_ref(),
        ],
    );
    sh(
        "tar",
        &[
            "-xf".as_ref(),
            o.join("c.tar").as_os_str(),
            "-C".as_ref(),
            o.as_os_str(),
        ],
    );
    sh(
        "rsync",
        &[
            "-S".as_ref(),
            root.join("d").as_os_str(),
            o.join("d").as_os_str(),
        ],
    );
    sh(
        "cp",
        &[
            "--reflink=auto".as_ref(),
            root.join("e").as_os_str(),
            o.join("e").as_os_str(),
        ],
    );
    for name in ["a", "b", "c", "d", "e"] {
        assert!(
            std::fs::read(o.join(name)).unwrap() == want,
            "{name}: copy differs from the original"
        );
        assert_eq!(
            hsm.state(name),
            Residency::Archived,
            "{name} recalled whole and identical to its archive"
        );
    }
}

/// The negative control of hazard 2: with `cp` declared a lazy reader (its open recalls nothing), cp of a
/// stub finds no data with SEEK_DATA and writes zeros. This is what the whole-file recall on open prevents,
/// and shows the test above can fail.
#[test]
fn hazard_2_is_real_without_open_recall() {
    require_root!();
    let dir = TestDir::new();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    let cp = std::fs::canonicalize("/usr/bin/cp").unwrap();
    hydrate(&[
        "hsm".as_ref(),
        "init".as_ref(),
        root.as_os_str(),
        "--store".as_ref(),
        dir.path().join("store").as_os_str(),
        "--lazy-reader".as_ref(),
        cp.as_os_str(),
    ]);
    let hsm = Hsm::start(&root);
    let want = random_bytes(8, 1 << 20);
    std::fs::write(root.join("a"), &want).unwrap();
    hsm.archive_and_release();
    let out = tempfile::tempdir().unwrap();
    sh(
        "cp",
        &[root.join("a").as_os_str(), out.path().join("a").as_os_str()],
    );
    let copy = std::fs::read(out.path().join("a")).unwrap();
    assert_eq!(copy.len(), want.len());
    assert!(
        copy.iter().all(|b| *b == 0),
        "cp skipped the holes of the stub: all zeros, no read"
    );
    assert_eq!(hsm.state("a"), Residency::Released, "nothing was recalled");
}

/// Zeros hazard 1: kill -9 of the worker while readers wait for recalls and while a release runs. The
/// holder keeps the group: readers stay blocked, the next worker answers their events, nobody sees zeros.
#[test]
fn worker_killed_during_recalls_and_release() {
    require_root!();
    let Some(garage) = garage() else { return };
    let s3 = garage.nodes()[0].s3_addr;
    let proxy = hydrate_testkit::proxy::FaultProxy::start(s3).unwrap();
    let store = garage.store_addr_at(&proxy.url(), "hsm-kill");
    let dir = TestDir::new();
    let root = dir.path().join("data");
    let hsm = Hsm::init(&root, &store, "60s");
    let n = 16;
    let len = 2 << 20;
    for i in 0..n {
        std::fs::write(root.join(format!("f{i}")), random_bytes(100 + i, len)).unwrap();
    }
    hsm.archive_and_release();
    let sums: Vec<String> = (0..n)
        .map(|i| sha256_digest(&random_bytes(100 + i, len)))
        .collect();

    // A slow link: every recall takes a while, so the kill lands while readers wait.
    proxy.faults().set_latency(Duration::from_millis(150));
    proxy.faults().set_bandwidth(Some(8 << 20));
    let events_before = hsm.events();
    let readers: Vec<_> = (0..n)
        .map(|i| {
            let path = root.join(format!("f{i}"));
            if i % 2 == 0 {
                // Whole-file recall on open (not a lazy reader).
                Command::new("sha256sum")
                    .arg(&path)
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            } else {
                // dd: also recalled whole at open, then read in 1 MiB blocks.
                Command::new("dd")
                    .args([
                        format!("if={}", path.display()),
                        "of=/dev/null".into(),
                        "bs=1M".into(),
                    ])
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            }
        })
        .collect();
    // Lazy range readers in this process too.
    let lazy: Vec<_> = (0..4u64)
        .map(|i| {
            let path = root.join(format!("f{}", i * 4 + 1));
            std::thread::spawn(move || {
                let f = File::open(&path).unwrap();
                let mut buf = vec![0u8; 100_000];
                let off = 700_000 + i * 1000;
                f.read_exact_at(&mut buf, off).unwrap();
                (i * 4 + 1, off, buf)
            })
        })
        .collect();
    // Kill the worker once every reader's access has reached it (and waits for its slow recall).
    let deadline = Instant::now() + Duration::from_secs(30);
    while hsm.events() < events_before + n + lazy.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "the readers' events did not reach the worker: {}",
            hsm.counters()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let old = hsm.kill_worker();
    hsm.wait_ready(Some(old));
    for (i, mut child) in readers.into_iter().enumerate() {
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "reader of f{i} failed after the worker was killed"
        );
        if i % 2 == 0 {
            let mut s = String::new();
            child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
            assert_eq!(
                format!("sha256:{}", s.split_whitespace().next().unwrap()),
                sums[i],
                "f{i} read wrong bytes across the kill"
            );
        }
    }
    for t in lazy {
        let (i, off, buf) = t.join().unwrap();
        let want = random_bytes(100 + i, len);
        assert!(
            buf == want[off as usize..off as usize + buf.len()],
            "lazy read of f{i} wrong across the kill"
        );
    }
    let counters = hsm.counters();
    assert!(
        !counters.contains("replayed after restart 0"),
        "no event was handed over: {counters}"
    );

    // Now a kill in the middle of a release of everything.
    proxy.faults().clear();
    hsm.ok(Request::Recall(vec![hsm.root.clone()]));
    let layout = hsm.layout();
    let root2 = hsm.root.clone();
    let release = std::thread::spawn(move || call(&layout, &Request::Release(vec![root2])));
    std::thread::sleep(Duration::from_millis(60));
    let old = hsm.kill_worker();
    let _ = release.join();
    hsm.wait_ready(Some(old));
    let states = hsm.status();
    let log = hsm.ok(Request::Log(0)).log;
    for s in states.values() {
        let history: Vec<_> = log
            .iter()
            .filter(|e| e.path == s.path)
            .map(|e| (&e.op, &e.detail))
            .collect();
        assert!(
            matches!(residency(s), Residency::Archived | Residency::Released),
            "{s:?}: {history:#?}"
        );
    }
    for i in 0..n {
        assert_eq!(
            sha256sum(&root.join(format!("f{i}"))),
            sums[i as usize],
            "f{i} after release crash"
        );
    }
}

/// Holder death: the worker still holds the group, reads it directly from then on, and keeps every stub
/// protected while it lives.
#[test]
fn holder_killed_worker_keeps_serving() {
    require_root!();
    let (_dir, root, mut hsm) = local_hsm("30s");
    let want = random_bytes(31, 700_000);
    for name in ["a", "b"] {
        std::fs::write(root.join(name), &want).unwrap();
    }
    hsm.archive_and_release();
    let worker = hsm.worker_pid();
    hsm.kill_holder();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(hsm.worker_pid(), worker, "the worker survives its holder");
    let out = tempfile::tempdir().unwrap();
    sh(
        "cp",
        &[root.join("a").as_os_str(), out.path().join("a").as_os_str()],
    );
    assert!(
        std::fs::read(out.path().join("a")).unwrap() == want,
        "cp after the holder died"
    );
    let f = File::open(root.join("b")).unwrap();
    let mut buf = vec![0u8; 50_000];
    f.read_exact_at(&mut buf, 600_000).unwrap();
    assert!(
        buf == want[600_000..650_000],
        "lazy read after the holder died"
    );
    assert_eq!(hsm.state("b"), Residency::Partial);
}

/// A file name that is not UTF-8 (a directory may hold any bytes): archived, released to a stub, recalled
/// with its exact bytes, and named in the audit log (journal version 1 could not record it at all).
#[test]
fn a_name_that_is_not_utf8_is_archived_released_and_recalled() {
    require_root!();
    use std::os::unix::ffi::OsStrExt;
    let (_dir, root, hsm) = local_hsm("30s");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let path = root.join(name);
    let want = content(41, 300_000, false);
    std::fs::write(&path, &want).unwrap();
    hsm.archive_and_release();
    assert_eq!(
        std::fs::metadata(&path).unwrap().blocks(),
        0,
        "released to a stub"
    );
    assert!(std::fs::read(&path).unwrap() == want, "recalled bytes");
    let log = hsm.ok(Request::Log(0)).log;
    let ops: Vec<&str> = log
        .iter()
        .filter(|e| e.path == Path::new("caf\u{fffd}"))
        .map(|e| e.op.as_str())
        .collect();
    assert_eq!(ops, ["archive", "release", "recall"], "{log:#?}");
    // The status of the tree names it too (the reply carries text: U+FFFD in place of the bad byte).
    let status = hsm.ok(Request::Status(vec![root.clone()]));
    assert!(
        status
            .files
            .iter()
            .any(|f| f.path.ends_with("caf\u{fffd}") && f.state == Residency::Archived),
        "{:#?}",
        status.files
    );
}

/// Store unreachable: the reader gets EIO within the deadline, the stub stays; later the read succeeds.
#[test]
fn store_unreachable_gives_eio_then_success() {
    require_root!();
    let Some(garage) = garage() else { return };
    let proxy = hydrate_testkit::proxy::FaultProxy::start(garage.nodes()[0].s3_addr).unwrap();
    let store = garage.store_addr_at(&proxy.url(), "hsm-eio");
    let dir = TestDir::new();
    let root = dir.path().join("data");
    let hsm = Hsm::init(&root, &store, "2s");
    let want = random_bytes(3, 1 << 20);
    std::fs::write(root.join("f"), &want).unwrap();
    hsm.archive_and_release();

    proxy.faults().set_stall(true);
    let start = Instant::now();
    let err = std::fs::read(root.join("f")).unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took < Duration::from_secs(6),
        "EIO came after {took:?}, deadline is 2s"
    );
    assert_eq!(hsm.state("f"), Residency::Released, "the stub stays intact");
    assert_eq!(
        std::fs::metadata(root.join("f")).unwrap().len(),
        want.len() as u64
    );

    proxy.faults().set_stall(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        match std::fs::read(root.join("f")) {
            Ok(b) => break b,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying after {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("no success after the store came back: {e}"),
        }
    };
    assert!(got == want);
}

/// Disk full during recall: ENOSPC to the reader, stub intact, correct bytes once there is room.
#[test]
fn disk_full_during_recall_gives_enospc() {
    require_root!();
    let fs = LoopFs::new(FsKind::under_test(), 32).expect("loop-mounted file system");
    let store = tempfile::tempdir().unwrap();
    let root = fs.mnt.join("data");
    let hsm = Hsm::init(&root, store.path().to_str().unwrap(), "30s");
    let want = random_bytes(11, 12 << 20);
    std::fs::write(root.join("big"), &want).unwrap();
    hsm.archive_and_release();
    // Fill the file system (as root, reserved blocks included).
    let filler = fs.mnt.join("filler");
    let mut f = File::create(&filler).unwrap();
    let block = vec![1u8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    drop(f);

    let err = std::fs::read(root.join("big")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let lazy = File::open(root.join("big")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let err = lazy.read_exact_at(&mut buf, 5 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let st = &hsm.status()[Path::new("big")];
    assert!(
        matches!(residency(st), Residency::Released | Residency::Partial),
        "{st:?}"
    );
    assert!(st.local_bytes < want.len() as u64);

    std::fs::remove_file(&filler).unwrap();
    lazy.read_exact_at(&mut buf, 5 << 20).unwrap();
    assert!(buf == want[5 << 20..6 << 20]);
    assert!(std::fs::read(root.join("big")).unwrap() == want);
}

/// Writes and truncates of stubs: the affected data is made local first, the final content is right.
#[test]
fn writes_and_truncates_into_released_files() {
    require_root!();
    let (_dir, root, hsm) = local_hsm("30s");
    let orig = text_bytes(21, 1_500_000);
    for name in ["lazy", "dd", "trunc", "otrunc"] {
        std::fs::write(root.join(name), &orig).unwrap();
    }
    hsm.archive_and_release();

    // A lazy writer: pwrite into the middle recalls only around the write first.
    let f = File::options().write(true).open(root.join("lazy")).unwrap();
    f.write_all_at(b"HELLO, STUB", 700_001).unwrap();
    drop(f);
    assert_eq!(hsm.state("lazy"), Residency::Partial);
    let mut want = orig.clone();
    want[700_001..700_012].copy_from_slice(b"HELLO, STUB");
    assert!(
        std::fs::read(root.join("lazy")).unwrap() == want,
        "lazy write"
    );
    assert_eq!(hsm.state("lazy"), Residency::Local, "changed since archive");
    let r = hsm.req(Request::Release(vec![root.join("lazy")]));
    assert!(
        !r.ok && r.lines.iter().any(|l| l.contains("archive it again")),
        "{:?}",
        r.lines
    );

    // dd (not lazy): whole recall at open, then the write.
    sh(
        "dd",
        &[
            format!("of={}", root.join("dd").display()).as_ref(),
            "bs=1".as_ref(),
            "seek=300000".as_ref(),
            "conv=notrunc".as_ref(),
            "status=none".as_ref(),
            "if=/proc/self/cmdline".as_ref(),
            "count=8".as_ref(),
        ],
    );
    let got = std::fs::read(root.join("dd")).unwrap();
    assert!(
        got[..300_000] == orig[..300_000] && got[300_008..] == orig[300_008..],
        "dd write"
    );

    // Truncate down then up (lazy): the kept part is the archive's, the regrown part zeros.
    let f = File::options()
        .write(true)
        .open(root.join("trunc"))
        .unwrap();
    f.set_len(400_000).unwrap();
    f.set_len(600_000).unwrap();
    drop(f);
    let got = std::fs::read(root.join("trunc")).unwrap();
    assert_eq!(got.len(), 600_000);
    assert!(
        got[..400_000] == orig[..400_000] && got[400_000..].iter().all(|b| *b == 0),
        "truncate"
    );

    // open(O_TRUNC) raises no pre-content event: the new content must never be overwritten by a recall.
    let mut f = File::options()
        .write(true)
        .truncate(true)
        .open(root.join("otrunc"))
        .unwrap();
    f.write_all(b"new content").unwrap();
    drop(f);
    assert_eq!(std::fs::read(root.join("otrunc")).unwrap(), b"new content");
}

/// Owners, modes, xattrs and ACLs survive release and recall.
#[test]
fn metadata_is_kept() {
    require_root!();
    let (_dir, root, hsm) = local_hsm("30s");
    let p = root.join("m");
    std::fs::write(&p, random_bytes(5, 200_000)).unwrap();
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    xattr::set(&p, "user.note", b"keep me").unwrap();
    sh(
        "setfacl",
        &["-m".as_ref(), "u:4321:r".as_ref(), p.as_os_str()],
    );
    let acl = sh("getfacl", &["-n".as_ref(), p.as_os_str()]);
    let snapshot = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        let mut names: Vec<_> = xattr::list(p)
            .unwrap()
            .filter(|n| n != "trusted.hydrate.hsm")
            .collect();
        names.sort();
        (
            m.uid(),
            m.gid(),
            m.mode(),
            m.mtime(),
            names,
            xattr::get(p, "user.note").unwrap(),
        )
    };
    let before = snapshot(&p);
    hsm.ok(Request::Archive(vec![p.clone()]));
    hsm.ok(Request::Release(vec![p.clone()]));
    assert_eq!(hsm.state("m"), Residency::Released);
    assert_eq!(snapshot(&p), before, "after release");
    assert!(
        xattr::get(&p, "trusted.hydrate.hsm").unwrap().is_some(),
        "stub record on the file"
    );
    assert_eq!(sh("getfacl", &["-n".as_ref(), p.as_os_str()]), acl);
    std::fs::read(&p).unwrap();
    assert_eq!(snapshot(&p), before, "after recall");
    assert_eq!(sh("getfacl", &["-n".as_ref(), p.as_os_str()]), acl);
    assert!(
        xattr::get(&p, "trusted.hydrate.hsm").unwrap().is_none(),
        "stub record removed when complete"
    );
}

/// The journal makes archives incremental and auditable; changed files are never released.
#[test]
fn journal_is_incremental_and_auditable() {
    require_root!();
    let (_dir, root, hsm) = local_hsm("30s");
    for i in 0..5 {
        std::fs::write(root.join(format!("f{i}")), random_bytes(i, 300_000)).unwrap();
    }
    assert_eq!(
        hsm.ok(Request::Archive(vec![hsm.root.clone()]))
            .archive
            .unwrap()
            .archived,
        5
    );
    std::fs::write(root.join("f2"), random_bytes(99, 300_000)).unwrap();
    // chmod only: still releasable (content digest unchanged).
    std::fs::set_permissions(root.join("f3"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = hsm.req(Request::Release(vec![hsm.root.clone()]));
    assert!(!r.ok, "the modified file must be refused");
    assert_eq!(hsm.state("f2"), Residency::Local);
    assert_eq!(hsm.state("f3"), Residency::Released);
    let again = hsm
        .ok(Request::Archive(vec![hsm.root.clone()]))
        .archive
        .unwrap();
    assert_eq!((again.archived, again.unchanged), (1, 4));
    std::fs::read(root.join("f3")).unwrap();
    let log = hsm.ok(Request::Log(0)).log;
    let ops: Vec<&str> = log.iter().map(|e| e.op.as_str()).collect();
    for op in ["archive", "release", "recall", "changed"] {
        assert!(ops.contains(&op), "no {op} in the log: {ops:?}");
    }
    assert!(log
        .iter()
        .any(|e| e.op == "archive" && e.detail.contains("digest ")));
    // The journal survives a restart of the whole daemon, and a stub renamed while no daemon ran is found
    // again by its file handle and re-marked.
    hsm.ok(Request::Release(vec![root.join("f4")]));
    drop(hsm);
    std::fs::rename(root.join("f4"), root.join("g4")).unwrap();
    let hsm = Hsm::start(&root);
    assert_eq!(hsm.state("f3"), Residency::Archived);
    assert_eq!(hsm.state("g4"), Residency::Released);
    assert!(std::fs::read(root.join("g4")).unwrap() == random_bytes(4, 300_000));
    assert!(hsm.ok(Request::Log(0)).log.len() >= log.len());
}

/// Only root can configure: the control socket refuses anyone else.
#[test]
fn only_root_configures() {
    require_root!();
    let (dir, root, hsm) = local_hsm("30s");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("f"), b"x").unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "hsm",
            "archive",
        ])
        .arg(root.join("f"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only root"),
        "{out:?}"
    );
    assert_eq!(hsm.state("f"), Residency::Local);
}

/// The watermark policy on a small file system of the kind under test: above 90% it releases the coldest archived
/// files down to 75%, never a pinned, unarchived or recently used file, and no more than it needs (on btrfs a
/// release frees its space only when the transaction commits).
#[test]
fn policy_brings_usage_under_the_low_watermark() {
    require_root!();
    let small = SmallFs::new(64);
    let (root, hsm) = (&small.root, &small.hsm);
    let usage = || small.usage();
    let put = |name: &str, seed: u64, old: bool| small.put(name, seed, if old { 60 } else { 0 });
    put("pinned", 1, true);
    put("unarchived", 2, true);
    put("recent", 3, false);
    let mut i = 0;
    while usage() < 93.0 {
        put(&format!("cold{i}"), 10 + i, true);
        i += 1;
    }
    for p in std::fs::read_dir(root).unwrap() {
        let p = p.unwrap().path();
        if p.file_name().unwrap() != "unarchived" && p.file_name().unwrap() != ".hydrate-hsm" {
            hsm.ok(Request::Archive(vec![p]));
        }
    }
    hsm.ok(Request::Pin(vec![root.join("pinned")]));
    let before = usage();
    assert!(before > 90.0, "{before}");
    // Release only what is archived: the unarchived file must stay (archive-first has its own test).
    let out = policy(
        root,
        &[
            "--high",
            "90%",
            "--low",
            "75%",
            "--min-age",
            "30d",
            "--archive-budget",
            "0",
        ],
    );
    let after = usage();
    assert!(after <= 75.0, "usage {before:.1}% -> {after:.1}%: {out}");
    // No more than needed: one file's worth under the watermark, with a file's worth of slack for metadata.
    let one_file = small.one_file_percent();
    assert!(
        after >= 75.0 - 2.0 * one_file,
        "released more than needed: usage {before:.1}% -> {after:.1}% (a file is {one_file:.1}%): {out}"
    );
    assert_eq!(hsm.state("pinned"), Residency::Archived);
    assert_eq!(hsm.state("unarchived"), Residency::Local);
    assert_eq!(hsm.state("recent"), Residency::Archived);
    let released = hsm
        .status()
        .values()
        .filter(|s| residency(s) == Residency::Released)
        .count();
    assert!(released > 0 && released <= i as usize);
    // Under the watermark, a second run does nothing.
    let out = policy(root, &["--high", "90%", "--low", "75%"]);
    assert!(out.contains("nothing to do"), "{out}");
}

/// Reflinks (btrfs, xfs): a file whose extents are shared with another file is not released — punching its holes
/// would free nothing while the copy keeps the extents, and a recall would un-share it — and the refusal says
/// so; once the sharing ends, it is released. On a file system without reflinks (ext4) there is nothing to
/// share: `cp --reflink=always` fails there, and that is checked instead.
#[test]
fn reflinked_files_are_not_released() {
    require_root!();
    let (_dir, root, hsm) = local_hsm("30s");
    let want = random_bytes(21, 8 << 20);
    std::fs::write(root.join("a"), &want).unwrap();
    let reflink = Command::new("cp")
        .arg("--reflink=always")
        .arg(root.join("a"))
        .arg(root.join("b"))
        .output()
        .unwrap();
    if FsKind::under_test() == FsKind::Ext4 {
        assert!(!reflink.status.success(), "ext4 made a reflink?");
        return;
    }
    assert!(reflink.status.success(), "{reflink:?}");
    hsm.ok(Request::Archive(vec![root.join("a")]));
    let r = hsm.req(Request::Release(vec![root.join("a")]));
    let text = r.lines.join("\n");
    assert!(!r.ok && text.contains("shares extents"), "{text}");
    assert_eq!(hsm.state("a"), Residency::Archived);
    assert!(std::fs::read(root.join("b")).unwrap() == want);
    // The policy passes over it too, and says why.
    // Only what is archived: the copy b is cold too, and archive-first would make it a second skipped file.
    let out = policy(
        &root,
        &[
            "--high",
            "0%",
            "--low",
            "0%",
            "--min-age",
            "0s",
            "--archive-budget",
            "0",
        ],
    );
    assert!(
        out.contains("skipped 1 files whose extents are shared"),
        "{out}"
    );
    assert_eq!(hsm.state("a"), Residency::Archived);
    // Sharing ended: released as any other file.
    std::fs::remove_file(root.join("b")).unwrap();
    // xfs inactivates the deleted copy's inode in the background; its extents are shared until then.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sh("filefrag", &["-v".as_ref(), root.join("a").as_os_str()]).contains("shared") {
        assert!(
            Instant::now() < deadline,
            "a's extents still shared 10 s after b was deleted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    hsm.ok(Request::Release(vec![root.join("a")]));
    assert_eq!(hsm.state("a"), Residency::Released);
    assert!(std::fs::read(root.join("a")).unwrap() == want);
}

/// Archive first: cold files nobody archived are archived by the policy and then released, only as many as the
/// low watermark needs (the rest stay local and unarchived), within the archive budget; pinned and recent files
/// are left alone.
#[test]
fn policy_archives_cold_files_first_within_its_budget() {
    require_root!();
    let small = SmallFs::new(64);
    let (root, hsm) = (&small.root, &small.hsm);
    let usage = || small.usage();
    let put = |name: &str, seed: u64, days: u64| small.put(name, seed, days);
    put("pinned", 1, 90);
    put("recent", 2, 0);
    let mut i = 0;
    while usage() < 93.0 {
        // Older files first: cold0 is the coldest.
        put(&format!("cold{i}"), 10 + i, 60 + 1000 - i);
        i += 1;
    }
    hsm.ok(Request::Pin(vec![root.join("pinned")]));
    let run_policy = |high: &str, budget: &str| {
        policy(
            root,
            &[
                "--high",
                high,
                "--low",
                "75%",
                "--min-age",
                "30d",
                "--archive-budget",
                budget,
            ],
        )
    };
    // A budget of two files: two archived and released, the rest left as they were.
    let out = run_policy("90%", "8M");
    assert!(out.contains("archive budget reached"), "{out}");
    let states = |name: &str| hsm.state(name);
    assert_eq!(states("cold0"), Residency::Released, "{out}");
    assert_eq!(states("cold1"), Residency::Released, "{out}");
    assert_eq!(states("cold2"), Residency::Local, "{out}");
    assert!(usage() > 75.0);
    // Enough budget (and a high watermark the first run left usage above): the coldest files are archived and
    // released down to the low watermark, and no more.
    let out = run_policy("76%", "1G");
    let after = usage();
    assert!(after <= 75.0, "{out}");
    let one_file = small.one_file_percent();
    assert!(
        after >= 75.0 - 2.0 * one_file,
        "released more than needed: {after:.1}%: {out}"
    );
    let status = hsm.status();
    let released = status
        .values()
        .filter(|s| residency(s) == Residency::Released)
        .count();
    let local_unarchived = status
        .values()
        .filter(|s| residency(s) == Residency::Local)
        .count();
    assert!(
        released >= 3 && local_unarchived >= 2,
        "{released} released, {local_unarchived} local: {out}"
    );
    // Whatever was released was archived first, in order of coldness: no warmer file went before a colder one.
    let first_local = (0..i)
        .find(|n| states(&format!("cold{n}")) == Residency::Local)
        .unwrap();
    for n in first_local..i {
        assert_eq!(
            states(&format!("cold{n}")),
            Residency::Local,
            "cold{n}: {out}"
        );
    }
    assert_eq!(states("pinned"), Residency::Local);
    assert_eq!(states("recent"), Residency::Local);
    for n in 0..first_local {
        let got = std::fs::read(root.join(format!("cold{n}"))).unwrap();
        assert!(
            got == random_bytes(10 + n, 4 << 20),
            "cold{n} reads back wrong"
        );
    }
}

/// The daemon as contrib/systemd/hydrate-hsm@.service runs it (Type=notify, NotifyAccess=all), with this test
/// as the service manager's notification socket: READY=1 comes once every stub is marked (its STATUS says how
/// many), stubs are served from then on, and SIGTERM (`systemctl stop`) sends STOPPING=1 and ends the daemon
/// cleanly. Machines here do not run systemd; the protocol is a datagram per notification (sd_notify(3)).
#[test]
fn the_daemon_notifies_readiness_and_stopping_as_systemd_expects() {
    require_root!();
    let (dir, root, hsm) = local_hsm("30s");
    let want = random_bytes(41, 300_000);
    for name in ["a", "b", "c"] {
        std::fs::write(root.join(name), &want).unwrap();
    }
    hsm.archive_and_release();
    drop(hsm);
    let mut systemd = hydrate_testkit::systemd::FakeSystemd::new(dir.path());
    let mut hsm = Hsm::start_with(&root, &[("NOTIFY_SOCKET", systemd.path.as_os_str())]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while systemd.ready == 0 {
        assert!(Instant::now() < deadline, "no READY=1 within 30 s");
        systemd.pump();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(systemd.statuses, ["serving; 3 stubs marked"]);
    assert!(
        systemd.store.contains_key("hsm-group"),
        "the fanotify group is in the fd store"
    );
    assert_eq!(
        std::fs::read(root.join("b")).unwrap(),
        want,
        "a stub read after READY=1"
    );
    let status = hsm.terminate();
    assert!(
        status.success(),
        "the holder ended with {status} on SIGTERM"
    );
    systemd.pump();
    assert_eq!(systemd.stopping, 1, "STOPPING=1 on SIGTERM");
    assert!(
        systemd.store.is_empty(),
        "a stop empties the fd store: {:?}",
        systemd.store.keys().collect::<Vec<_>>()
    );
}

/// Archive on several threads: files read concurrently share most of their content. Every chunk is stored
/// once (one location per chunk id across all file maps, and the blobs hold exactly the distinct chunks'
/// bytes), the dedup is reported, and every file recalls byte for byte.
#[test]
fn parallel_archive_stores_shared_chunks_once() {
    require_root!();
    let (dir, root, hsm) = local_hsm("30s");
    let shared_random = random_bytes(1, 3 << 19);
    let shared_text = text_bytes(2, 1 << 20);
    let mut want = BTreeMap::new();
    for i in 0..48u64 {
        // Files 40.. are exact copies of earlier ones: whole-file dedup too.
        let seed = if i >= 40 { i - 40 } else { i };
        let mut bytes = shared_random.clone();
        bytes.extend(random_bytes(100 + seed, 200_000 + seed as usize * 1000));
        bytes.extend(&shared_text);
        let name = format!("f{i:02}");
        std::fs::write(root.join(&name), &bytes).unwrap();
        want.insert(name, sha256_digest(&bytes));
    }
    let report = hsm
        .ok(Request::ArchiveWith {
            paths: vec![root.clone()],
            threads: 4,
        })
        .archive
        .expect("archive report");
    assert_eq!((report.archived, report.threads), (48, 4), "{report:?}");
    assert!(
        report.dedup_chunks > report.new_chunks,
        "shared content must deduplicate: {report:?}"
    );

    let store = dir.path().join("store");
    let mut located = std::collections::HashMap::new();
    for entry in std::fs::read_dir(store.join("hsm/maps")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for c in hydrate_hsm::FileMap::decode(&bytes).unwrap().chunks {
            let at = (c.loc.blob, c.loc.blob_offset, c.loc.stored_len);
            let first = *located.entry(c.loc.id).or_insert(at);
            assert_eq!(first, at, "chunk {} stored twice", c.loc.id);
        }
    }
    assert_eq!(located.len() as u64, report.new_chunks, "{report:?}");
    let distinct: u64 = located.values().map(|&(_, _, len)| u64::from(len)).sum();
    let blobs: u64 = std::fs::read_dir(store.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(blobs, distinct, "blob bytes vs distinct chunks' bytes");

    hsm.ok(Request::Release(vec![root.clone()]));
    // Totals alone do not carry every file (at a million files the listing is hundreds of MB).
    let totals = hsm.ok(Request::StatusWith {
        paths: vec![root.clone()],
        files: false,
    });
    assert!(totals.files.is_empty());
    assert_eq!(totals.totals.map(|t| (t.files, t.released)), Some((48, 48)));
    for (name, digest) in &want {
        assert_eq!(hsm.state(name), Residency::Released, "{name}");
        assert_eq!(&sha256sum(&root.join(name)), digest, "{name}");
    }
}

/// Release works in batches (one set of syncs per batch of files): files that cannot be released in a batch
/// (open elsewhere, never archived) are refused with their reason while the rest of the batch is released;
/// a file and its hard link in the same batch are released once; everything reads back right.
#[test]
fn a_release_batch_refuses_single_files_and_releases_the_rest() {
    require_root!();
    let (_dir, root, hsm) = local_hsm("30s");
    let n = 300u64; // more than one batch (256)
    let want = |i: u64| random_bytes(7000 + i, 4096 + (i as usize % 7) * 1024);
    for i in 0..n {
        std::fs::write(root.join(format!("f{i:03}")), want(i)).unwrap();
    }
    std::fs::write(root.join("held"), want(1000)).unwrap();
    std::fs::write(root.join("h1"), want(1001)).unwrap();
    std::fs::hard_link(root.join("h1"), root.join("h2")).unwrap();
    hsm.ok(Request::Archive(vec![root.clone()]));
    std::fs::write(root.join("new"), want(1002)).unwrap();

    let held = File::open(root.join("held")).unwrap();
    let r = hsm.req(Request::Release(vec![root.clone()]));
    let text = r.lines.join("\n");
    assert!(!r.ok, "{text}");
    let errors: Vec<_> = r.lines.iter().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 2, "{text}");
    assert!(
        errors
            .iter()
            .any(|l| l.contains("/held") && l.contains("in use")),
        "{text}"
    );
    assert!(
        errors
            .iter()
            .any(|l| l.contains("/new") && l.contains("never archived")),
        "{text}"
    );
    assert!(
        text.contains(&format!("released {} files", n + 1)),
        "{text}"
    );
    for i in 0..n {
        assert_eq!(
            hsm.state(&format!("f{i:03}")),
            Residency::Released,
            "f{i:03}"
        );
    }
    assert_eq!(hsm.state("h1"), Residency::Released);
    assert_eq!(hsm.state("held"), Residency::Archived);
    assert_eq!(hsm.state("new"), Residency::Local);
    for i in 0..n {
        assert!(
            std::fs::read(root.join(format!("f{i:03}"))).unwrap() == want(i),
            "f{i:03} reads wrong"
        );
    }
    assert!(std::fs::read(root.join("h2")).unwrap() == want(1001));
    // Once closed, the held file is released like any other.
    drop(held);
    hsm.ok(Request::Release(vec![root.join("held")]));
    assert_eq!(hsm.state("held"), Residency::Released);
    assert!(std::fs::read(root.join("held")).unwrap() == want(1000));
}

/// `hydrate hsm status -l` and `--json` list every file of a tree larger than one listing batch (8,192 files)
/// with the right states and totals, from the daemon and, once it is stopped, from the journal; the JSON is one
/// valid document.
#[test]
fn status_lists_a_tree_larger_than_a_batch() {
    require_root!();
    let (_dir, root, mut hsm) = local_hsm("30s");
    let n = 8_300usize;
    for d in 0..9 {
        std::fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
    }
    for i in 0..n {
        std::fs::write(root.join(format!("d{}/f{i:05}", i % 9)), format!("{i}\n")).unwrap();
    }
    std::fs::create_dir_all(root.join("cold")).unwrap();
    for i in 0..3 {
        std::fs::write(
            root.join(format!("cold/c{i}")),
            random_bytes(300 + i, 200_000),
        )
        .unwrap();
    }
    hsm.ok(Request::Archive(vec![root.join("cold")]));
    hsm.ok(Request::Release(vec![
        root.join("cold/c0"),
        root.join("cold/c1"),
    ]));

    let check_json = |text: &str| {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        let files = v["files"].as_array().unwrap();
        assert_eq!(files.len(), n + 3);
        let state = |p: &str| {
            files
                .iter()
                .find(|f| f["path"] == p)
                .unwrap_or_else(|| panic!("{p} not listed"))["state"]
                .clone()
        };
        assert_eq!(state("cold/c0"), "released");
        assert_eq!(state("cold/c2"), "archived");
        assert_eq!(state("d4/f00004"), "local");
        let totals = &v["totals"];
        assert_eq!(totals["files"], (n + 3) as u64);
        assert_eq!(totals["released"], 2);
        assert_eq!(totals["archived"], 1);
        assert_eq!(totals["local_only"], n as u64);
        assert_eq!(v["ok"], true);
    };
    let rootarg = root.as_os_str();
    check_json(&hydrate(&[
        "hsm".as_ref(),
        "status".as_ref(),
        "--json".as_ref(),
        rootarg,
    ]));
    let long = hydrate(&["hsm".as_ref(), "status".as_ref(), "-l".as_ref(), rootarg]);
    let listed = long
        .lines()
        .filter(|l| {
            l.starts_with("local") || l.starts_with("archived") || l.starts_with("released")
        })
        .count();
    assert_eq!(listed, n + 3, "{}", &long[long.len().saturating_sub(500)..]);
    assert!(
        long.contains(&format!("{} files", n + 3)) && long.contains("2 released"),
        "{}",
        &long[long.len().saturating_sub(500)..]
    );
    // Without a daemon the journal answers, batch by batch as well.
    hsm.terminate();
    check_json(&hydrate(&[
        "hsm".as_ref(),
        "status".as_ref(),
        "--json".as_ref(),
        rootarg,
    ]));
}
