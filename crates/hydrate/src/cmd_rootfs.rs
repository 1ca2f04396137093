//! `hydrate rootfs`: turn an image into an OCI runtime bundle that `runc run --bundle DIR NAME` starts, and
//! `hydrate rootfs --remove DIR`: take such a bundle apart again.
//!
//! Layout of a bundle:
//! ```text
//! BUNDLE/config.json          runtime spec derived from the image's OCI config (runtime_spec.rs)
//! BUNDLE/rootfs               overlayfs: the lazily fetched image below, a writable directory above
//! BUNDLE/.hydrate/lower       the image's hydrate FUSE mount (a `hydrate mount` daemon serves it)
//! BUNDLE/.hydrate/upper, work the container's writes (or --upper DIR and DIR.work beside it)
//! BUNDLE/.hydrate/state.json  what was set up, so --remove undoes exactly that
//! ```
//! The lower is mounted by running this same binary's `mount` command (so the mount is an ordinary hydrate
//! mount: `hydrate status` lists it, `hydrate upgrade` works on it) by the image's digest, so the mounted tree is
//! the manifest whose config was read even if the tag moves meanwhile. Setup and removal share one teardown
//! routine that undoes whatever exists, so a failure midway leaves nothing behind and a half-prepared bundle
//! can always be removed.

