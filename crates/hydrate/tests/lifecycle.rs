//! The life of a mount as tools and people drive it: a bad `hydrate mount` leaves nothing behind, and a mount
//! point unmounted with a plain `umount` (not `hydrate umount`) can be mounted again at once, while its old
//! daemon is still flushing.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests of this file run one at a time. A process another test spawns starts with a copy of this process's
/// file table and keeps it until it execs; under the CPU load below that can take long enough for a file this
/// test has just read from the mount to be still open in that child when the test unmounts, and the kernel
/// rightly answers EBUSY. (CI saw it: "round 1: umount: EBUSY".)
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The processes that hold something open under `mountpoint` (an fd, a cwd or a root), for an EBUSY message.
fn holders(mountpoint: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let mut links: Vec<_> = ["cwd", "root"]
            .iter()
            .map(|l| entry.path().join(l))
            .collect();
        if let Ok(fds) = fs::read_dir(entry.path().join("fd")) {
            links.extend(fds.flatten().map(|fd| fd.path()));
        }
        for link in links {
            if fs::read_link(&link).is_ok_and(|target| target.starts_with(mountpoint)) {
                let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                out.push(format!("{pid} ({}) {}", comm.trim(), link.display()));
            }
        }
    }
    out
}

fn build(src: &Path, store: &Path, tag: &str) {
    hydrate_ok(&[
        "build",
        src.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--tag",
        tag,
    ]);
}

/// Processes whose environment carries `marker` (children inherit it, so a daemon started by a command run
/// with it carries it too).
fn processes_marked(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == marker.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn bad_mount_options_fail_before_a_daemon_starts() {
    let _serial = serial();
    let env = Scratch::new("hydrate-lifecycle");
    fs::create_dir_all(env.p("src")).unwrap();
    fs::write(env.p("src/f"), b"x").unwrap();
    fs::write(env.p("file"), b"x").unwrap();
    build(&env.p("src"), &env.p("store"), "ok:1");
    fs::create_dir_all(env.p("mnt")).unwrap();
    fs::create_dir_all(env.p("home")).unwrap();
    let store = env.s("store");
    let mnt = env.s("mnt");
    let s3 = "s3://bucket/images?endpoint=http://127.0.0.1:9&region=garage";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--cache-size", "lots"], "--cache-size"),
        (vec!["--cache-size", "0"], "--cache-size"),
        (vec!["--fetch-timeout", "0s"], "--fetch-timeout"),
        (vec!["--read-deadline", "soon"], "--read-deadline"),
        (vec!["--memory-limit", "1M"], "--memory-limit"),
        (vec!["--metrics", "localhost"], "--metrics"),
        (vec!["--readahead", "12Q"], "--readahead"),
        (vec!["--fill-budget", "huge"], "--fill-budget"),
        (vec!["--store", "ftp://host/x"], "ftp"),
        (vec!["--store", "/nonexistent/store"], "no store directory"),
        (vec!["--store", s3], "no S3 credentials found"),
        (vec!["--image", "a b"], "image"),
        (vec!["--mountpoint", "/nonexistent/mnt"], "mount point"),
        (vec!["--mountpoint", "file"], "not a directory"),
    ];
    for (i, (change, want)) in cases.into_iter().enumerate() {
        let (mut store, mut image, mut mountpoint) =
            (store.clone(), "ok:1".to_owned(), mnt.clone());
        let mut extra: Vec<String> = Vec::new();
        for pair in change.chunks(2) {
            match pair[0] {
                "--store" => store = pair[1].to_owned(),
                "--image" => image = pair[1].to_owned(),
                "--mountpoint" if pair[1] == "file" => mountpoint = env.s("file"),
                "--mountpoint" => mountpoint = pair[1].to_owned(),
                flag => extra.extend([flag.to_owned(), pair[1].to_owned()]),
            }
        }
        let cache = env.p(&format!("cache{i}"));
        let log = env.p(&format!("log{i}"));
        let marker = format!("HYDRATE_TEST_MARK=bad-option-{}-{i}", std::process::id());
        let (key, value) = marker.split_once('=').unwrap();
        let out = Command::new(bin())
            .args(["mount", "--store", &store, "--cache-dir"])
            .arg(&cache)
            .arg("--log-file")
            .arg(&log)
            .args(&extra)
            .args([image.as_str(), mountpoint.as_str()])
            // Credentials only from where this test says: none.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", env.p("home"))
            .env(key, value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} ({want}) mounted");
        assert!(err.contains(want), "case {i}: {want:?} not in {err:?}");
        assert!(
            processes_marked(&marker).is_empty(),
            "case {i} ({want}) left a process"
        );
        assert!(!log.exists(), "case {i} ({want}) wrote a log file");
        assert!(!cache.exists(), "case {i} ({want}) created the cache");
        assert!(!is_mounted(&env.p("mnt")), "case {i} ({want}) mounted");
    }
}

