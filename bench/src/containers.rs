//! The container section (`--containers`, `--containers-only`): what issue 7 asks to measure.
//!
//! An OCI image of this machine's python3 with its standard library (gzip layer) and large incompressible data
//! files (plain layer; `--container-image-size` in all) is pushed with skopeo into a real registry (Debian
//! `docker-registry`) and converted there once with `hydrate convert` (not timed: a registry holds both, like
//! `…:1` and `…:1-hydrate`). The registry is then reached only through hydrate-testkit's link proxy (one-way
//! delay and bandwidth as in the other link sections). The container's entrypoint imports a list of stdlib
//! modules and reads the first part of four data files (about 6% of the image), then prints one line.
//!
//! Measured, each from a cold page cache, as the time from the first command to the container's first line of
//! output, and the bytes that crossed the link:
//! 1. **Full pull**: `skopeo copy docker://… oci:DIR` + `umoci unpack` + `runc run` (the baseline);
//! 2. **hydrate lazy, no plan**: `hydrate rootfs oci://…:1-hydrate` + `runc run`, fresh cache;
//! 3. **hydrate with a learned plan**: the same after a recording run (`hydrate rootfs --record-trace`) and
//!    `hydrate attach-trace` stored the plan as `…:1-plan` in the registry.

use crate::hydrate::Hydrate;
use crate::reads::drop_caches;
use crate::startup;
use anyhow::{anyhow, bail, Context, Result};
use hydrate_testkit::oci_image::{
    host_program_rootfs, Compression, Layer, Meta, OciLayout, RunConfig,
};
use hydrate_testkit::proxy::FaultProxy;
use hydrate_testkit::registry::Registry;
use hydrate_units::human;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub image_size: u64,
    pub one_way: Duration,
    pub bytes_per_sec: u64,
    pub seed: u64,
    /// Also start the container with the image in kernel mode (`hydrate rootfs --kernel`), in this many rounds
    /// of (kernel, FUSE) pairs (0: not at all); see [`KernelComparison`].
    pub kernel_rounds: usize,
}

/// One way of starting the container.
#[derive(Debug, Clone, Default)]
pub struct StartRun {
    /// From the first command to the container's first line of output.
    pub first_output_secs: f64,
    /// Bytes the registry sent through the link.
    pub link_bytes: u64,
    /// Preparation part (pull + unpack, or `hydrate rootfs`).
    pub prepare_secs: f64,
    /// hydrate runs: store requests, and chunks fetched on demand (a read waited for them), by the time the
    /// container exited.
    pub requests: u64,
    pub ondemand_chunks: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ContainerResult {
    pub one_way_ms: f64,
    pub link_mbit: f64,
    pub image_bytes: u64,
    pub read_bytes: u64,
    pub full_pull: StartRun,
    pub no_plan: StartRun,
    pub with_plan: StartRun,
    pub plan_entries: u64,
    /// The same two starts with the image mounted in kernel mode (`hydrate rootfs --kernel`, erofs), against
    /// FUSE mode (issue 13's goal: no slower).
    pub kernel: Option<KernelComparison>,
    /// The same image through containerd (`ctr image pull` + `ctr run`), when containerd is installed.
    pub containerd: Option<crate::containerd::ContainerdResult>,
}

/// Kernel mode against FUSE mode, in rounds: one run alone varies by ±15% here (the link proxy, runc, the
/// page cache), more than the difference measured, so each round starts the container in both modes back to
/// back (which goes first alternates) and the medians of the rounds are compared. Round 0's FUSE runs are the
/// section's `no_plan` and `with_plan`.
#[derive(Debug, Clone, Default)]
pub struct KernelComparison {
    /// Per round: (FUSE, kernel) without a plan, then (FUSE, kernel) with the learned plan.
    pub rounds: Vec<[(StartRun, StartRun); 2]>,
}

impl KernelComparison {
    /// The medians of first-output seconds over the rounds: (FUSE, kernel), for no plan (0) or plan (1).
    pub fn medians(&self, which: usize) -> (f64, f64) {
        let median = |pick: &dyn Fn(&(StartRun, StartRun)) -> f64| {
            let mut v: Vec<f64> = self.rounds.iter().map(|r| pick(&r[which])).collect();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => v[n / 2],
                n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
            }
        };
        (
            median(&|p| p.0.first_output_secs),
            median(&|p| p.1.first_output_secs),
        )
    }
}

