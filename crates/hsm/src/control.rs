//! The daemon's control socket: how `hydrate hsm archive|release|recall|pin|unpin|status|policy` reach the
//! one process that holds the journal and the fanotify group.
//!
//! The messages are this module's; the framing (one versioned JSON envelope each way), the client call and
//! the server loop are the control protocol every hydrate daemon speaks (crate `hydrate-control`). The
//! socket lives in the root-only state directory with mode 0600, and the server also checks the peer's uid
//! (SO_PEERCRED): only root configures the HSM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hydrate_control::wire::{self, ControlError, Handler, RemoteError};
use serde::{Deserialize, Serialize};

use crate::archive::ArchiveReport;
use crate::config::Layout;
use crate::journal::Residency;
use crate::service::Service;
use crate::HsmError;

/// How long a client waits for a reply: an archive or recall of a large tree runs for as long as it takes.
const CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Ping,
    /// Archive with one thread per core (an older client's request).
    Archive(Vec<PathBuf>),
    /// Archive with this many threads reading, chunking and compressing (0: one per core).
    ArchiveWith {
        paths: Vec<PathBuf>,
        threads: usize,
    },
    Release(Vec<PathBuf>),
    Recall(Vec<PathBuf>),
    Pin(Vec<PathBuf>),
    Unpin(Vec<PathBuf>),
    /// Totals and every file (an older client's request).
    Status(Vec<PathBuf>),
    /// Totals, and every file only if `files` (a reply listing a million files is a few hundred MB).
    StatusWith {
        paths: Vec<PathBuf>,
        files: bool,
    },
    /// Watermarks in percent of the file system, minimum age in seconds, and how much may be archived first
    /// (absent from an older client: nothing).
    Policy {
        high: f64,
        low: f64,
        min_age_secs: u64,
        #[serde(default)]
        archive_budget_bytes: u64,
        #[serde(default)]
        archive_budget_secs: u64,
    },
    /// Audit log entries from this sequence number on.
    Log(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    /// The path; a name that is not UTF-8 travels with U+FFFD in place of its bad bytes (JSON carries text).
    #[serde(with = "crate::journal::lossy_path")]
    pub path: PathBuf,
    /// Serialized as local, archived, partial or released.
    pub state: Residency,
    pub pinned: bool,
    pub size: u64,
    /// Bytes of content local (by the journal's presence record).
    pub local_bytes: u64,
    /// Bytes allocated on disk (st_blocks × 512).
    pub blocks_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub size: u64,
    pub local: u64,
    pub local_only: u64,
    pub archived: u64,
    pub partial: u64,
    pub released: u64,
}

impl Totals {
    /// Counts one more file.
    pub fn add(&mut self, f: &FileStatus) {
        self.files += 1;
        self.size += f.size;
        self.local += f.local_bytes;
        match f.state {
            Residency::Released => self.released += 1,
            Residency::Partial => self.partial += 1,
            Residency::Archived => self.archived += 1,
            Residency::Local => self.local_only += 1,
        }
    }

    /// The one-line summary `hydrate hsm status` prints.
    pub fn line(&self) -> String {
        format!(
            "{} files, {} bytes: {} local only, {} archived, {} partial, {} released; {} bytes local",
            self.files,
            self.size,
            self.local_only,
            self.archived,
            self.partial,
            self.released,
            self.local
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub lines: Vec<String>,
    pub files: Vec<FileStatus>,
    pub totals: Option<Totals>,
    pub archive: Option<ArchiveReport>,
    pub log: Vec<crate::journal::LogEntry>,
}

impl Reply {
    pub fn ok(lines: Vec<String>) -> Reply {
        Reply {
            ok: true,
            lines,
            ..Reply::default()
        }
    }
    pub fn error(e: HsmError) -> Reply {
        Reply {
            ok: false,
            lines: vec![format!("error: {e}")],
            ..Reply::default()
        }
    }
}

/// Serves the control socket until the process exits (one thread per connection).
pub fn serve(svc: Arc<Service>) -> Result<(), HsmError> {
    let path = svc.layout.socket();
    let root = svc.layout.root.clone();
    let (listener, _file) = wire::bind(&path).map_err(|e| HsmError::io("bind", &path, e))?;
    let handler: Handler<Request, Reply> = Arc::new(move |req, peer| {
        if peer.uid != 0 {
            return Err(RemoteError::denied(
                HsmError::NotRoot { uid: peer.uid }.to_string(),
            ));
        }
        tracing::info!(?req, "control request");
        Ok(dispatch(&svc, req))
    });
    wire::serve(listener, "hsm-control", handler)
        .map_err(|e| HsmError::io("start control thread for", &root, e))
}

fn dispatch(svc: &Service, req: Request) -> Reply {
    match req {
        Request::Ping => Reply::ok(vec!["pong".into()]),
        Request::Archive(p) => svc.archive(&p, 0),
        Request::ArchiveWith { paths, threads } => svc.archive(&paths, threads),
        Request::Release(p) => svc.release(&p),
        Request::Recall(p) => svc.recall(&p),
        Request::Pin(p) => svc.pin(&p, true),
        Request::Unpin(p) => svc.pin(&p, false),
        Request::Status(p) => svc.status(&p, true),
        Request::StatusWith { paths, files } => svc.status(&paths, files),
        Request::Policy {
            high,
            low,
            min_age_secs,
            archive_budget_bytes,
            archive_budget_secs,
        } => crate::policy::run(
            svc,
            high,
            low,
            min_age_secs,
            crate::policy::ArchiveBudget {
                bytes: archive_budget_bytes,
                secs: archive_budget_secs,
            },
        ),
        Request::Log(from) => match svc.journal.log_since(from) {
            Ok(log) => Reply {
                ok: true,
                log,
                ..Reply::default()
            },
            Err(e) => Reply::error(e),
        },
    }
}

/// Sends `req` to the daemon of `layout` and waits for its reply.
pub fn call(layout: &Layout, req: &Request) -> Result<Reply, HsmError> {
    let path = layout.socket();
    wire::call(&path, req, CALL_TIMEOUT).map_err(|e| HsmError::Daemon {
        root: layout.root.clone(),
        reason: match e {
            ControlError::Unreachable { source, .. } => format!(
                "not reachable at {} ({source}); is `hydrate hsm daemon` running?",
                path.display()
            ),
            ControlError::Remote { error, .. } => error.message,
            other => other.to_string(),
        },
    })
}
