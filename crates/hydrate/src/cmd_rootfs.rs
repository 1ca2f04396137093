//! `hydrate rootfs`: turn an image into an OCI runtime bundle that `runc run --bundle DIR NAME` starts, and
//! `hydrate rootfs --remove DIR`: take such a bundle apart again.
//!
//! Layout of a bundle:
//! ```text
//! BUNDLE/config.json          runtime spec derived from the image's OCI config (crate hydrate-runtime-spec)
//! BUNDLE/rootfs               overlayfs: the lazily fetched image below, a writable directory above
//! BUNDLE/.hydrate/lower       the image's hydrate mount (FUSE, or erofs with --kernel; a `hydrate mount` daemon serves it)
//! BUNDLE/.hydrate/upper, work the container's writes (or --upper DIR and DIR.work beside it)
//! BUNDLE/.hydrate/state.json  what was set up, so --remove undoes exactly that
//! ```
//! The lower is mounted by running this same binary's `mount` command (so the mount is an ordinary hydrate
//! mount: `hydrate status` lists it, `hydrate upgrade` works on it) by the image's digest, so the mounted tree is
//! the manifest whose config was read even if the tag moves meanwhile. Setup and removal share one teardown
//! routine that undoes whatever exists, so a failure midway leaves nothing behind and a half-prepared bundle
//! can always be removed. The bundle mechanics (layout, state, overlay, shared image mounts, removal) are crate
//! `hydrate-bundle`; this module is the command's glue.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args as ClapArgs;
use hydrate_bundle::{
    create_layout, plan_layout, private_cache_if_shared_busy, save_state, teardown, BundleState,
    SharedLower,
};
use hydrate_format::annotation;
use hydrate_mountd::DEFAULT_CACHE_ROOT;
use hydrate_runtime_spec::{runtime_spec, ImageInfo, SpecError, SpecOverrides};
use std::path::{Path, PathBuf};

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
    /// As `hydrate mount --kernel`: the lower is an erofs mount (reads of data not yet fetched block while
    /// only the worker is restarted, and fail with EIO, never zeros, if every hydrate process is killed).
    #[arg(long)]
    pub kernel: bool,
}

pub fn run(args: RootfsArgs) -> Result<()> {
    if let Some(bundle) = &args.remove {
        return hydrate_bundle::remove(bundle, args.keep_upper);
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
    hydrate_bundle::mount_overlay(state)?;
    let json = serde_json::to_vec_pretty(&spec).context("encoding the runtime spec")?;
    hydrate_bundle::write_config(state, &json)
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
    if args.kernel {
        out.push("--kernel".into());
    }
    out
}

/// Mounts the image's digest on `target` as `hydrate mount` with [`mount_options`] would (the same spec, through
/// the mount runtime directly); returns once the mount serves.
fn mount_lower(
    state: &BundleState,
    target: &Path,
    cache_dir: Option<&Path>,
    args: &RootfsArgs,
) -> Result<()> {
    let mut argv: Vec<std::ffi::OsString> = vec![
        "hydrate".into(),
        "mount".into(),
        "--store".into(),
        state.store.clone().into(),
    ];
    argv.extend(mount_options(cache_dir, args));
    argv.push(state.image_id.clone().into());
    argv.push(target.into());
    let failed = || {
        format!(
            "mounting image {} ({}) on {}",
            state.image,
            state.image_id,
            target.display()
        )
    };
    let parsed = <crate::cli::Args as clap::Parser>::try_parse_from(&argv).with_context(failed)?;
    let crate::cli::Command::Mount(mount) = parsed.command else {
        unreachable!("the argument list starts with `mount`")
    };
    let spec = crate::cmd_mount::spec_from_args(&mount).with_context(failed)?;
    hydrate_mountd::launch::mount(&spec, &hydrate_exe()?, &[]).with_context(failed)
}

/// This binary, for the mount daemons and the commands it runs. When the file was replaced while we run (an upgrade,
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

#[cfg(test)]
#[path = "cmd_rootfs_tests.rs"]
mod tests;
