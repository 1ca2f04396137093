//! `hydrate`: build images into a store, mount them lazily, inspect them, and manage running mounts.
//!
//! Parsing is split in two stages as in ripgrep: clap turns argv into raw `cli::Args`, and each command validates
//! what it needs (sizes, paths, store addresses) before doing any work, so a bad argument is reported before
//! anything is touched.

mod cli;
mod cmd_build;
mod cmd_inspect;
mod cmd_mount;
mod control;
mod daemon;
mod units;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    init_logging(args.verbose);
    let result = match args.command {
        cli::Command::Build(a) => cmd_build::run(a),
        cli::Command::Mount(a) => cmd_mount::run(a),
        cli::Command::Umount(a) => cmd_mount::umount(a),
        cli::Command::Inspect(a) => cmd_inspect::run(a),
        cli::Command::Status(a) => control::status(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hydrate: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,hydrate=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HYDRATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // The background daemon's stderr is its log file: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
