//! `hydrate-bench`: measures the `hydrate` binary end to end against native ext4 baselines taken in the same
//! run, so machine load and disk speed affect both sides alike.
//!
//! This module owns the command line, the temporary work directory (removed at exit, also on failure or Ctrl-C)
//! and the description of the machine; the measurements themselves are in `phases`.
//!
//! Needs root: it drops the page cache and mounts.

#![forbid(unsafe_code)]

mod cancel;
mod containerd;
mod containers;
mod hsm;
mod hsm_scale;
mod hydrate;
mod kernel;
mod link;
mod phases;
mod reads;
mod realimage;
mod report;
mod startup;
mod takeover;
mod tree;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hydrate::Hydrate;
use hydrate_mountinfo::MountInfo;
use hydrate_units::{human, parse_size};
use phases::{Bench, Plan};
use report::{Machine, Results};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

#[derive(Parser, Debug)]
#[command(
    name = "hydrate-bench",
    about = "Benchmark hydrate against native ext4 (needs root)",
    // A later option wins, so run.sh --quick can be refined with explicit sizes.
    args_override_self = true
)]
struct Args {
    /// Size of the big random file read by the sequential and random benchmarks (e.g. 1G, 256M).
    #[arg(long, default_value = "1G")]
    big_size: String,
    /// Number of small files next to it (some duplicated, some compressible).
    #[arg(long, default_value_t = 3000)]
    small_files: usize,
    /// Number of 4 KiB random reads per random-read measurement.
    #[arg(long, default_value_t = 2000)]
    random_reads: usize,
    /// Timed rounds of the hot reads (hydrate and ext4 interleaved; the best of each counts).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Seed of the generated data and of the random offsets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory in which the temporary work directory is created (must not be tmpfs: the baseline is ext4).
    #[arg(long, default_value = "/var/tmp")]
    workdir: PathBuf,
    /// The hydrate binary [default: `hydrate` next to this program].
    #[arg(long)]
    hydrate: Option<PathBuf>,
    /// Also write the results as JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure only the build (`hydrate build` of the generated tree vs reading it, both cold); --repeats
    /// builds, each into a fresh store, all reported.
    #[arg(long)]
    build_only: bool,
    /// Also measure reads from a remote (HTTP) store over an emulated link (see --link-latency-ms, --link-mbit).
    #[arg(long)]
    link: bool,
    /// Measure only the remote-link section.
    #[arg(long)]
    link_only: bool,
    /// One-way delay of the emulated link in milliseconds.
    #[arg(long, default_value_t = 10)]
    link_latency_ms: u64,
    /// Bandwidth of the emulated link in Mbit/s (each direction).
    #[arg(long, default_value_t = 1000)]
    link_mbit: u64,
    /// Extra `hydrate mount` options for the link section's mounts (space separated), for tuning runs, e.g.
    /// "--max-in-flight 64".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    link_mount_args: String,
    /// Also measure the stall readers see while the mount's worker is SIGKILLed or upgraded (run.sh sets it).
    #[arg(long)]
    takeover: bool,
    /// Measure only the takeover section.
    #[arg(long)]
    takeover_only: bool,
    /// Worker SIGKILLs in the takeover section.
    #[arg(long, default_value_t = 20)]
    takeover_kills: usize,
    /// `hydrate upgrade`s in the takeover section.
    #[arg(long, default_value_t = 10)]
    takeover_upgrades: usize,
    /// Reader threads of the takeover section.
    #[arg(long, default_value_t = 4)]
    takeover_readers: usize,
    /// Milliseconds between two takeovers.
    #[arg(long, default_value_t = 500)]
    takeover_interval_ms: u64,
    /// Measure only the HSM section (`hydrate hsm` on the work file system; uses --link-latency-ms and
    /// --link-mbit for its remote recall, --repeats for its hot reads).
    #[arg(long)]
    hsm_only: bool,
    /// Size of the HSM section's files.
    #[arg(long, default_value = "256M")]
    hsm_size: String,
    /// File systems of the HSM section's hot-read and recall measurements, comma separated (ext4 is the work
    /// directory's; xfs and btrfs are images loop-mounted in the work directory).
    #[arg(long, default_value = "ext4,xfs,btrfs")]
    hsm_fs: String,
    /// Data archived with one thread and with one per core in the HSM section (0 skips).
    #[arg(long, default_value = "512M")]
    hsm_archive_size: String,
    /// Also run the HSM scale measurement on this many small files (archive, release, status, restart; long:
    /// 0 skips it, the recorded figure uses 1000000).
    #[arg(long, default_value_t = 0)]
    hsm_scale_files: u64,
    /// Also measure start-up and scale: metadata walk vs ext4, mount time and RSS by image size, cold start of a
    /// Python workload over the emulated link without and with a learned prefetch plan vs a full download.
    #[arg(long)]
    startup: bool,
    /// Measure only the start-up and scale section.
    #[arg(long)]
    startup_only: bool,
    /// Files of the metadata-walk tree (0 skips the walk).
    #[arg(long, default_value_t = 100_000)]
    walk_files: usize,
    /// Image sizes (in files) for mount time and RSS, comma separated (empty skips).
    #[arg(long, default_value = "10000,100000,1000000")]
    scale_files: String,
    /// Size of the cold-start image (python stdlib + large files; 0 skips the cold start).
    #[arg(long, default_value = "2G")]
    startup_image_size: String,
    /// Also measure container start from a registry over the emulated link: full pull (skopeo + umoci) + runc vs
    /// `hydrate rootfs` + runc without and with a learned plan (needs docker-registry, skopeo, umoci, runc).
    #[arg(long)]
    containers: bool,
    /// Measure only the container section.
    #[arg(long)]
    containers_only: bool,
    /// Size of the container image (python + stdlib + large data files).
    #[arg(long, default_value = "2G")]
    container_image_size: String,
    /// Also measure a lazy start on a real distribution image (Debian bookworm minbase + python3 + numpy made by
    /// debootstrap) from a registry over the emulated link: full pull, plain download, hydrate without and with
    /// a learned plan (needs debootstrap, docker-registry, skopeo, umoci).
    #[arg(long)]
    real_image: bool,
    /// Measure only the real-image section.
    #[arg(long)]
    real_image_only: bool,
    /// The real image's cached tree as a tar, made by bench/debian-rootfs.sh when missing [default:
    /// target/bench/debian-bookworm-python.tar next to this program's target directory].
    #[arg(long)]
    real_image_tar: Option<PathBuf>,
    /// Also measure kernel mode (`hydrate mount --kernel`, erofs) against FUSE mode and ext4: metadata walk
    /// (--walk-files), hot reads of a partially fetched file, cold 4 KiB reads, cold and hot sequential reads
    /// of a --big-size file; and the container starts with `hydrate rootfs --kernel` (also with
    /// --containers-only).
    #[arg(long)]
    kernel: bool,
    /// With --kernel, the container starts in kernel mode and in FUSE mode are compared over this many rounds
    /// (one start in each mode per round, medians compared: one start alone varies by about ±15%).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
    kernel_rounds: u16,
    /// Measure only the kernel-mode section.
    #[arg(long)]
    kernel_only: bool,
}