fn step(what: &str) {
    eprintln!("[containers] {what}");
}

/// Runs `cmd`; its stdout, or an error with the command line, exit status and stderr.
pub(crate) fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A tool the registry sections need, found on PATH or in the usual system directories.
pub(crate) fn need(name: &str) -> Result<PathBuf> {
    hydrate_testkit::find_binary(name).ok_or_else(|| {
        anyhow!("this benchmark section needs {name} (scripts/install-test-deps.sh installs it)")
    })
}

struct Tools {
    skopeo: PathBuf,
    umoci: PathBuf,
    runc: PathBuf,
}

/// Runs the bundle with runc; returns the seconds from `started` to its first line of output, and checks that it
/// ends well and said "ready".
fn run_container(runc: &Path, bundle: &Path, id: &str, started: Instant) -> Result<f64> {
    let child = Command::new(runc)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting runc")?;
    let first = first_output(child, started);
    let _ = Command::new(runc).args(["delete", "-f", id]).output();
    first
}

/// Waits for a container process started with piped stdout and stderr: the seconds from `started` to its first
/// line of output; an error unless it ends well and that line says "ready".
pub(crate) fn first_output(mut child: std::process::Child, started: Instant) -> Result<f64> {
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .context("reading the container's output")?;
    let first = started.elapsed().as_secs_f64();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest)?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err)?;
    }
    let status = child.wait()?;
    if !status.success() || !line.starts_with("ready") {
        bail!(
            "the container failed ({status}): {line}{rest}{}",
            err.trim()
        );
    }
    Ok(first)
}

/// The image: python + stdlib (gzip layer), data files (plain layer: random data does not compress), and the
/// app. Returns (image bytes, per-file read size).
fn make_image(dir: &Path, plan: &ContainerPlan) -> Result<(u64, u64)> {
    let root = dir.join("py-root");
    let python =
        std::fs::canonicalize("/usr/bin/python3").context("the host's /usr/bin/python3")?;
    let stdlib = run_ok(Command::new(&python).args([
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
    ]))?;
    host_program_rootfs(
        &root,
        &[Path::new("/usr/bin/python3"), &python],
        &[Path::new(stdlib.trim())],
    )
    .context("assembling the python root filesystem")?;
    let python_bytes = crate::phases::dir_usage(&root)?.1;
    // The same sizes and reads as the start-up section's cold start.
    let (count, each, read_each) = startup::big_files(plan.image_size, python_bytes);
    let data = dir.join("data-root");
    startup::write_big_files(&data.join("data"), count, each, plan.seed)?;
    let imports = startup::IMPORTS;
    let script = format!(
        "import sys, time\nimport {imports}\nfor i in (0, 2, 5, 7):\n    with open(f'/data/blob{{i}}.bin', 'rb') as f:\n        \
         left = {read_each}\n        while left > 0:\n            n = len(f.read(min(left, 1 << 20)))\n            \
         if n == 0: break\n            left -= n\nprint('ready', flush=True)\n"
    );
    let mut app = Layer::new();
    app.dir("app", Meta::new(0o755))
        .file("app/start.py", Meta::new(0o644), script.as_bytes());
    let mut layout = OciLayout::create(&dir.join("layout"))?;
    layout.add_image(
        "1",
        vec![
            (Layer::from_dir(&root)?, Compression::Gzip),
            (Layer::from_dir(&data)?, Compression::None),
            (app, Compression::Gzip),
        ],
        &RunConfig {
            entrypoint: vec!["/usr/bin/python3".into(), "-B".into()],
            cmd: vec!["/app/start.py".into()],
            working_dir: Some("/app".into()),
            ..RunConfig::default()
        },
    )?;
    std::fs::remove_dir_all(&root)?;
    std::fs::remove_dir_all(&data)?;
    Ok((python_bytes + count as u64 * each, read_each))
}

