//! `hydrate`: build images into a store, mount them lazily, inspect them, and manage running mounts.
//!
//! Parsing is split in two stages as in ripgrep: clap turns argv into raw `cli::Args`, and each command validates
//! what it needs (sizes, paths, store addresses) before doing any work, so a bad argument is reported before
//! anything is touched.

mod cli;
mod cmd_build;
mod cmd_convert;
mod cmd_hsm;
mod cmd_inspect;
mod cmd_learn;
mod cmd_mount;
mod cmd_push;
mod cmd_rootfs;
mod retry;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = cli::Args::parse();
    if std::env::var_os("HYDRATE_MALLOC_DEFAULTS").is_none()
        && matches!(
            args.command,
            cli::Command::Mount(_) | cli::Command::Worker(_) | cli::Command::Supervise(_)
        )
    {
        hydrate_mountd::alloc::tune_for_daemon();
    }
    let log_filter = init_logging(args.verbose);
    if matches!(
        args.command,
        cli::Command::Status(_) | cli::Command::Inspect(_)
    ) {
        restore_sigpipe();
    }
    let result = match args.command.fill_default_image() {
        Err(err) => Err(err),
        Ok(()) => run(args.command, &log_filter),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hydrate: error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", skipping a cause that the message before it already ends with
/// (library errors often quote their source in their own text and also expose it as `source()`).
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain().map(|c| c.to_string()) {
        if text.is_empty() {
            text = cause;
        } else if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn run(command: cli::Command, log_filter: &str) -> anyhow::Result<()> {
    match command {
        cli::Command::Build(a) => cmd_build::run(a),
        cli::Command::Mount(a) => cmd_mount::run(a, log_filter),
        cli::Command::Umount(a) => cmd_mount::umount(a),
        cli::Command::Inspect(a) => cmd_inspect::run(a),
        cli::Command::AttachTrace(a) => cmd_build::attach_trace(a),
        cli::Command::Status(a) => cmd_mount::status(a),
        cli::Command::Push(a) => cmd_push::run(a),
        cli::Command::Upgrade(a) => cmd_mount::upgrade(a),
        cli::Command::Abort(a) => cmd_mount::abort(a),
        cli::Command::Worker(a) => hydrate_mountd::worker::worker_main(a.link_fd, a.supervisor_pid),
        cli::Command::Supervise(a) => hydrate_mountd::launch::supervisor_main(a.ready_fd),
        cli::Command::Hsm(a) => cmd_hsm::run(a),
        cli::Command::Rootfs(a) => cmd_rootfs::run(a),
        cli::Command::Convert(a) => cmd_convert::run(a),
        cli::Command::Learn(a) => cmd_learn::run(a),
        cli::Command::Snapshotter(a) => snapshotter(a),
    }
}

/// `hydrate snapshotter`: validates the options and serves (see crate `hydrate-snapshotter`).
fn snapshotter(a: cli::SnapshotterArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let cache_size = hydrate_units::parse_size(&a.cache_size).context("--cache-size")?;
    let fetch_timeout = a
        .fetch_timeout
        .as_deref()
        .map(hydrate_units::parse_duration)
        .transpose()
        .context("--fetch-timeout")?;
    let fill_budget = a
        .fill_budget
        .as_deref()
        .map(hydrate_units::parse_size)
        .transpose()
        .context("--fill-budget")?;
    let elf_prefetch = a
        .elf_prefetch
        .as_deref()
        .map(hydrate_units::parse_size)
        .transpose()
        .context("--elf-prefetch")?;
    let program = std::env::current_exe().context("finding the hydrate binary")?;
    // Mount daemons outlive this process and its working directory: give them absolute paths.
    let root = std::path::absolute(&a.root).context("--root")?;
    let cache_root = match a.cache_dir {
        Some(dir) => std::path::absolute(dir).context("--cache-dir")?,
        None => root.join("cache"),
    };
    hydrate_snapshotter::run(hydrate_snapshotter::Options {
        root,
        address: a.address,
        lazy: hydrate_snapshotter::LazyOptions {
            program,
            cache_root,
            cache_size,
            keep_cache: a.keep_cache,
            fetch_timeout,
            fill_budget,
            elf_prefetch,
            kernel: a.kernel,
        },
    })
}

/// Sets up logging to stderr; returns the filter in use (a background mount passes it on to its daemon).
fn init_logging(verbose: u8) -> String {
    let default = match verbose {
        0 => "warn,hydrate=info,hydrate_mountd=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let text = std::env::var("HYDRATE_LOG").unwrap_or_else(|_| default.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&text)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log write that fails (the log file's disk is full) must cost only that line: by default the
        // subscriber reports it with eprintln!, which panics when stderr is that same full file, and a
        // panic in a FUSE thread ended the worker (seen when /var/tmp filled up under the test suite).
        .log_internal_errors(false)
        .with_target(false)
        // The background daemon's stderr is its log file: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    text
}

/// Reporting commands end quietly when their reader goes away (`hydrate status | head`), like other Unix tools;
/// the Rust runtime ignores SIGPIPE, which would turn that into a panic on the next print. Daemons keep ignoring
/// it: a client hanging up on the control socket must never kill a mount.
fn restore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called once at start, before any thread exists; SIG_DFL installs no handler code.
    #[allow(unsafe_code)]
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_skips_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let err = anyhow::Error::new(io)
            .context("reading x: No such file")
            .context("converting");
        assert_eq!(
            super::error_chain(&err),
            "converting: reading x: No such file"
        );
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_chain(&err), "outer: inner");
    }
}
