//! `hydrate hsm …`: tier a local directory to a store (see docs/hsm.md).
//!
//! `init` writes the root's configuration; `daemon` runs the holder of the fanotify group, which runs the
//! worker (`__worker`, hidden) that does everything else. All other subcommands are requests to that worker
//! over its root-only control socket; `status` reads the journal directly when no daemon runs.

use hydrate_units::{parse_duration, parse_size};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use hydrate_hsm::{Config, Layout, Reply, Request};

#[derive(ClapArgs, Debug)]
pub struct HsmArgs {
    #[command(subcommand)]
    pub command: HsmCommand,
}

#[derive(Subcommand, Debug)]
pub enum HsmCommand {
    /// Attach a directory to a store.
    Init(InitArgs),
    /// Run the recall service of a directory (foreground; SIGHUP restarts the worker, SIGTERM stops).
    Daemon(RootArg),
    /// Internal: the worker process the daemon's holder runs.
    #[command(name = "__worker", hide = true)]
    Worker(RootArg),
    /// Copy files to the store (deduplicated, verified); the data stays local.
    Archive(ArchiveArgs),
    /// Free local space of archived, unchanged files (they become stubs, recalled on access).
    Release(PathsArg),
    /// Bring files back whole, ahead of use.
    Recall(PathsArg),
    /// Never release these files.
    Pin(PathsArg),
    /// Allow these files to be released again.
    Unpin(PathsArg),
    /// Per file: local, archived, partial or released; and totals.
    Status(StatusArgs),
    /// Release the coldest archived files while usage is above the high watermark, down to the low one.
    Policy(PolicyArgs),
    /// Print the audit log (archive, release, recall, observed changes).
    Log(LogArgs),
}

#[derive(ClapArgs, Debug)]
pub struct InitArgs {
    /// The directory to manage.
    pub root: PathBuf,
    /// Store address (directory, s3://bucket/prefix?endpoint=…, …).
    #[arg(long)]
    pub store: String,
    /// Executable whose opens of a stub stay lazy (recalled by range, not whole); repeatable. Only for
    /// programs known not to skip holes (see docs/hsm.md, hazard 2).
    #[arg(long = "lazy-reader")]
    pub lazy_readers: Vec<PathBuf>,
    /// A blocked reader gets EIO if the store does not deliver within this time (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s")]
    pub deadline: String,
}

#[derive(ClapArgs, Debug)]
pub struct RootArg {
    pub root: PathBuf,
}

