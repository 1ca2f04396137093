//! The daemon's control socket: how `hydrate hsm archive|release|recall|pin|unpin|status|policy` reach the
//! one process that holds the journal and the fanotify group.
//!
//! One JSON request per connection, one JSON reply. The socket lives in the root-only state directory with
//! mode 0600, and the server also checks the peer's uid (SO_PEERCRED): only root configures the HSM.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::archive::ArchiveReport;
use crate::config::Layout;
use crate::service::Service;
use crate::{sys, HsmError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Ping,
    Archive(Vec<PathBuf>),
    Release(Vec<PathBuf>),
    Recall(Vec<PathBuf>),
    Pin(Vec<PathBuf>),
    Unpin(Vec<PathBuf>),
    Status(Vec<PathBuf>),
    /// Watermarks in percent of the file system, minimum age in seconds.
    Policy {
        high: f64,
        low: f64,
        min_age_secs: u64,
    },
    /// Audit log entries from this sequence number on.
    Log(u64),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    pub path: PathBuf,
    /// local, archived, partial or released
    pub state: String,
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
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| HsmError::io("bind", &path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| HsmError::io("chmod", &path, e))?;
    std::thread::Builder::new()
        .name("hsm-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let svc = svc.clone();
                let _ = std::thread::Builder::new()
                    .name("hsm-request".into())
                    .spawn(move || {
                        if let Err(e) = handle(&svc, conn) {
                            tracing::warn!(error = %e, "control request failed");
                        }
                    });
            }
        })
        .map_err(|e| HsmError::io("start control thread for", &root, e))?;
    Ok(())
}

fn handle(svc: &Service, conn: UnixStream) -> std::io::Result<()> {
    let uid = sys::peer_uid(conn.as_fd())?;
    let mut writer = conn.try_clone()?;
    let reply = if uid != 0 {
        Reply::error(HsmError::NotRoot { uid })
    } else {
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line)?;
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply {
                ok: false,
                lines: vec![format!("error: bad request: {e}")],
                ..Reply::default()
            },
            Ok(req) => {
                tracing::info!(?req, "control request");
                dispatch(svc, req)
            }
        }
    };
    let mut bytes = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    writer.write_all(&bytes)
}

fn dispatch(svc: &Service, req: Request) -> Reply {
    match req {
        Request::Ping => Reply::ok(vec!["pong".into()]),
        Request::Archive(p) => svc.archive(&p),
        Request::Release(p) => svc.release(&p),
        Request::Recall(p) => svc.recall(&p),
        Request::Pin(p) => svc.pin(&p, true),
        Request::Unpin(p) => svc.pin(&p, false),
        Request::Status(p) => svc.status(&p),
        Request::Policy {
            high,
            low,
            min_age_secs,
        } => crate::policy::run(svc, high, low, min_age_secs),
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
    let daemon = |reason: String| HsmError::Daemon {
        root: layout.root.clone(),
        reason,
    };
    let mut conn = UnixStream::connect(&path).map_err(|e| {
        daemon(format!(
            "not reachable at {} ({e}); is `hydrate hsm daemon` running?",
            path.display()
        ))
    })?;
    let mut bytes = serde_json::to_vec(req).expect("requests serialize");
    bytes.push(b'\n');
    conn.write_all(&bytes)
        .map_err(|e| daemon(format!("sending the request: {e}")))?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(|e| daemon(format!("reading the reply: {e}")))?;
    serde_json::from_str(&line).map_err(|e| daemon(format!("bad reply {line:?}: {e}")))
}
