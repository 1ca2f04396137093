//! The worker: the process that serves a mount's FUSE connection for its supervisor (`supervise.rs`). Wires
//! store → fetch engine → cache → core volume → FUSE adapter → kernel session, and serves its control socket.
//! In kernel mode the FUSE adapter is `kernel_worker::BlobFront` (the blob erofs reads) instead of HydrateFs,
//! over the same volume, and the worker writes the erofs metadata file before it accepts the hand-over.
//!
//! Life of a worker: take the supervisor's offer of the hand-over state (refusing a version it does not know),
//! prepare what does not need the cache (store, image, manifest) while a predecessor may still serve, accept,
//! receive the /dev/fuse descriptor, open the cache, and either answer INIT (the first worker) or resume the
//! connection (restoring the negotiated parameters, file handles and passthrough backing ids, then
//! FUSE_NOTIFY_RESEND). Every change of handles and backing ids is journaled to the supervisor before the
//! kernel sees it. On `Stop` it finishes the requests it has read and exits; when the supervisor disappears it
//! exits at once, so the kernel ends the connection instead of leaving readers hanging.

use crate::kernel_worker::{self, BlobFront, KernelPrepared};
use crate::process::{redirect_stderr, BACKGROUND_NOTE, KERNEL_METADATA_NOTE, SPEC_NOTE};
use crate::spec::MountSpec;
use crate::worker_status::{Front, WorkerStatus};
use anyhow::{bail, Context, Result};
use hydrate_cache::{CacheConfig, CacheError, DiskCache};
use hydrate_control::mount::{socket_path, worker_socket_path, WorkerReply, WorkerRequest};
use hydrate_control::wire::{self, Handler};
use hydrate_control::MountClient;
use hydrate_core::{load_manifest, TraceRecorder, Volume};
use hydrate_fetch::FetchEngine;
use hydrate_format::ImageId;
use hydrate_fuse::{FileHandle, HandleRecord, HydrateFs, IoEvent, IoJournal, RestoredIo};
use hydrate_fuse_transport::{
    BackingId, FuseDev, Negotiated, Session, SessionConfig, SessionEnd, StopHandle,
};
use hydrate_kernel::BlobFs;
use hydrate_store::{BlobStore, CountingStore, FaultyStore};
use hydrate_supervisor::{Event, HandoverState, OfferError, OpenRecord, Start, WorkerLink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a new mount waits for the cache of an earlier mount of the same image to be released (that
/// mount's daemon flushing after a plain `umount`), and a worker taking over for its predecessor's.
const CACHE_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Journals the FUSE adapter's bookkeeping changes to the supervisor.
struct LinkJournal(Arc<WorkerLink>);

impl IoJournal for LinkJournal {
    fn record(&self, event: &IoEvent) -> std::io::Result<()> {
        let event = match *event {
            IoEvent::Opened {
                record,
                new_backing,
            } => Event::Opened {
                record: OpenRecord {
                    fh: record.fh.0,
                    ino: record.ino,
                    passthrough: record.passthrough,
                    open_unique: record.open_unique,
                },
                backing: new_backing.map(|b| b.0),
            },
            IoEvent::Released { fh } => Event::Released { fh: fh.0 },
            IoEvent::BackingClosed { ino } => Event::BackingClosed { ino },
        };
        self.0.event(&event).map_err(std::io::Error::other)
    }
}

fn restored_io(state: &HandoverState) -> RestoredIo {
    RestoredIo {
        handles: state
            .opens
            .values()
            .map(|r| HandleRecord {
                fh: FileHandle(r.fh),
                ino: r.ino,
                passthrough: r.passthrough,
                open_unique: r.open_unique,
            })
            .collect(),
        backings: state
            .backings
            .iter()
            .map(|(&ino, &id)| (ino, BackingId(id)))
            .collect(),
    }
}

/// The worker process (`hydrate __worker --link-fd N --supervisor-pid P`): serves the mount described by the
/// spec in the supervisor's hand-over state until it is unmounted or asked to hand over.
pub fn worker_main(link_fd: i32, supervisor_pid: i32) -> Result<()> {
    let link = Arc::new(WorkerLink::connect(link_fd, supervisor_pid).context("supervisor link")?);
    let offer = match link.recv_offer() {
        Ok(offer) => offer,
        Err(OfferError::Unsupported(err)) => {
            let _ = link.refuse(&err.to_string());
            bail!("refusing the hand-over: {err}");
        }
        Err(OfferError::Link(err)) => {
            return Err(err).context("waiting for the supervisor's offer")
        }
    };
    let refuse = |reason: String| -> anyhow::Error {
        let _ = link.refuse(&reason);
        anyhow::anyhow!("refusing the hand-over: {reason}")
    };
    if let Some(bytes) = &offer.state.negotiated {
        if let Err(err) = Negotiated::from_bytes(bytes) {
            return Err(refuse(err.to_string()));
        }
    }
    // A supervisor of an older hydrate passed the options on the command line instead: refusing keeps its
    // current worker serving (an upgrade fails cleanly; a restart is retried by its policy).
    let spec = match offer.state.note(SPEC_NOTE) {
        Some(text) => MountSpec::from_json(text).map_err(refuse)?,
        None => {
            return Err(refuse(
                "the supervisor gave no mount spec (it runs an older hydrate): unmount and mount again to \
                 serve with this version"
                    .into(),
            ))
        }
    };
    let prepared = match prepare(&spec, &offer.state, &link) {
        Ok(p) => p,
        Err(err) => {
            let _ = link.fatal(&format!("{err:#}"));
            return Err(err);
        }
    };
    link.accept().context("accepting the hand-over")?;
    let start = link
        .recv_start()
        .context("waiting for the FUSE connection")?;
    serve(
        spec,
        prepared,
        offer.generation,
        supervisor_pid as u32,
        start,
        link,
    )
}

/// What a worker sets up before it gets the connection (a predecessor may still be serving).
struct Prepared {
    rt: tokio::runtime::Runtime,
    store: Arc<CountingStore<Arc<dyn BlobStore>>>,
    image: ImageId,
    cache_dir: PathBuf,
    quota: u64,
    manifest: hydrate_core::MappedManifest,
    /// The cache, opened while the manifest loaded, when no predecessor can hold it.
    cache: Option<Arc<DiskCache>>,
    /// Kernel mode: the erofs metadata file and the blob layout.
    kernel: Option<KernelPrepared>,
}

fn prepare(spec: &MountSpec, state: &HandoverState, link: &WorkerLink) -> Result<Prepared> {
    let quota = spec.cache.size;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hydrate-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut inner = hydrate_store::open_existing_store_with(&spec.store, &spec.remote_options())
        .with_context(|| format!("store {}", spec.store))?;
    if spec.test_store_latency_ms > 0 {
        let slow = FaultyStore::new(inner);
        slow.set_read_delay(Duration::from_millis(spec.test_store_latency_ms));
        inner = Arc::new(slow);
    }
    let store = Arc::new(CountingStore::new(inner));
    // A restarted worker serves the image its first predecessor resolved, even if the tag moved since.
    let image = match state.note("image") {
        Some(digest) => digest
            .parse::<ImageId>()
            .map_err(|e| anyhow::anyhow!("hand-over state names image {digest:?}: {e}"))?,
        None => {
            let image = rt
                .block_on(hydrate_store::resolve(store.as_ref(), &spec.image))
                .with_context(|| format!("image {:?} in store {}", spec.image, spec.store))?;
            note(link, "image", &image.to_string())?;
            image
        }
    };
    let cache_dir = match state.note("cache_dir") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = spec.cache_dir_for(&image.to_string());
            note(link, "cache_dir", &dir.display().to_string())?;
            dir
        }
    };
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("cache directory {}", cache_dir.display()))?;
    if state.note(BACKGROUND_NOTE).is_some() {
        let log = spec
            .log_file
            .clone()
            .unwrap_or_else(|| cache_dir.join("daemon.log"));
        redirect_stderr(&log)?;
        if state.note("log_file").is_none() {
            note(link, "log_file", &log.display().to_string())?;
        }
    }
    // The first worker of a mount has no predecessor holding the cache: open it (index creation or check, a few
    // syncs) while the manifest loads instead of after, since the mount's start waits for both. A worker taking
    // over opens it once its predecessor is gone (see serve).
    let early_cache = state.negotiated.is_none().then(|| {
        let config = cache_config(&cache_dir, quota);
        std::thread::Builder::new()
            .name("cache-open".into())
            .spawn(move || DiskCache::open(config))
    });
    let manifest = rt
        .block_on(load_manifest(
            store.as_ref(),
            &image,
            &cache_dir.join("manifests"),
        ))
        .with_context(|| format!("image {image} ({})", spec.image));
    let opened = early_cache.map(|spawned| {
        spawned
            .context("starting the cache-open thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("opening the cache panicked"))
    });
    // A bad image is the error to report, whatever the cache did meanwhile.
    let manifest = manifest?;
    // Kernel mode: the erofs metadata is laid out while a predecessor may still serve.
    let kernel = match spec.kernel {
        true => {
            let mounted = state.note(KERNEL_METADATA_NOTE);
            let prepared = kernel_worker::prepare(&manifest, &image, &cache_dir, mounted)?;
            note(
                link,
                KERNEL_METADATA_NOTE,
                &prepared.metadata.display().to_string(),
            )?;
            Some(prepared)
        }
        false => None,
    };
    let cache = match opened.transpose()? {
        None => None,
        Some(Ok(cache)) => Some(cache),
        // Held after all (a worker of an earlier mount still exiting): wait for it in serve.
        Some(Err(CacheError::Locked { .. })) => None,
        Some(Err(err)) => {
            return Err(err).with_context(|| format!("cache {}", cache_dir.display()))
        }
    };
    Ok(Prepared {
        rt,
        store,
        image,
        cache_dir,
        quota,
        manifest,
        cache,
        kernel,
    })
}

