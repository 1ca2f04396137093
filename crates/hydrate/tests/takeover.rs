//! Crash and upgrade without unmounting, with real processes and real mounts (root and /dev/fuse required):
//! readers verify every byte while workers are SIGKILLed or upgraded; killing the supervisor or aborting the
//! connection makes readers fail promptly instead of hanging.

mod common;

use common::*;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIG: u64 = 96 << 20;
const HOT: u64 = 4 << 20;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    /// A source tree (a big random file read cold, a file made hot for passthrough, small files), built.
    fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("hydrate-takeover")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = tmp.path().to_path_buf();
        let src = root.join("src");
        fs::create_dir_all(src.join("small")).unwrap();
        write_random(&src.join("big"), BIG, 11);
        write_random(&src.join("hot"), HOT, 12);
        for i in 0..50 {
            write_random(&src.join(format!("small/{i}")), 1000 + i * 997, 100 + i);
        }
        hydrate_ok(&[
            "build",
            src.to_str().unwrap(),
            "--store",
            root.join("store").to_str().unwrap(),
            "--tag",
            "t:1",
        ]);
        Env { _tmp: tmp, root }
    }

    fn mount(&self, latency_ms: u64) -> Mount {
        let latency = latency_ms.to_string();
        Mount::new(
            &self.root.join("store"),
            "t:1",
            &self.root.join("mnt"),
            &self.root.join("cache"),
            &["--test-store-latency-ms", &latency],
        )
    }

    fn src(&self, rel: &str) -> PathBuf {
        self.root.join("src").join(rel)
    }
}

fn info(m: &Mount) -> hydrate_control::MountInfo {
    mount_info(&m.mountpoint)
}

/// Reader threads verifying content until `stop`: cold random ranges of the big file (fresh opens and a
/// long-lived descriptor), a passthrough descriptor opened before the chaos plus fresh opens of the hot file,
/// and directory listings with small files.
fn start_readers(
    env: &Env,
    m: &Mount,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    let big_src = Arc::new(fs::read(env.src("big")).unwrap());
    let hot_src = Arc::new(fs::read(env.src("hot")).unwrap());
    let mut threads = Vec::new();
    for seed in 0..2u64 {
        let (stop, tally, big_src) = (stop.clone(), tally.clone(), big_src.clone());
        let path = m.path("big");
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng::new(seed + 1);
            let held = File::open(&path).expect("open big");
            while !stop.load(Ordering::Relaxed) {
                let len = 4096 + rng.below(128 << 10) as usize;
                let off = rng.below(BIG - len as u64);
                let want = &big_src[off as usize..off as usize + len];
                let t = Instant::now();
                let got = if rng.below(2) == 0 {
                    let mut buf = vec![0u8; len];
                    held.read_exact_at(&mut buf, off).map(|()| buf)
                } else {
                    pread(&path, off, len)
                };
                tally.check("big", got, want, t.elapsed());
            }
        }));
    }
    {
        let (stop, tally, hot_src) = (stop.clone(), tally.clone(), hot_src.clone());
        let path = m.path("hot");
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng::new(99);
            let held = File::open(&path).expect("open hot (passthrough)");
            while !stop.load(Ordering::Relaxed) {
                let len = 1 + rng.below(256 << 10) as usize;
                let off = rng.below(HOT - len as u64);
                let want = &hot_src[off as usize..off as usize + len];
                let t = Instant::now();
                let mut buf = vec![0u8; len];
                let got = held.read_exact_at(&mut buf, off).map(|()| buf);
                tally.check("hot held", got, want, t.elapsed());
                let t = Instant::now();
                tally.check("hot fresh", pread(&path, off, len), want, t.elapsed());
            }
        }));
    }
    {
        let (stop, tally) = (stop.clone(), tally.clone());
        let (dir, src) = (m.path("small"), env.src("small"));
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let listed = fs::read_dir(&dir).map(|d| d.count());
                tally.check("readdir", listed.map(|n| vec![n as u8]), &[50], t.elapsed());
                let name = format!("{}", i % 50);
                let want = fs::read(src.join(&name)).unwrap();
                let t = Instant::now();
                tally.check("small", fs::read(dir.join(&name)), &want, t.elapsed());
                i += 1;
            }
        }));
    }
    threads
}