/// The kernel-mode section's sizes from the options.
fn kernel_plan(args: &Args, big_size: u64) -> kernel::KernelPlan {
    kernel::KernelPlan {
        walk_files: args.walk_files,
        big_size,
        random_reads: args.random_reads,
        repeats: args.repeats.max(1),
        seed: args.seed,
    }
}

/// The HSM section: per file system hot reads and recalls, archive threads, and the scale run if asked for.
/// Returns the table and the JSON value.
fn hsm_section(
    args: &Args,
    hydrate: &Hydrate,
    bin: &std::path::Path,
    work: &std::path::Path,
) -> Result<(String, serde_json::Value)> {
    let filesystems = args
        .hsm_fs
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|name| {
            hydrate_testkit::loopfs::FsKind::from_name(name)
                .with_context(|| format!("--hsm-fs: {name:?} is not ext4, xfs or btrfs"))
        })
        .collect::<Result<Vec<_>>>()?;
    let plan = hsm::HsmPlan {
        bin: bin.to_owned(),
        size: parse_size(&args.hsm_size).context("--hsm-size")?,
        repeats: args.repeats,
        event_reads: args.random_reads,
        seed: args.seed,
        link: Some((
            std::time::Duration::from_millis(args.link_latency_ms),
            args.link_mbit * 1_000_000 / 8,
        )),
        filesystems,
    };
    let archive_size = parse_size(&args.hsm_archive_size).context("--hsm-archive-size")?;
    let (mut text, mut value) = (String::new(), json!({}));
    if archive_size > 0 {
        let a = hsm_scale::archive_threads(
            hydrate,
            bin,
            work,
            archive_size,
            args.repeats.min(3),
            args.seed,
        )?;
        text += &a.table();
        value["archive_threads"] = a.to_json();
    }
    let results = hsm::run(hydrate, work, &plan)?;
    for r in &results {
        text += &r.table();
    }
    value["filesystems"] = json!(results.iter().map(|r| r.to_json()).collect::<Vec<_>>());
    if args.hsm_scale_files > 0 {
        let s = hsm_scale::scale(hydrate, bin, work, args.hsm_scale_files, args.seed)?;
        text += &s.table();
        value["scale"] = s.to_json();
    }
    Ok((text, value))
}

