//! [`MountSpec`]: everything a mount is started with, typed and validated before any process is started.
//!
//! `hydrate mount` turns its command line into a spec, [`MountSpec::validate`]s it (options, store address,
//! credentials that can be checked locally, image name, mount point) and only then starts the daemon; the
//! supervisor hands the same spec to every worker it runs (in the hand-over state, see `supervise.rs`), so a
//! worker never re-parses a command line and an upgraded worker serves exactly what the mount was started with.
//! Other front ends (the containerd snapshotter) build a spec with [`MountSpec::new`] and the same validation.
//!
//! The spec is also where the fetch options become the engine's and the network client's settings. One
//! request timeout governs both layers: the engine abandons (and retries) a request after `fetch.timeout`, and
//! the HTTP client under S3/HTTP stores is given the same bound, with its idle-read and connect timeouts no
//! longer than it, so a stalled connection is noticed by whichever layer sees it first and never outlives the
//! engine's idea of the request.

use hydrate_core::VolumeConfig;
use hydrate_fetch::{FetchConfig, MIN_BUDGET};
use hydrate_store::RemoteOptions;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a mount keeps an image's cache without an explicit directory: DEFAULT_CACHE_ROOT/<image digest>,
/// shared by the image's mounts one at a time.
pub const DEFAULT_CACHE_ROOT: &str = "/var/cache/hydrate";

/// Requests to S3 stores are at least this long: Garage (and s3s-fs) do not set TCP_NODELAY, so a response
/// shorter than one TCP segment (64 KiB on loopback) waits ~40 ms for the client's delayed ACK; a wider
/// range costs far less (docs/remote-stores.md has the measurements).
const S3_MIN_REQUEST: u64 = 64 << 10;

/// Accepted ranges of the numeric options.
const MAX_THREADS: u32 = 64;
const MAX_IN_FLIGHT: u32 = 1024;

/// A mount, as its daemon runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Store address: a directory, `s3://…`, `http(s)://…` or `oci://…`.
    pub store: String,
    /// Image: a tag or a manifest digest.
    pub image: String,
    /// Absolute mount point, parent symlinks resolved (`hydrate_control::resolve_mountpoint`).
    pub mountpoint: PathBuf,
    pub cache: CacheSpec,
    /// Log file of a background daemon [default: `<cache dir>/daemon.log`].
    pub log_file: Option<PathBuf>,
    /// Threads serving FUSE requests.
    pub threads: u32,
    /// Hand complete files to the kernel (FUSE passthrough).
    pub passthrough: bool,
    /// Only the mounting user may access the mount.
    pub private: bool,
    pub fetch: FetchSpec,
    pub volume: VolumeSpec,
    /// Serve the metrics in Prometheus format over HTTP here.
    pub metrics: Option<SocketAddr>,
    /// Record the workload's accesses into this trace (then every read is served in user space).
    pub record_trace: Option<PathBuf>,
    /// Testing only: delay every store read by this many milliseconds.
    #[serde(default)]
    pub test_store_latency_ms: u64,
    /// Kernel mode: the image is mounted as erofs, its file data read from a blob on a private FUSE mount
    /// that the worker serves (crate `hydrate-kernel`). Absent in specs of older supervisors: FUSE mode.
    #[serde(default)]
    pub kernel: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheSpec {
    /// [default: DEFAULT_CACHE_ROOT/<image digest>]
    pub dir: Option<PathBuf>,
    /// Byte quota; least recently used content is evicted above it.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchSpec {
    /// Time limit of one store request (then it is retried).
    pub timeout: Duration,
    /// A read whose data cannot be fetched within this fails with EIO.
    pub read_deadline: Duration,
    /// Store requests in flight at once.
    pub max_in_flight: u32,
    /// Fetched bytes held at once (store reads, decompressed chunks, readahead not yet in the cache).
    pub memory_limit: u64,
    /// Widen store requests shorter than this [default: 64K for s3:// stores, else 0].
    pub min_request_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Largest readahead window of a sequential stream; 0 turns readahead off.
    pub readahead: u64,
    /// Prefetch a directory's files up to this size after one of them is opened; 0: off.
    pub dir_prefetch: u64,
    /// Replay the image's prefetch plan.
    pub replay_plan: bool,
    /// Fetch an ELF file up to this size whole once its first bytes are read; 0: off.
    pub elf_prefetch: u64,
    /// Fetch the image in the background up to this many stored bytes; 0: purely lazy.
    pub fill_budget: u64,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            dir: None,
            size: 10 << 30,
        }
    }
}

