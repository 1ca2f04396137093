//! The systemd path of a mount (contrib/systemd/hydrate@.service), with this test as the service manager: it
//! receives the supervisor's notifications on its own NOTIFY_SOCKET (READY=1, and FDSTORE=1 of the /dev/fuse
//! descriptor and of the hand-over state), keeps the stored descriptors as systemd's fd store does, and after the
//! whole service is SIGKILLed starts it again with them (LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID). The mount
//! must survive: a reader that blocked while no daemon ran gets the right bytes once the new service resumes the
//! connection, and a file opened before the crash keeps working.
//!
//! Needs root and /dev/fuse like tests/mount.rs; no systemd is required (none runs on these machines).

mod common;

use common::*;
use hydrate_testkit::systemd::FakeSystemd;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Opens argv[1] (in the mount), checks its first MiB against argv[2] (the source), then after a line on stdin
/// checks its last MiB through the same handle.
const HOLD_OPEN: &str = r#"
import sys
f = open(sys.argv[1], "rb")
want = open(sys.argv[2], "rb").read()
print("head ok" if f.read(1 << 20) == want[:1 << 20] else "head wrong", flush=True)
sys.stdin.readline()
f.seek(-(1 << 20), 2)
print("tail ok" if f.read() == want[-(1 << 20):] else "tail wrong", flush=True)
"#;

/// Kills what the test started, by PID, and detaches the mount, also when the test fails.
struct Cleanup {
    mountpoint: PathBuf,
    children: Vec<Child>,
    helpers: Vec<Child>,
    /// Service logs, printed when the test fails.
    logs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- {} (end) ---", log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        if failed && is_mounted(&self.mountpoint) {
            // A service may be stuck in a request nobody answers: end the connection, so everything waiting on it
            // (the service, the reader, the helper) fails instead of hanging the test.
            let _ = Command::new(bin())
                .args(["abort", self.mountpoint.to_str().unwrap()])
                .output();
        }
        for helper in &mut self.helpers {
            let _ = helper.kill();
            let _ = helper.wait();
        }
        // After a failure a service may be stuck: kill first, then detach. Otherwise stop it the normal way.
        if !failed && is_mounted(&self.mountpoint) {
            let _ = Command::new(bin())
                .args(["umount", self.mountpoint.to_str().unwrap()])
                .output();
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(if failed { 0 } else { 10 });
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// `hydrate ARGS` as the service.
fn start_service(systemd: &FakeSystemd, args: &[&str], pass: &[&str], log: &Path) -> Child {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    systemd.start(Path::new(&bin()), &args, &[], pass, log)
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[test]
fn a_service_killed_whole_resumes_the_connection_from_the_fd_store() {
    let s = Scratch::new("hydrate-systemd");
    let src = s.p("src");
    std::fs::create_dir_all(&src).unwrap();
    write_random(&src.join("big"), 24 << 20, 21);
    write_random(&src.join("other"), 3 << 20, 22);
    hydrate_ok(&[
        "build",
        &s.s("src"),
        "--store",
        &s.s("store"),
        "--tag",
        "t:1",
    ]);
    let mountpoint = s.p("mnt");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let mountpoint = std::fs::canonicalize(&mountpoint).unwrap();
    let args = [
        "mount",
        "--foreground",
        "--store",
        &s.s("store"),
        "t:1",
        mountpoint.to_str().unwrap(),
        "--cache-dir",
        &s.s("cache"),
    ];
    let mut systemd = FakeSystemd::new(&s.p(""));
    let mut cleanup = Cleanup {
        mountpoint: mountpoint.clone(),
        children: Vec::new(),
        helpers: Vec::new(),
        logs: vec![s.p("service-1.log"), s.p("service-2.log")],
    };

    cleanup
        .children
        .push(start_service(&systemd, &args, &[], &s.p("service-1.log")));
    systemd.wait_ready(1, &mut cleanup.children[0]);
    // A file opened before the crash and read partly; its handle must outlive the service. It is held by another
    // process: this one forks the service, and a forked child closing a copy of a FUSE descriptor before its exec
    // would wait for a FLUSH answer while no service runs (a real service manager holds no such files).
    let mut holder = Command::new("/usr/bin/python3")
        .args(["-c", HOLD_OPEN])
        .arg(mountpoint.join("big"))
        .arg(src.join("big"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut holder_out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut holder_in = holder.stdin.take().unwrap();
    cleanup.helpers.push(holder);
    let mut line = String::new();
    holder_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "head ok");
    // The state in the store is refreshed at most once a second: wait until it records the open handle.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        systemd.pump();
        if let Some(state) = systemd.store.get("state") {
            let file = File::from(state.try_clone().unwrap());
            let mut bytes = vec![0u8; file.metadata().unwrap().len() as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).unwrap();
            let state = hydrate_supervisor::HandoverState::decode(&bytes).unwrap();
            if !state.opens.is_empty() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the stored state never recorded the open handle"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        systemd.store.contains_key("fuse") && systemd.store.contains_key("state"),
        "stored: {:?}",
        systemd.store.keys().collect::<Vec<_>>()
    );
    let worker = mount_info(&mountpoint)
        .supervisor
        .worker_pid
        .expect("hydrate status names the worker") as i32;

    // The whole service dies (supervisor SIGKILLed; its worker follows). Only the fd store keeps the connection.
    cleanup.children[0].kill().unwrap();
    cleanup.children[0].wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(worker) {
        assert!(
            Instant::now() < deadline,
            "the worker outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        is_mounted(&mountpoint),
        "the mount stays while the fd store holds the connection"
    );

    // A reader now blocks (nobody serves), it does not fail.
    let (tx, rx) = mpsc::channel();
    let path = mountpoint.join("other");
    let reader = std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(path));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a read while no service runs must wait, not fail"
    );

    // systemd restarts the service with the stored descriptors: it resumes the connection instead of mounting.
    cleanup.children.push(start_service(
        &systemd,
        &args,
        &["fuse", "state"],
        &s.p("service-2.log"),
    ));
    systemd.wait_ready(2, &mut cleanup.children[1]);
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the blocked reader finishes once the service is back")
        .expect("and its read succeeds");
    reader.join().unwrap();
    assert!(
        got == std::fs::read(src.join("other")).unwrap(),
        "wrong bytes after the restart"
    );
    writeln!(holder_in).unwrap();
    line.clear();
    holder_out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "tail ok",
        "a file opened before the crash still reads, and right"
    );
    assert!(cleanup.helpers[0].wait().unwrap().success());
    let log = std::fs::read_to_string(s.p("service-2.log")).unwrap_or_default();
    assert!(
        log.contains("resuming the FUSE connection kept by systemd"),
        "{log}"
    );
    assert_eq!(
        mounts_at(&mountpoint),
        1,
        "resumed, not mounted a second time"
    );

    // A deliberate stop unmounts and tells the manager to drop the stored descriptors. `hydrate umount` waits
    // for the service's pid to go away, so reap the service meanwhile, as the service manager would.
    let umount = Command::new(bin())
        .args(["umount", mountpoint.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = cleanup.children[1].wait().unwrap();
    assert!(status.success(), "the service ended with {status}");
    let out = umount.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "hydrate umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    systemd.pump();
    assert!(
        systemd.store.is_empty(),
        "left in the store: {:?}",
        systemd.store.keys().collect::<Vec<_>>()
    );
    assert!(!is_mounted(&mountpoint));
}
