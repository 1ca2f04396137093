//! Zeros hazard 1 under systemd (contrib/systemd/hydrate-hsm@.service): the fanotify group and every unanswered
//! event are in the service's fd store, so kill -9 of **every** hsm process leaves readers of stubs blocked,
//! never reading zeros, until the restarted service answers them. This test is the service manager
//! (`hydrate_testkit::systemd::FakeSystemd`: notify socket, fd store, LISTEN_FDS), as systemd is not PID 1 here.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hydrate_format::oci::sha256_digest;
use hydrate_hsm::Layout;
use hydrate_testkit::rng::random_bytes;
use hydrate_testkit::systemd::FakeSystemd;

use crate::support::*;

/// Kills the services and readers the test started (by PID) and a worker left behind, also on failure.
struct Guard {
    root: PathBuf,
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Guard {
    fn worker_pid(&self) -> Option<i32> {
        std::fs::read_to_string(Layout::new(&self.root).worker_pid())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                eprintln!("--- {} ---\n{text}", log.display());
            }
        }
        let worker = self.worker_pid();
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = worker {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn stored_events(systemd: &FakeSystemd) -> usize {
    systemd
        .store
        .keys()
        .filter(|k| k.starts_with("hsm-event."))
        .count()
}

#[test]
fn every_hsm_process_killed_leaves_readers_blocked_until_the_restarted_service_answers() {
    hydrate_testkit::require_root!("fanotify pre-content events, loop-mounted file systems");
    let Some(garage) = garage() else { return };
    let proxy = hydrate_testkit::proxy::FaultProxy::start(garage.nodes()[0].s3_addr).unwrap();
    let store = garage.store_addr_at(&proxy.url(), "hsm-fdstore");
    let dir = TestDir::new();
    let root = dir.path().join("data");
    let len = 2 << 20;
    {
        let hsm = Hsm::init(&root, &store, "120s");
        for i in 0..4 {
            std::fs::write(root.join(format!("f{i}")), random_bytes(300 + i, len)).unwrap();
        }
        hsm.archive_and_release();
        // Stopped cleanly; from here on the daemon runs as the service.
    }
    let root = root.canonicalize().unwrap();
    let mut systemd = FakeSystemd::new(dir.path());
    let mut guard = Guard {
        root: root.clone(),
        children: Vec::new(),
        logs: vec![
            dir.path().join("service-1.log"),
            dir.path().join("service-2.log"),
        ],
    };
    let credentials = hydrate_testkit::garage::Garage::credentials_env();
    let mut envs: Vec<(&str, &OsStr)> = credentials
        .iter()
        .map(|(k, v)| (*k, OsStr::new(*v)))
        .collect();
    envs.push(("HYDRATE_LOG", OsStr::new("info")));
    let args: [&OsStr; 3] = ["hsm".as_ref(), "daemon".as_ref(), root.as_os_str()];
    guard
        .children
        .push(systemd.start(Path::new(BIN), &args, &envs, &[], &guard.logs[0]));
    systemd.wait_ready(1, &mut guard.children[0]);
    systemd.pump();
    assert!(
        systemd.store.contains_key("hsm-group"),
        "the group is stored: {:?}",
        systemd.store.keys().collect::<Vec<_>>()
    );

    // The store stops answering: every recall hangs, so the readers' events stay unanswered.
    proxy.faults().set_stall(true);
    let readers: Vec<Child> = (0..3)
        .map(|i| {
            Command::new("sha256sum")
                .arg(root.join(format!("f{i}")))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_events(&systemd) < 3 {
        assert!(
            Instant::now() < deadline,
            "the readers' events did not reach the fd store: {:?}",
            systemd.store.keys().collect::<Vec<_>>()
        );
        systemd.pump();
        std::thread::sleep(Duration::from_millis(20));
    }

    // kill -9 of every hsm process: the holder (the service's main process), then its worker.
    let worker = guard.worker_pid().expect("the worker's pid");
    let mut holder = guard.children.remove(0);
    holder.kill().unwrap();
    holder.wait().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(worker) {
        assert!(Instant::now() < deadline, "worker {worker} did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut readers = readers;
    guard.children.append(&mut readers);
    // No hsm process runs; only the fd store holds the group. Readers stay blocked: without the store the
    // kernel would have allowed their events and they would have hashed the holes' zeros by now.
    std::thread::sleep(Duration::from_secs(2));
    for (i, reader) in guard.children.iter_mut().enumerate() {
        assert!(
            reader.try_wait().unwrap().is_none(),
            "reader of f{i} finished while no hsm process ran"
        );
    }

    // The store answers again and the service restarts with what systemd kept.
    proxy.faults().set_stall(false);
    systemd.pump();
    let names: Vec<String> = systemd.store.keys().cloned().collect();
    let pass: Vec<&str> = names.iter().map(String::as_str).collect();
    guard
        .children
        .push(systemd.start(Path::new(BIN), &args, &envs, &pass, &guard.logs[1]));
    let service = guard.children.len() - 1;
    systemd.wait_ready(2, &mut guard.children[service]);
    for i in 0..3 {
        let reader = &mut guard.children[i];
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = reader.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "reader of f{i} still blocked after the restart"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        std::io::Read::read_to_string(reader.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(status.success(), "reader of f{i}: {status}: {out}");
        assert_eq!(
            format!("sha256:{}", out.split_whitespace().next().unwrap_or("")),
            sha256_digest(&random_bytes(300 + i as u64, len)),
            "f{i} read wrong bytes across the crash"
        );
    }
    // Every answered event left the store; the group stays while the service runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_events(&systemd) > 0 {
        assert!(
            Instant::now() < deadline,
            "answered events stay in the fd store: {:?}",
            systemd.store.keys().collect::<Vec<_>>()
        );
        systemd.pump();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(systemd.store.contains_key("hsm-group"));

    // New accesses are served by the restarted service, then `systemctl stop` empties the store.
    let f3 = std::fs::read(root.join("f3")).unwrap();
    assert!(f3 == random_bytes(303, len), "f3, read after the restart");
    let pid = guard.children[service].id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = guard.children[service].wait().unwrap();
    assert!(
        status.success(),
        "the service ended with {status} on SIGTERM"
    );
    systemd.pump();
    assert!(
        systemd.store.is_empty(),
        "a stopped service leaves {:?} in the store",
        systemd.store.keys().collect::<Vec<_>>()
    );
    assert_eq!(systemd.stopping, 1);
}
