//! The harness of the containerd tests: a containerd and a hydrate snapshotter of one test, started with
//! their own directories and sockets, stopped by PID, and everything they leave behind (shims, mounts) cleaned
//! up on drop, also when a test fails.

use crate::common::*;
use hydrate_testkit::require_binary;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const NAMESPACE: &str = "hydrate-test";

pub struct Tools {
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub skopeo: PathBuf,
}

pub fn tools(test: &str) -> Option<Tools> {
    if !hydrate_testkit::require_root(test, "containerd, mounts") {
        return None;
    }
    require_binary("runc", test)?;
    require_binary("containerd-shim-runc-v2", test)?;
    Some(Tools {
        containerd: require_binary("containerd", test)?,
        ctr: require_binary("ctr", test)?,
        skopeo: require_binary("skopeo", test)?,
    })
}

/// A containerd and a hydrate snapshotter of one test, with everything they leave behind cleaned up on drop
/// (shims of this containerd, mounts under the scratch directory), before the scratch directory goes.
pub struct Node {
    pub ctr: PathBuf,
    root: PathBuf,
    containerd: Child,
    snapshotter: Option<Child>,
    snapshotter_args: Vec<String>,
}

impl Node {
    pub fn start(tools: &Tools, s: &Scratch, snapshotter_args: &[&str]) -> Node {
        Node::start_with(
            tools,
            s,
            snapshotter_args,
            hydrate_testkit::containerd::config,
        )
    }

    /// [`Node::start`] with containerd's configuration made by `config` from the node's root.
    pub fn start_with(
        tools: &Tools,
        s: &Scratch,
        snapshotter_args: &[&str],
        config: impl FnOnce(&Path) -> String,
    ) -> Node {
        let root = s.root.clone();
        for dir in ["run", "containerd/root", "containerd/state", "snapshotter"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let config = config(&root);
        std::fs::write(root.join("containerd.toml"), config).unwrap();
        let mut node = Node {
            ctr: tools.ctr.clone(),
            root: root.clone(),
            containerd: Command::new(&tools.containerd)
                .arg("--config")
                .arg(root.join("containerd.toml"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(root.join("containerd.log")).unwrap())
                .spawn()
                .expect("starting containerd"),
            snapshotter: None,
            snapshotter_args: snapshotter_args.iter().map(|a| a.to_string()).collect(),
        };
        node.start_snapshotter();
        let started = Instant::now();
        while !node.ctr_cmd(&["version"]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "containerd did not answer: {}",
                node.log("containerd.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }

    /// containerd's gRPC socket (also the CRI plugin's, when it is on).
    pub fn socket(&self) -> PathBuf {
        self.root.join("run/containerd.sock")
    }

    pub fn snapshotter_root(&self) -> PathBuf {
        self.root.join("snapshotter")
    }

    pub fn start_snapshotter(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("snapshotter.log"))
            .unwrap();
        let child = Command::new(bin())
            .arg("snapshotter")
            .arg("--root")
            .arg(self.snapshotter_root())
            .arg("--address")
            .arg(self.root.join("run/hydrate.sock"))
            .args(&self.snapshotter_args)
            .env("HYDRATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting hydrate snapshotter");
        self.snapshotter = Some(child);
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(self.root.join("run/hydrate.sock")).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the snapshotter did not listen: {}",
                self.log("snapshotter.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 of the snapshotter (its mounts' daemons are separate processes and stay).
    pub fn kill_snapshotter(&mut self) {
        if let Some(mut child) = self.snapshotter.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.root.join(name)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(self.root.join("run/containerd.sock"))
            .args(["--namespace", NAMESPACE])
            .args(args);
        cmd
    }

    /// `ctr run` through a snapshotter that was just restarted: containerd's gRPC connection to the proxy
    /// plugin fails fast ("unavailable") until its reconnect backoff (1 s, growing) lets it dial again.
    pub fn run_after_restart(&self, reference: &str, id: &str, args: &[&str]) -> String {
        let started = Instant::now();
        loop {
            let mut all = vec!["run", "--rm", "--snapshotter", "hydrate", reference, id];
            all.extend(args);
            let out = self.ctr_cmd(&all);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success()
                || !stderr.contains("unavailable")
                || started.elapsed() > Duration::from_secs(30)
            {
                return self.ctr(&all);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A synchronous garbage collection (deleting a lease with --sync collects everything unreferenced).
    pub fn collect_garbage(&self) {
        let id = format!("gc-{}", std::process::id());
        self.ctr(&["leases", "create", "--id", &id]);
        self.ctr(&["leases", "delete", "--sync", &id]);
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().expect("running ctr")
    }

    /// `ctr ARGS`, which must succeed; its standard output.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_cmd(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\n{}\n--- snapshotter log:\n{}\n--- containerd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log("snapshotter.log"),
            self.log("containerd.log"),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr ARGS`, which must fail; its standard error.
    pub fn ctr_err(&self, args: &[&str]) -> String {
        let out = self.ctr_cmd(args);
        assert!(
            !out.status.success(),
            "ctr {args:?} succeeded but should have failed"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn pull(&self, reference: &str, snapshotter: &str) {
        self.ctr(&[
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            snapshotter,
            reference,
        ]);
    }

    /// `ctr run --rm` of `reference` through `snapshotter`; the container's output.
    pub fn run(&self, reference: &str, snapshotter: &str, id: &str, args: &[&str]) -> String {
        let mut all = vec!["run", "--rm", "--snapshotter", snapshotter, reference, id];
        all.extend(args);
        self.ctr(&all)
    }

    /// Mounts under the snapshotter's root (lazy images and anything left by mistake).
    pub fn mounts_under_root(&self) -> Vec<PathBuf> {
        let info = hydrate_mountinfo::MountInfo::read_self().unwrap();
        let root = self.snapshotter_root();
        info.under(&root).map(|e| e.mount_point.clone()).collect()
    }

    /// Snapshot directories of the hydrate snapshotter.
    pub fn snapshot_dirs(&self) -> Vec<String> {
        let dir = self.snapshotter_root().join("snapshots");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Removes every image of the namespace with a synchronous garbage collection.
    pub fn remove_images(&self) {
        let list = self.ctr(&["image", "ls", "-q"]);
        for reference in list.lines().filter(|l| !l.is_empty()) {
            self.ctr(&["image", "rm", "--sync", reference]);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Containers left by a failed test: their shims were started for this containerd's socket.
        let socket = self.root.join("run/containerd.sock");
        for pid in processes_mentioning(&socket.display().to_string()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        self.kill_snapshotter();
        // Deepest first: container root filesystems, then the lazy images under them.
        let info = hydrate_mountinfo::MountInfo::read_self().unwrap();
        let mounts: Vec<_> = info.under(&self.root).rev().cloned().collect();
        for m in mounts {
            if m.is_fuse() {
                let _ = hydrate(&[
                    "umount".as_ref(),
                    "--lazy".as_ref(),
                    m.mount_point.as_os_str(),
                ]);
            }
            let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// PIDs of processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
            {
                pids.push(pid);
            }
        }
    }
    pids
}
