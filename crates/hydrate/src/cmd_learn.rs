//! `hydrate learn`: a learned prefetch plan in one command.
//!
//! A plan makes a lazy start depend on the bytes a program reads rather than on its round trips (see
//! docs/benchmarks.md), but making one took three expert steps: a recording mount, a run of the workload, and
//! `attach-trace`. This command does them in one: it prepares a bundle of the image with `hydrate rootfs
//! --record-trace` (this same binary), runs the image's own command in it with runc, stops the container after
//! `--timeout` if it has not ended by then (a server never ends: its start is what the plan should cover), takes
//! the bundle apart (which writes the trace), and stores the image again with the plan (`attach-trace`), under
//! the image's own tag unless `--tag` names another, so that every later start of that tag replays it.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args as ClapArgs;
use hydrate_units::parse_duration;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(ClapArgs, Debug)]
#[command(after_help = "Example:\n  \
hydrate convert docker://127.0.0.1:5000/library/app:1 oci://127.0.0.1:5000/library/app:1-hydrate\n  \
hydrate learn oci://127.0.0.1:5000/library/app:1-hydrate          # the tag now names the image with its plan\n  \
hydrate learn --store ./store app:1 --tag app:1-plan --timeout 20s -- --serve")]
pub struct LearnArgs {
    /// Store holding the image [default: IMAGE itself, when it is a whole oci://registry/repository:tag].
    #[arg(long)]
    pub store: Option<String>,
    /// Image: a tag or manifest digest in --store, or a whole oci://registry/repository:tag address.
    pub image: String,
    /// Tag of the image with its plan [default: the image's own tag, which then names the image with the plan;
    /// required when the image is given by digest].
    #[arg(long)]
    pub tag: Option<String>,
    /// How long the command may run while it is recorded; a command still running then (a server) is stopped,
    /// and what it read until then is the plan.
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// Arguments replacing the image's Cmd (after --), as for `hydrate rootfs`.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Executable replacing the image's Entrypoint, as for `hydrate rootfs`.
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Set an environment variable (NAME=VALUE), as for `hydrate rootfs`. Repeatable.
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Network of the container: "private" (loopback only) or "host".
    #[arg(long, default_value = "private", value_parser = ["private", "host"])]
    pub net: String,
    /// The OCI runtime that runs the command.
    #[arg(long, default_value = "runc")]
    pub runtime: PathBuf,
    /// Files up to this size are prefetched whole at their first touch, as for `attach-trace`.
    #[arg(long, default_value = "256K")]
    pub small_file_max: String,
    /// Also publish the planned image's containerd form under this tag, as `attach-trace --containerd-tag`.
    #[arg(long)]
    pub containerd_tag: Option<String>,
}

pub fn run(args: LearnArgs) -> Result<()> {
    let timeout = parse_duration(&args.timeout).context("--timeout")?;
    let (store, image) = crate::cmd_rootfs::store_and_image(args.store.as_deref(), &args.image)?;
    let tag = match &args.tag {
        Some(tag) => tag.clone(),
        None if hydrate_store::keys::validate_tag(&image).is_ok() && !is_digest(&image) => {
            image.clone()
        }
        None => bail!("image {image:?} is given by digest: name the planned image with --tag"),
    };
    hydrate_store::keys::validate_tag(&tag).with_context(|| format!("tag {tag:?}"))?;
    if let Some(ctd_tag) = &args.containerd_tag {
        crate::cmd_convert::check_containerd_tag(&store, Some(&tag), ctd_tag)?;
    }
    let runtime = which(&args.runtime).ok_or_else(|| {
        anyhow!(
            "hydrate learn runs the image's command with {} and cannot find it (install runc, or name another \
             OCI runtime with --runtime)",
            args.runtime.display()
        )
    })?;
    let exe = crate::cmd_rootfs::hydrate_exe()?;
    let scratch = tempfile::Builder::new()
        .prefix("hydrate-learn.")
        .tempdir()
        .context("creating a scratch directory")?;
    let bundle = scratch.path().join("bundle");
    let trace = scratch.path().join("trace");

    let mut rootfs: Vec<OsString> = vec!["rootfs".into(), "--store".into(), store.clone().into()];
    rootfs.extend([image.clone().into(), bundle.clone().into()]);
    rootfs.extend([
        "--record-trace".into(),
        trace.clone().into(),
        "--net".into(),
        args.net.clone().into(),
    ]);
    if let Some(entrypoint) = &args.entrypoint {
        rootfs.extend(["--entrypoint".into(), entrypoint.into()]);
    }
    for env in &args.env {
        rootfs.extend(["--env".into(), env.into()]);
    }
    if !args.args.is_empty() {
        rootfs.push("--".into());
        rootfs.extend(args.args.iter().map(OsString::from));
    }
    run_ok(Command::new(&exe).args(&rootfs)).context("preparing the recording bundle")?;
    let ran = run_container(&runtime, &bundle, timeout);
    let removed = run_ok(
        Command::new(&exe)
            .arg("rootfs")
            .arg("--remove")
            .arg(&bundle),
    )
    .context("taking the recording bundle apart");
    let outcome = ran?;
    removed?;
    eprintln!("{outcome}");

    let recorded = hydrate_core::read_trace(&trace).context("reading the recorded trace")?;
    if recorded.events.is_empty() {
        bail!("the command read nothing from the image ({outcome}): there is no plan to store");
    }
    crate::cmd_build::attach_and_report(
        &store,
        &image,
        &recorded,
        Some(&tag),
        &args.small_file_max,
        args.containerd_tag.as_deref(),
    )
}

/// Runs the bundle's container, stopping it after `timeout`; says how it ended.
fn run_container(runtime: &Path, bundle: &Path, timeout: Duration) -> Result<String> {
    let id = format!("hydrate-learn-{}", std::process::id());
    let mut child = Command::new(runtime)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", runtime.display()))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= timeout {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let outcome = match status {
        Some(status) => format!(
            "the command ended after {:.1} s ({status})",
            started.elapsed().as_secs_f64()
        ),
        None => {
            // Still running at the timeout (a server): stop it; what it read so far is the plan.
            let _ = Command::new(runtime).args(["kill", &id, "KILL"]).output();
            let _ = child.wait();
            format!("the command was stopped after the {timeout:?} timeout")
        }
    };
    let _ = Command::new(runtime).args(["delete", "-f", &id]).output();
    Ok(outcome)
}

fn is_digest(image: &str) -> bool {
    image.len() == 64 && image.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `program` as given if it has a slash, else found on PATH.
fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            cmd.get_args()
                .take(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<String>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