pub fn run(hydrate: &Hydrate, dir: &Path, plan: &ContainerPlan) -> Result<ContainerResult> {
    let tools = Tools {
        skopeo: need("skopeo")?,
        umoci: need("umoci")?,
        runc: need("runc")?,
    };
    let registry_bin = hydrate_testkit::find_binary("docker-registry")
        .ok_or_else(|| anyhow!("the container section needs docker-registry"))?;
    step("building the OCI image (python + stdlib + data files)");
    let (image_bytes, _) = make_image(dir, plan)?;
    let registry = Registry::start(&registry_bin)?;
    let direct = registry.host();
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    let skopeo = |from: &str, to: &str| -> Result<()> {
        run_ok(
            Command::new(&tools.skopeo)
                .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
                .args(["--dest-tls-verify=false", from, to])
                .env("HOME", &home),
        )
        .map(drop)
    };
    step("pushing it with skopeo and converting it in the registry (not timed)");
    skopeo(
        &format!("oci:{}:1", dir.join("layout").display()),
        &format!("docker://{direct}/library/bench:1"),
    )?;
    std::fs::remove_dir_all(dir.join("layout"))?;
    let image_id = hydrate.convert(
        &format!("docker://{direct}/library/bench:1"),
        &format!("oci://{direct}/library/bench:1-hydrate"),
        dir,
    )?;

    let proxy = FaultProxy::start(registry.host().parse().context("the registry's address")?)
        .context("starting the link proxy")?;
    proxy.faults().set_latency(plan.one_way);
    proxy.faults().set_bandwidth(Some(plan.bytes_per_sec));
    let far = proxy.addr().to_string();
    let link_bytes = || proxy.faults().stats().bytes_down;

    step("full pull: skopeo copy + umoci unpack + runc run");
    let pulled = dir.join("pulled");
    let full_bundle = dir.join("full-bundle");
    drop_caches()?;
    let (bytes0, started) = (link_bytes(), Instant::now());
    skopeo(
        &format!("docker://{far}/library/bench:1"),
        &format!("oci:{}:1", pulled.display()),
    )?;
    run_ok(Command::new(&tools.umoci).args([
        "unpack".as_ref(),
        "--image".as_ref(),
        format!("{}:1", pulled.display()).as_ref(),
        full_bundle.as_os_str(),
    ]))?;
    non_interactive(&full_bundle)?;
    let prepare_secs = started.elapsed().as_secs_f64();
    let first = run_container(&tools.runc, &full_bundle, "bench-full", started)?;
    let full_pull = StartRun {
        first_output_secs: first,
        link_bytes: link_bytes() - bytes0,
        prepare_secs,
        ..StartRun::default()
    };
    std::fs::remove_dir_all(&pulled)?;
    std::fs::remove_dir_all(&full_bundle)?;

    let lazy = |name: &str, tag: &str, extra: &[&str]| -> Result<StartRun> {
        let bundle = dir.join(format!("bundle-{name}"));
        let cache = dir.join(format!("cache-{name}"));
        drop_caches()?;
        let (bytes0, started) = (link_bytes(), Instant::now());
        let mut args: Vec<String> = vec![
            "rootfs".into(),
            format!("oci://{far}/library/bench:{tag}"),
            bundle.display().to_string(),
            "--cache-dir".into(),
            cache.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        hydrate.run(&args)?;
        let prepare_secs = started.elapsed().as_secs_f64();
        let outcome = run_container(&tools.runc, &bundle, &format!("bench-{name}"), started);
        let bytes = link_bytes() - bytes0;
        // The image mount: the bundle's own, or one shared by bundles of the image (state.json says which).
        let metrics = std::fs::read(bundle.join(".hydrate/state.json"))
            .context("reading the bundle state")
            .and_then(|bytes| Ok(serde_json::from_slice::<Value>(&bytes)?))
            .and_then(|state| {
                let lower = PathBuf::from(state["lower"].as_str().unwrap_or_default());
                crate::hydrate::Metrics::of_mount(&lower)
            });
        let removed = hydrate.run(&["rootfs".as_ref(), "--remove".as_ref(), bundle.as_os_str()]);
        let first = outcome?;
        removed?;
        let metrics = metrics?;
        let counters: Vec<String> = [
            "volume_ondemand_chunks",
            "volume_readahead_chunks",
            "volume_dir_prefetch_windows",
            "volume_dir_prefetch_chunks",
            "volume_plan_chunks",
            "volume_opens",
            "fetch_requests",
        ]
        .iter()
        .map(|name| format!("{name}={}", metrics.0.get(*name).copied().unwrap_or(0)))
        .collect();
        step(&format!("{name}: {}", counters.join(" ")));
        std::fs::remove_dir_all(&cache).ok();
        Ok(StartRun {
            first_output_secs: first,
            link_bytes: bytes,
            prepare_secs,
            requests: metrics.require("fetch_requests")?,
            ondemand_chunks: metrics.require("volume_ondemand_chunks")?,
        })
    };
    step("hydrate lazy, no plan: hydrate rootfs + runc run");
    let no_plan = lazy("noplan", "1-hydrate", &[])?;
    step("recording a trace of the container's start");
    let trace = dir.join("container.trace");
    let trace_arg = trace.display().to_string();
    lazy("record", "1-hydrate", &["--record-trace", &trace_arg])?;
    let read_bytes = crate::startup::trace_read_bytes(&trace)?;
    let plan_entries = hydrate.attach_trace(
        &format!("oci://{direct}/library/bench"),
        &image_id,
        &trace,
        "1-plan",
    )?;
    step("hydrate with the learned plan: hydrate rootfs + runc run");
    let with_plan = lazy("plan", "1-plan", &[])?;
    let kernel = if plan.kernel_rounds > 0 {
        let mut comparison = KernelComparison::default();
        for round in 0..plan.kernel_rounds {
            let mut pairs: Vec<(StartRun, StartRun)> = Vec::new();
            for (tag, first_fuse) in [("1-hydrate", &no_plan), ("1-plan", &with_plan)] {
                let what = if tag == "1-plan" {
                    "learned plan"
                } else {
                    "no plan"
                };
                let kernel = |_: ()| {
                    step(&format!(
                        "round {round}, {what}: kernel mode (erofs), hydrate rootfs --kernel + runc run"
                    ));
                    lazy(&format!("k{tag}-{round}"), tag, &["--kernel"])
                };
                let fuse = |_: ()| {
                    step(&format!(
                        "round {round}, {what}: FUSE mode, hydrate rootfs + runc run"
                    ));
                    lazy(&format!("f{tag}-{round}"), tag, &[])
                };
                let pair = if round == 0 {
                    (first_fuse.clone(), kernel(())?)
                } else if round % 2 == 1 {
                    let k = kernel(())?;
                    (fuse(())?, k)
                } else {
                    let f = fuse(())?;
                    (f, kernel(())?)
                };
                pairs.push(pair);
            }
            let [a, b]: [(StartRun, StartRun); 2] = pairs.try_into().expect("two pairs");
            comparison.rounds.push([a, b]);
        }
        Some(comparison)
    } else {
        None
    };
    let containerd = if hydrate_testkit::find_binary("containerd").is_some() {
        // The containerd form names its store as converted: through the link, like every pull here.
        step("converting for containerd (--containerd-tag, not timed)");
        hydrate.run(&[
            "convert".as_ref(),
            format!("docker://{direct}/library/bench:1").as_ref(),
            format!("oci://{far}/library/bench:1-hydrate").as_ref(),
            "--containerd-tag".as_ref(),
            "1-ctr".as_ref(),
            "--tmp-dir".as_ref(),
            dir.as_os_str(),
        ])?;
        // The plan learned above, published in containerd's form too (the same plan image as `1-plan`).
        step("attaching the plan for containerd (attach-trace --containerd-tag, not timed)");
        hydrate.run(&[
            "attach-trace".as_ref(),
            "--store".as_ref(),
            format!("oci://{far}/library/bench").as_ref(),
            "1-hydrate".as_ref(),
            trace.as_os_str(),
            "--tag".as_ref(),
            "1-plan".as_ref(),
            "--containerd-tag".as_ref(),
            "1-ctr-plan".as_ref(),
        ])?;
        Some(crate::containerd::run(hydrate, dir, &far, &link_bytes)?)
    } else {
        step("containerd is not installed: its part skipped (scripts/install-test-deps.sh installs it)");
        None
    };
    drop(proxy);
    drop(registry);
    Ok(ContainerResult {
        one_way_ms: plan.one_way.as_secs_f64() * 1000.0,
        link_mbit: plan.bytes_per_sec as f64 * 8.0 / 1e6,
        image_bytes,
        read_bytes,
        full_pull,
        no_plan,
        with_plan,
        plan_entries,
        kernel,
        containerd,
    })
}

/// umoci writes a config.json for a terminal; the benchmark reads the container's output from a pipe.
fn non_interactive(bundle: &Path) -> Result<()> {
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["process"]["terminal"] = json!(false);
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

impl ContainerResult {
    pub fn table(&self) -> String {
        let full = self.full_pull.first_output_secs;
        let row = |name: &str, r: &StartRun| {
            format!(
                "  {name}: first output after {:.2} s = {:.3} of the full pull (prepare {:.2} s), {} over the link \
                 ({:.3} of the full pull's), {} store requests, {} chunks fetched on demand\n",
                r.first_output_secs,
                r.first_output_secs / full,
                r.prepare_secs,
                human(r.link_bytes),
                r.link_bytes as f64 / self.full_pull.link_bytes.max(1) as f64,
                r.requests,
                r.ondemand_chunks
            )
        };
        let mut out = format!(
            "container start from a registry over the link ({:.0} ms each way, {:.0} Mbit/s): image {}, the \
             container reads {} ({:.1}%) before its first output\n",
            self.one_way_ms,
            self.link_mbit,
            human(self.image_bytes),
            human(self.read_bytes),
            self.read_bytes as f64 / self.image_bytes as f64 * 100.0
        );
        out += &format!(
            "  full pull (skopeo copy + umoci unpack) + runc run: first output after {:.2} s (pull + unpack {:.2} s), \
             {} over the link\n",
            full,
            self.full_pull.prepare_secs,
            human(self.full_pull.link_bytes)
        );
        out += &row("hydrate rootfs + runc run, no plan", &self.no_plan);
        out += &row(
            &format!(
                "hydrate rootfs + runc run, learned plan ({} entries)",
                self.plan_entries
            ),
            &self.with_plan,
        );
        if let Some(kernel) = &self.kernel {
            for (round, [no_plan, with_plan]) in kernel.rounds.iter().enumerate() {
                out += &row(
                    &format!("round {round}: hydrate rootfs --kernel (erofs) + runc run, no plan"),
                    &no_plan.1,
                );
                out += &row(
                    &format!(
                        "round {round}: hydrate rootfs --kernel (erofs) + runc run, learned plan"
                    ),
                    &with_plan.1,
                );
                out += &format!(
                    "  round {round}: FUSE mode {:.2} s / {:.2} s (no plan / plan), {} / {} over the link; kernel / FUSE \
                     {:.2}x / {:.2}x\n",
                    no_plan.0.first_output_secs,
                    with_plan.0.first_output_secs,
                    human(no_plan.0.link_bytes),
                    human(with_plan.0.link_bytes),
                    no_plan.1.first_output_secs / no_plan.0.first_output_secs,
                    with_plan.1.first_output_secs / with_plan.0.first_output_secs,
                );
            }
            let (fuse_np, kernel_np) = kernel.medians(0);
            let (fuse_p, kernel_p) = kernel.medians(1);
            out += &format!(
                "  kernel mode vs FUSE mode, medians of {} rounds of first output: no plan {:.2} s vs {:.2} s = \
                 {:.2}x, learned plan {:.2} s vs {:.2} s = {:.2}x (goal <= 1)\n",
                kernel.rounds.len(),
                kernel_np,
                fuse_np,
                kernel_np / fuse_np,
                kernel_p,
                fuse_p,
                kernel_p / fuse_p
            );
        }
        if let Some(c) = &self.containerd {
            let base = c.overlayfs.first_output_secs;
            out += &format!(
                "  containerd, ctr image pull + ctr run, overlayfs snapshotter: first output after {:.2} s, {} over the link\n",
                base,
                human(c.overlayfs.link_bytes)
            );
            out += &format!(
                "  containerd, ctr image pull + ctr run, hydrate snapshotter, no plan: first output after {:.2} s = {:.3} \
                 of overlayfs, {} over the link ({:.3} of overlayfs')\n",
                c.hydrate_no_plan.first_output_secs,
                c.hydrate_no_plan.first_output_secs / base,
                human(c.hydrate_no_plan.link_bytes),
                c.hydrate_no_plan.link_bytes as f64 / c.overlayfs.link_bytes.max(1) as f64
            );
            out += &format!(
                "  containerd, ctr image pull + ctr run, hydrate snapshotter, learned plan: first output after {:.2} s = \
                 {:.3} of overlayfs, {} over the link ({:.3} of overlayfs')\n",
                c.hydrate_with_plan.first_output_secs,
                c.hydrate_with_plan.first_output_secs / base,
                human(c.hydrate_with_plan.link_bytes),
                c.hydrate_with_plan.link_bytes as f64 / c.overlayfs.link_bytes.max(1) as f64
            );
        }
        out += "  goal: lazy start <= 0.10 of the full pull\n";
        out
    }

    pub fn to_json(&self) -> Value {
        let run = |r: &StartRun| {
            json!({"first_output_secs": r.first_output_secs, "link_bytes": r.link_bytes,
                   "prepare_secs": r.prepare_secs, "requests": r.requests,
                   "ondemand_chunks": r.ondemand_chunks})
        };
        json!({
            "one_way_ms": self.one_way_ms, "link_mbit": self.link_mbit, "image_bytes": self.image_bytes,
            "read_bytes": self.read_bytes, "full_pull": run(&self.full_pull), "no_plan": run(&self.no_plan),
            "with_plan": run(&self.with_plan), "plan_entries": self.plan_entries,
            "kernel": self.kernel.as_ref().map(|k| {
                let (fuse_np, kernel_np) = k.medians(0);
                let (fuse_p, kernel_p) = k.medians(1);
                json!({
                    "rounds": k.rounds.iter().map(|[n, p]| json!({
                        "no_plan": {"fuse": run(&n.0), "kernel": run(&n.1)},
                        "with_plan": {"fuse": run(&p.0), "kernel": run(&p.1)},
                    })).collect::<Vec<_>>(),
                    "median_first_output_secs": {
                        "no_plan": {"fuse": fuse_np, "kernel": kernel_np},
                        "with_plan": {"fuse": fuse_p, "kernel": kernel_p},
                    },
                })
            }),
            "containerd": self.containerd.as_ref().map(|c| json!({
                "overlayfs": run(&c.overlayfs), "hydrate_no_plan": run(&c.hydrate_no_plan),
                "hydrate_with_plan": run(&c.hydrate_with_plan),
            })),
        })
    }
}