use crate::rootfs_shared::SharedLower;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args as ClapArgs;
use hydrate_format::annotation;
use hydrate_mountd::DEFAULT_CACHE_ROOT;
use hydrate_mountinfo::MountInfo;
use hydrate_runtime_spec::{runtime_spec, ImageInfo, SpecError, SpecOverrides};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(ClapArgs, Debug)]
#[command(after_help = "Example:\n  \
hydrate rootfs oci://127.0.0.1:5000/library/app:1-hydrate /run/c1\n  \
hydrate rootfs --store ./store app:1 /run/c1 -- /bin/sh -c 'echo hi'\n  \
runc run --bundle /run/c1 c1\n  \
hydrate rootfs --remove /run/c1")]
pub struct RootfsArgs {
    /// Store holding the image [default: IMAGE itself, when it is a whole oci://registry/repository:tag].
    #[arg(long)]
    pub store: Option<String>,
    /// Image: a tag or manifest digest in --store, or a whole oci://registry/repository:tag address.
    #[arg(required_unless_present = "remove")]
    pub image: Option<String>,
    /// Bundle directory to create (absent or empty); its name is the default hostname.
    #[arg(required_unless_present = "remove")]
    pub bundle: Option<PathBuf>,
    /// Command replacing the image's Cmd (after --; the Entrypoint stays unless --entrypoint is given).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Take apart a bundle made by hydrate rootfs: unmount the overlay and the image, delete the bundle
    /// (the container's writes are discarded). Stop the container first (runc kill/delete).
    #[arg(long, value_name = "BUNDLE", conflicts_with_all = ["image", "bundle", "store", "upper"])]
    pub remove: Option<PathBuf>,
    /// With --remove: keep BUNDLE/.hydrate/upper (the container's writes).
    #[arg(long, requires = "remove")]
    pub keep_upper: bool,
    /// Directory for the container's writes [default: BUNDLE/.hydrate/upper]; created if missing, reused if
    /// not; its scratch directory DIR.work is made beside it. --remove leaves it in place.
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// Executable replacing the image's Entrypoint (its Cmd is dropped; "" clears the Entrypoint).
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Set an environment variable (NAME=VALUE; NAME alone copies it from this environment). Repeatable.
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// User to run as, replacing the image's User: name, uid, name:group or uid:gid.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Working directory replacing the image's WorkingDir.
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Hostname of the container [default: the bundle directory's name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Give the process a terminal (for an interactive `runc run`).
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Network: "private" (a namespace with loopback only) or "host" (share the host's).
    #[arg(long, default_value = "private", value_parser = ["private", "host"])]
    pub net: String,
    /// As `hydrate mount --cache-dir`.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// As `hydrate mount --cache-size`.
    #[arg(long)]
    pub cache_size: Option<String>,
    /// As `hydrate mount --record-trace`.
    #[arg(long, value_name = "TRACE")]
    pub record_trace: Option<PathBuf>,
    /// As `hydrate mount --no-prefetch`.
    #[arg(long)]
    pub no_prefetch: bool,
    /// As `hydrate mount --metrics`.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<String>,
    /// As `hydrate mount --log-file`.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// As `hydrate mount --read-deadline`.
    #[arg(long)]
    pub read_deadline: Option<String>,
}

/// What a bundle's setup created, persisted as BUNDLE/.hydrate/state.json for --remove.
#[derive(Debug, Serialize, Deserialize)]
struct BundleState {
    version: u32,
    store: String,
    image: String,
    image_id: String,
    bundle: PathBuf,
    rootfs: PathBuf,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    /// The upper directory is BUNDLE/.hydrate/upper (deleted on removal unless --keep-upper), not --upper's.
    own_upper: bool,
    /// The work directory was created by setup (a reused --upper may come with an existing one).
    created_work: bool,
    /// A cache of this bundle alone (the image's shared cache was busy), deleted with the bundle.
    #[serde(default)]
    private_cache: Option<PathBuf>,
    /// The shared image mount this bundle uses as its lower (see rootfs_shared.rs); `None`: its own mount at
    /// `lower`.
    #[serde(default)]
    shared_lower: Option<PathBuf>,
}

const STATE_VERSION: u32 = 1;

pub fn run(args: RootfsArgs) -> Result<()> {
    if let Some(bundle) = &args.remove {
        return remove(bundle, args.keep_upper);
    }
    prepare(args)
}

/// The store address and the image name in it: `--store S IMAGE`, or a whole `oci://…:tag` IMAGE.
pub(crate) fn store_and_image(store: Option<&str>, image: &str) -> Result<(String, String)> {
    let named_by_store = |store: &str| {
        hydrate_store::default_image(store).ok_or_else(|| {
            anyhow!(
                "the store address {store} names no image (give IMAGE, or use oci://…/repo:TAG)"
            )
        })
    };
    match store {
        Some(store) if image == "-" => Ok((store.to_owned(), named_by_store(store)?)),
        Some(store) => Ok((store.to_owned(), image.to_owned())),
        None if image.starts_with("oci://") => Ok((image.to_owned(), named_by_store(image)?)),
        None => bail!(
            "no --store given and image {image:?} is not an oci://registry/repository:tag address"
        ),
    }
}

fn prepare(args: RootfsArgs) -> Result<()> {
    let (Some(image_arg), Some(bundle_arg)) = (&args.image, &args.bundle) else {
        bail!("give IMAGE and BUNDLE (or --remove BUNDLE)");
    };
    let (store, image) = store_and_image(args.store.as_deref(), image_arg)?;
    let env = expand_env(&args.env);

    match std::fs::read_dir(bundle_arg) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "bundle directory {} is not empty (choose another, or take an old bundle apart with \
                     hydrate rootfs --remove {0})",
                    bundle_arg.display()
                );
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(bundle_arg)
                .with_context(|| format!("creating bundle directory {}", bundle_arg.display()))?
        }
        Err(err) => {
            return Err(err).with_context(|| format!("bundle directory {}", bundle_arg.display()))
        }
    }
    let bundle = std::fs::canonicalize(bundle_arg)
        .with_context(|| format!("bundle directory {}", bundle_arg.display()))?;
    let name = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hostname = args.hostname.clone().unwrap_or_else(|| name.clone());
    let result = (|| {
        if hostname.is_empty() || hostname.len() > 64 {
            bail!("hostname {hostname:?} must be 1 to 64 bytes long (give --hostname)");
        }
        let (image_id, manifest) = image_manifest(&store, &image, args.cache_dir.as_deref())?;
        let text = |key| {
            manifest
                .annotation(key)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let (source, source_digest) = (
            text(annotation::OCI_SOURCE),
            text(annotation::OCI_SOURCE_DIGEST),
        );
        let image_id = image_id.to_string();
        let info = ImageInfo {
            name: &image,
            image_id: &image_id,
            config: manifest.annotation(annotation::OCI_CONFIG),
            source: source.as_deref(),
            source_digest: source_digest.as_deref(),
        };
        let overrides = SpecOverrides {
            entrypoint: args.entrypoint.clone(),
            args: args.args.clone(),
            env,
            user: args.user.clone(),
            workdir: args.workdir.clone(),
            hostname: hostname.clone(),
            tty: args.tty,
            host_network: args.net == "host",
        };
        // Checked before anything is mounted: an image that cannot run needs no mount to say so.
        if info.config.is_none() && overrides.args.is_empty() && overrides.entrypoint.is_none() {
            return Err(SpecError::NoConfig {
                image: image.clone(),
            }
            .into());
        }
        let mut state = plan_layout(&bundle, &store, &image, &image_id, args.upper.as_deref())?;
        // Bundles of one image with the same mount options share one mount (and its cache); a recording
        // mount traces one container, so it is always the bundle's own.
        if args.record_trace.is_none() {
            let shared = SharedLower::for_image(
                &store,
                &image_id,
                &mount_options(args.cache_dir.as_deref(), &args),
            );
            state.lower = shared.mount_point();
            state.shared_lower = Some(shared.dir);
        }
        let result = (|| {
            create_layout(&state)?;
            if args.cache_dir.is_none() && state.shared_lower.is_none() {
                state.private_cache = private_cache_if_shared_busy(&bundle, &image_id)?;
                if state.private_cache.is_some() {
                    save_state(&state)?;
                }
            }
            assemble(&state, &args, &info, &overrides)
        })();
        if let Err(err) = &result {
            tracing::debug!(
                "setting up bundle {} failed: {err:#}; undoing",
                bundle.display()
            );
            if let Err(undo) = teardown(&state, false) {
                tracing::warn!(
                    "could not undo the partial setup of bundle {}: {undo:#}",
                    bundle.display()
                );
            }
        }
        result
    })();
    if result.is_err() {
        // Whatever stays empty was made by this attempt (or was empty before it).
        let _ = std::fs::remove_dir(&bundle);
        return result;
    }
    println!("{}", bundle.display());
    eprintln!(
        "start it with: runc run --bundle {0} {name}\nremove it with: hydrate rootfs --remove {0}",
        bundle.display()
    );
    Ok(())
}