impl Default for FetchSpec {
    fn default() -> Self {
        FetchSpec {
            timeout: Duration::from_secs(30),
            read_deadline: Duration::from_secs(120),
            max_in_flight: 64,
            memory_limit: 16 << 20,
            min_request_bytes: None,
        }
    }
}

impl Default for VolumeSpec {
    fn default() -> Self {
        VolumeSpec {
            readahead: 16 << 20,
            dir_prefetch: 256 << 10,
            replay_plan: true,
            elf_prefetch: 64 << 20,
            fill_budget: 256 << 20,
        }
    }
}

/// What is wrong with a spec, named so the user knows which option to change.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{option} {value}: {reason}")]
    Option {
        option: &'static str,
        value: String,
        reason: String,
    },
    #[error("mount point {}: {reason}", path.display())]
    Mountpoint { path: PathBuf, reason: String },
    #[error("store {store}: {reason}")]
    Store { store: String, reason: String },
    #[error("image {image:?}: {reason}")]
    Image { image: String, reason: String },
}

fn option(option: &'static str, value: impl ToString, reason: impl Into<String>) -> SpecError {
    SpecError::Option {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl MountSpec {
    /// A spec with default options; `mountpoint` is resolved to an absolute path.
    pub fn new(store: &str, image: &str, mountpoint: &Path) -> Result<Self, SpecError> {
        let mountpoint =
            hydrate_control::resolve_mountpoint(mountpoint).map_err(|e| SpecError::Mountpoint {
                path: mountpoint.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(MountSpec {
            store: store.to_owned(),
            image: image.to_owned(),
            mountpoint,
            cache: CacheSpec::default(),
            log_file: None,
            threads: 4,
            passthrough: true,
            private: false,
            fetch: FetchSpec::default(),
            volume: VolumeSpec::default(),
            metrics: None,
            record_trace: None,
            test_store_latency_ms: 0,
            kernel: false,
        })
    }

    /// Checks everything that can be checked without the mount point (see [`MountSpec::check_mountpoint`]) and
    /// without reaching the store: option ranges, the store address and its credentials, the image name.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(option(
                "--threads",
                self.threads,
                format!("must be 1 to {MAX_THREADS}"),
            ));
        }
        let f = &self.fetch;
        if f.max_in_flight == 0 || f.max_in_flight > MAX_IN_FLIGHT {
            return Err(option(
                "--max-in-flight",
                f.max_in_flight,
                format!("must be 1 to {MAX_IN_FLIGHT}"),
            ));
        }
        if f.timeout.is_zero() {
            return Err(option("--fetch-timeout", "0", "must be positive"));
        }
        if f.read_deadline.is_zero() {
            return Err(option("--read-deadline", "0", "must be positive"));
        }
        if f.memory_limit < MIN_BUDGET {
            return Err(option(
                "--memory-limit",
                f.memory_limit,
                format!("below the minimum of {} bytes (8M)", MIN_BUDGET),
            ));
        }
        if self.cache.size == 0 {
            return Err(option(
                "--cache-size",
                "0",
                "the cache needs room for at least one chunk; give e.g. 1G",
            ));
        }
        if !self.mountpoint.is_absolute() {
            return Err(SpecError::Mountpoint {
                path: self.mountpoint.clone(),
                reason: "must be an absolute path (MountSpec::new resolves it)".into(),
            });
        }
        for (name, path) in [
            ("--cache-dir", self.cache.dir.as_deref()),
            ("--log-file", self.log_file.as_deref()),
            ("--record-trace", self.record_trace.as_deref()),
        ] {
            if let Some(path) = path {
                if path.starts_with(&self.mountpoint) {
                    return Err(option(
                        name,
                        path.display(),
                        "is inside the mount point, which is read-only and served by this very daemon",
                    ));
                }
            }
        }
        self.check_kernel_mode()?;
        check_image_name(&self.image)?;
        hydrate_store::check_address(&self.store, &self.remote_options()).map_err(|e| {
            SpecError::Store {
                store: self.store.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(())
    }

    /// Kernel mode refuses the options that only mean something for a FUSE mount of the image, rather than
    /// ignoring them silently:
    /// - passthrough: erofs serves every read from its own page cache, and the blob is read through FUSE
    ///   with direct I/O; there is no file to hand over. Front ends set `passthrough: false` with `kernel`.
    /// - private: `allow_other` is a FUSE option; erofs has no such thing and lets everyone in whom the
    ///   image's file modes let in. A mount only its user may enter must be FUSE (or sit below a directory
    ///   others cannot traverse).
    fn check_kernel_mode(&self) -> Result<(), SpecError> {
        if !self.kernel {
            return Ok(());
        }
        if self.passthrough {
            return Err(option(
                "--kernel",
                "with passthrough",
                "erofs serves reads from its own page cache; FUSE passthrough does not apply (turn it off)",
            ));
        }
        if self.private {
            return Err(option(
                "--kernel",
                "with --private",
                "erofs has no allow_other: everyone the image's file modes admit can read it; mount without \
                 --kernel for a private mount, or put the mount point in a directory only you can enter",
            ));
        }
        Ok(())
    }

    /// The mount point must be an existing directory. Not part of [`MountSpec::validate`]: a daemon resuming a
    /// connection kept by systemd must not stat it (nobody serves it until that daemon does).
    pub fn check_mountpoint(&self) -> Result<(), SpecError> {
        let bad = |reason: String| SpecError::Mountpoint {
            path: self.mountpoint.clone(),
            reason,
        };
        match std::fs::metadata(&self.mountpoint) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(bad("not a directory".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(bad(
                "does not exist (create an empty directory first)".into(),
            )),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// The fetch engine's settings.
    pub fn fetch_config(&self) -> FetchConfig {
        let f = &self.fetch;
        FetchConfig {
            max_in_flight: f.max_in_flight as usize,
            memory_limit: f.memory_limit,
            request_timeout: f.timeout,
            deadline: f.read_deadline,
            min_request_bytes: f
                .min_request_bytes
                .unwrap_or(if self.store.starts_with("s3://") {
                    S3_MIN_REQUEST
                } else {
                    0
                }),
            ..FetchConfig::default()
        }
    }

    /// The network client's settings (S3, HTTP and OCI stores).
    pub fn remote_options(&self) -> RemoteOptions {
        let timeout = self.fetch.timeout;
        let defaults = RemoteOptions::default();
        RemoteOptions {
            connect_timeout: defaults.connect_timeout.min(timeout),
            request_timeout: timeout,
            read_timeout: defaults.read_timeout.min(timeout),
            pool_max_idle_per_host: defaults
                .pool_max_idle_per_host
                .max(self.fetch.max_in_flight as usize),
            ..defaults
        }
    }

    /// The core's read-path tuning.
    pub fn volume_config(&self) -> VolumeConfig {
        let defaults = VolumeConfig::default();
        let v = &self.volume;
        VolumeConfig {
            readahead_min: defaults.readahead_min.min(v.readahead),
            readahead_max: v.readahead,
            replay_plan: v.replay_plan,
            dir_prefetch_file_max: v.dir_prefetch,
            fill_budget: v.fill_budget,
            elf_whole_max: v.elf_prefetch,
            ..defaults
        }
    }

    /// Whether reads are handed to the kernel: not while a trace records (those reads would go unseen).
    pub fn serves_passthrough(&self) -> bool {
        self.passthrough && self.record_trace.is_none() && !self.kernel
    }

    /// The cache directory once the image's digest is known.
    pub fn cache_dir_for(&self, image_digest: &str) -> PathBuf {
        self.cache
            .dir
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_CACHE_ROOT).join(image_digest))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a mount spec serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("mount spec: {e}"))
    }
}

/// An image is a tag (`name:1`, `team/app:latest`) or a manifest digest; catch what cannot be either before a
/// daemon starts (the store says later whether it exists).
fn check_image_name(image: &str) -> Result<(), SpecError> {
    let bad = |reason: &str| SpecError::Image {
        image: image.to_owned(),
        reason: reason.to_owned(),
    };
    if image.is_empty() || image == "-" {
        return Err(bad("no image given (give a tag or a digest)"));
    }
    if image.len() > 255 {
        return Err(bad("longer than 255 characters"));
    }
    if image
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err(bad(
            "contains whitespace, a control character or a backslash",
        ));
    }
    if image.starts_with('/') || image.split('/').any(|part| part == ".." || part == ".") {
        return Err(bad("is a path, not a tag or digest"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> MountSpec {
        let store = dir.join("store");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        MountSpec::new(store.to_str().unwrap(), "app:1", &dir.join("mnt")).unwrap()
    }

    #[test]
    fn defaults_validate_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        s.validate().unwrap();
        s.check_mountpoint().unwrap();
        assert_eq!(MountSpec::from_json(&s.to_json()).unwrap(), s);
        assert_eq!(s.fetch_config().min_request_bytes, 0);
        assert!(s.serves_passthrough());
    }

    #[test]
    fn bad_options_name_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let base = spec(dir.path());
        type Change<'a> = Box<dyn Fn(&mut MountSpec) + 'a>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.threads = 0), "--threads"),
            (
                Box::new(|s| s.fetch.max_in_flight = 5000),
                "--max-in-flight",
            ),
            (
                Box::new(|s| s.fetch.memory_limit = 1 << 20),
                "--memory-limit",
            ),
            (
                Box::new(|s| s.fetch.timeout = Duration::ZERO),
                "--fetch-timeout",
            ),
            (Box::new(|s| s.cache.size = 0), "--cache-size"),
            (
                Box::new(|s| s.cache.dir = Some(s.mountpoint.join("c"))),
                "--cache-dir",
            ),
            (Box::new(|s| s.image = "a b".into()), "image"),
            (Box::new(|s| s.image = "../x".into()), "image"),
            (Box::new(|s| s.store = "ftp://x".into()), "store ftp://x"),
            (
                Box::new(|s| s.store = dir.path().join("nope").display().to_string()),
                "no store directory",
            ),
        ];
        for (change, want) in cases {
            let mut s = base.clone();
            change(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn the_mount_point_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.mountpoint = dir.path().join("absent");
        assert!(s
            .check_mountpoint()
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        s.mountpoint = dir.path().join("file");
        assert!(s
            .check_mountpoint()
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn one_timeout_bounds_both_layers() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.fetch.timeout = Duration::from_millis(500);
        s.store = "s3://bucket/p?endpoint=http://127.0.0.1:1".into();
        let remote = s.remote_options();
        assert_eq!(remote.request_timeout, Duration::from_millis(500));
        assert!(remote.connect_timeout <= Duration::from_millis(500));
        assert!(remote.read_timeout <= Duration::from_millis(500));
        assert_eq!(s.fetch_config().min_request_bytes, S3_MIN_REQUEST);
        s.record_trace = Some(dir.path().join("t"));
        assert!(!s.serves_passthrough());
    }

    #[test]
    fn kernel_mode_refuses_fuse_only_options_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.kernel = true;
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("--kernel") && err.contains("passthrough"),
            "{err}"
        );
        s.passthrough = false;
        s.validate().unwrap();
        assert!(!s.serves_passthrough());
        assert_eq!(MountSpec::from_json(&s.to_json()).unwrap(), s);
        s.private = true;
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("--private") && err.contains("allow_other"),
            "{err}"
        );
        // A spec written by an older supervisor has no `kernel` field: FUSE mode.
        let mut old: serde_json::Value = serde_json::from_str(&spec(dir.path()).to_json()).unwrap();
        old.as_object_mut().unwrap().remove("kernel");
        assert!(!MountSpec::from_json(&old.to_string()).unwrap().kernel);
    }
}