fn cache_config(dir: &Path, quota: u64) -> CacheConfig {
    CacheConfig {
        dir: dir.to_path_buf(),
        quota_bytes: quota,
        flush_interval: Duration::from_millis(200),
    }
}

fn note(link: &WorkerLink, key: &str, value: &str) -> Result<()> {
    link.event(&Event::Note {
        key: key.into(),
        value: value.into(),
    })
    .context("reporting to the supervisor")
}

/// Opens the cache, waiting while another process holds it: a predecessor worker (the supervisor waited for
/// it to exit, so only the kernel closing its files remains) or the daemon of an earlier mount of the same image
/// that was unmounted with a plain `umount` and is still flushing.
fn open_cache(config: CacheConfig) -> Result<Arc<DiskCache>> {
    let started = Instant::now();
    let mut said = false;
    loop {
        match DiskCache::open(config.clone()) {
            Err(CacheError::Locked { .. }) if started.elapsed() < CACHE_LOCK_WAIT => {
                if !said && started.elapsed() > Duration::from_millis(500) {
                    tracing::info!(
                        cache = %config.dir.display(),
                        "the cache is held by another process (an earlier mount still exiting?); waiting up to {} s",
                        CACHE_LOCK_WAIT.as_secs()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(err @ CacheError::Locked { .. }) => {
                return Err(err).with_context(|| {
                    format!(
                        "still held after {} s; give this mount its own --cache-dir, or stop the process \
                         holding it",
                        CACHE_LOCK_WAIT.as_secs()
                    )
                })
            }
            other => return other.with_context(|| format!("cache {}", config.dir.display())),
        }
    }
}

fn serve(
    spec: MountSpec,
    prepared: Prepared,
    generation: u64,
    supervisor_pid: u32,
    start: Start,
    link: Arc<WorkerLink>,
) -> Result<()> {
    let Prepared {
        rt,
        store,
        image,
        cache_dir,
        quota,
        manifest,
        cache,
        kernel,
    } = prepared;
    let mountpoint = spec.mountpoint.clone();
    let cache = match cache {
        Some(cache) => cache,
        None => open_cache(cache_config(&cache_dir, quota))?,
    };
    let engine = FetchEngine::new(store.clone() as Arc<dyn BlobStore>, spec.fetch_config());
    let mut vol = Volume::new(
        image,
        manifest,
        cache.clone(),
        engine,
        rt.handle().clone(),
        spec.volume_config(),
    );
    // A trace needs every read in user space: passthrough reads never reach the daemon.
    let passthrough = spec.serves_passthrough();
    if let Some(path) = &spec.record_trace {
        let recorder = Arc::new(trace_recorder(path, &vol, &start.state));
        vol = vol.with_trace(recorder);
    }
    let vol = Arc::new(vol);
    if let Some(path) = &spec.record_trace {
        vol.spawn_trace_writer(path.clone(), Duration::from_secs(2));
    }
    vol.start_elf_deps();
    let plan = vol.start_plan();
    let plan_task = plan.as_ref().map(|task| task.abort_handle());
    if plan.is_some() {
        tracing::info!(
            entries = vol.manifest().prefetch().len(),
            "replaying the image's prefetch plan in the background"
        );
    }
    let fill = vol.start_fill(plan);
    let fill_task = fill.as_ref().map(|task| task.abort_handle());
    if fill.is_some() {
        tracing::info!(
            budget = spec.volume.fill_budget,
            "filling the image in the background (reads first)"
        );
    }
    let dev = FuseDev::from_fd(start.dev);
    let resumed = match &start.state.negotiated {
        Some(bytes) => Some(Negotiated::from_bytes(bytes).context("negotiated state")?),
        None => None,
    };
    let fuse_config = SessionConfig {
        threads: spec.threads as usize,
        want_passthrough: passthrough,
        // Directory handles carry nothing (HydrateFs::opendir answers fh 0): let the kernel open directories
        // without asking and keep their listings cached, which makes a hot tree walk upcall-free.
        stateless_dirs: true,
        ..SessionConfig::default()
    };
    let on_init = {
        let link = Arc::clone(&link);
        let mountpoint = mountpoint.clone();
        let first = resumed.is_none();
        // The kernel offers its bdi default (128 KiB) at INIT, so the negotiated value is no guide: ask for the
        // window this server is configured for. Not in kernel mode: the mount point is erofs, whose readahead
        // the supervisor sets, and the blob is read with direct I/O.
        let readahead = (!spec.kernel).then_some(fuse_config.max_readahead);
        move |negotiated: &Negotiated| {
            if first {
                let _ = link.event(&Event::Negotiated(negotiated.to_bytes()));
            }
            let _ = link.serving();
            if let Some(readahead) = readahead {
                raise_readahead(&mountpoint, readahead);
            }
        }
    };
    let (front, config) = match kernel {
        // Kernel mode: the connection serves the blob erofs reads its file data from; BlobFs opens nothing
        // worth journaling (one file, fh 0), so a successor resumes with the negotiated state alone.
        Some(kernel) => {
            let fs = Arc::new(BlobFront::new(Arc::clone(&vol), kernel));
            fs.on_init(on_init);
            fs.spawn_idle_release()?;
            (
                Front::Kernel(fs),
                BlobFs::session_config(spec.threads as usize),
            )
        }
        None => {
            let fs = Arc::new(
                HydrateFs::new(
                    Arc::clone(&vol),
                    dev.try_clone().context("cloning the FUSE descriptor")?,
                    passthrough,
                )
                .with_journal(Arc::new(LinkJournal(Arc::clone(&link))))
                .with_restored(&restored_io(&start.state)),
            );
            fs.on_init(on_init);
            (Front::Fuse(fs), fuse_config)
        }
    };
    let resuming = resumed.is_some();
    let session = match resumed {
        Some(negotiated) => Session::resume(dev, config, negotiated),
        None => Session::new(dev, config),
    };
    let status = Arc::new(WorkerStatus {
        store_addr: spec.store.clone(),
        cache_dir: cache_dir.clone(),
        generation,
        vol: Arc::clone(&vol),
        store,
        front: front.clone(),
        ops: session.stats(),
    });
    if let Some(addr) = spec.metrics {
        // Scrapes get what `hydrate status --metrics` prints: the supervisor's merged answer, else ours.
        let (status, client) = (
            Arc::clone(&status),
            MountClient::at_socket(socket_path(&mountpoint)),
        );
        crate::metrics_http::spawn(
            addr,
            Arc::new(move || {
                client
                    .metrics()
                    .unwrap_or_else(|_| status.metrics())
                    .to_prometheus()
            }),
        )?;
    }
    let socket = serve_status(
        &worker_socket_path(&mountpoint, supervisor_pid, generation),
        status,
    );
    spawn_link_thread(Arc::clone(&link), session.stop_handle())?;
    {
        let vol = Arc::clone(&vol);
        crate::alloc::spawn_idle_trimmer(move || vol.engine().stats().bytes_fetched)
            .context("starting the memory trimmer thread")?;
    }
    tracing::info!(image = %image, generation, resumed = resuming, kernel = spec.kernel, mountpoint = %mountpoint.display(), "serving");
    let served = match front {
        Front::Fuse(fs) => session.serve(fs),
        Front::Kernel(fs) => session.serve(fs),
    };
    if let Some(socket) = socket {
        socket.remove();
    }
    // Background fetching stops before the cache closes: what it wrote after the close would not be recorded,
    // and a later open would delete those files one by one.
    for task in [plan_task, fill_task].into_iter().flatten() {
        task.abort();
    }
    // Other threads still hold the cache, so it is never dropped: close it explicitly, or the next worker's open
    // would repair its index first.
    if let Err(error) = cache.close() {
        tracing::error!(%error, "flushing the cache at exit failed; recently fetched data will be fetched again");
    }
    if let Some(path) = &spec.record_trace {
        match vol.save_trace(path) {
            Ok(()) => tracing::info!(trace = %path.display(), "access trace written"),
            Err(error) => tracing::error!(%error, "writing the access trace at exit failed"),
        }
    }
    match served.with_context(|| format!("serving {}", mountpoint.display()))? {
        SessionEnd::Stopped { .. } => {
            tracing::info!(generation, "stopped for a hand-over; exiting")
        }
        SessionEnd::Unmounted => {
            tracing::info!(mountpoint = %mountpoint.display(), "unmounted; exiting")
        }
    }
    Ok(())
}

/// Serves the worker's control socket (asked by its supervisor only); a failure leaves `hydrate status` partial.
fn serve_status(path: &Path, status: Arc<WorkerStatus>) -> Option<wire::SocketFile> {
    let bound = wire::bind(path).and_then(|(listener, file)| {
        let handler: Handler<WorkerRequest, WorkerReply> = Arc::new(move |request, _peer| {
            Ok(match request {
                WorkerRequest::Info => WorkerReply::Info(status.info()),
                WorkerRequest::Metrics => WorkerReply::Metrics(status.metrics()),
            })
        });
        wire::serve(listener, "worker-control", handler).map(|()| file)
    });
    match bound {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::warn!(%error, socket = %path.display(), "worker control socket unavailable; status will be partial");
            None
        }
    }
}

/// The recorder of `--record-trace`: a worker that takes over a running mount continues its predecessor's
/// trace (the file it left); the first worker of a mount starts a new one.
fn trace_recorder(path: &Path, vol: &Volume, state: &HandoverState) -> TraceRecorder {
    if state.negotiated.is_some() && path.exists() {
        match hydrate_core::read_trace(path) {
            Ok(trace) => return TraceRecorder::continuing(&trace, vol.manifest()),
            Err(error) => {
                tracing::warn!(%error, "cannot continue the previous worker's trace; starting a new one")
            }
        }
    }
    TraceRecorder::new()
}

/// Waits for the supervisor: a `Stop` stops the session for a hand-over; a closed link means the supervisor is
/// gone, and this worker exits at once so the connection does not outlive it.
fn spawn_link_thread(link: Arc<WorkerLink>, stop: StopHandle) -> Result<()> {
    std::thread::Builder::new()
        .name("supervisor-link".into())
        .spawn(move || match link.wait_for_stop() {
            Ok(()) => {
                tracing::info!("supervisor asked for a hand-over; finishing requests in hand");
                stop.stop();
            }
            Err(error) => {
                tracing::error!(%error, "supervisor gone; exiting so the kernel ends the connection");
                std::process::exit(2);
            }
        })
        .context("starting the supervisor link thread")?;
    Ok(())
}

/// Lets the kernel read ahead as far as the connection allows. FUSE caps its readahead at the backing device's
/// `read_ahead_kb`, which defaults to 128 KiB, so a cold sequential stream arrived as 128 KiB READs (8 upcalls per
/// MiB) although INIT agreed on a larger window. Best effort: a failure only leaves the kernel default.
fn raise_readahead(mountpoint: &Path, bytes: u32) {
    let wanted_kib = bytes / 1024;
    // The device numbers come from mountinfo, not stat(2): a stat of the mount root would be served by this very
    // connection, which may still be starting. The mount on top at the mount point is ours.
    let Some(dev) = hydrate_mountinfo::MountInfo::read_self()
        .ok()
        .and_then(|info| {
            info.top_at(mountpoint)
                .map(|e| format!("{}:{}", e.major, e.minor))
        })
    else {
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, format!("{wanted_kib}\n")) {
        Ok(()) => tracing::debug!(%path, wanted_kib, "raised the mount's readahead"),
        Err(error) => tracing::debug!(%path, %error, "could not raise the mount's readahead"),
    }
}
