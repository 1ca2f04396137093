//! Shared pieces of the integration tests: a generator of awkward source trees, a mount guard that always
//! unmounts and stops its daemon (also when a test fails), a full tree comparison, and metrics reading.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hydrate")
}

pub fn hydrate(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("running hydrate")
}

/// Runs hydrate with string arguments and panics with its stderr when it fails.
pub fn hydrate_ok(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("running hydrate");
    assert!(
        out.status.success(),
        "hydrate {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs `cmd` and panics with its output when it fails; its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub fn hydrate_err(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("running hydrate");
    assert!(
        !out.status.success(),
        "hydrate {args:?} succeeded but should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub use hydrate_testkit::rng::Rng;

pub fn write_random(path: &Path, len: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut f = File::create(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

/// Options of the generated tree.
pub struct TreeSpec {
    pub small_files: usize,
    pub big_file: Option<u64>,
    pub depth: usize,
}

/// Builds an awkward tree under `root`: empty, tiny, random and repeated files, one big file, unicode and odd
/// names, deep nesting, symlinks (relative, absolute, dangling), hard links, xattrs, a fifo, a device node, a
/// socket, unusual modes and owners, mtimes with nanoseconds.
pub fn make_tree(root: &Path, spec: &TreeSpec) {
    fs::create_dir_all(root).unwrap();
    let mut rng = Rng::new(42);
    let dirs = [
        "a",
        "b/c",
        "b/d/e",
        "ünïcödé/日本語",
        "sp ace/-dash",
        "many",
    ];
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("tiny"), b"x").unwrap();
    fs::write(
        root.join("ünïcödé/日本語/ファイル.txt"),
        "こんにちは\n".repeat(100),
    )
    .unwrap();
    fs::write(root.join("sp ace/-dash/--weird name ;&$'\"`"), b"odd").unwrap();
    fs::write(root.join(OsString::from("a/new\nline")), b"newline in name").unwrap();
    let long = "L".repeat(255);
    fs::write(root.join("a").join(&long), b"long name").unwrap();
    // Repeated content: dedup inside the image.
    let block: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for i in 0..5 {
        fs::write(root.join(format!("b/dup{i}")), &block).unwrap();
    }
    // Many small and medium files of random sizes.
    for i in 0..spec.small_files {
        let size = match i % 10 {
            0 => 0,
            1..=6 => rng.below(4096),
            7 | 8 => rng.below(200_000),
            _ => rng.below(1_500_000),
        };
        let mut data = vec![0u8; size as usize];
        if i % 3 == 0 {
            data.iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (j % 7) as u8 + b'a');
        } else {
            rng.fill(&mut data);
        }
        fs::write(root.join(format!("many/f{i:05}")), data).unwrap();
    }
    if let Some(len) = spec.big_file {
        write_random(&root.join("b/big.bin"), len, 7);
    }
    // Deep nesting.
    let mut deep = root.join("deep");
    for i in 0..spec.depth {
        deep = deep.join(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"bottom of the tree").unwrap();
    // Links.
    symlink("tiny", root.join("link-rel")).unwrap();
    symlink("/etc/hostname", root.join("link-abs")).unwrap();
    symlink("does/not/exist", root.join("link-dangling")).unwrap();
    symlink("../b/dup0", root.join("a/link-up")).unwrap();
    fs::hard_link(root.join("b/dup1"), root.join("a/hard1")).unwrap();
    fs::hard_link(root.join("b/dup1"), root.join("hard2")).unwrap();
    // Special files.
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &root.join("null-dev"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap());
    // Modes and owners.
    fs::write(root.join("setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(root.join("noperm"), b"secret").unwrap();
    fs::set_permissions(root.join("noperm"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(root.join("b/d"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::lchown(root.join("tiny"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("link-rel"), Some(4321), Some(8765)).unwrap();
    // Xattrs, on a file, a directory and a symlink-free path.
    xattr::set(root.join("tiny"), "user.color", b"blue").unwrap();
    xattr::set(root.join("tiny"), "user.empty", b"").unwrap();
    xattr::set(root.join("b"), "user.dir", &[0u8, 1, 2, 255]).unwrap();
    xattr::set(root.join("empty"), "trusted.hydrate-test", b"trusted value").unwrap();
    // Nanosecond mtimes (after all content changes; directories last, deepest first).
    let mut paths = Vec::new();
    walk(root, &mut |p, _| paths.push(p.to_path_buf()));
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.iter().enumerate() {
        let t = filetime::FileTime::from_unix_time(
            1_600_000_000 + i as i64,
            (i as u32 * 7919) % 1_000_000_000,
        );
        filetime::set_symlink_file_times(p, t, t).unwrap();
    }
}

/// Depth-first walk with lstat, calling `f` for every path below `root` (not root itself), sorted by name.
pub fn walk(root: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let mut entries: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let meta = fs::symlink_metadata(&p).unwrap();
        f(&p, &meta);
        if meta.is_dir() {
            walk(&p, f);
        }
    }
}

fn xattrs(p: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let mut out = BTreeMap::new();
    for name in xattr::list(p).unwrap() {
        // Skip attributes the kernel synthesizes on some filesystems (SELinux labels), not part of the tree.
        if name.as_bytes().starts_with(b"security.selinux") {
            continue;
        }
        let value = xattr::get(p, &name).unwrap().unwrap_or_default();
        out.insert(name, value);
    }
    out
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]).unwrap() {
            0 => break,
            n => done += n,
        }
    }
    done
}

/// Compares every path, attribute, xattr, link target and byte of `src` and `mnt`; hard links must share one
/// inode number in the mount. Returns the number of paths compared.
pub fn compare_trees(src: &Path, mnt: &Path) -> usize {
    let mut src_paths = Vec::new();
    walk(src, &mut |p, _| {
        src_paths.push(p.strip_prefix(src).unwrap().to_path_buf())
    });
    let mut mnt_paths = Vec::new();
    walk(mnt, &mut |p, _| {
        mnt_paths.push(p.strip_prefix(mnt).unwrap().to_path_buf())
    });
    assert_eq!(src_paths, mnt_paths, "the trees list different paths");
    let mut links: HashMap<(u64, u64), u64> = HashMap::new();
    for rel in &src_paths {
        let (a, b) = (src.join(rel), mnt.join(rel));
        let (ma, mb) = (
            fs::symlink_metadata(&a).unwrap(),
            fs::symlink_metadata(&b).unwrap(),
        );
        let what = rel.display();
        assert_eq!(ma.mode(), mb.mode(), "mode of {what}");
        assert_eq!(ma.uid(), mb.uid(), "uid of {what}");
        assert_eq!(ma.gid(), mb.gid(), "gid of {what}");
        assert_eq!(ma.mtime(), mb.mtime(), "mtime of {what}");
        assert_eq!(ma.mtime_nsec(), mb.mtime_nsec(), "mtime nsec of {what}");
        assert_eq!(ma.rdev(), mb.rdev(), "rdev of {what}");
        assert_eq!(xattrs(&a), xattrs(&b), "xattrs of {what}");
        if !ma.is_dir() {
            assert_eq!(ma.nlink(), mb.nlink(), "nlink of {what}");
            assert_eq!(ma.size(), mb.size(), "size of {what}");
        }
        if ma.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&a).unwrap(),
                fs::read_link(&b).unwrap(),
                "target of {what}"
            );
        }
        if ma.is_file() {
            assert!(same_content(&a, &b), "content of {what}");
            if ma.nlink() > 1 {
                let seen = links.entry((ma.dev(), ma.ino())).or_insert(mb.ino());
                assert_eq!(
                    *seen,
                    mb.ino(),
                    "hard link {what} has its own inode in the mount"
                );
            }
        }
    }
    src_paths.len()
}

/// A mounted image; dropping it unmounts and makes sure the daemon is gone, whatever happened in the test.
pub struct Mount {
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub pid: Option<i32>,
}

impl Mount {
    pub fn new(
        store: &Path,
        image: &str,
        mountpoint: &Path,
        cache_dir: &Path,
        extra: &[&str],
    ) -> Mount {
        Mount::try_new(store, image, mountpoint, cache_dir, extra)
            .unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    pub fn try_new(
        store: &Path,
        image: &str,
        mountpoint: &Path,
        cache_dir: &Path,
        extra: &[&str],
    ) -> Result<Mount, String> {
        fs::create_dir_all(mountpoint).unwrap();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "mount".as_ref(),
            "--store".as_ref(),
            store.as_os_str(),
            image.as_ref(),
            mountpoint.as_os_str(),
            "--cache-dir".as_ref(),
            cache_dir.as_os_str(),
        ];
        args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
        let out = hydrate(&args);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let mountpoint = fs::canonicalize(mountpoint).unwrap();
        let pid = Some(mount_info(&mountpoint).supervisor.pid as i32);
        Ok(Mount {
            mountpoint,
            cache_dir: cache_dir.to_path_buf(),
            pid,
        })
    }

    /// All counters of the daemon, by Prometheus name without the `hydrate_` prefix.
    pub fn metrics(&self) -> HashMap<String, u64> {
        hydrate_control::MountClient::for_mountpoint(&self.mountpoint)
            .and_then(|c| c.metrics().map_err(std::io::Error::other))
            .unwrap_or_else(|e| panic!("metrics of {}: {e}", self.mountpoint.display()))
            .metrics
            .into_iter()
            .map(|m| (m.name, m.value))
            .collect()
    }

    pub fn metric(&self, name: &str) -> u64 {
        *self
            .metrics()
            .get(name)
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    pub fn unmount(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        if self.pid.is_none() {
            return;
        }
        let out = Command::new(bin())
            .args(["umount", self.mountpoint.to_str().unwrap()])
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "umount failed: {}; detaching",
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(pid) = self.pid.take() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let deadline = Instant::now() + Duration::from_secs(10);
            while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Reads 4 KiB of `rel` at `offset` through `m` (checked against `src`, the same file in the source tree) and
/// asserts that it moved at most a few chunks from the store; returns (store requests, bytes) it cost.
pub fn assert_small_read_is_lazy(m: &Mount, rel: &str, src: &Path, offset: u64) -> (u64, u64) {
    let start = m.metrics();
    let got = pread(&m.path(rel), offset, 4096).unwrap();
    assert_eq!(
        got,
        pread(src, offset, 4096).unwrap(),
        "bytes of {rel} at {offset}"
    );
    let after = m.metrics();
    let requests = after["store_range_requests"] - start["store_range_requests"];
    let bytes = after["store_bytes_read"] - start["store_bytes_read"];
    assert!(
        (1..=2).contains(&requests),
        "{requests} store requests for one 4 KiB read"
    );
    assert!(
        bytes <= 3 * 256 * 1024,
        "{bytes} bytes fetched for one 4 KiB read"
    );
    (requests, bytes)
}

/// pread of exactly `len` bytes at `offset` (or the error).
pub fn pread(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = vec![0u8; len];
    let n = f.read_at(&mut buf, offset)?;
    buf.truncate(n);
    Ok(buf)
}

/// What the mount's supervisor answers to `info` (the typed control protocol); panics if it does not answer.
pub fn mount_info(mountpoint: &Path) -> hydrate_control::MountInfo {
    hydrate_control::MountClient::for_mountpoint(mountpoint)
        .and_then(|c| c.info().map_err(std::io::Error::other))
        .unwrap_or_else(|e| panic!("status of {}: {e}", mountpoint.display()))
}

pub fn is_mounted(mountpoint: &Path) -> bool {
    mounts_at(mountpoint) > 0
}

/// How many mounts sit exactly at `mountpoint` (stacked mounts count separately).
pub fn mounts_at(mountpoint: &Path) -> usize {
    hydrate_mountinfo::MountInfo::read_self()
        .unwrap()
        .at(mountpoint)
        .count()
}

/// A scratch directory under /var/tmp (ext4 here: the cache and passthrough need a real filesystem), removed when
/// the test ends, also on failure.
pub struct Scratch {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = tmp.path().to_path_buf();
        Scratch { _tmp: tmp, root }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn s(&self, rel: &str) -> String {
        self.p(rel).to_str().unwrap().to_owned()
    }
}

/// What verifying readers saw: reads, failures (ENOTCONN among them), wrong bytes, and every read's latency.
#[derive(Default)]
pub struct Tally {
    pub reads: AtomicU64,
    pub failures: AtomicU64,
    pub wrong: AtomicU64,
    pub enotconn: AtomicU64,
    pub latencies_us: Mutex<Vec<u64>>,
}

impl Tally {
    pub fn check(&self, what: &str, got: std::io::Result<Vec<u8>>, want: &[u8], took: Duration) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.latencies_us
            .lock()
            .unwrap()
            .push(took.as_micros() as u64);
        match got {
            Ok(bytes) if bytes == want => {}
            Ok(bytes) => {
                self.wrong.fetch_add(1, Ordering::Relaxed);
                eprintln!("WRONG BYTES {what}: got {} bytes", bytes.len());
            }
            Err(e) => {
                if e.raw_os_error() == Some(libc::ENOTCONN) {
                    self.enotconn.fetch_add(1, Ordering::Relaxed);
                }
                // The first few say what failed; a test that expects failures would flood its log otherwise.
                if self.failures.fetch_add(1, Ordering::Relaxed) < 20 {
                    eprintln!("FAILED {what}: {e}");
                }
            }
        }
    }

    pub fn assert_clean(&self, label: &str) {
        let mut lat = self.latencies_us.lock().unwrap().clone();
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0)
        };
        eprintln!(
            "{label}: reads={} failures={} wrong={} enotconn={} latency p50={}us p99={}us max={}us",
            self.reads.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            self.wrong.load(Ordering::Relaxed),
            self.enotconn.load(Ordering::Relaxed),
            pct(0.5),
            pct(0.99),
            lat.last().copied().unwrap_or(0)
        );
        assert!(self.reads.load(Ordering::Relaxed) > 0);
        assert_eq!(
            self.failures.load(Ordering::Relaxed),
            0,
            "{label}: failed reads"
        );
        assert_eq!(
            self.wrong.load(Ordering::Relaxed),
            0,
            "{label}: wrong bytes"
        );
        assert_eq!(
            self.enotconn.load(Ordering::Relaxed),
            0,
            "{label}: ENOTCONN"
        );
    }

    pub fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Reads that took longer than `limit` (for readers under chaos: blocked across a takeover).
    pub fn slower_than(&self, limit: Duration) -> usize {
        let limit = limit.as_micros() as u64;
        self.latencies_us
            .lock()
            .unwrap()
            .iter()
            .filter(|&&us| us > limit)
            .count()
    }
}
