//! One image mount shared by every bundle of the same image and mount options.
//!
//! Ten containers of one image should fetch each byte once and run one daemon, not ten (and a cache serves
//! one mount at a time, so separate mounts would also need separate caches). A shared lower lives in
//! `/run/hydrate/lowers/<key>/`, where the key hashes the store, the image digest and the options passed to
//! `hydrate mount`:
//!
//! ```text
//! mnt/          the hydrate mount, the overlay lower of every bundle using it
//! users/<hash>  one file per bundle using it, holding the bundle's path
//! lock          flock'ed while a bundle joins or leaves, so a join never races the last leave's unmount
//! ```
//!
//! The last bundle to leave unmounts it. A bundle deleted without `--remove` would keep a mount alive forever,
//! so every join and leave first drops users whose bundle no longer records this lower. A mount whose daemon
//! died (the supervisor was killed) is detached and mounted again by the next join.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Where shared lowers live (a tmpfs: nothing here should outlive a reboot, and the mounts do not).
const ROOT: &str = "/run/hydrate/lowers";

/// A bundle's membership in a shared lower.
#[derive(Debug, Clone)]
pub struct SharedLower {
    /// `/run/hydrate/lowers/<key>`.
    pub dir: PathBuf,
}

impl SharedLower {
    /// The lower for `store`, image digest `image_id` and the `hydrate mount` options `options`.
    pub fn for_image(store: &str, image_id: &str, options: &[std::ffi::OsString]) -> Self {
        let mut hasher = blake3::Hasher::new();
        for part in [store.as_bytes(), image_id.as_bytes()] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        for option in options {
            let bytes = option.as_encoded_bytes();
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        let key = hasher.finalize().to_hex();
        SharedLower {
            dir: Path::new(ROOT).join(&key.as_str()[..32]),
        }
    }

    pub fn mount_point(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    fn user_file(&self, bundle: &Path) -> PathBuf {
        let hash = blake3::hash(bundle.as_os_str().as_encoded_bytes()).to_hex();
        self.dir.join("users").join(&hash.as_str()[..32])
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        std::fs::create_dir_all(self.dir.join("users"))
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join("lock");
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| anyhow::anyhow!("locking {}: {errno}", path.display()))
    }

    /// Adds `bundle` to the users, mounting the image with `mount` first if no live mount is there.
    pub fn join(&self, bundle: &Path, mount: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let _lock = self.lock()?;
        self.prune()?;
        let mnt = self.mount_point();
        std::fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let mounted = crate::teardown::is_mount_point(&mnt)?;
        let alive = mounted && std::fs::metadata(&mnt).is_ok();
        if mounted && !alive {
            tracing::warn!(
                "the shared image mount {} lost its daemon; mounting it again",
                mnt.display()
            );
            nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("detaching {}", mnt.display()))?;
        }
        if !alive {
            mount(&mnt)?;
        }
        let user = self.user_file(bundle);
        std::fs::write(&user, bundle.as_os_str().as_encoded_bytes())
            .with_context(|| format!("writing {}", user.display()))
    }

    /// Removes `bundle` from the users; the last one out unmounts the image and removes the directory.
    pub fn leave(&self, bundle: &Path) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        let lock = self.lock()?;
        let user = self.user_file(bundle);
        match std::fs::remove_file(&user) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("removing {}", user.display()))
            }
            _ => {}
        }
        if self.prune()? > 0 {
            return Ok(());
        }
        let mnt = self.mount_point();
        if crate::teardown::is_mount_point(&mnt)? {
            crate::teardown::unmount_lower(&mnt)?;
        }
        for dir in [mnt, self.dir.join("users")] {
            std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::remove_file(self.dir.join("lock")).ok();
        drop(lock);
        std::fs::remove_dir(&self.dir).ok();
        Ok(())
    }

    /// Drops users whose bundle no longer records this lower (deleted without --remove); returns how many
    /// users remain.
    fn prune(&self) -> Result<usize> {
        let users = self.dir.join("users");
        let mut remaining = 0;
        for entry in
            std::fs::read_dir(&users).with_context(|| format!("listing {}", users.display()))?
        {
            let path = entry?.path();
            let bundle = std::fs::read(&path)
                .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
                .unwrap_or_default();
            let state = bundle.join(".hydrate").join("state.json");
            let ours = std::fs::read_to_string(&state)
                .is_ok_and(|text| text.contains(&*self.dir.to_string_lossy()));
            if ours {
                remaining += 1;
            } else {
                tracing::warn!(
                    "bundle {} no longer uses the shared image mount {}; forgetting it",
                    bundle.display(),
                    self.dir.display()
                );
                std::fs::remove_file(&path).ok();
            }
        }
        Ok(remaining)
    }
}