/// Where a bundle's parts go (only an --upper directory is created here, to learn its canonical path).
fn plan_layout(
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
fn create_layout(state: &BundleState) -> Result<()> {
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

fn save_state(state: &BundleState) -> Result<()> {
    let json = serde_json::to_vec_pretty(state).context("encoding the bundle state")?;
    write_atomic(&state.bundle.join(".hydrate").join("state.json"), &json)
}

/// Resolves `image` in `store` and loads its manifest the way the mount will: through the verified local copy in
/// the cache directory the mount uses (`cache_dir`, else the default one of the image), fetching it from the
/// store only if that copy is missing. The mount then maps the copy instead of downloading the manifest a
/// second time, and another bundle of the image reads no manifest from the store at all.
fn image_manifest(
    store_addr: &str,
    image: &str,
    cache_dir: Option<&Path>,
) -> Result<(hydrate_format::ImageId, hydrate_core::MappedManifest)> {
    crate::cmd_inspect::with_image(store_addr, image, |store, id| async move {
        let cache = cache_dir.map_or_else(
            || Path::new(DEFAULT_CACHE_ROOT).join(id.to_string()),
            Path::to_path_buf,
        );
        let manifest = hydrate_core::load_manifest(store.as_ref(), &id, &cache.join("manifests"))
            .await
            .with_context(|| format!("manifest of image {id}"))?;
        Ok((id, manifest))
    })
}

/// Mounts the image and the overlay and writes config.json.
fn assemble(
    state: &BundleState,
    args: &RootfsArgs,
    info: &ImageInfo<'_>,
    overrides: &SpecOverrides,
) -> Result<()> {
    let cache_dir = state.private_cache.as_deref().or(args.cache_dir.as_deref());
    match &state.shared_lower {
        Some(dir) => SharedLower { dir: dir.clone() }.join(&state.bundle, |mnt| {
            mount_lower(state, mnt, cache_dir, args)
        })?,
        None => mount_lower(state, &state.lower, cache_dir, args)?,
    }
    let spec = runtime_spec(info, &state.lower, overrides)?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        state.lower.display(),
        state.upper.display(),
        state.work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &state.rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .with_context(|| {
        format!(
            "mounting overlayfs on {} ({options})",
            state.rootfs.display()
        )
    })?;
    let json = serde_json::to_vec_pretty(&spec).context("encoding the runtime spec")?;
    write_atomic(&state.bundle.join("config.json"), &json)
}

/// The cache directory of a bundle's image when none is given: hydrate mount's default, unless another mount
/// holds it (a second container of the same image: a cache serves one process at a time); then one of the
/// bundle's own, deleted with it.
fn private_cache_if_shared_busy(bundle: &Path, image_id: &str) -> Result<Option<PathBuf>> {
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

/// The `hydrate mount` options a bundle's lower is mounted with (also the identity of a shared lower).
fn mount_options(cache_dir: Option<&Path>, args: &RootfsArgs) -> Vec<std::ffi::OsString> {
    let options: [(&str, Option<&std::ffi::OsStr>); 6] = [
        ("--cache-dir", cache_dir.map(Path::as_os_str)),
        (
            "--cache-size",
            args.cache_size.as_deref().map(AsRef::as_ref),
        ),
        (
            "--record-trace",
            args.record_trace.as_deref().map(Path::as_os_str),
        ),
        ("--metrics", args.metrics.as_deref().map(AsRef::as_ref)),
        ("--log-file", args.log_file.as_deref().map(Path::as_os_str)),
        (
            "--read-deadline",
            args.read_deadline.as_deref().map(AsRef::as_ref),
        ),
    ];
    let mut out = Vec::new();
    for (flag, value) in options {
        if let Some(value) = value {
            out.push(flag.into());
            out.push(value.to_owned());
        }
    }
    if args.no_prefetch {
        out.push("--no-prefetch".into());
    }
    out
}

/// Runs `hydrate mount` for the image's digest on `target`; it returns once the mount serves.
fn mount_lower(
    state: &BundleState,
    target: &Path,
    cache_dir: Option<&Path>,
    args: &RootfsArgs,
) -> Result<()> {
    let exe = hydrate_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg("--store")
        .arg(&state.store)
        .arg(&state.image_id)
        .arg(target)
        .args(mount_options(cache_dir, args));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running hydrate mount")?;
    if out.status.success() {
        // Warnings of the mount command are the user's to see.
        std::io::stderr().write_all(&out.stderr).ok();
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let detail = stderr.trim().trim_start_matches("hydrate: error: ");
    bail!(
        "mounting image {} ({}) on {}: {detail}",
        state.image,
        state.image_id,
        target.display()
    )
}

/// This binary, for the `mount` and `umount` it runs. When the file was replaced while we run (an upgrade,
/// a rebuild), the kernel reports the old path with " (deleted)" appended: the new file at that path is the
/// one to run.
pub(crate) fn hydrate_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the hydrate binary")?;
    if exe.exists() {
        return Ok(exe);
    }
    match exe.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
        Some(path) if Path::new(path).exists() => Ok(PathBuf::from(path)),
        _ => bail!("the hydrate binary {} is gone", exe.display()),
    }
}

/// `--env NAME` takes NAME's value from this environment (and is dropped when unset), as `docker run -e`.
fn expand_env(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|entry| {
            if entry.contains('=') {
                return Some(entry.clone());
            }
            std::env::var(entry)
                .ok()
                .map(|value| format!("{entry}={value}"))
        })
        .collect()
}

fn remove(bundle_arg: &Path, keep_upper: bool) -> Result<()> {
    let bundle = std::fs::canonicalize(bundle_arg)
        .with_context(|| format!("bundle directory {}", bundle_arg.display()))?;
    let private = bundle.join(".hydrate");
    if !private.is_dir() {
        bail!(
            "{} is not a bundle made by hydrate rootfs (it has no .hydrate directory)",
            bundle.display()
        );
    }
    let state_path = private.join("state.json");
    let state = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice::<BundleState>(&bytes)
            .with_context(|| format!("reading {}", state_path.display()))?,
        // Setup stopped before writing its state: only the default layout can exist.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => BundleState {
            version: STATE_VERSION,
            store: String::new(),
            image: String::new(),
            image_id: String::new(),
            bundle: bundle.clone(),
            rootfs: bundle.join("rootfs"),
            lower: private.join("lower"),
            upper: private.join("upper"),
            work: private.join("work"),
            own_upper: true,
            created_work: true,
            private_cache: Some(private.join("cache")),
            shared_lower: None,
        },
        Err(err) => return Err(err).with_context(|| format!("reading {}", state_path.display())),
    };
    if state.version != STATE_VERSION {
        bail!(
            "{} has version {}; this hydrate knows version {STATE_VERSION}",
            state_path.display(),
            state.version
        );
    }
    if state.bundle != bundle {
        bail!(
            "{} describes bundle {}, not {} (was the bundle moved? move it back to remove it)",
            state_path.display(),
            state.bundle.display(),
            bundle.display()
        );
    }
    teardown(&state, keep_upper)?;
    let _ = std::fs::remove_dir(&bundle);
    Ok(())
}

