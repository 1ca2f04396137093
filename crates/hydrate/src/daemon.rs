//! The mount daemon: wires store → fetch engine → cache → core volume → FUSE adapter → kernel session, serves the
//! control socket, and unmounts cleanly on SIGTERM/SIGINT/SIGHUP.

use crate::cli::MountArgs;
use crate::control::{self, Answer, Metric};
use crate::units::parse_size;
use anyhow::{bail, Context, Result};
use hydrate_cache::{CacheConfig, DiskCache};
use hydrate_core::{load_manifest, Volume, VolumeConfig};
use hydrate_fetch::{FetchConfig, FetchEngine};
use hydrate_fuse::HydrateFs;
use hydrate_fuse_transport::{abi, MountOptions, OpStats, Session, SessionConfig};
use hydrate_store::{BlobStore, CountingStore};
use nix::sys::signal::{SigSet, Signal};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SERVED_OPCODES: [u32; 14] = [
    abi::FUSE_LOOKUP,
    abi::FUSE_FORGET,
    abi::FUSE_GETATTR,
    abi::FUSE_READLINK,
    abi::FUSE_OPEN,
    abi::FUSE_READ,
    abi::FUSE_RELEASE,
    abi::FUSE_OPENDIR,
    abi::FUSE_READDIR,
    abi::FUSE_READDIRPLUS,
    abi::FUSE_RELEASEDIR,
    abi::FUSE_STATFS,
    abi::FUSE_GETXATTR,
    abi::FUSE_LISTXATTR,
];

/// The write end of the readiness pipe to `hydrate mount`; written at most once.
struct ReadyPipe(Mutex<Option<OwnedFd>>);

impl ReadyPipe {
    fn new(fd: Option<i32>) -> Self {
        // SAFETY: `hydrate mount` created this descriptor for us and passed its number; nothing else in this
        // process owns it.
        #[allow(unsafe_code)]
        let owned = fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        ReadyPipe(Mutex::new(owned))
    }

    fn send(&self, verdict: &str) {
        if let Some(fd) = self.0.lock().expect("ready pipe poisoned").take() {
            let _ = nix::unistd::write(&fd, format!("{verdict}\n").as_bytes());
        }
    }
}

pub fn run(args: MountArgs) -> Result<()> {
    let ready = Arc::new(ReadyPipe::new(args.ready_fd));
    let result = serve(args, Arc::clone(&ready));
    if let Err(err) = &result {
        ready.send(&format!("error: {err:#}"));
    }
    result
}

struct Daemon {
    mountpoint: PathBuf,
    store_addr: String,
    cache_dir: PathBuf,
    vol: Arc<Volume>,
    store: Arc<CountingStore<Arc<dyn BlobStore>>>,
    fs: Arc<HydrateFs>,
    ops: Arc<OpStats>,
}

impl Answer for Daemon {
    fn info(&self) -> Vec<(&'static str, String)> {
        vec![
            ("mountpoint", self.mountpoint.display().to_string()),
            ("image", self.vol.image().to_string()),
            ("store", self.store_addr.clone()),
            ("pid", std::process::id().to_string()),
            ("cache_dir", self.cache_dir.display().to_string()),
        ]
    }

    fn metrics(&self) -> Vec<Metric> {
        let counter = |prefix: &str, (name, value): (&str, u64)| Metric {
            name: format!("{prefix}_{name}"),
            gauge: false,
            value,
        };
        let mut out: Vec<Metric> = Vec::new();
        out.extend(
            self.vol
                .stats()
                .snapshot()
                .into_iter()
                .map(|m| counter("volume", m)),
        );
        out.extend(
            self.vol
                .engine()
                .stats()
                .snapshot()
                .into_iter()
                .map(|m| counter("fetch", m)),
        );
        out.extend(
            self.store
                .stats()
                .snapshot()
                .into_iter()
                .map(|m| counter("store", m)),
        );
        // Every opcode the filesystem serves is listed, also at zero, so dashboards and tests see a stable set.
        for op in SERVED_OPCODES {
            let name = abi::opcode_name(op).to_ascii_lowercase();
            out.push(Metric {
                name: format!("fuse_requests_{name}"),
                gauge: false,
                value: self.ops.get(op),
            });
        }
        let a = self.fs.stats();
        for (name, v) in [
            ("passthrough_opens", &a.passthrough_opens),
            ("cached_opens", &a.cached_opens),
            ("backing_open_failures", &a.backing_open_failures),
        ] {
            out.push(counter(
                "fuse",
                (name, v.load(std::sync::atomic::Ordering::Relaxed)),
            ));
        }
        let c = self.vol.cache().stats();
        for (name, value, gauge) in [
            ("used_bytes", c.used_bytes, true),
            ("quota_bytes", c.quota_bytes, true),
            ("files", c.files, true),
            ("evictions", c.evictions, false),
            ("evicted_bytes", c.bytes_evicted, false),
        ] {
            out.push(Metric {
                name: format!("cache_{name}"),
                gauge,
                value,
            });
        }
        out
    }
}

