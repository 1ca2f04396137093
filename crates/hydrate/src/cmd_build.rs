//! `hydrate build`: directory → image in a store, with a progress bar on a terminal and a one-line summary; and
//! `hydrate attach-trace`: an existing image plus a recorded trace → the same image with a prefetch plan.

use crate::cli::{AttachTraceArgs, BuildArgs};
use anyhow::{bail, Context, Result};
use hydrate_builder::{attach_trace as attach, build_dir_with_trace, BuildOptions, Progress};
use hydrate_format::{PlanOptions, Trace};
use hydrate_units::{human, parse_size};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Instant;

/// A byte progress bar on stderr. indicatif draws only when stderr is a terminal, so scripts and CI logs get
/// just the summary. Shared by build, convert and push.
pub(crate) struct Bar(pub(crate) ProgressBar);

impl Bar {
    pub(crate) fn new() -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .expect("static progress template"),
        );
        Bar(bar)
    }

    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn message(&self, msg: &str) {
        self.0.set_message(msg.to_owned());
    }
}

/// The async runtime of a store-heavy command (build, convert, push): two workers, enough to keep uploads
/// and downloads going beside the blocking chunking/compression threads on these 2-core machines.
pub(crate) fn command_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(args: BuildArgs) -> Result<()> {
    let meta = std::fs::symlink_metadata(&args.source)
        .with_context(|| format!("source {}", args.source.display()))?;
    if !meta.is_dir() {
        bail!("source {} is not a directory", args.source.display());
    }
    if let Some(tag) = &args.tag {
        hydrate_store::keys::validate_tag(tag).with_context(|| format!("tag {tag:?}"))?;
    }
    let blob_target_size = parse_size(&args.blob_size).context("--blob-size")?;
    if !(1 << 20..=4 << 30).contains(&blob_target_size) {
        bail!("--blob-size {} must be between 1M and 4G", args.blob_size);
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let trace = match &args.prefetch_from {
        Some(path) => Some(hydrate_core::read_trace(path).context("--prefetch-from")?),
        None => None,
    };
    let store =
        hydrate_store::open_store(&args.store).with_context(|| format!("store {}", args.store))?;
    let opts = BuildOptions {
        zstd_level: args.zstd_level,
        blob_target_size,
        threads,
        tag: args.tag.clone(),
    };
    let progress = Bar::new();
    let started = Instant::now();
    let rt = command_runtime()?;
    let report = rt
        .block_on(build_dir_with_trace(
            &args.source,
            store.as_ref(),
            &opts,
            trace.as_ref(),
            &progress,
        ))
        .with_context(|| {
            format!(
                "building {} into {}",
                args.source.display(),
                store.describe()
            )
        })?;
    progress.0.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let name = args.tag.as_deref().unwrap_or("image");
    let dedup = if report.stored_bytes > 0 {
        format!(
            "{:.2}x",
            report.logical_bytes as f64 / report.stored_bytes as f64
        )
    } else {
        "all reused".to_owned()
    };
    println!("{name} {}", report.image);
    println!(
        "{} files, {} dirs, {} symlinks, {} other; {} logical in {} chunks ({} unique, {} reused from the store); \
         {} new stored in {} blobs; logical/stored {dedup}; manifest {}; {:.1}s ({}/s)",
        report.files,
        report.dirs,
        report.symlinks,
        report.other,
        human(report.logical_bytes),
        report.chunks,
        report.unique_chunks,
        report.reused_chunks,
        human(report.stored_bytes),
        report.new_blobs,
        human(report.manifest_bytes),
        secs,
        human((report.logical_bytes as f64 / secs.max(1e-9)) as u64),
    );
    if trace.is_some() {
        println!(
            "prefetch plan: {} entries ({} trace events named no file of this image)",
            report.prefetch_entries, report.prefetch_unresolved
        );
    }
    Ok(())
}

pub fn attach_trace(args: AttachTraceArgs) -> Result<()> {
    if let Some(ctd_tag) = &args.containerd_tag {
        crate::cmd_convert::check_containerd_tag(&args.store, args.tag.as_deref(), ctd_tag)?;
    }
    let trace = hydrate_core::read_trace(&args.trace)?;
    attach_and_report(
        &args.store,
        &args.image,
        &trace,
        args.tag.as_deref(),
        &args.small_file_max,
        args.containerd_tag.as_deref(),
    )
}

/// Stores `image` of `store_addr` again with a plan made from `trace` (tagged `tag`), and prints the new image
/// and the plan's size: `attach-trace`, and the last step of `learn`. With `containerd_tag`, the new image's
/// containerd form is published too (as `convert --containerd-tag` does), so containerd runs it with its plan.
pub(crate) fn attach_and_report(
    store_addr: &str,
    image: &str,
    trace: &Trace,
    tag: Option<&str>,
    small_file_max: &str,
    containerd_tag: Option<&str>,
) -> Result<()> {
    let small_file_max = parse_size(small_file_max).context("--small-file-max")?;
    if let Some(tag) = tag {
        hydrate_store::keys::validate_tag(tag).with_context(|| format!("tag {tag:?}"))?;
    }
    if let Some(ctd_tag) = containerd_tag {
        crate::cmd_convert::check_containerd_tag(store_addr, tag, ctd_tag)?;
    }
    let report = crate::cmd_inspect::with_image(store_addr, image, |store, id| async move {
        let opts = PlanOptions {
            small_file_max,
            ..PlanOptions::default()
        };
        attach(store.as_ref(), &id, trace, opts, tag)
            .await
            .with_context(|| format!("image {image:?} in {}", store.describe()))
    })?;
    println!("{} {}", tag.unwrap_or("image"), report.image);
    println!(
        "prefetch plan: {} entries, {} bytes ({}); {} trace events named no file of this image",
        report.entries,
        report.bytes,
        human(report.bytes),
        report.unresolved
    );
    if let Some(ctd_tag) = containerd_tag {
        let new_image = report.image.to_string();
        let (_, manifest) = crate::cmd_inspect::load_manifest(store_addr, &new_image)?;
        let Some(source) = crate::cmd_convert::LazySource::of_manifest(&manifest) else {
            bail!(
                "--containerd-tag {ctd_tag}: image {image:?} was not converted from a container image (it has no \
                 image config to run); convert it with `hydrate convert` first"
            );
        };
        let reference = command_runtime()?
            .block_on(crate::cmd_convert::publish_for_containerd(
                store_addr, tag, ctd_tag, &source, &new_image,
            ))
            .with_context(|| format!("publishing the containerd image {ctd_tag}"))?;
        println!("containerd {reference}");
    }
    Ok(())
}
