//! A bundle's layout on disk and its state file: where rootfs, the image mount (lower), the container's writes
//! (upper) and overlayfs's work directory go, and `BUNDLE/.hydrate/state.json`, which records what setup
//! created so that removal (also after a crash) undoes exactly that.

use anyhow::{anyhow, bail, Context, Result};
use hydrate_mountd::DEFAULT_CACHE_ROOT;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a bundle's setup created, persisted as BUNDLE/.hydrate/state.json for --remove.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleState {
    pub version: u32,
    pub store: String,
    pub image: String,
    pub image_id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The upper directory is BUNDLE/.hydrate/upper (deleted on removal unless --keep-upper), not --upper's.
    pub own_upper: bool,
    /// The work directory was created by setup (a reused --upper may come with an existing one).
    pub created_work: bool,
    /// A cache of this bundle alone (the image's shared cache was busy), deleted with the bundle.
    #[serde(default)]
    pub private_cache: Option<PathBuf>,
    /// The shared image mount this bundle uses as its lower (see shared.rs); `None`: its own mount at
    /// `lower`.
    #[serde(default)]
    pub shared_lower: Option<PathBuf>,
}

pub const STATE_VERSION: u32 = 1;

/// Where a bundle's parts go (only an --upper directory is created here, to learn its canonical path).
pub fn plan_layout(
    bundle: &Path,
    store: &str,
    image: &str,
    image_id: &str,
    upper: Option<&Path>,
) -> Result<BundleState> {
    let private = bundle.join(".hydrate");
    let (upper, work, own_upper) = match upper {
        None => (private.join("upper"), private.join("work"), true),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating upper directory {}", dir.display()))?;
            let dir = std::fs::canonicalize(dir)
                .with_context(|| format!("upper directory {}", dir.display()))?;
            let mut work = dir.clone().into_os_string();
            work.push(".work");
            (dir, PathBuf::from(work), false)
        }
    };
    let state = BundleState {
        version: STATE_VERSION,
        store: store.to_owned(),
        image: image.to_owned(),
        image_id: image_id.to_owned(),
        bundle: bundle.to_owned(),
        rootfs: bundle.join("rootfs"),
        lower: private.join("lower"),
        created_work: !work.exists(),
        upper,
        work,
        own_upper,
        private_cache: None,
        shared_lower: None,
    };
    // overlayfs splits its options at ',' and ':' (and treats '\' as an escape).
    for path in [&state.lower, &state.upper, &state.work] {
        if path.to_string_lossy().contains([',', ':', '\\']) {
            bail!(
                "{} contains ',', ':' or '\\', which overlayfs options cannot carry; choose another path",
                path.display()
            );
        }
    }
    Ok(state)
}

/// Creates the bundle's directories and writes its state file (before anything is mounted, so that a
/// --remove after a crash knows what to look for).
pub fn create_layout(state: &BundleState) -> Result<()> {
    let private = state.bundle.join(".hydrate");
    for dir in [&private, &state.rootfs, &state.upper, &state.work] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if state.shared_lower.is_none() {
        std::fs::create_dir_all(&state.lower)
            .with_context(|| format!("creating {}", state.lower.display()))?;
    }
    save_state(state)
}

pub fn save_state(state: &BundleState) -> Result<()> {
    let json = serde_json::to_vec_pretty(state).context("encoding the bundle state")?;
    write_atomic(&state.bundle.join(".hydrate").join("state.json"), &json)
}

/// The cache directory of a bundle's image when none is given: hydrate mount's default, unless another mount
/// holds it (a second container of the same image: a cache serves one process at a time); then one of the
/// bundle's own, deleted with it.
pub fn private_cache_if_shared_busy(bundle: &Path, image_id: &str) -> Result<Option<PathBuf>> {
    let shared = Path::new(DEFAULT_CACHE_ROOT).join(image_id);
    let lock = shared.join("lock");
    let file = match std::fs::File::open(&lock) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("opening {}", lock.display())),
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        // Free: released at once (dropping the guard unlocks) for the mount to take.
        Ok(_guard) => Ok(None),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let own = bundle.join(".hydrate").join("cache");
            tracing::warn!(
                "the cache {} of image {image_id} is in use by another mount; this bundle gets its own at {} \
                 (deleted with it; give --cache-dir to choose)",
                shared.display(),
                own.display()
            );
            Ok(Some(own))
        }
        Err((_, errno)) => Err(anyhow!("locking {}: {errno}", lock.display())),
    }
}

/// Writes `path` whole or not at all: a temporary file beside it, fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path without a directory")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().context("path without a file name")?);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(err) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("writing {}", path.display()));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}
