//! The control sockets of a mount, and `hydrate status` (their client).
//!
//! Each mount's supervisor listens on a Unix socket under /run/hydrate named after its mount point; its worker
//! listens on a second one named after the mount point and its generation (`<key>-g<N>.sock`), which the
//! supervisor queries and merges into its own answers, so clients only ever talk to the supervisor (which
//! outlives workers). A client sends one line and reads the answer to EOF: `info` is `key=value` lines,
//! `metrics` is the Prometheus text format, `upgrade [BINARY]` replaces the worker. The same answers serve
//! `hydrate umount` (which needs the supervisor's pid to wait for it) and tests.

use crate::cli::StatusArgs;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const RUN_DIR: &str = "/run/hydrate";

/// One metric: Prometheus name (without the `hydrate_` prefix), help-free, counter or gauge, value.
pub struct Metric {
    pub name: String,
    pub gauge: bool,
    pub value: u64,
}

/// What the daemon answers with; implemented by the daemon's state.
pub trait Answer: Send + Sync + 'static {
    fn info(&self) -> Vec<(&'static str, String)>;
    fn metrics(&self) -> Vec<Metric>;
    /// Extra lines appended to the `info` answer as they are (the supervisor's merge of its worker's info).
    fn info_extra(&self) -> String {
        String::new()
    }
    /// Extra Prometheus text appended to the `metrics` answer.
    fn metrics_extra(&self) -> String {
        String::new()
    }
    /// Any other request line; None answers "unknown request".
    fn command(&self, _line: &str) -> Option<String> {
        None
    }
}

fn socket_key(mountpoint: &Path) -> String {
    let key = blake3::hash(mountpoint.as_os_str().as_encoded_bytes());
    key.to_hex()[..24].to_string()
}

pub fn socket_path(mountpoint: &Path) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{}.sock", socket_key(mountpoint)))
}

/// The control socket of the worker of `generation` serving `mountpoint`.
pub fn worker_socket_path(mountpoint: &Path, generation: u64) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{}-g{generation}.sock", socket_key(mountpoint)))
}

/// Binds the supervisor's socket (replacing a stale one) and serves it on a thread for the life of the process.
pub fn serve(mountpoint: &Path, answer: std::sync::Arc<dyn Answer>) -> Result<PathBuf> {
    serve_at(&socket_path(mountpoint), mountpoint, answer)
}

/// Binds `path` (replacing a stale socket) and serves it on a thread for the life of the process.
pub fn serve_at(
    path: &Path,
    mountpoint: &Path,
    answer: std::sync::Arc<dyn Answer>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let path = path.to_path_buf();
    if UnixStream::connect(&path).is_ok() {
        bail!(
            "another hydrate daemon already serves {}",
            mountpoint.display()
        );
    }
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // One thread per request: an `upgrade` waits for the hand-over while `info` must still answer.
                let answer = std::sync::Arc::clone(&answer);
                let spawned = std::thread::Builder::new()
                    .name("control-req".into())
                    .spawn(move || {
                        if let Err(error) = handle(stream, answer.as_ref()) {
                            tracing::debug!(%error, "control request failed");
                        }
                    });
                if let Err(error) = spawned {
                    tracing::warn!(%error, "cannot serve a control request");
                }
            }
        })
        .context("starting the control thread")?;
    Ok(path)
}

fn handle(stream: UnixStream, answer: &dyn Answer) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let mut out = String::new();
    match line.trim() {
        "info" => {
            for (key, value) in answer.info() {
                out.push_str(&format!("{key}={value}\n"));
            }
            out.push_str(&answer.info_extra());
        }
        "metrics" => {
            out = prometheus(&answer.metrics());
            out.push_str(&answer.metrics_extra());
        }
        other => match answer.command(other) {
            Some(reply) => out = reply,
            None => out.push_str(&format!("error=unknown request {other:?}\n")),
        },
    }
    (&stream).write_all(out.as_bytes())
}

pub fn prometheus(metrics: &[Metric]) -> String {
    let mut out = String::new();
    for m in metrics {
        let kind = if m.gauge { "gauge" } else { "counter" };
        out.push_str(&format!(
            "# TYPE hydrate_{} {kind}\nhydrate_{} {}\n",
            m.name, m.name, m.value
        ));
    }
    out
}

/// Sends one request to the daemon serving `mountpoint` and returns its whole answer.
pub fn request(mountpoint: &Path, what: &str) -> Result<String> {
    request_socket(&socket_path(mountpoint), what)
        .with_context(|| format!("no hydrate daemon answers for {}", mountpoint.display()))
}

pub fn request_socket(path: &Path, what: &str) -> Result<String> {
    request_socket_timeout(path, what, Duration::from_secs(10))
}

pub fn request_socket_timeout(path: &Path, what: &str, timeout: Duration) -> Result<String> {
    let mut stream =
        UnixStream::connect(path).with_context(|| format!("connecting {}", path.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("{what}\n").as_bytes())?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    Ok(out)
}

pub fn info_value(info: &str, key: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(str::to_owned)
}

pub fn status(args: StatusArgs) -> Result<()> {
    if let Some(mp) = &args.mountpoint {
        let mp = crate::supervise::mountpoint_path(mp)?;
        let what = if args.metrics { "metrics" } else { "info" };
        print!("{}", request(&mp, what)?);
        if !args.metrics {
            print!(
                "{}",
                request(&mp, "metrics")?
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            );
        }
        return Ok(());
    }
    let mut found = 0;
    let entries = match std::fs::read_dir(RUN_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!("no hydrate mounts");
            return Ok(());
        }
        Err(err) => return Err(err).with_context(|| format!("reading {RUN_DIR}")),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "sock")
            || path
                .file_stem()
                .is_some_and(|s| s.to_string_lossy().contains("-g"))
        {
            // Worker sockets: their answers are part of their supervisor's.
            continue;
        }
        let Ok(info) = request_socket(&path, "info") else {
            continue;
        };
        found += 1;
        let get = |k| info_value(&info, k).unwrap_or_default();
        println!(
            "{}  image={} store={} pid={} worker={} generation={} restarts={} in_flight={} oldest_ms={} \
cache_used={} cache={}",
            get("mountpoint"),
            get("image"),
            get("store"),
            get("pid"),
            get("worker_pid"),
            get("generation"),
            get("restarts"),
            get("requests_in_flight"),
            get("oldest_request_ms"),
            get("cache_used_bytes"),
            get("cache_dir")
        );
    }
    if found == 0 {
        println!("no hydrate mounts");
    }
    Ok(())
}
