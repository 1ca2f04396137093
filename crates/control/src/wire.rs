//! Framing: one JSON line each way, in an envelope that carries the protocol version; the client call and the
//! server loop; the socket file's life (bound 0600, removed only by the daemon that bound it).
//!
//! A request is `{"v":1,"body":<request>}`, a reply `{"v":1,"body":{"ok":<reply>}}` or
//! `{"v":1,"body":{"err":{"kind":…,"message":…}}}`. Both sides read the version before the body. Within one
//! version, messages only grow by optional fields (`#[serde(default)]`) and new request variants, which an older
//! daemon answers with a `bad_request` error naming what it did not understand; anything else is a new version.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The version of the envelope and of every message in it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request or reply line accepted (a status of many files is the largest message).
const MAX_LINE: u64 = 64 << 20;

/// How long a server waits for a connected client to send its request.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    body: T,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReplyBody<T> {
    Ok(T),
    Err(RemoteError),
}

/// Why a daemon did not answer a request with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteErrorKind {
    /// The request was not understood (malformed, or a request this daemon's version does not know).
    BadRequest,
    /// The envelope's version is not the daemon's.
    Version,
    /// The peer may not ask this (e.g. not root).
    Denied,
    /// The daemon understood the request and it failed; the message says why.
    Failed,
}

/// A daemon's refusal or failure, as it sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub kind: RemoteErrorKind,
    pub message: String,
}

impl RemoteError {
    pub fn failed(message: impl Into<String>) -> Self {
        RemoteError {
            kind: RemoteErrorKind::Failed,
            message: message.into(),
        }
    }

    pub fn denied(message: impl Into<String>) -> Self {
        RemoteError {
            kind: RemoteErrorKind::Denied,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        RemoteError {
            kind: RemoteErrorKind::BadRequest,
            message: message.into(),
        }
    }
}

/// A failed control call, from the client's side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens at the socket (no daemon, or it exited).
    #[error("no daemon answers at {}: {source}", path.display())]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The connection broke or timed out during the call.
    #[error("talking to the daemon at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The reply is not a message of this protocol version.
    #[error("the daemon at {} sent a reply this client cannot read ({reason})", path.display())]
    BadReply { path: PathBuf, reason: String },
    /// Client and daemon speak different protocol versions.
    #[error(
        "the daemon at {} speaks control protocol version {theirs} and this client version {ours}: use the \
hydrate binary the daemon was started from, or restart the daemon with this one",
        path.display()
    )]
    Version {
        path: PathBuf,
        ours: u32,
        theirs: u32,
    },
    /// The daemon answered with an error.
    #[error("{error}")]
    Remote { path: PathBuf, error: RemoteError },
}

impl ControlError {
    /// Whether no daemon listens (as opposed to one that answered badly).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ControlError::Unreachable { .. })
    }
}

/// The process at the other end of a control connection (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: i32,
}

/// Sends `request` to the daemon listening at `path` and waits up to `timeout` for its reply.
pub fn call<Req: Serialize, Resp: DeserializeOwned>(
    path: &Path,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(path).map_err(|source| ControlError::Unreachable {
        path: path.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        body: request,
    })
    .expect("control requests serialize");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let reply = read_line(&stream).map_err(io)?;
    let bad = |reason: String| ControlError::BadReply {
        path: path.to_path_buf(),
        reason,
    };
    if reply.is_empty() {
        return Err(bad(
            "the daemon closed the connection without answering".into()
        ));
    }
    let envelope: Envelope<serde_json::Value> =
        serde_json::from_slice(&reply).map_err(|e| bad(format!("not a control envelope: {e}")))?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(ControlError::Version {
            path: path.to_path_buf(),
            ours: PROTOCOL_VERSION,
            theirs: envelope.v,
        });
    }
    match serde_json::from_value::<ReplyBody<Resp>>(envelope.body) {
        Ok(ReplyBody::Ok(reply)) => Ok(reply),
        Ok(ReplyBody::Err(error)) => Err(ControlError::Remote {
            path: path.to_path_buf(),
            error,
        }),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn read_line(stream: &UnixStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_LINE)).read_until(b'\n', &mut line)?;
    Ok(line)
}

/// Answers one request; runs on the connection's own thread, so a slow request (an upgrade) never delays another.
pub type Handler<Req, Resp> = Arc<dyn Fn(Req, Peer) -> Result<Resp, RemoteError> + Send + Sync>;

/// A bound control socket file. Removing it removes the file only while it is still the one this process
/// bound: a daemon that exits after another took its place must not delete the newcomer's socket.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still ours.
    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a control socket at `path` (mode 0600, its directory created 0700 if missing), replacing whatever file
/// is there: the caller has decided that no live daemon owns it.
pub fn bind(path: &Path) -> std::io::Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let meta = std::fs::symlink_metadata(path)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((listener, file))
}

/// Serves `listener` on a thread named `name` for the life of the process, one thread per connection.
pub fn serve<Req, Resp>(
    listener: UnixListener,
    name: &str,
    handler: Handler<Req, Resp>,
) -> std::io::Result<()>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    let request_name = format!("{name}-req");
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handler = Arc::clone(&handler);
                let spawned = std::thread::Builder::new()
                    .name(request_name.clone())
                    .spawn(move || {
                        if let Err(error) = answer(&stream, handler.as_ref()) {
                            tracing::debug!(%error, "control request failed");
                        }
                    });
                if let Err(error) = spawned {
                    tracing::warn!(%error, "cannot serve a control request");
                }
            }
        })?;
    Ok(())
}

