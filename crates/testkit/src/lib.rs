//! Test support for hydrate's remote stores: real servers on loopback, and a network that misbehaves on cue.
//!
//! Every launcher starts its server on 127.0.0.1 at a free port, in a temporary directory it owns, with a
//! configuration it writes itself (no system service, no shared state), and stops it by PID when dropped, also
//! when the test panics.
//!
//! **One skip policy** for every test that needs something of the machine (a server binary, root): in CI
//! (`HYDRATE_REQUIRE_SERVERS` set) a missing requirement fails the test; elsewhere the test is skipped with a
//! loud message naming it, never passed silently. [`skip_or_fail`] is that policy; [`require_binary`] and
//! [`require_root!`] are its uses, and tests use nothing else to decide to skip.
//!
//! - [`garage`]: Garage (S3), a single node or a cluster with replication.
//! - [`nginx`]: nginx serving a directory, or proxying to an upstream.
//! - [`proxy`]: a fault-injecting TCP proxy (latency, bandwidth, resets, stalls, truncation, bit flips, HTTP 500s).
//! - `registry`: the OCI registry launcher (Debian `docker-registry`).
//! - [`oci_image`]: OCI image layouts with hand-made layers (whiteouts, links, devices, xattrs) or host programs.
//! - [`loopfs`]: loop-mounted ext4, xfs and btrfs images (HSM tests and benchmark).
//! - [`rng`]: deterministic, incompressible test data (also used by the benchmark).
//! - [`systemd`]: a stand-in service manager (notify socket, fd store, LISTEN_FDS) for the daemons' systemd paths.
//! - [`containerd`]: containerd configurations for tests and the benchmark.

// Only `systemd` needs unsafe code (adopting descriptors received with SCM_RIGHTS, and moving descriptors
// between fork and exec), each use with its SAFETY comment.
#![deny(unsafe_code)]

pub mod containerd;
pub mod garage;
pub mod loopfs;
pub mod nginx;
pub mod oci_image;
pub mod proxy;
pub mod registry;
pub mod rng;
#[allow(unsafe_code)]
pub mod systemd;
pub mod token_server;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Failures of the test servers: which server and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("{server}: starting {binary}: {source}")]
    Spawn {
        server: &'static str,
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("{server}: {what}: {source}")]
    Io {
        server: &'static str,
        what: String,
        source: std::io::Error,
    },
    #[error("{server}: not ready within {after:?}: {detail}")]
    NotReady {
        server: &'static str,
        after: Duration,
        detail: String,
    },
    #[error("{server}: `{command}` failed: {output}")]
    Command {
        server: &'static str,
        command: String,
        output: String,
    },
}

/// Environment variable that turns a missing server binary from a skipped test into a failure (CI sets it).
pub const REQUIRE_SERVERS_ENV: &str = "HYDRATE_REQUIRE_SERVERS";

/// Directories searched for server binaries besides `PATH` (sudo's PATH often lacks sbin and ~/.cargo/bin).
fn extra_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs
}

/// Where `name` is installed, if anywhere.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The skip policy: `test` cannot run because `missing`. Panics when `HYDRATE_REQUIRE_SERVERS` is set (CI
/// must run every test); otherwise prints a loud SKIPPED line naming the test, what is missing and `hint`, and
/// returns so that the caller returns early.
pub fn skip_or_fail(test: &str, missing: &str, hint: &str) {
    if std::env::var_os(REQUIRE_SERVERS_ENV).is_some() {
        panic!("{test}: {missing} and {REQUIRE_SERVERS_ENV} is set; {hint}");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED {test}: {missing} ({hint}; set {REQUIRE_SERVERS_ENV}=1 to make this a failure) \
         !!!!!!!!\n"
    );
}

/// The binary `name` for a test that needs it, or `None` after [`skip_or_fail`] (the test then returns early).
pub fn require_binary(name: &str, test: &str) -> Option<PathBuf> {
    if let Some(found) = find_binary(name) {
        return Some(found);
    }
    skip_or_fail(
        test,
        &format!("server binary {name:?} not found"),
        "install it with scripts/install-test-deps.sh",
    );
    None
}

/// Whether the test may go on as root; `false` after [`skip_or_fail`] when it does not run as root.
pub fn require_root(test: &str, why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip_or_fail(
        test,
        &format!("needs root ({why})"),
        "run the tests as root",
    );
    false
}

/// The path of the function this expands in (`crate::module::test_name`): names a test in skip messages.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        fn name_of<T>(_: T) -> &'static str {
            std::any::type_name::<T>()
        }
        name_of(here).trim_end_matches("::here")
    }};
}

/// Returns from the calling test unless it runs as root, following [`skip_or_fail`]:
/// `require_root!("fanotify pre-content, loop devices");`
#[macro_export]
macro_rules! require_root {
    ($why:expr) => {
        if !$crate::require_root($crate::test_name!(), $why) {
            return;
        }
    };
}

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// Waits until something accepts connections on `addr`, or the process exits, or `timeout` passes.
pub fn wait_for_port(
    server: &'static str,
    process: &mut ServerProcess,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), TestkitError> {
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = process.try_exited() {
            return Err(TestkitError::NotReady {
                server,
                after: start.elapsed(),
                detail: format!(
                    "exited with {status} before listening on {addr}; see {}",
                    process.log.display()
                ),
            });
        }
        if start.elapsed() > timeout {
            return Err(TestkitError::NotReady {
                server,
                after: timeout,
                detail: format!("nothing listens on {addr}; see {}", process.log.display()),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server child process, killed (SIGKILL, by its PID) and reaped when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    /// The file receiving the server's stdout and stderr.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(
        server: &'static str,
        mut command: Command,
        log: &Path,
    ) -> Result<ServerProcess, TestkitError> {
        let io_err = |what: &str, source| TestkitError::Io {
            server,
            what: format!("{what} {}", log.display()),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| io_err("opening log", e))?;
        let err = out.try_clone().map_err(|e| io_err("opening log", e))?;
        command
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        let binary = PathBuf::from(command.get_program());
        let child = command.spawn().map_err(|source| TestkitError::Spawn {
            server,
            binary,
            source,
        })?;
        Ok(ServerProcess {
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The PID, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has exited.
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills the process with SIGKILL (a crash, as far as the server is concerned) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// The last `max` bytes of the server's log, for error messages.
    pub fn log_tail(&self, max: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let from = text.len().saturating_sub(max);
        String::from_utf8_lossy(&text[from..]).into_owned()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary directory for a server's files, under /var/tmp (real disk: tmpfs lacks some features, and
/// Garage's data is sizeable).
pub(crate) fn server_dir(
    prefix: &str,
    server: &'static str,
) -> Result<tempfile::TempDir, TestkitError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .map_err(|source| TestkitError::Io {
            server,
            what: "creating a temporary directory in /var/tmp".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_is_killed_on_drop_and_binaries_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let process = ServerProcess::spawn("sleep", cmd, &dir.path().join("log")).unwrap();
        let pid = nix::unistd::Pid::from_raw(process.pid().unwrap() as i32);
        assert!(nix::sys::signal::kill(pid, None).is_ok());
        drop(process);
        assert!(
            nix::sys::signal::kill(pid, None).is_err(),
            "killed and reaped"
        );

        assert!(find_binary("sh").is_some());
        assert!(find_binary("no-such-server-binary").is_none());
        assert_ne!(free_port(), 0);
    }
}