fn serve(args: MountArgs, ready: Arc<ReadyPipe>) -> Result<()> {
    // Block the stop signals before any thread exists, so they all inherit the mask and only the signal thread
    // (sigwait) receives them.
    let mut stop_signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop_signals.add(s);
    }
    stop_signals
        .thread_block()
        .context("blocking stop signals")?;
    if args.ready_fd.is_some() {
        nix::unistd::setsid().context("detaching the daemon from the terminal")?;
    }
    let mountpoint = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    if !std::fs::metadata(&mountpoint)?.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    let quota = parse_size(&args.cache_size).context("--cache-size")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hydrate-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    let inner =
        hydrate_store::open_store(&args.store).with_context(|| format!("store {}", args.store))?;
    let store = Arc::new(CountingStore::new(inner));
    let image = rt
        .block_on(hydrate_store::resolve(store.as_ref(), &args.image))
        .with_context(|| format!("image {:?} in store {}", args.image, args.store))?;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/cache/hydrate").join(image.to_string()));
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("cache directory {}", cache_dir.display()))?;
    if args.ready_fd.is_some() {
        redirect_stderr(
            &args
                .log_file
                .clone()
                .unwrap_or_else(|| cache_dir.join("daemon.log")),
        )?;
    }
    let cache = DiskCache::open(CacheConfig {
        dir: cache_dir.clone(),
        quota_bytes: quota,
        flush_interval: Duration::from_millis(200),
    })
    .with_context(|| format!("cache {}", cache_dir.display()))?;
    let manifest = rt
        .block_on(load_manifest(
            store.as_ref(),
            &image,
            &cache_dir.join("manifests"),
        ))
        .with_context(|| format!("image {image} ({})", args.image))?;
    let engine = FetchEngine::new(store.clone() as Arc<dyn BlobStore>, FetchConfig::default());
    let vol = Arc::new(Volume::new(
        image,
        manifest,
        cache.clone(),
        engine,
        rt.handle().clone(),
        VolumeConfig::default(),
    ));

    let opts = MountOptions {
        fsname: format!("hydrate:{}", args.image),
        subtype: "hydrate".into(),
        read_only: true,
        allow_other: !args.private,
        default_permissions: true,
    };
    let dev = hydrate_fuse_transport::mount(&mountpoint, &opts)
        .with_context(|| format!("mounting on {}", mountpoint.display()))?;
    let fs = Arc::new(HydrateFs::new(
        Arc::clone(&vol),
        dev.try_clone().context("cloning the FUSE descriptor")?,
        !args.no_passthrough,
    ));
    {
        let ready = Arc::clone(&ready);
        fs.on_init(move |_| ready.send("ready"));
    }
    let session = Session::new(
        dev,
        SessionConfig {
            threads: args.threads as usize,
            want_passthrough: !args.no_passthrough,
            ..SessionConfig::default()
        },
    );
    let daemon = Arc::new(Daemon {
        mountpoint: mountpoint.clone(),
        store_addr: args.store.clone(),
        cache_dir: cache_dir.clone(),
        vol: Arc::clone(&vol),
        store,
        fs: Arc::clone(&fs),
        ops: session.stats(),
    });
    let socket = match control::serve(&mountpoint, daemon) {
        Ok(path) => Some(path),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "control socket unavailable; status and umount waiting will not work");
            None
        }
    };
    spawn_signal_thread(stop_signals, mountpoint.clone())?;
    tracing::info!(image = %image, mountpoint = %mountpoint.display(), "serving");
    let served = session.run(fs);
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    if let Err(error) = cache.flush() {
        tracing::error!(%error, "flushing the cache at exit failed; recently fetched data will be fetched again");
    }
    served.with_context(|| format!("serving {}", mountpoint.display()))?;
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted; exiting");
    Ok(())
}

/// On a stop signal, detach the mount: the kernel ends the connection once the last user is gone, the session
/// returns, and the daemon flushes its cache and exits.
fn spawn_signal_thread(signals: SigSet, mountpoint: PathBuf) -> Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match signals.wait() {
                Ok(signal) => {
                    tracing::info!(?signal, "stop signal: unmounting");
                    if let Err(error) = hydrate_fuse_transport::unmount(&mountpoint, true) {
                        tracing::error!(%error, mountpoint = %mountpoint.display(), "unmount on signal failed");
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "waiting for signals failed");
                    return;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn redirect_stderr(log: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("log directory {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("log file {}", log.display()))?;
    nix::unistd::dup2_stderr(&file)
        .with_context(|| format!("redirecting stderr to {}", log.display()))?;
    let _ = file.as_raw_fd();
    Ok(())
}
