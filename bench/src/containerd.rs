//! The containerd part of the container section (issue 12): the same image and link as `containers.rs`, started
//! with `ctr image pull` + `ctr run` through a containerd 1.6 of the benchmark's own (own root, state and
//! sockets, CRI off), once with containerd's overlayfs snapshotter (the full pull) and once with `hydrate
//! snapshotter` (the image converted with `--containerd-tag`: containerd pulls a ~500-byte marker layer, the
//! snapshotter mounts the hydrate image lazily). Timed from `ctr image pull` to the container's first line of
//! output, each from a dropped page cache; bytes are what the registry sent through the link proxy. The learned
//! plan is the one the runc part recorded, published for containerd with `attach-trace --containerd-tag`.

use crate::containers::{first_output, need, run_ok, StartRun};
use crate::hydrate::Hydrate;
use crate::reads::drop_caches;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "hydrate-bench";

/// The ways of starting the container through containerd.
#[derive(Debug, Clone, Default)]
pub struct ContainerdResult {
    pub overlayfs: StartRun,
    pub hydrate_no_plan: StartRun,
    pub hydrate_with_plan: StartRun,
}

/// A containerd and a hydrate snapshotter of the benchmark's own, stopped by PID (and their containers' shims,
/// and mounts under their root) on drop.
struct Node {
    root: PathBuf,
    ctr: PathBuf,
    containerd: Child,
    snapshotter: Child,
}

impl Node {
    fn start(hydrate: &Hydrate, root: &Path) -> Result<Node> {
        let containerd = need("containerd")?;
        let ctr = need("ctr")?;
        need("containerd-shim-runc-v2")?;
        for dir in ["run", "containerd/root", "containerd/state", "snapshotter"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        let config = hydrate_testkit::containerd::config(root);
        std::fs::write(root.join("containerd.toml"), config)?;
        let snapshotter = Command::new(hydrate.program())
            .arg("snapshotter")
            .arg("--root")
            .arg(root.join("snapshotter"))
            .arg("--address")
            .arg(root.join("run/hydrate.sock"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("snapshotter.log"))?)
            .spawn()
            .context("starting hydrate snapshotter")?;
        let containerd = Command::new(&containerd)
            .arg("--config")
            .arg(root.join("containerd.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("containerd.log"))?)
            .spawn()
            .context("starting containerd")?;
        let node = Node {
            root: root.to_path_buf(),
            ctr,
            containerd,
            snapshotter,
        };
        let started = Instant::now();
        while !(node.ctr(&["version"]).status.success()
            && std::os::unix::net::UnixStream::connect(root.join("run/hydrate.sock")).is_ok())
        {
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "containerd or the snapshotter did not answer within 30 s (logs in {})",
                    root.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(node)
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("running ctr: {e}"))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(self.root.join("run/containerd.sock"))
            .args(["--namespace", NAMESPACE])
            .args(args);
        cmd
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        run_ok(&mut self.command(args))
    }

    /// `ctr image pull` + `ctr run --rm` of `reference` through `snapshotter`: seconds from `started` to the
    /// container's first line, which must be "ready".
    fn start_container(&self, reference: &str, snapshotter: &str, id: &str) -> Result<f64> {
        let started = Instant::now();
        self.ok(&[
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            snapshotter,
            reference,
        ])?;
        let child = self
            .command(&["run", "--rm", "--snapshotter", snapshotter, reference, id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ctr run")?;
        first_output(child, started)
    }

    /// Removes every image and collects garbage (the lazy image's mount and cache go with its last snapshot).
    fn remove_images(&self) -> Result<()> {
        for reference in self.ok(&["image", "ls", "-q"])?.lines() {
            if !reference.is_empty() {
                self.ok(&["image", "rm", "--sync", reference])?;
            }
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.remove_images();
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        let _ = self.snapshotter.kill();
        let _ = self.snapshotter.wait();
        // Whatever is still mounted under the root (a failed run's container or image), deepest first.
        if let Ok(info) = hydrate_mountinfo::MountInfo::read_self() {
            let mounts: Vec<_> = info.under(&self.root).rev().cloned().collect();
            for m in mounts {
                let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Runs the starts against the registry behind the link proxy at `far` (the image `library/bench:1`, and its
/// containerd forms `library/bench:1-ctr` and, with the learned plan, `library/bench:1-ctr-plan`, made by the
/// caller).
pub fn run(
    hydrate: &Hydrate,
    dir: &Path,
    far: &str,
    link_bytes: &dyn Fn() -> u64,
) -> Result<ContainerdResult> {
    let node = Node::start(hydrate, &dir.join("containerd-node"))?;
    let once = |reference: &str, snapshotter: &str, id: &str| -> Result<StartRun> {
        drop_caches()?;
        let bytes0 = link_bytes();
        let first = node.start_container(reference, snapshotter, id)?;
        let run = StartRun {
            first_output_secs: first,
            link_bytes: link_bytes() - bytes0,
            ..StartRun::default()
        };
        node.remove_images()?;
        Ok(run)
    };
    eprintln!("[containers] containerd: ctr image pull + ctr run, overlayfs snapshotter");
    let overlayfs = once(
        &format!("{far}/library/bench:1"),
        "overlayfs",
        "bench-overlay",
    )?;
    eprintln!("[containers] containerd: ctr image pull + ctr run, hydrate snapshotter, no plan");
    let hydrate_no_plan = once(
        &format!("{far}/library/bench:1-ctr"),
        "hydrate",
        "bench-hydrate",
    )?;
    eprintln!(
        "[containers] containerd: ctr image pull + ctr run, hydrate snapshotter, learned plan"
    );
    let hydrate_with_plan = once(
        &format!("{far}/library/bench:1-ctr-plan"),
        "hydrate",
        "bench-hydrate-plan",
    )?;
    Ok(ContainerdResult {
        overlayfs,
        hydrate_no_plan,
        hydrate_with_plan,
    })
}