/// Makes the hot file complete in the cache, so later opens use passthrough.
fn warm_hot(env: &Env, m: &Mount) {
    assert_eq!(
        fs::read(m.path("hot")).unwrap(),
        fs::read(env.src("hot")).unwrap()
    );
    // The cached open's RELEASE is asynchronous; a new open is passthrough only once it was served.
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.metric("fuse_passthrough_opens") == 0 {
        assert!(
            Instant::now() < deadline,
            "hot file never opened with passthrough"
        );
        drop(File::open(m.path("hot")).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn chaos_kill_worker_every_few_hundred_ms() {
    let secs: u64 = std::env::var("HYDRATE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let env = Env::new();
    let m = env.mount(20);
    warm_hot(&env, &m);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let readers = start_readers(&env, &m, &stop, &tally);
    let started = Instant::now();
    let mut kills = 0u64;
    let mut rng = Rng::new(7);
    while started.elapsed() < Duration::from_secs(secs) || kills < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(secs * 3 + 60),
            "too slow: {kills} kills"
        );
        std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
        let info = info(&m);
        if !info.supervisor.worker_serving {
            continue;
        }
        let Some(pid) = info.supervisor.worker_pid.map(|p| p as i32) else {
            continue;
        };
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
        {
            kills += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader thread");
    }
    let info = info(&m);
    eprintln!("chaos: {kills} kills in {:?}\n{info:?}", started.elapsed());
    tally.assert_clean("chaos");
    let restarts = info.supervisor.restarts;
    assert!(restarts >= kills, "every kill was followed by a restart");
    assert!(kills >= 100);
    m.unmount();
}

#[test]
fn upgrade_under_load_fails_no_request() {
    let env = Env::new();
    let m = env.mount(10);
    warm_hot(&env, &m);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let readers = start_readers(&env, &m, &stop, &tally);
    let mut stalls = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let out = hydrate_ok(&["upgrade", m.mountpoint.to_str().unwrap()]);
        stalls.push(t.elapsed());
        assert!(out.contains("ok generation="), "{out}");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader thread");
    }
    let info = info(&m);
    eprintln!("upgrade durations: {stalls:?}\n{info:?}");
    tally.assert_clean("upgrade");
    assert_eq!(info.supervisor.upgrades, 10);
    assert_eq!(info.supervisor.restarts, 0);
    assert_eq!(info.supervisor.generation, 11);
    m.unmount();
}

fn wait_for_error(reader: std::thread::JoinHandle<std::io::Result<Vec<u8>>>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{what}: the blocked reader hangs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = reader.join().unwrap().expect_err("the read must fail");
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
        ),
        "{what}: {err}"
    );
}

/// A cold read of `m`'s big file, returned once the daemon holds its request (waiting on the slow store).
fn blocked_reader(m: &Mount) -> std::thread::JoinHandle<std::io::Result<Vec<u8>>> {
    let path = m.path("big");
    let reader = std::thread::spawn(move || pread(&path, 50 << 20, 4096));
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.metric("fuse_requests_in_flight") == 0 {
        assert!(
            !reader.is_finished(),
            "the cold read should wait on the slow store: {:?}",
            reader.join()
        );
        assert!(
            Instant::now() < deadline,
            "the cold read never reached the daemon"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !reader.is_finished(),
        "the cold read should wait on the slow store"
    );
    reader
}

#[test]
fn killing_the_supervisor_fails_readers_promptly() {
    let env = Env::new();
    let m = env.mount(30_000);
    let info = info(&m);
    let worker = info.supervisor.worker_pid.unwrap() as i32;
    let reader = blocked_reader(&m);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid.unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for_error(reader, "supervisor killed");
    let err = fs::read(m.path("small/1")).expect_err("the mount is dead");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{worker}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the worker outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    m.unmount();
}

#[test]
fn abort_ends_a_stuck_connection() {
    let env = Env::new();
    let m = env.mount(30_000);
    let reader = blocked_reader(&m);
    hydrate_ok(&["abort", m.mountpoint.to_str().unwrap()]);
    wait_for_error(reader, "abort");
    let pid = nix::unistd::Pid::from_raw(m.pid.unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the supervisor did not exit after the abort"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(&m.mountpoint), "the dead mount was detached");
    m.unmount();
}
