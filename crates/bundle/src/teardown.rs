//! Taking a bundle apart: unmounting the overlay and the image (a shared image mount only by its last user),
//! deleting what setup created, refusing while a container still uses the bundle.

use crate::layout::{BundleState, STATE_VERSION};
use crate::shared::SharedLower;
use anyhow::{anyhow, bail, Context, Result};
use hydrate_mountinfo::MountInfo;
use std::path::Path;

/// Takes apart the bundle at `bundle_arg` made by [`crate::prepare`]-style setup: unmounts the overlay and
/// the image (leaving a shared image mount to its last user), deletes what setup created.
pub fn remove(bundle_arg: &Path, keep_upper: bool) -> Result<()> {
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
pub fn teardown(state: &BundleState, keep_upper: bool) -> Result<()> {
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

/// Unmounts the image mount at `lower` and waits for its daemon to exit (as `hydrate umount`). A mount whose
/// daemon is gone (ENOTCONN) is detached directly.
pub fn unmount_lower(lower: &Path) -> Result<()> {
    let Err(err) = hydrate_mountd::launch::unmount(lower, false) else {
        return Ok(());
    };
    let dead =
        matches!(std::fs::metadata(lower), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
    if dead {
        tracing::warn!(
            "the daemon of {} is gone; detaching the mount",
            lower.display()
        );
        return nix::mount::umount2(lower, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("detaching {}", lower.display()));
    }
    Err(err).with_context(|| format!("unmounting the image at {}", lower.display()))
}

/// Whether `path` (absolute, with a canonical parent) is a mount point, from /proc/self/mountinfo: a stat
/// would fail on a FUSE mount whose daemon died, which is exactly a mount teardown must still find.
pub fn is_mount_point(path: &Path) -> Result<bool> {
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
