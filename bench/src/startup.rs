//! The start-up and scale section (`--startup`, `--startup-only`): what issue 4 asks to measure.
//!
//! 1. **Metadata walk**: lstat of every entry and readdir of every directory of a tree of `--walk-files` files
//!    (100 per directory), through a mount vs the same tree on ext4, both hot (after one warming walk), best of
//!    `--repeats`, interleaved. The mount runs with `--dir-prefetch 0`, so the walk measures metadata only.
//! 2. **Scale**: for images of each of `--scale-files` files: how long `hydrate mount` takes to return with the
//!    manifest only in the store (first mount) and with its verified local copy (a remount), and the resident
//!    memory of the mount's processes (supervisor + worker) after mounting and after a stat of every file.
//! 3. **Cold start over the emulated link**: an image of a Python standard library plus large incompressible
//!    files (`--startup-image-size` in all), served by nginx behind hydrate-testkit's link proxy. The workload
//!    imports a list of stdlib modules from the image with the host's python3 and reads the first part of a few
//!    large files, about 6% of the image. Measured: a full download of the image as a tar over the same link
//!    plus unpacking it, then the workload (the baseline); hydrate with no plan (fresh cache: mount +
//!    workload); a recording run (`--record-trace`); `hydrate attach-trace`; hydrate with the learned plan. For
//!    each hydrate run: bytes fetched per byte the workload read, and store requests.

use crate::cancel;
use crate::hydrate::{Hydrate, Metrics, Mounted};
use crate::reads::drop_caches;
use crate::tree;
use anyhow::{anyhow, bail, Context, Result};
use hydrate_testkit::nginx::{Nginx, NginxMode};
use hydrate_testkit::proxy::FaultProxy;
use hydrate_units::human;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const FILES_PER_DIR: usize = 100;

/// Stdlib modules the cold-start workload imports (pure Python, with their own imports: ~200 files).
pub(crate) const IMPORTS: &str = "json, email.mime.multipart, email.parser, http.client, urllib.request, \
    xml.etree.ElementTree, xml.dom.minidom, argparse, logging.handlers, unittest, asyncio, decimal, csv, \
    tarfile, zipfile, difflib, pydoc, configparser, dataclasses, typing, pathlib, shutil, tempfile, \
    subprocess, textwrap, string, fractions, statistics, calendar, pprint, inspect, dis, ast, tokenize, \
    concurrent.futures, multiprocessing, sqlite3, uuid, ipaddress, smtplib, ftplib, imaplib, mailbox";

#[derive(Debug, Clone)]
pub struct StartupPlan {
    pub walk_files: usize,
    pub scale_files: Vec<usize>,
    pub repeats: usize,
    pub image_size: u64,
    pub one_way: Duration,
    pub bytes_per_sec: u64,
    pub seed: u64,
}

#[derive(Debug, Clone, Default)]
pub struct WalkResult {
    pub files: usize,
    pub entries: u64,
    pub native_secs: f64,
    pub hydrate_secs: f64,
}

#[derive(Debug, Clone, Default)]
pub struct ScalePoint {
    pub files: usize,
    pub manifest_bytes: u64,
    pub build_secs: f64,
    pub first_mount_secs: f64,
    pub remount_secs: f64,
    pub rss_mounted_kib: u64,
    pub rss_walked_kib: u64,
    /// Anonymous (heap, stacks) part of the RSS after the walk; the rest is mapped files (the manifest, the
    /// binary), page cache that the kernel can reclaim.
    pub anon_walked_kib: u64,
    pub walk_secs: f64,
}

#[derive(Debug, Clone, Default)]
pub struct ColdRun {
    pub secs: f64,
    pub fetched_bytes: u64,
    pub requests: u64,
    pub mount_secs: f64,
}