#[derive(ClapArgs, Debug)]
pub struct PathsArg {
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(ClapArgs, Debug)]
pub struct ArchiveArgs {
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Threads reading, chunking, hashing and compressing files in the daemon (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(ClapArgs, Debug)]
pub struct StatusArgs {
    pub paths: Vec<PathBuf>,
    /// Print the reply as JSON (per-file states and totals).
    #[arg(long)]
    pub json: bool,
    /// List every file, not only the totals.
    #[arg(long, short)]
    pub long: bool,
}

#[derive(ClapArgs, Debug)]
pub struct PolicyArgs {
    pub root: PathBuf,
    /// Start releasing above this usage, e.g. 90%.
    #[arg(long)]
    pub high: String,
    /// Release down to this usage, e.g. 75%.
    #[arg(long)]
    pub low: String,
    /// Only files not used for at least this long, e.g. 30d, 12h, 0s.
    #[arg(long, default_value = "0s")]
    pub min_age: String,
    /// Cold files that are not archived yet are archived first, up to this many bytes per run (0: release only
    /// files archived already).
    #[arg(long, default_value = "4G")]
    pub archive_budget: String,
    /// … and for at most this long per run.
    #[arg(long, default_value = "10m")]
    pub archive_time: String,
}

#[derive(ClapArgs, Debug)]
pub struct LogArgs {
    pub root: PathBuf,
    /// First sequence number to print.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
}

/// Parses `90%` or `90` into a percentage.
fn parse_percent(s: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .with_context(|| format!("bad percentage {s:?}"))?;
    if !(0.0..=100.0).contains(&v) {
        bail!("percentage {s:?} outside 0..100");
    }
    Ok(v)
}

fn layout_of(path: &Path) -> Result<Layout> {
    Ok(Layout::find(path)?)
}

fn layout_of_all(paths: &[PathBuf]) -> Result<(Layout, Vec<PathBuf>)> {
    let first = paths.first().context("no path given")?;
    let layout = layout_of(first)?;
    let mut abs = Vec::new();
    for p in paths {
        let a = std::path::absolute(p)?;
        if !a.starts_with(&layout.root) {
            bail!("{} is not under {}", a.display(), layout.root.display());
        }
        abs.push(a);
    }
    Ok((layout, abs))
}

fn print(reply: &Reply) -> Result<()> {
    for line in &reply.lines {
        println!("{line}");
    }
    if !reply.ok {
        bail!("some files failed (see above)");
    }
    Ok(())
}

pub fn run(args: HsmArgs) -> Result<()> {
    match args.command {
        HsmCommand::Init(a) => {
            let mut cfg = Config::new(a.store);
            cfg.deadline_ms = parse_duration(&a.deadline)?.as_millis() as u64;
            cfg.lazy_readers = a
                .lazy_readers
                .iter()
                .map(|p| {
                    std::fs::canonicalize(p).with_context(|| format!("lazy reader {}", p.display()))
                })
                .collect::<Result<_>>()?;
            let root = std::fs::canonicalize(&a.root)
                .with_context(|| format!("root {}", a.root.display()))?;
            hydrate_hsm::init(&Layout::new(root.clone()), &cfg)?;
            println!(
                "{} is managed by hydrate hsm (store {})",
                root.display(),
                cfg.store
            );
            Ok(())
        }
        HsmCommand::Daemon(a) => {
            hydrate_hsm::require_root()?;
            let root = std::fs::canonicalize(&a.root)?;
            let layout = Layout::new(root.clone());
            layout.load()?;
            let program = std::env::current_exe().context("locating the hydrate binary")?;
            let worker = hydrate_hsm::WorkerCommand {
                program,
                args: vec![
                    OsString::from("hsm"),
                    OsString::from("__worker"),
                    root.into_os_string(),
                ],
            };
            Ok(hydrate_hsm::run_holder(&layout, &worker)?)
        }
        HsmCommand::Worker(a) => Ok(hydrate_hsm::run_worker(Layout::new(
            std::fs::canonicalize(&a.root)?,
        ))?),
        HsmCommand::Archive(a) => {
            hydrate_hsm::require_root()?;
            let (layout, paths) = layout_of_all(&a.paths)?;
            let req = Request::ArchiveWith {
                paths,
                threads: a.threads,
            };
            print(&hydrate_hsm::call(&layout, &req)?)
        }
        HsmCommand::Release(a) => request(&a.paths, Request::Release),
        HsmCommand::Recall(a) => request(&a.paths, Request::Recall),
        HsmCommand::Pin(a) => request(&a.paths, Request::Pin),
        HsmCommand::Unpin(a) => request(&a.paths, Request::Unpin),
        HsmCommand::Status(a) => status(a),
        HsmCommand::Policy(a) => {
            let layout = layout_of(&a.root)?;
            let req = Request::Policy {
                high: parse_percent(&a.high)?,
                low: parse_percent(&a.low)?,
                min_age_secs: parse_duration(&a.min_age)?.as_secs(),
                archive_budget_bytes: parse_size(&a.archive_budget).context("--archive-budget")?,
                archive_budget_secs: parse_duration(&a.archive_time)
                    .context("--archive-time")?
                    .as_secs(),
            };
            print(&hydrate_hsm::call(&layout, &req)?)
        }
        HsmCommand::Log(a) => {
            let layout = layout_of(&a.root)?;
            let reply = hydrate_hsm::call(&layout, &Request::Log(a.from))?;
            for e in &reply.log {
                println!(
                    "{} {} {} {} ino={} {}",
                    e.seq,
                    e.time,
                    e.op,
                    e.path.display(),
                    e.ino,
                    e.detail
                );
            }
            print(&reply)
        }
    }
}

fn request(paths: &[PathBuf], make: fn(Vec<PathBuf>) -> Request) -> Result<()> {
    hydrate_hsm::require_root()?;
    let (layout, abs) = layout_of_all(paths)?;
    print(&hydrate_hsm::call(&layout, &make(abs))?)
}

/// Paths of files sent per status request when every file is listed: the reply stays a few MB (its limit is
/// 64 MiB) and neither side holds the whole listing of a large tree.
const LIST_BATCH: usize = 8192;

fn status(a: StatusArgs) -> Result<()> {
    let paths = if a.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        a.paths
    };
    let (layout, abs) = layout_of_all(&paths)?;
    let mut source = StatusSource::Daemon;
    if !(a.long || a.json) {
        return print(&source.ask(&layout, abs, false)?);
    }
    // Every file: this process walks the tree and asks for the files' states a batch at a time, printing as
    // they come (the daemon, or the journal itself when no daemon runs, answers for each batch).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut totals = hydrate_hsm::Totals::default();
    let mut last = Reply::ok(Vec::new());
    let mut listed = 0u64;
    if a.json {
        write!(out, "{{\n  \"files\": [")?;
    }
    let mut emit = |reply: Reply, out: &mut dyn Write| -> Result<()> {
        for f in &reply.files {
            totals.add(f);
            if a.json {
                let sep = if listed == 0 { "" } else { "," };
                write!(out, "{sep}\n    {}", serde_json::to_string(f)?)?;
            } else {
                writeln!(
                    out,
                    "{:<9} {}{:>14} {:>14}  {}",
                    f.state,
                    if f.pinned { "P" } else { " " },
                    f.size,
                    f.local_bytes,
                    f.path.display()
                )?;
            }
            listed += 1;
        }
        last = reply;
        Ok(())
    };
    let mut batch: Vec<PathBuf> = Vec::with_capacity(LIST_BATCH);
    let mut asked = false;
    for p in &abs {
        hydrate_hsm::service::for_each_file(p, &mut |path, _| {
            batch.push(path.to_owned());
            if batch.len() >= LIST_BATCH {
                asked = true;
                let reply = source.status(&layout, std::mem::take(&mut batch))?;
                emit(reply, &mut out).map_err(|e| hydrate_hsm::HsmError::Refused {
                    path: path.to_owned(),
                    reason: format!("printing the status: {e:#}"),
                })?;
            }
            Ok(())
        })?;
    }
    if !batch.is_empty() {
        let reply = source.status(&layout, batch)?;
        emit(reply, &mut out)?;
    } else if !asked {
        // No file at all: still one request, for the daemon's own lines (an empty list would mean the root).
        let reply = source.ask(&layout, abs.clone(), false)?;
        emit(reply, &mut out)?;
    }
    // The summary: totals of every batch, and what else the daemon said (its event counters) with the last one.
    let mut lines = vec![totals.line()];
    lines.extend(last.lines.iter().skip(1).cloned());
    let summary = Reply {
        ok: true,
        lines,
        totals: Some(totals),
        ..Reply::default()
    };
    if a.json {
        write!(out, "\n  ]")?;
        let value = serde_json::to_value(&summary)?;
        for (key, v) in value.as_object().into_iter().flatten() {
            if key != "files" {
                write!(out, ",\n  {}: {}", serde_json::to_string(key)?, v)?;
            }
        }
        writeln!(out, "\n}}")?;
        out.flush()?;
        return Ok(());
    }
    out.flush()?;
    drop(out);
    print(&summary)
}