/// Undoes whatever of `state` exists, in reverse order of setup; safe to repeat. Stops at the first
/// unmount that fails, so nothing below a live mount is ever deleted.
fn teardown(state: &BundleState, keep_upper: bool) -> Result<()> {
    // A running container holds its own copy of the overlay in its mount namespace: unmounting ours would
    // succeed, but the image mount's daemon could not exit until the container stops.
    if let Some(pid) = overlay_user(&state.upper)? {
        bail!(
            "the bundle {} is in use by process {pid}: container still running? stop it with runc kill/delete first",
            state.bundle.display()
        );
    }
    if is_mount_point(&state.rootfs)? {
        nix::mount::umount(&state.rootfs).map_err(|errno| {
            if errno == nix::errno::Errno::EBUSY {
                anyhow!(
                    "{} is busy: container still running? stop it with runc kill/delete first",
                    state.rootfs.display()
                )
            } else {
                anyhow!("unmounting {}: {errno}", state.rootfs.display())
            }
        })?;
    }
    match &state.shared_lower {
        Some(dir) => SharedLower { dir: dir.clone() }.leave(&state.bundle)?,
        None if is_mount_point(&state.lower)? => unmount_lower(&state.lower)?,
        None => {}
    }
    let ignore_missing = |result: std::io::Result<()>, what: &Path| match result {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", what.display()))
        }
        _ => Ok(()),
    };
    let config = state.bundle.join("config.json");
    ignore_missing(std::fs::remove_file(&config), &config)?;
    ignore_missing(std::fs::remove_dir(&state.rootfs), &state.rootfs)?;
    if state.shared_lower.is_none() {
        ignore_missing(std::fs::remove_dir(&state.lower), &state.lower)?;
    }
    if state.created_work {
        ignore_missing(std::fs::remove_dir_all(&state.work), &state.work)?;
    }
    if let Some(cache) = &state.private_cache {
        ignore_missing(std::fs::remove_dir_all(cache), cache)?;
    }
    if state.own_upper && !keep_upper {
        ignore_missing(std::fs::remove_dir_all(&state.upper), &state.upper)?;
    }
    let private = state.bundle.join(".hydrate");
    let state_file = private.join("state.json");
    ignore_missing(std::fs::remove_file(&state_file), &state_file)?;
    if !(state.own_upper && keep_upper) {
        ignore_missing(std::fs::remove_dir(&private), &private)?;
    }
    Ok(())
}