/// Busy loops on every core, killed by pid when dropped.
struct CpuLoad(Vec<Child>);

impl CpuLoad {
    fn start() -> CpuLoad {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        CpuLoad(
            (0..cores)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn plain_umount_leaves_the_mount_point_reusable_under_load() {
    let _serial = serial();
    let env = Scratch::new("hydrate-lifecycle");
    let src = env.p("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        write_random(&src.join(format!("f{i}")), 300 << 10, i);
    }
    build(&src, &env.p("store"), "re:1");
    let mnt = env.p("mnt");
    let _load = CpuLoad::start();
    let mut daemons: Vec<i32> = Vec::new();
    let mut overlapped = 0;
    for round in 0..50 {
        if daemons
            .last()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
        {
            overlapped += 1;
        }
        // The same mount point and the same cache as the round before, whose daemon may still be flushing.
        let mut m = Mount::try_new(
            &env.p("store"),
            "re:1",
            &mnt,
            &env.p("cache"),
            &["--fill-budget", "0"],
        )
        .unwrap_or_else(|e| {
            let log = fs::read_to_string(env.p("cache/daemon.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "round {round}: mount after a plain umount failed: {e}\nlog (last lines first):\n{}",
                tail.join("\n")
            )
        });
        let pid = m.pid.expect("the new daemon's pid");
        let info = mount_info(&m.mountpoint);
        assert_eq!(
            info.supervisor.pid as i32, pid,
            "round {round}: status answers for another daemon"
        );
        let name = format!("f{}", round % 8);
        assert_eq!(
            fs::read(m.path(&name)).unwrap(),
            fs::read(src.join(&name)).unwrap(),
            "round {round}"
        );
        nix::mount::umount2(&m.mountpoint, nix::mount::MntFlags::empty()).unwrap_or_else(|e| {
            panic!(
                "round {round}: umount: {e}; held by: {:?}",
                holders(&m.mountpoint)
            )
        });
        // Unmounted: from here on this test, not the guard, waits for the daemon.
        m.pid = None;
        daemons.push(pid);
    }
    eprintln!("{overlapped} of 50 mounts started while the previous daemon was still running");
    // Every daemon finishes (flushing its cache) and exits on its own.
    let deadline = Instant::now() + Duration::from_secs(60);
    for pid in daemons {
        while Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                panic!("daemon {pid} did not exit after its mount was unmounted");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The shared cache is consistent: a last mount reads every file right, from the cache.
    let m = Mount::new(
        &env.p("store"),
        "re:1",
        &mnt,
        &env.p("cache"),
        &["--fill-budget", "0"],
    );
    for i in 0..8 {
        let name = format!("f{i}");
        assert_eq!(
            fs::read(m.path(&name)).unwrap(),
            fs::read(src.join(&name)).unwrap()
        );
    }
    assert_eq!(
        m.metric("store_range_requests"),
        0,
        "the files read in the 50 rounds were fetched again"
    );
    m.unmount();
}