#[derive(Debug, Clone, Default)]
pub struct ColdStart {
    pub image_bytes: u64,
    pub python_files: u64,
    pub read_bytes: u64,
    pub download_secs: f64,
    pub baseline_workload_secs: f64,
    pub no_plan: ColdRun,
    pub with_plan: ColdRun,
    pub plan_entries: u64,
    pub plan_bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct StartupResult {
    pub walk: Option<WalkResult>,
    pub scale: Vec<ScalePoint>,
    pub cold: Option<ColdStart>,
    pub one_way_ms: f64,
    pub link_mbit: f64,
}

fn step(what: &str) {
    eprintln!("== startup: {what}");
}

/// Runs the section in `work/startup` (removed at the end).
pub fn run(hydrate: &Hydrate, work: &Path, plan: &StartupPlan) -> Result<StartupResult> {
    let dir = work.join("startup");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut result = StartupResult {
        one_way_ms: plan.one_way.as_secs_f64() * 1e3,
        link_mbit: plan.bytes_per_sec as f64 * 8.0 / 1e6,
        ..StartupResult::default()
    };
    if plan.walk_files > 0 {
        result.walk = Some(metadata_walk(hydrate, &dir, plan)?);
    }
    for &files in &plan.scale_files {
        result.scale.push(scale_point(hydrate, &dir, files)?);
    }
    if plan.image_size > 0 {
        result.cold = Some(cold_start(hydrate, &dir, plan)?);
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(result)
}

/// A tree of `files` files of 16 bytes each (distinct content), `FILES_PER_DIR` per directory, two levels.
pub fn generate_tree(root: &Path, files: usize) -> Result<()> {
    let dirs = files.div_ceil(FILES_PER_DIR);
    for d in 0..dirs {
        cancel::check()?;
        let dir = root.join(format!("{:03}/{:03}", d / 1000, d % 1000));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for f in 0..FILES_PER_DIR.min(files - d * FILES_PER_DIR) {
            let path = dir.join(format!("file{f:03}.txt"));
            std::fs::write(&path, format!("{d:08}/{f:07}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// lstat of every entry and readdir of every directory below `root`; returns (entries, seconds).
pub fn walk(root: &Path) -> Result<(u64, f64)> {
    let started = Instant::now();
    let mut entries = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry
                .with_context(|| format!("listing {}", dir.display()))?
                .path();
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("lstat {}", path.display()))?;
            entries += 1;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok((entries, started.elapsed().as_secs_f64()))
}

fn metadata_walk(hydrate: &Hydrate, dir: &Path, plan: &StartupPlan) -> Result<WalkResult> {
    step(&format!(
        "metadata walk: generating and building {} files",
        plan.walk_files
    ));
    let src = dir.join("walk-src");
    let store = dir.join("walk-store");
    generate_tree(&src, plan.walk_files)?;
    hydrate.build(&src, &store, "walk:1")?;
    let mount = hydrate.mount(
        &store,
        "walk:1",
        &dir.join("walk-mnt"),
        &dir.join("walk-cache"),
        &["--dir-prefetch", "0", "--fill-budget", "0"],
    )?;
    step("metadata walk: ext4 and the mount, hot, interleaved");
    let (native_entries, _) = walk(&src)?;
    let (mount_entries, _) = walk(&mount.mountpoint)?;
    if native_entries != mount_entries {
        bail!("the mount shows {mount_entries} entries, the source {native_entries}");
    }
    let (mut native, mut mounted) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..plan.repeats.max(1) {
        native = native.min(walk(&src)?.1);
        mounted = mounted.min(walk(&mount.mountpoint)?.1);
    }
    mount.unmount()?;
    for d in ["walk-src", "walk-store", "walk-cache"] {
        std::fs::remove_dir_all(dir.join(d)).with_context(|| format!("removing {d}"))?;
    }
    Ok(WalkResult {
        files: plan.walk_files,
        entries: native_entries,
        native_secs: native,
        hydrate_secs: mounted,
    })
}

/// A `/proc/PID/status` field in KiB (0 if the process is gone).
fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Supervisor + worker (RSS, anonymous RSS) of a mount.
fn mount_rss_kib(mount: &Mounted<'_>) -> Result<(u64, u64)> {
    let pids = mount.daemon_pids()?;
    let sum = |field: &str| pids.iter().map(|&p| status_kib(p, field)).sum();
    Ok((sum("VmRSS:"), sum("RssAnon:")))
}

fn scale_point(hydrate: &Hydrate, dir: &Path, files: usize) -> Result<ScalePoint> {
    step(&format!("scale: generating and building {files} files"));
    let src = dir.join("scale-src");
    let store = dir.join("scale-store");
    generate_tree(&src, files)?;
    let built = hydrate.build(&src, &store, "scale:1")?;
    // The source is not needed any more: a million files cost minutes to remove, so do it now.
    std::fs::remove_dir_all(&src).context("removing the scale source")?;
    let manifest_bytes = crate::phases::dir_usage(&store.join("manifests"))?.1;
    let cache = dir.join("scale-cache");
    drop_caches()?;
    // Mount time and memory of the metadata alone: no background fill of the image's files.
    let m = hydrate.mount(
        &store,
        "scale:1",
        &dir.join("scale-mnt"),
        &cache,
        &["--fill-budget", "0"],
    )?;
    let first_mount_secs = m.ready_secs;
    m.unmount()?;
    drop_caches()?;
    let m = hydrate.mount(
        &store,
        "scale:1",
        &dir.join("scale-mnt"),
        &cache,
        &["--fill-budget", "0"],
    )?;
    let remount_secs = m.ready_secs;
    let (rss_mounted_kib, _) = mount_rss_kib(&m)?;
    let (entries, walk_secs) = walk(&m.mountpoint)?;
    if entries < files as u64 {
        bail!("the {files}-file mount shows only {entries} entries");
    }
    let (rss_walked_kib, anon_walked_kib) = mount_rss_kib(&m)?;
    m.unmount()?;
    std::fs::remove_dir_all(&store).context("removing the scale store")?;
    std::fs::remove_dir_all(&cache).context("removing the scale cache")?;
    Ok(ScalePoint {
        files,
        manifest_bytes,
        build_secs: built.secs,
        first_mount_secs,
        remount_secs,
        rss_mounted_kib,
        rss_walked_kib,
        anon_walked_kib,
        walk_secs,
    })
}

/// The host python's standard library directory.
fn python_stdlib() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .context("running python3 (the cold-start workload needs it)")?;
    if !out.status.success() {
        bail!("python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Copies a directory tree (regular files, directories and symlinks), skipping `site-packages`.
fn copy_tree(from: &Path, to: &Path) -> Result<u64> {
    let mut files = 0;
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if entry.file_name() != "site-packages" {
                files += copy_tree(&src, &dst)?;
            }
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
            // Keep mtimes: the stdlib's .pyc files are valid only for their source's mtime.
            let mtime = std::fs::metadata(&src)?.modified()?;
            std::fs::File::options()
                .write(true)
                .open(&dst)?
                .set_modified(mtime)?;
            files += 1;
        }
    }
    Ok(files)
}

/// Large files of the cold-start image and how much of each the workload reads.
pub(crate) fn big_files(image_size: u64, python_bytes: u64) -> (usize, u64, u64) {
    let count = 8usize;
    let each = (image_size.saturating_sub(python_bytes) / count as u64).max(1 << 20);
    // ~6% of the image in all: the python imports read a few MB, the rest is 16 MiB-aligned prefixes.
    let read_each = ((image_size as f64 * 0.055) as u64 / 4).min(each) & !0xFFFF;
    (count, each, read_each)
}

/// Writes the `count` large incompressible files `blob{i}.bin` of `each` bytes into `dir`.
pub(crate) fn write_big_files(dir: &Path, count: usize, each: u64, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for i in 0..count {
        tree::write_random_file(
            &dir.join(format!("blob{i}.bin")),
            each,
            seed + i as u64 * 7919,
        )?;
    }
    Ok(())
}

/// Runs the workload against `root` (a mount or the unpacked copy): the python imports, then the first
/// `read_each` bytes of four of the large files. Returns the seconds it took.
fn workload(root: &Path, read_each: u64) -> Result<f64> {
    let started = Instant::now();
    let lib = root.join("py");
    let script = format!(
        "import sys; sys.path.insert(0, {lib:?}); import {IMPORTS}; \
         assert json.__file__.startswith({lib:?}), json.__file__"
    );
    let out = Command::new("python3")
        .args(["-B", "-S", "-c", &script])
        .output()
        .context("running the python workload")?;
    if !out.status.success() {
        bail!(
            "the python workload failed in {}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut buf = vec![0u8; 1 << 20];
    for i in [0, 2, 5, 7] {
        let path = root.join(format!("data/blob{i}.bin"));
        let mut f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut left = read_each;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = std::io::Read::read(&mut f, &mut buf[..want])?;
            if n == 0 {
                break;
            }
            left -= n as u64;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

fn fetch_figures(after: &Metrics, before: &Metrics) -> Result<(u64, u64)> {
    Ok((
        after.require_since(before, "fetch_bytes_fetched")?,
        after.require_since(before, "fetch_requests")?,
    ))
}

fn cold_start(hydrate: &Hydrate, dir: &Path, plan: &StartupPlan) -> Result<ColdStart> {
    let nginx_bin = hydrate_testkit::find_binary("nginx").context(
        "the cold-start measurement needs nginx (scripts/install-test-deps.sh installs it)",
    )?;
    let src = dir.join("cold-src");
    let store = dir.join("cold-store");
    step("cold start: copying the python stdlib and generating the large files");
    let python_files = copy_tree(&python_stdlib()?, &src.join("py"))?;
    let python_bytes = crate::phases::dir_usage(&src.join("py"))?.1;
    let (count, each, read_each) = big_files(plan.image_size, python_bytes);
    write_big_files(&src.join("data"), count, each, plan.seed)?;
    let image_bytes = python_bytes + count as u64 * each;
    hydrate.build(&src, &store, "cold:1")?;
    // The baseline's download: the same tree as one tar in the directory nginx serves.
    let tar = store.join("full.tar");
    let status = Command::new("tar")
        .arg("cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("tar of the cold-start tree failed");
    }
    let nginx = Nginx::start(&nginx_bin, NginxMode::Directory(store.clone()))?;
    let proxy = FaultProxy::start(nginx.addr).context("starting the link proxy")?;
    proxy.faults().set_latency(plan.one_way);
    proxy.faults().set_bandwidth(Some(plan.bytes_per_sec));
    let url = proxy.url();

    step("cold start: full download + unpack over the link, then the workload");
    let unpacked = dir.join("cold-unpacked");
    std::fs::create_dir_all(&unpacked)?;
    drop_caches()?;
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sSf {url}/full.tar | tar xf - -C {}",
            unpacked.display()
        ))
        .status()
        .context("running curl | tar")?;
    if !status.success() {
        bail!("downloading and unpacking the image over the link failed");
    }
    let download_secs = started.elapsed().as_secs_f64();
    let baseline_workload_secs = workload(&unpacked, read_each)?;
    std::fs::remove_dir_all(&unpacked).context("removing the unpacked copy")?;

    let run = |name: &str, image: &str, extra: &[&str]| -> Result<ColdRun> {
        drop_caches()?;
        let cache = dir.join(format!("cold-cache-{name}"));
        let started = Instant::now();
        let m = hydrate.mount(Path::new(&url), image, &dir.join("cold-mnt"), &cache, extra)?;
        let before = m.metrics()?;
        workload(&m.mountpoint, read_each)?;
        let secs = started.elapsed().as_secs_f64();
        let after = m.metrics()?;
        let (fetched_bytes, requests) = fetch_figures(&after, &before)?;
        let mount_secs = m.ready_secs;
        m.unmount()?;
        std::fs::remove_dir_all(&cache).with_context(|| format!("removing {}", cache.display()))?;
        Ok(ColdRun {
            secs,
            fetched_bytes,
            requests,
            mount_secs,
        })
    };
    step("cold start: hydrate without a plan");
    let no_plan = run("noplan", "cold:1", &[])?;
    step("cold start: recording a trace of the workload");
    let trace = dir.join("cold.trace");
    let trace_arg = trace.display().to_string();
    run("record", "cold:1", &["--record-trace", &trace_arg])?;
    let read_bytes = trace_read_bytes(&trace)?;
    let attached = hydrate.run(&[
        "attach-trace".as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
        "cold:1".as_ref(),
        trace.as_os_str(),
        "--tag".as_ref(),
        "cold:planned".as_ref(),
    ])?;
    let (plan_entries, plan_bytes) = parse_attach(&attached)?;
    step("cold start: hydrate with the learned plan");
    let with_plan = run("plan", "cold:planned", &[])?;
    drop(proxy);
    drop(nginx);
    Ok(ColdStart {
        image_bytes,
        python_files,
        read_bytes,
        download_secs,
        baseline_workload_secs,
        no_plan,
        with_plan,
        plan_entries,
        plan_bytes,
    })
}

/// Distinct bytes the traced workload read (the sum of the trace's first-read ranges).
pub(crate) fn trace_read_bytes(trace: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(trace).with_context(|| format!("reading {}", trace.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("read "))
        .filter_map(|l| l.split(' ').nth(1)?.parse::<u64>().ok())
        .sum())
}

/// (entries, bytes) from `hydrate attach-trace`'s "prefetch plan: N entries, B bytes (…)" line.
fn parse_attach(out: &str) -> Result<(u64, u64)> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("prefetch plan: "))
        .ok_or_else(|| anyhow!("unexpected `hydrate attach-trace` output: {out:?}"))?;
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    match words.as_slice() {
        [entries, "entries", bytes, "bytes", ..] => Ok((entries.parse()?, bytes.parse()?)),
        _ => bail!("unexpected `hydrate attach-trace` plan line {line:?}"),
    }
}

impl StartupResult {
    pub fn table(&self) -> String {
        let mut out = String::new();
        if let Some(w) = &self.walk {
            out += &format!(
                "metadata walk (lstat + readdir) of {} files ({} entries), hot: ext4 {:.3} s, hydrate {:.3} s = {:.2}x \
                 (goal <= 1.5x)\n",
                w.files,
                w.entries,
                w.native_secs,
                w.hydrate_secs,
                w.hydrate_secs / w.native_secs
            );
        }
        for p in &self.scale {
            out += &format!(
                "scale {:>8} files: manifest {}, build {:.1} s, mount {:.3} s (first) / {:.3} s (remount), \
                 RSS {} after mount / {} after a stat of every file ({:.2} s; {} of it anonymous)\n",
                p.files,
                human(p.manifest_bytes),
                p.build_secs,
                p.first_mount_secs,
                p.remount_secs,
                human(p.rss_mounted_kib * 1024),
                human(p.rss_walked_kib * 1024),
                p.walk_secs,
                human(p.anon_walked_kib * 1024)
            );
        }
        if let Some(c) = &self.cold {
            let full = c.download_secs + c.baseline_workload_secs;
            let row = |name: &str, r: &ColdRun| {
                format!(
                    "  {name}: {:.2} s = {:.3} of full download ({:.2} bytes fetched per byte read, {} requests, \
                     mount {:.2} s)\n",
                    r.secs,
                    r.secs / full,
                    r.fetched_bytes as f64 / c.read_bytes.max(1) as f64,
                    r.requests,
                    r.mount_secs
                )
            };
            out += &format!(
                "cold start over the link ({:.0} ms each way, {:.0} Mbit/s): image {} ({} python files), workload reads {} \
                 ({:.1}%)\n  full download + unpack {:.2} s + workload {:.2} s = {:.2} s\n",
                self.one_way_ms,
                self.link_mbit,
                human(c.image_bytes),
                c.python_files,
                human(c.read_bytes),
                c.read_bytes as f64 / c.image_bytes as f64 * 100.0,
                c.download_secs,
                c.baseline_workload_secs,
                full
            );
            out += &row("hydrate, no plan", &c.no_plan);
            out += &row(
                &format!(
                    "hydrate, learned plan ({} entries, {})",
                    c.plan_entries,
                    human(c.plan_bytes)
                ),
                &c.with_plan,
            );
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let run = |r: &ColdRun| json!({"secs": r.secs, "fetched_bytes": r.fetched_bytes, "requests": r.requests, "mount_secs": r.mount_secs});
        json!({
            "one_way_ms": self.one_way_ms,
            "link_mbit": self.link_mbit,
            "walk": self.walk.as_ref().map(|w| json!({
                "files": w.files, "entries": w.entries, "native_secs": w.native_secs,
                "hydrate_secs": w.hydrate_secs, "ratio": w.hydrate_secs / w.native_secs,
            })),
            "scale": self.scale.iter().map(|p| json!({
                "files": p.files, "manifest_bytes": p.manifest_bytes, "build_secs": p.build_secs,
                "first_mount_secs": p.first_mount_secs, "remount_secs": p.remount_secs,
                "rss_mounted_kib": p.rss_mounted_kib, "rss_walked_kib": p.rss_walked_kib,
                "anon_walked_kib": p.anon_walked_kib, "walk_secs": p.walk_secs,
            })).collect::<Vec<_>>(),
            "cold": self.cold.as_ref().map(|c| json!({
                "image_bytes": c.image_bytes, "python_files": c.python_files, "read_bytes": c.read_bytes,
                "download_secs": c.download_secs, "baseline_workload_secs": c.baseline_workload_secs,
                "full_secs": c.download_secs + c.baseline_workload_secs,
                "no_plan": run(&c.no_plan), "with_plan": run(&c.with_plan),
                "plan_entries": c.plan_entries, "plan_bytes": c.plan_bytes,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_trees_walk_to_the_expected_counts() {
        let dir = tempfile::tempdir().unwrap();
        generate_tree(dir.path(), 250).unwrap();
        // 250 files in 3 leaf directories under one "000" directory.
        assert_eq!(walk(dir.path()).unwrap().0, 250 + 3 + 1);
    }

    #[test]
    fn attach_output_and_traces_are_parsed() {
        let out = "image abc\nprefetch plan: 12 entries, 3670016 bytes (3.5 MiB); 0 trace events named no file\n";
        assert_eq!(parse_attach(out).unwrap(), (12, 3670016));
        assert!(parse_attach("prefetch plan: twelve\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("t");
        std::fs::write(
            &trace,
            "# hydrate-trace 1\nopen a\nread 0 100 a\nread 5 7 b%20c\n",
        )
        .unwrap();
        assert_eq!(trace_read_bytes(&trace).unwrap(), 107);
        let (count, each, read_each) = big_files(2 << 30, 50 << 20);
        assert_eq!(count, 8);
        assert!(each * 8 + (50 << 20) <= 2 << 30);
        let fraction = (read_each * 4) as f64 / (2u64 << 30) as f64;
        assert!((0.05..0.06).contains(&fraction), "{fraction}");
    }

    #[test]
    fn rss_of_this_process_is_read() {
        assert!(status_kib(std::process::id() as i32, "VmRSS:") > 0);
        assert_eq!(status_kib(i32::MAX, "VmRSS:"), 0);
    }
}
