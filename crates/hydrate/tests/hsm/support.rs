//! Helpers of the HSM tests: running `hydrate`, deterministic content, `du`, loop-mounted ext4 images and the
//! daemon guard (holder and worker stopped by PID, also when a test fails).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use hydrate_hsm::{call, FileStatus, Layout, Reply, Request, Residency};
use hydrate_testkit::rng::{random_bytes, text_bytes};

pub const BIN: &str = env!("CARGO_BIN_EXE_hydrate");

pub fn check(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn sh(program: &str, args: &[&OsStr]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    check(out, &format!("{program} {args:?}"))
}

/// Runs hydrate with the Garage test key in its environment (harmless for other stores; an s3:// store
/// without credentials is refused).
pub fn hydrate(args: &[&OsStr]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .envs(hydrate_testkit::garage::Garage::credentials_env())
        .output()
        .expect("run hydrate");
    check(out, &format!("hydrate {args:?}"))
}

/// Deterministic content from the test kit's generators: `seed` picks the bytes; `text` makes it compressible.
pub fn content(seed: u64, len: usize, text: bool) -> Vec<u8> {
    if text {
        text_bytes(seed, len)
    } else {
        random_bytes(seed, len)
    }
}

/// `sha256sum`'s answer for `path`, as an OCI digest (`sha256:<hex>`) to compare with
/// `hydrate_format::oci::sha256_digest` of the bytes the file should hold.
pub fn sha256sum(path: &Path) -> String {
    let out = sh("sha256sum", &[path.as_os_str()]);
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// Blocks allocated under `dir`, in bytes, leaving out the HSM state directory.
pub fn du_bytes(dir: &Path) -> u64 {
    pub fn walk(p: &Path, total: &mut u64) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            if e.file_name() == ".hydrate-hsm" {
                continue;
            }
            let m = e.path().symlink_metadata().unwrap();
            if m.is_dir() {
                walk(&e.path(), total);
            } else {
                *total += m.blocks() * 512;
            }
        }
    }
    let mut total = 0;
    walk(dir, &mut total);
    total
}

pub fn days_ago(days: u64) -> filetime::FileTime {
    filetime::FileTime::from_system_time(SystemTime::now() - Duration::from_secs(days * 86400))
}

/// The file system the managed roots of this test run live on (`HYDRATE_HSM_FS`, see `FsKind::under_test`): the
/// root file system's temporary directory for ext4 (plus small loop-mounted ext4 images where a test needs a
/// full disk), else loop-mounted images of that type.
pub use hydrate_testkit::loopfs::{FsKind, LoopFs};

