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
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
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

/// The service manager's side of sd_notify(3) and the fd store.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
    /// The fd store: name → descriptor.
    store: HashMap<String, OwnedFd>,
    ready: usize,
}

impl FakeSystemd {
    fn new(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        FakeSystemd {
            socket,
            path,
            store: HashMap::new(),
            ready: 0,
        }
    }

    /// Handles every notification waiting on the socket.
    fn pump(&mut self) {
        loop {
            let mut buf = [0u8; 4096];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; 8]);
            let msg = match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(e) => panic!("receiving a notification: {e}"),
            };
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: SCM_RIGHTS just installed these descriptors in this process; nothing else owns them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let len = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}=")))
                    .map(str::to_owned)
            };
            if field("READY").as_deref() == Some("1") {
                self.ready += 1;
            }
            let name = field("FDNAME").unwrap_or_else(|| "stored".to_owned());
            if field("FDSTOREREMOVE").as_deref() == Some("1") {
                self.store.remove(&name);
            }
            if field("FDSTORE").as_deref() == Some("1") {
                assert_eq!(
                    fds.len(),
                    1,
                    "FDSTORE of {name} with {} descriptors",
                    fds.len()
                );
                self.store.insert(name, fds.remove(0));
            }
        }
    }

    /// Waits until READY=1 has been received `count` times in all.
    fn wait_ready(&mut self, count: usize, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ready < count {
            self.pump();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the service exited with {status} before it was ready");
            }
            assert!(Instant::now() < deadline, "no READY=1 within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `hydrate ARGS` as the service: NOTIFY_SOCKET set, and the stored descriptors named in `pass`
    /// handed over as LISTEN_FDS from descriptor 3 on (LISTEN_PID set to the service's pid by an exec'ing shell).
    fn start(&self, args: &[&str], pass: &[&str], log: &Path) -> Child {
        let fds: Vec<RawFd> = pass
            .iter()
            .map(|name| self.store[*name].as_raw_fd())
            .collect();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(bin())
            .args(args)
            .env("NOTIFY_SOCKET", &self.path)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).unwrap());
        if !fds.is_empty() {
            cmd.env("LISTEN_FDS", fds.len().to_string())
                .env("LISTEN_FDNAMES", pass.join(":"));
        }
        // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first, so that moving one into 3.. cannot overwrite another.
                let mut high = Vec::new();
                for &fd in &fds {
                    let copy = nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, 100);
                    if copy < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high.push(copy);
                }
                for (i, &fd) in high.iter().enumerate() {
                    if nix::libc::dup2(fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    nix::libc::close(fd);
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }
}

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
        .push(systemd.start(&args, &[], &s.p("service-1.log")));
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
    cleanup
        .children
        .push(systemd.start(&args, &["fuse", "state"], &s.p("service-2.log")));
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