fn answer<Req, Resp>(
    stream: &UnixStream,
    handler: &(dyn Fn(Req, Peer) -> Result<Resp, RemoteError> + Send + Sync),
) -> std::io::Result<()>
where
    Req: DeserializeOwned,
    Resp: Serialize,
{
    stream.set_read_timeout(Some(REQUEST_READ_TIMEOUT))?;
    let cred =
        nix::sys::socket::getsockopt(&stream.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
            .map_err(std::io::Error::from)?;
    let peer = Peer {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    let line = read_line(stream)?;
    let body = match decode_request::<Req>(&line) {
        Ok(request) => match handler(request, peer) {
            Ok(reply) => ReplyBody::Ok(reply),
            Err(error) => ReplyBody::Err(error),
        },
        Err(error) => ReplyBody::Err(error),
    };
    let mut out = serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        body,
    })
    .map_err(std::io::Error::other)?;
    out.push(b'\n');
    (&*stream).write_all(&out)
}

fn decode_request<Req: DeserializeOwned>(line: &[u8]) -> Result<Req, RemoteError> {
    let envelope: Envelope<serde_json::Value> = serde_json::from_slice(line)
        .map_err(|e| RemoteError::bad_request(format!("not a control envelope: {e}")))?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(RemoteError {
            kind: RemoteErrorKind::Version,
            message: format!(
                "this daemon speaks control protocol version {PROTOCOL_VERSION}, the request version {}",
                envelope.v
            ),
        });
    }
    serde_json::from_value(envelope.body).map_err(|e| {
        RemoteError::bad_request(format!(
            "request not understood by this daemon (protocol version {PROTOCOL_VERSION}): {e}"
        ))
    })
}

/// The socket of a mount, derived from its mount point alone so any client finds it: `dir/<hash>.sock`.
pub fn keyed_socket_path(dir: &Path, key: &Path, suffix: &str) -> PathBuf {
    dir.join(format!("{}{suffix}.sock", path_key(key)))
}

/// A short name derived from a path (24 hex digits of its BLAKE3 hash): what files named after a mount point
/// are called, whatever bytes the mount point's path holds.
pub fn path_key(key: &Path) -> String {
    blake3::hash(key.as_os_str().as_encoded_bytes()).to_hex()[..24].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Req {
        Echo(String),
        Fail,
    }

    fn server(dir: &Path) -> (PathBuf, SocketFile) {
        let path = dir.join("t.sock");
        let (listener, file) = bind(&path).unwrap();
        let handler: Handler<Req, String> = Arc::new(|req, peer| match req {
            Req::Echo(s) => Ok(format!("{s} from uid {}", peer.uid)),
            Req::Fail => Err(RemoteError::failed("asked to fail")),
        });
        serve(listener, "test-control", handler).unwrap();
        (path, file)
    }

    fn raw(path: &Path, line: &str) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn typed_calls_round_trip_and_carry_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _file) = server(dir.path());
        let uid = nix::unistd::getuid().as_raw();
        let got: String = call(&path, &Req::Echo("hi".into()), Duration::from_secs(5)).unwrap();
        assert_eq!(got, format!("hi from uid {uid}"));
        match call::<Req, String>(&path, &Req::Fail, Duration::from_secs(5)) {
            Err(ControlError::Remote { error, .. }) => {
                assert_eq!(error.kind, RemoteErrorKind::Failed);
                assert_eq!(error.message, "asked to fail");
            }
            other => panic!("{other:?}"),
        }
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn versions_and_garbage_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _file) = server(dir.path());
        let other = raw(&path, "{\"v\":2,\"body\":{\"echo\":\"x\"}}\n");
        assert!(other.contains("\"kind\":\"version\""), "{other}");
        assert!(
            other.contains("version 1, the request version 2"),
            "{other}"
        );
        let unknown = raw(&path, "{\"v\":1,\"body\":\"launch\"}\n");
        assert!(unknown.contains("\"kind\":\"bad_request\""), "{unknown}");
        let garbage = raw(&path, "info\n");
        assert!(garbage.contains("not a control envelope"), "{garbage}");
    }

    #[test]
    fn a_reply_of_another_version_is_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            read_line(&s).unwrap();
            s.write_all(b"{\"v\":7,\"body\":{\"ok\":\"x\"}}\n").unwrap();
        });
        let err = call::<Req, String>(&path, &Req::Fail, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(
                err,
                ControlError::Version {
                    ours: 1,
                    theirs: 7,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn nothing_listening_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let err = call::<Req, String>(
            &dir.path().join("none.sock"),
            &Req::Fail,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.is_unreachable(), "{err}");
    }

    #[test]
    fn a_replaced_socket_file_is_not_removed_by_its_old_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (_old_listener, old) = bind(&path).unwrap();
        let (_new_listener, new) = bind(&path).unwrap();
        old.remove();
        assert!(path.exists(), "the old owner removed the new socket");
        new.remove();
        assert!(!path.exists());
    }
}
