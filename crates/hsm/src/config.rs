//! Where a managed directory keeps its HSM state and how it is configured.
//!
//! `hydrate hsm init ROOT` creates `ROOT/.hydrate-hsm/` (mode 0700, root only) holding `config.json`, the
//! journal (`journal.redb`), the daemon's control socket and pid files. Keeping the state inside the managed
//! file system ties it to the data it describes (it moves and is backed up with it); the state directory is
//! never archived or released.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::HsmError;

pub const STATE_DIR: &str = ".hydrate-hsm";
const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    /// Store address for `hydrate_store::open_store`.
    pub store: String,
    /// Executables trusted not to skip holes: their opens of a stub stay lazy (partial recall by range);
    /// every other opener gets the whole file recalled before its open returns. See docs/hsm.md, hazard 2.
    pub lazy_readers: Vec<PathBuf>,
    /// A blocked reader gets EIO if its data cannot be fetched within this many milliseconds.
    pub deadline_ms: u64,
    /// Time limit of one store request.
    pub request_timeout_ms: u64,
    pub zstd_level: i32,
    /// Target size of the blobs an archive run packs new chunks into.
    pub blob_target: u64,
}

impl Config {
    pub fn new(store: String) -> Config {
        Config {
            version: CONFIG_VERSION,
            store,
            lazy_readers: Vec::new(),
            deadline_ms: 30_000,
            request_timeout_ms: 10_000,
            zstd_level: 3,
            blob_target: 16 << 20,
        }
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

/// The paths of one managed root.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }
    pub fn config(&self) -> PathBuf {
        self.state_dir().join("config.json")
    }
    pub fn journal(&self) -> PathBuf {
        self.state_dir().join("journal.redb")
    }
    pub fn socket(&self) -> PathBuf {
        self.state_dir().join("control.sock")
    }
    pub fn holder_pid(&self) -> PathBuf {
        self.state_dir().join("holder.pid")
    }
    pub fn worker_pid(&self) -> PathBuf {
        self.state_dir().join("worker.pid")
    }

    /// Finds the managed root containing `path` (the nearest ancestor with a state directory).
    pub fn find(path: &Path) -> Result<Layout, HsmError> {
        let abs = std::path::absolute(path).map_err(|e| HsmError::io("resolve", path, e))?;
        let mut at = Some(abs.as_path());
        while let Some(dir) = at {
            if dir.join(STATE_DIR).join("config.json").is_file() {
                return Ok(Layout::new(dir));
            }
            at = dir.parent();
        }
        Err(HsmError::NotManaged { path: abs })
    }

    /// `path` relative to the root (for records and reports).
    pub fn relative(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root).unwrap_or(path).to_owned()
    }

    pub fn load(&self) -> Result<Config, HsmError> {
        let path = self.config();
        let bytes = std::fs::read(&path).map_err(|e| HsmError::io("read", &path, e))?;
        let cfg: Config = serde_json::from_slice(&bytes).map_err(|e| HsmError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if cfg.version != CONFIG_VERSION {
            return Err(HsmError::Config {
                path,
                reason: format!("version {}, this build reads {CONFIG_VERSION}", cfg.version),
            });
        }
        Ok(cfg)
    }

    /// Writes the configuration atomically (temp file, fsync, rename), creating the state directory.
    pub fn save(&self, cfg: &Config) -> Result<(), HsmError> {
        let dir = self.state_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| HsmError::io("create", &dir, e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| HsmError::io("chmod", &dir, e))?;
        let tmp = dir.join("config.json.tmp");
        let bytes = serde_json::to_vec_pretty(cfg).expect("config serializes");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.config())?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| HsmError::io("write", self.config(), e))
    }
}

/// Fails unless the caller is root: configuring the HSM hands file contents to a daemon running as root.
pub fn require_root() -> Result<(), HsmError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(HsmError::NotRoot { uid });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_find() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let mut cfg = Config::new("/srv/store".into());
        cfg.lazy_readers.push("/usr/bin/python3".into());
        layout.save(&cfg).unwrap();
        assert_eq!(layout.load().unwrap(), cfg);
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let found = Layout::find(&dir.path().join("a/b")).unwrap();
        assert_eq!(found.root, dir.path());
        assert!(Layout::find(Path::new("/")).is_err());
    }
}