/// Whether a daemon accepts connections on the root's control socket: only when none does may `status` read the
/// journal itself (a daemon that answered with an error holds the journal, and its error is the one to report).
fn daemon_listens(layout: &Layout) -> bool {
    std::os::unix::net::UnixStream::connect(layout.socket()).is_ok()
}

/// Who answers `status`: the daemon, or the journal read directly once no daemon is found (it is only locked
/// while a worker runs).
enum StatusSource {
    Daemon,
    Journal(hydrate_hsm::Journal),
}

impl StatusSource {
    /// The states of the files `paths` (never empty: that would ask for the whole root).
    fn status(
        &mut self,
        layout: &Layout,
        paths: Vec<PathBuf>,
    ) -> Result<Reply, hydrate_hsm::HsmError> {
        self.ask(layout, paths, true)
    }

    fn ask(
        &mut self,
        layout: &Layout,
        paths: Vec<PathBuf>,
        files: bool,
    ) -> Result<Reply, hydrate_hsm::HsmError> {
        if let StatusSource::Daemon = self {
            let req = Request::StatusWith {
                paths: paths.clone(),
                files,
            };
            match hydrate_hsm::call(layout, &req) {
                Ok(reply) => return Ok(reply),
                Err(hydrate_hsm::HsmError::Daemon { .. }) if !daemon_listens(layout) => {
                    *self = StatusSource::Journal(hydrate_hsm::Journal::open(&layout.journal())?);
                }
                Err(e) => return Err(e),
            }
        }
        match self {
            StatusSource::Journal(journal) => {
                hydrate_hsm::service::status_of(layout, journal, &paths, files)
            }
            StatusSource::Daemon => unreachable!("switched to the journal above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_percentages() {
        assert_eq!(parse_percent("90%").unwrap(), 90.0);
        assert_eq!(parse_percent("75").unwrap(), 75.0);
        assert!(parse_percent("120%").is_err());
    }
}