fn main() -> ExitCode {
    if let Err(error) = cancel::install() {
        eprintln!("hydrate-bench: {error:#}");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hydrate-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (it mounts and drops the page cache): run it with sudo");
    }
    let big_size = parse_size(&args.big_size).context("--big-size")?;
    if big_size < 1 << 20 {
        bail!("--big-size {} is below the 1M minimum", args.big_size);
    }
    if args.random_reads == 0 {
        bail!("--random-reads must be at least 1");
    }
    let bin = match &args.hydrate {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name("hydrate"),
    };
    let hydrate = Hydrate::new(bin.clone())?;
    check_space(&args.workdir, big_size, args.small_files)?;
    let work = tempfile::Builder::new()
        .prefix("hydrate-bench.")
        .tempdir_in(&args.workdir)
        .with_context(|| format!("creating a work directory in {}", args.workdir.display()))?;
    eprintln!("work directory {}", work.path().display());
    if args.takeover_only {
        return takeover_only(args, &hydrate, work, big_size);
    }
    if args.hsm_only {
        let outcome = hsm_section(args, &hydrate, &bin, work.path());
        work.close().context("removing the work directory")?;
        let (text, value) = outcome?;
        print!("\n{text}");
        if let Some(path) = &args.json {
            let text = serde_json::to_string_pretty(&json!({ "hsm": value }))?;
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    if args.startup_only {
        let outcome = measure_startup(args, &hydrate, work.path());
        if hydrate::mounts_under(work.path())?.is_empty() {
            work.close().context("removing the work directory")?;
        }
        let result = outcome?;
        print!("\n{}", result.table());
        if let Some(path) = &args.json {
            let text = serde_json::to_string_pretty(&json!({ "startup": result.to_json() }))?;
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    if args.real_image_only {
        return one_section(args, work, "real_image", |dir| {
            let result = measure_real_image(args, &hydrate, dir)?;
            Ok((result.table(), result.to_json()))
        });
    }
    if args.kernel_only {
        return one_section(args, work, "kernel", |dir| {
            let result = kernel::run(&hydrate, dir, &kernel_plan(args, big_size))?;
            Ok((result.table(), result.to_json()))
        });
    }
    if args.containers_only {
        return one_section(args, work, "containers", |dir| {
            let result = measure_containers(args, &hydrate, dir)?;
            Ok((result.table(), result.to_json()))
        });
    }
    if args.build_only {
        return build_only(args, &hydrate, work, big_size);
    }
    if args.link_only {
        let outcome = measure_link(args, &hydrate, work.path(), big_size);
        work.close().context("removing the work directory")?;
        let link = outcome?;
        print!("\n{}", link.table());
        if let Some(path) = &args.json {
            let text = serde_json::to_string_pretty(&json!({ "link": link.to_json() }))?;
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    let outcome = measure(args, &hydrate, work.path(), big_size);
    let link = match (&outcome, args.link) {
        (Ok(_), true) => Some(measure_link(args, &hydrate, work.path(), big_size)),
        _ => None,
    };
    let startup = match (&outcome, args.startup) {
        (Ok(_), true) => Some(measure_startup(args, &hydrate, work.path())),
        _ => None,
    };
    let containers = match (&outcome, args.containers) {
        (Ok(_), true) => Some(measure_containers(args, &hydrate, work.path())),
        _ => None,
    };
    let real_image = match (&outcome, args.real_image) {
        (Ok(_), true) => Some(measure_real_image(args, &hydrate, work.path())),
        _ => None,
    };
    let kernel = match (&outcome, args.kernel) {
        (Ok(_), true) => Some(kernel::run(
            &hydrate,
            work.path(),
            &kernel_plan(args, big_size),
        )),
        _ => None,
    };
    let takeover = match (&outcome, args.takeover) {
        (Ok(_), true) => Some(measure_takeover(args, &hydrate, work.path(), big_size)),
        _ => None,
    };
    // Mount guards are gone by now; never delete through a mount that could not be detached.
    let left = hydrate::mounts_under(work.path())?;
    if left.is_empty() {
        work.close().context("removing the work directory")?;
    } else {
        let kept = work.keep();
        eprintln!(
            "still mounted: {left:?}; leaving {} in place",
            kept.display()
        );
    }
    let results = outcome?;
    let link = link.transpose()?;
    print!("\n{}", results.table());
    let mut value = results.to_json();
    if let Some(link) = &link {
        print!("\n{}", link.table());
        value["link"] = link.to_json();
    }
    if let Some(startup) = startup.transpose()? {
        print!("\n{}", startup.table());
        value["startup"] = startup.to_json();
    }
    if let Some(containers) = containers.transpose()? {
        print!("\n{}", containers.table());
        value["containers"] = containers.to_json();
    }
    if let Some(real_image) = real_image.transpose()? {
        print!("\n{}", real_image.table());
        value["real_image"] = real_image.to_json();
    }
    if let Some(kernel) = kernel.transpose()? {
        print!("\n{}", kernel.table());
        value["kernel"] = kernel.to_json();
    }
    let takeover = takeover.transpose()?;
    if let Some(takeover) = &takeover {
        print!("\n{}", takeover.table());
        value["takeover"] = takeover.to_json();
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&value).context("encoding the results")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    match takeover {
        Some(t) if t.failures > 0 => {
            bail!("{} reads failed or were wrong during takeovers", t.failures)
        }
        _ => Ok(()),
    }
}

/// The main section's sizes from the options.
fn plan_of(args: &Args, big_size: u64) -> Plan {
    Plan {
        big_size,
        small_files: args.small_files,
        random_reads: args.random_reads,
        repeats: args.repeats.max(1),
        seed: args.seed,
    }
}

/// `--build-only`: the build measurement alone, `--repeats` times (a fresh store each time, the tree generated
/// once), with the date and load around it (JSON under "builds").
fn build_only(
    args: &Args,
    hydrate: &Hydrate,
    work: tempfile::TempDir,
    big_size: u64,
) -> Result<()> {
    let (date, load_start) = (utc_date(SystemTime::now()), loadavg());
    let plan = plan_of(args, big_size);
    let bench = Bench::new(hydrate, plan, work.path());
    let mut builds = Vec::new();
    for _ in 0..plan.repeats {
        match bench.build() {
            Ok(b) => builds.push(b),
            Err(e) => {
                work.close().context("removing the work directory")?;
                return Err(e);
            }
        }
        bench.forget_store()?;
    }
    let load_end = loadavg();
    work.close().context("removing the work directory")?;
    println!("\n{date} UTC, load average {load_start} at the start, {load_end} at the end");
    for b in &builds {
        print!("{}", b.table());
    }
    if let Some(path) = &args.json {
        let value = json!({
            "date_utc": date,
            "loadavg": [load_start, load_end],
            "builds": builds.iter().map(|b| b.to_json()).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The container section with the run's link settings.
fn measure_containers(
    args: &Args,
    hydrate: &Hydrate,
    work: &Path,
) -> Result<containers::ContainerResult> {
    containers::run(
        hydrate,
        work,
        &containers::ContainerPlan {
            image_size: parse_size(&args.container_image_size).context("--container-image-size")?,
            one_way: std::time::Duration::from_millis(args.link_latency_ms),
            bytes_per_sec: args.link_mbit * 1_000_000 / 8,
            seed: args.seed,
            kernel_rounds: if args.kernel {
                usize::from(args.kernel_rounds)
            } else {
                0
            },
        },
    )
}

/// Runs one section alone in `work` (removed afterwards unless something is still mounted there): prints its
/// table after the date and the load average at its start and end, and writes its JSON under `key` with both.
fn one_section(
    args: &Args,
    work: tempfile::TempDir,
    key: &str,
    measure: impl FnOnce(&Path) -> Result<(String, serde_json::Value)>,
) -> Result<()> {
    let (date, load_start) = (utc_date(SystemTime::now()), loadavg());
    let outcome = measure(work.path());
    let load_end = loadavg();
    if hydrate::mounts_under(work.path())?.is_empty() {
        work.close().context("removing the work directory")?;
    }
    let (table, mut value) = outcome?;
    print!("\n{date} UTC, load average {load_start} at the start, {load_end} at the end\n{table}");
    if let Some(path) = &args.json {
        value["date_utc"] = json!(date);
        value["loadavg"] = json!([load_start, load_end]);
        let text = serde_json::to_string_pretty(&json!({ key: value }))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The real-image section with the run's link settings and repeats (at least 3: its figures are medians).
fn measure_real_image(
    args: &Args,
    hydrate: &Hydrate,
    work: &Path,
) -> Result<realimage::RealImageResult> {
    let rootfs_tar = match &args.real_image_tar {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locating this program")?
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| anyhow::anyhow!("this program is not in a cargo target directory"))?
            .join("bench/debian-bookworm-python.tar"),
    };
    realimage::run(
        hydrate,
        work,
        &realimage::RealImagePlan {
            rootfs_tar,
            repeats: args.repeats.max(3),
            one_way: std::time::Duration::from_millis(args.link_latency_ms),
            bytes_per_sec: args.link_mbit * 1_000_000 / 8,
            mount_args: args
                .link_mount_args
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        },
    )
}

/// The takeover section with the run's sizes: the cold file is the big file's size, at most 1 GiB (its 4096
/// first-touch slots spread over the ~35 s section; a bigger one only costs generation time).
fn measure_takeover(
    args: &Args,
    hydrate: &Hydrate,
    work: &Path,
    big_size: u64,
) -> Result<takeover::TakeoverResult> {
    takeover::run(
        hydrate,
        work,
        takeover::TakeoverPlan {
            cold_size: big_size.min(1 << 30),
            readers: args.takeover_readers,
            kills: args.takeover_kills,
            upgrades: args.takeover_upgrades,
            interval: std::time::Duration::from_millis(args.takeover_interval_ms),
            steady: std::time::Duration::from_secs(5),
            seed: args.seed,
        },
    )
}

/// `--takeover-only`: the section alone, with the date and load around it (JSON under "takeover").
fn takeover_only(
    args: &Args,
    hydrate: &Hydrate,
    work: tempfile::TempDir,
    big_size: u64,
) -> Result<()> {
    let (date, load_start) = (utc_date(SystemTime::now()), loadavg());
    let outcome = measure_takeover(args, hydrate, work.path(), big_size);
    let load_end = loadavg();
    if hydrate::mounts_under(work.path())?.is_empty() {
        work.close().context("removing the work directory")?;
    } else {
        eprintln!("still mounted; leaving {} in place", work.keep().display());
    }
    let result = outcome?;
    print!(
        "\n{date} UTC, load average {load_start} at the start, {load_end} at the end\n{}",
        result.table()
    );
    if let Some(path) = &args.json {
        let mut value = json!({ "takeover": result.to_json() });
        value["takeover"]["date_utc"] = json!(date);
        value["takeover"]["loadavg"] = json!([load_start, load_end]);
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if result.failures > 0 {
        bail!(
            "{} reads failed or were wrong during takeovers",
            result.failures
        );
    }
    Ok(())
}

fn measure(args: &Args, hydrate: &Hydrate, work: &Path, big_size: u64) -> Result<Results> {
    let mut machine = machine_info(hydrate, &args.workdir)?;
    let plan = plan_of(args, big_size);
    let bench = Bench::new(hydrate, plan, work);
    let build = bench.build()?;
    let (cold, hot) = bench.sequential()?;
    let random = bench.random()?;
    machine.loadavg_end = loadavg();
    let params = json!({
        "big_size": plan.big_size,
        "small_files": plan.small_files,
        "random_reads": plan.random_reads,
        "random_read_len": reads::RANDOM_LEN,
        "seq_buffer": reads::SEQ_BUF,
        "repeats": plan.repeats,
        "seed": plan.seed,
    });
    Ok(Results {
        machine,
        params,
        build,
        cold,
        hot,
        random,
    })
}

/// The start-up and scale section with the run's options and link.
fn measure_startup(args: &Args, hydrate: &Hydrate, work: &Path) -> Result<startup::StartupResult> {
    let scale_files = args
        .scale_files
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("--scale-files {s:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    startup::run(
        hydrate,
        work,
        &startup::StartupPlan {
            walk_files: args.walk_files,
            scale_files,
            repeats: args.repeats.max(1),
            image_size: parse_size(&args.startup_image_size).context("--startup-image-size")?,
            one_way: std::time::Duration::from_millis(args.link_latency_ms),
            bytes_per_sec: args.link_mbit * 1_000_000 / 8,
            seed: args.seed,
        },
    )
}

/// The remote-link section with the run's sizes and the link of the command line.
fn measure_link(
    args: &Args,
    hydrate: &Hydrate,
    work: &Path,
    big_size: u64,
) -> Result<link::LinkResult> {
    link::run(
        hydrate,
        work,
        link::LinkPlan {
            one_way: std::time::Duration::from_millis(args.link_latency_ms),
            bytes_per_sec: args.link_mbit * 1_000_000 / 8,
            big_size,
            random_reads: args.random_reads.min(500),
            ttfb_samples: 20,
            seed: args.seed,
        },
        &args.link_mount_args.split_whitespace().collect::<Vec<_>>(),
    )
}

/// Fails early when the work directory cannot hold the source, the store and one cache copy of the big file.
fn check_space(dir: &Path, big_size: u64, small_files: usize) -> Result<()> {
    let st =
        nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    // Small files average about 40 KiB (see tree.rs); source + store + cache, plus slack for manifests.
    let need = 3 * (big_size + small_files as u64 * 48 * 1024) + (256 << 20);
    if free < need {
        bail!(
            "{} has {} free; this run needs about {} (use --big-size/--small-files for a smaller run)",
            dir.display(),
            human(free),
            human(need)
        );
    }
    Ok(())
}

fn machine_info(hydrate: &Hydrate, workdir: &Path) -> Result<Machine> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let meminfo = read("/proc/meminfo");
    Ok(Machine {
        date_utc: utc_date(SystemTime::now()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: field(&read("/proc/cpuinfo"), "model name"),
        mem_total_kib: field(&meminfo, "MemTotal")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0),
        workdir_fs: fs_type(workdir)?,
        hydrate_version: hydrate.version().to_owned(),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
    })
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Filesystem type of the mount holding `dir`.
fn fs_type(dir: &Path) -> Result<String> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    let mounts = MountInfo::read_self()?;
    Ok(mounts
        .containing(&dir)
        .map_or_else(|| "unknown".to_owned(), |m| m.fs_type.clone()))
}

/// "YYYY-MM-DD HH:MM:SS" in UTC, without a date crate (days-to-civil from Howard Hinnant's algorithms).
fn utc_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        let at = |s: u64| utc_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(at(1_735_689_599), "2024-12-31 23:59:59");
        assert_eq!(at(1_700_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn finds_the_filesystem_type_of_root() {
        assert_ne!(fs_type(Path::new("/")).unwrap(), "unknown");
    }
}