/// `hydrate hsm policy ROOT ARGS…`; what it printed.
pub fn policy(root: &Path, args: &[&str]) -> String {
    let mut all: Vec<&OsStr> = vec!["hsm".as_ref(), "policy".as_ref(), root.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    hydrate(&all)
}

/// A test's scratch directory on the file system under test: a temporary directory of the root file system
/// for ext4, else one inside a loop-mounted image of that type (sparse, 2 GiB) that lives as long as this.
pub struct TestDir {
    // Field order: the directory is removed before its file system is unmounted.
    dir: tempfile::TempDir,
    _fs: Option<LoopFs>,
}

impl TestDir {
    pub fn new() -> TestDir {
        match FsKind::under_test() {
            FsKind::Ext4 => TestDir {
                dir: tempfile::tempdir().unwrap(),
                _fs: None,
            },
            kind => {
                let fs = LoopFs::new(kind, 2048).expect("loop-mounted file system");
                TestDir {
                    dir: tempfile::tempdir_in(&fs.mnt).unwrap(),
                    _fs: Some(fs),
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A managed root on a small loop-mounted file system of the kind under test, as the policy tests use it. Fields
/// drop in order: the daemon stops before the store goes and the file system is unmounted.
pub struct SmallFs {
    pub hsm: Hsm,
    _store: tempfile::TempDir,
    pub root: PathBuf,
    fs: LoopFs,
}

impl SmallFs {
    pub fn new(mib: u64) -> SmallFs {
        let fs = LoopFs::new(FsKind::under_test(), mib).expect("loop-mounted file system");
        let store = tempfile::tempdir().unwrap();
        let root = fs.mnt.join("data");
        let hsm = Hsm::init(&root, store.path().to_str().unwrap(), "30s");
        SmallFs {
            hsm,
            _store: store,
            root,
            fs,
        }
    }

    /// Usage in percent, as the policy (and `df`) counts it.
    pub fn usage(&self) -> f64 {
        let (used, total) = hydrate_hsm::policy::usage(&self.fs.mnt).unwrap();
        hydrate_hsm::policy::percent(used, total)
    }

    /// Writes `name`, 4 MiB of `seed`'s bytes, last used `days` ago.
    pub fn put(&self, name: &str, seed: u64, days: u64) {
        let p = self.root.join(name);
        std::fs::write(&p, random_bytes(seed, 4 << 20)).unwrap();
        filetime::set_file_times(&p, days_ago(days), days_ago(days)).unwrap();
    }

    /// What one file of `put` is in percent of the usable space.
    pub fn one_file_percent(&self) -> f64 {
        let (_, usable) = hydrate_hsm::policy::usage(&self.fs.mnt).unwrap();
        (4 << 20) as f64 * 100.0 / usable as f64
    }
}

/// A managed root with its daemon (holder + worker); both are stopped by PID on drop.
pub struct Hsm {
    pub root: PathBuf,
    holder: Child,
    log: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Hsm {
    /// `hydrate hsm init ROOT --store STORE` with this test binary as lazy reader, then start the daemon.
    pub fn init(root: &Path, store: &str, deadline: &str) -> Hsm {
        std::fs::create_dir_all(root).unwrap();
        let me = std::env::current_exe().unwrap();
        hydrate(&[
            "hsm".as_ref(),
            "init".as_ref(),
            root.as_os_str(),
            "--store".as_ref(),
            store.as_ref(),
            "--lazy-reader".as_ref(),
            me.as_os_str(),
            "--deadline".as_ref(),
            deadline.as_ref(),
        ]);
        Hsm::start(root)
    }

    pub fn start(root: &Path) -> Hsm {
        Hsm::start_with(root, &[])
    }

    /// Starts the daemon with extra environment variables (e.g. `NOTIFY_SOCKET`, as systemd runs it).
    pub fn start_with(root: &Path, env: &[(&str, &OsStr)]) -> Hsm {
        let scratch = tempfile::tempdir().unwrap();
        let log = scratch.path().join("daemon.log");
        let holder = Command::new(BIN)
            .args(["hsm", "daemon"])
            .arg(root)
            .env("HYDRATE_LOG", "info")
            // The Garage test key (harmless for other stores).
            .envs(hydrate_testkit::garage::Garage::credentials_env())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start hsm daemon");
        let hsm = Hsm {
            root: root.canonicalize().unwrap(),
            holder,
            log,
            _scratch: scratch,
        };
        hsm.wait_ready(None);
        hsm
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.root)
    }

    pub fn worker_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.layout().worker_pid())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits until a worker other than `old` serves the control socket.
    pub fn wait_ready(&self, old: Option<i32>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pid = self.worker_pid();
            if pid.is_some()
                && pid != old
                && call(&self.layout(), &Request::Ping).is_ok_and(|r| r.ok)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hsm daemon not ready; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to the holder (what `systemctl stop` sends the unit's main process); waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.holder.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.holder.wait().unwrap()
    }

    /// kill -9 of the holder, reaped at once.
    pub fn kill_holder(&mut self) {
        self.holder.kill().unwrap();
        self.holder.wait().unwrap();
    }

    pub fn kill_worker(&self) -> i32 {
        let pid = self.worker_pid().expect("worker pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        pid
    }

    pub fn req(&self, req: Request) -> Reply {
        call(&self.layout(), &req).expect("control request")
    }

    pub fn ok(&self, req: Request) -> Reply {
        let r = self.req(req.clone());
        assert!(r.ok, "{req:?} failed: {:#?}", r.lines);
        r
    }

    pub fn status(&self) -> BTreeMap<PathBuf, FileStatus> {
        let r = self.ok(Request::Status(vec![self.root.clone()]));
        r.files.into_iter().map(|f| (f.path.clone(), f)).collect()
    }

    pub fn state(&self, rel: &str) -> Residency {
        residency(&self.status()[Path::new(rel)])
    }

    /// Events the worker has received so far (the "events N" of its counters).
    pub fn events(&self) -> u64 {
        let counters = self.counters();
        counters
            .strip_prefix("events ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no event count in {counters:?}"))
    }

    pub fn counters(&self) -> String {
        self.ok(Request::Status(vec![self.root.clone()]))
            .lines
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// The state of a status reply's file.
pub fn residency(s: &FileStatus) -> Residency {
    s.state
}

impl Drop for Hsm {
    fn drop(&mut self) {
        let worker = self.worker_pid();
        // Never signal a pid already reaped (it may belong to someone else by now).
        if let Ok(None) = self.holder.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.holder.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.holder.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        if let Some(pid) = worker {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Bytes covered by the union of `ranges`.
pub fn union_len(mut ranges: Vec<(u64, u64)>) -> u64 {
    ranges.sort();
    let (mut total, mut end) = (0u64, 0u64);
    for (s, e) in ranges {
        let s = s.max(end);
        if e > s {
            total += e - s;
            end = e;
        }
    }
    total
}

pub fn garage() -> Option<hydrate_testkit::garage::Garage> {
    let bin = hydrate_testkit::require_binary("garage", "hsm over Garage")?;
    Some(hydrate_testkit::garage::Garage::start(&bin).expect("start garage"))
}

/// A managed root on the root file system with a local directory store; keep the directory alive.
pub fn local_hsm(deadline: &str) -> (TestDir, PathBuf, Hsm) {
    let dir = TestDir::new();
    let root = dir.path().join("data");
    let hsm = Hsm::init(&root, dir.path().join("store").to_str().unwrap(), deadline);
    (dir, root, hsm)
}

impl Hsm {
    /// Archives and releases everything under the root.
    pub fn archive_and_release(&self) {
        self.ok(Request::Archive(vec![self.root.clone()]));
        self.ok(Request::Release(vec![self.root.clone()]));
    }
}