/// `hydrate umount` on the lower mount (which waits for its daemon to exit). A mount whose daemon is gone
/// (ENOTCONN) cannot be canonicalized by `umount`; it is detached directly.
pub(crate) fn unmount_lower(lower: &Path) -> Result<()> {
    let exe = hydrate_exe()?;
    let out = Command::new(exe)
        .arg("umount")
        .arg(lower)
        .stdin(Stdio::null())
        .output()
        .context("running hydrate umount")?;
    if out.status.success() {
        return Ok(());
    }
    let dead =
        matches!(std::fs::metadata(lower), Err(err) if err.raw_os_error() == Some(libc::ENOTCONN));
    if dead {
        tracing::warn!(
            "the daemon of {} is gone; detaching the mount",
            lower.display()
        );
        return nix::mount::umount2(lower, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("detaching {}", lower.display()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    bail!(
        "unmounting the image at {}: {}",
        lower.display(),
        stderr.trim().trim_start_matches("hydrate: error: ")
    )
}

/// Whether `path` (absolute, with a canonical parent) is a mount point, from /proc/self/mountinfo: a stat
/// would fail on a FUSE mount whose daemon died, which is exactly a mount teardown must still find.
pub(crate) fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(MountInfo::read_self()?.is_mount_point(path))
}

/// A process in another mount namespace that has an overlayfs with this upper directory mounted (one
/// process is read per namespace), if any.
fn overlay_user(upper: &Path) -> Result<Option<i32>> {
    use std::os::unix::fs::MetadataExt;
    let wanted = format!("upperdir={}", upper.display());
    let own = std::fs::metadata("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?;
    let mut seen = std::collections::HashSet::from([own.ino()]);
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        else {
            continue;
        };
        // Processes exit meanwhile: anything unreadable is skipped.
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if !seen.insert(ns.ino()) {
            continue;
        }
        let Ok(info) = MountInfo::read_pid(pid) else {
            continue;
        };
        let uses = info
            .entries()
            .iter()
            .any(|m| m.fs_type == "overlay" && m.has_super_option(&wanted));
        if uses {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

/// Writes `path` whole or not at all: a temporary file beside it, fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
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

#[cfg(test)]
#[path = "cmd_rootfs_tests.rs"]
mod tests;
