//! A stand-in for systemd as a service manager, for tests of the daemons' systemd paths (these machines do not
//! run systemd as PID 1): the notification socket of sd_notify(3) (READY=1, STATUS=, FDSTORE=1 / FDSTOREREMOVE=1
//! with FDNAME=), an fd store that holds the stored descriptors the way systemd does, and starting a service
//! with stored descriptors passed as LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID.

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The service manager's side of sd_notify(3) and the fd store.
pub struct FakeSystemd {
    socket: UnixDatagram,
    pub path: PathBuf,
    /// The fd store: name → descriptor.
    pub store: HashMap<String, OwnedFd>,
    pub ready: usize,
    /// Every STATUS= received, in order.
    pub statuses: Vec<String>,
    /// STOPPING=1 notifications received.
    pub stopping: usize,
}

impl FakeSystemd {
    pub fn new(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        FakeSystemd {
            socket,
            path,
            store: HashMap::new(),
            ready: 0,
            statuses: Vec::new(),
            stopping: 0,
        }
    }

    /// Handles every notification waiting on the socket.
    pub fn pump(&mut self) {
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
            if field("STOPPING").as_deref() == Some("1") {
                self.stopping += 1;
            }
            if let Some(status) = field("STATUS") {
                self.statuses.push(status);
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
    pub fn wait_ready(&mut self, count: usize, child: &mut Child) {
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

    /// Starts `program ARGS` as the service (stdout to /dev/null, stderr to `log`): NOTIFY_SOCKET set, and the
    /// stored descriptors named in `pass` handed over as LISTEN_FDS from descriptor 3 on (LISTEN_PID set to the
    /// service's pid by an exec'ing shell).
    pub fn start(
        &self,
        program: &Path,
        args: &[&OsStr],
        envs: &[(&str, &OsStr)],
        pass: &[&str],
        log: &Path,
    ) -> Child {
        let fds: Vec<RawFd> = pass
            .iter()
            .map(|name| self.store[*name].as_raw_fd())
            .collect();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(program)
            .args(args)
            .envs(envs.iter().copied())
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
                    let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                    if copy < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high.push(copy);
                }
                for (i, &fd) in high.iter().enumerate() {
                    if libc::dup2(fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }
}
