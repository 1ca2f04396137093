//! The supervisor crate's one error type: every message names what failed and why.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("hand-over state: {reason}")]
    BadState { reason: String },
    #[error("hand-over state version {found} is not understood (this binary speaks {supported})")]
    UnsupportedStateVersion { found: u16, supported: u16 },
    #[error("supervisor link protocol {found} is not understood (this binary speaks {supported})")]
    UnsupportedLinkVersion { found: u16, supported: u16 },
    #[error("supervisor link: malformed message: {reason}")]
    BadMessage { reason: String },
    #[error("supervisor link: {what}")]
    Link {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("supervisor link closed (the supervisor or worker is gone)")]
    LinkClosed,
    #[error("starting worker {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the first worker failed before the mount was ready: {reason}")]
    FirstWorkerFailed { reason: String },
    /// Finding a mount's FUSE connection needs mountinfo (the message names the file or the bad line).
    #[error(transparent)]
    MountInfo(#[from] hydrate_mountinfo::MountInfoError),
    #[error("no FUSE connection is mounted on {}", path.display())]
    NotMounted { path: PathBuf },
}

impl SupervisorError {
    pub(crate) fn sys(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        SupervisorError::Sys {
            what: what.into(),
            source: source.into(),
        }
    }

    pub(crate) fn link(what: &'static str, source: impl Into<io::Error>) -> Self {
        SupervisorError::Link {
            what,
            source: source.into(),
        }
    }
}
