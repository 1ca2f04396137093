//! Raw command-line arguments (clap). Validation that needs more than a type lives in each command.

use clap::{Args as ClapArgs, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "hydrate",
    version,
    about = "Make remote data appear local at once; fetch it only when it is touched",
    long_about = "hydrate turns a directory into a chunked, deduplicated, compressed and content-verified image \
in a store, and mounts images lazily through FUSE: the tree appears at once, file data is fetched on first access, \
verified against its digest and kept in a bounded local cache. Files complete in the cache are served by the \
kernel directly (FUSE passthrough).\n\nStores: a local directory path (the embedded default).",
    after_help = "Example:\n  hydrate build ./rootfs --store ./store --tag app:1\n  hydrate mount --store ./store app:1 /mnt/app\n  \
cat /mnt/app/usr/bin/tool          # fetched on first touch, then local\n  hydrate inspect --store ./store app:1 usr/bin/tool\n  \
hydrate status /mnt/app\n  hydrate umount /mnt/app",
    propagate_version = true
)]
pub struct Args {
    /// More log output (-v info, -vv debug, -vvv trace); HYDRATE_LOG=<filter> overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build an image from a directory into a store.
    Build(BuildArgs),
    /// Mount an image lazily (returns once the mount is ready; the daemon serves it in the background).
    Mount(MountArgs),
    /// Unmount a hydrate mount and wait for its daemon to finish.
    Umount(UmountArgs),
    /// Show an image: totals and dedup figures, a directory listing, or a file's chunk map.
    Inspect(InspectArgs),
    /// Show running mounts and their counters.
    Status(StatusArgs),
}

#[derive(ClapArgs, Debug)]
pub struct BuildArgs {
    /// Directory to build the image from (read as root sees it: owners, modes, xattrs, device nodes).
    pub source: PathBuf,
    /// Store to write to (a local directory path; created if missing).
    #[arg(long)]
    pub store: String,
    /// Name to give the image in the store (e.g. app:1); without it, the image is reachable by digest only.
    #[arg(long)]
    pub tag: Option<String>,
    /// zstd compression level for chunks (1-19).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
    /// Target size of a blob (the store object that packs many chunks), e.g. 32M.
    #[arg(long, default_value = "32M")]
    pub blob_size: String,
    /// Compression threads (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(ClapArgs, Debug)]
pub struct MountArgs {
    /// Store holding the image.
    #[arg(long)]
    pub store: String,
    /// Image to mount: a tag (app:1) or a manifest digest.
    pub image: String,
    /// Empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Local cache directory [default: /var/cache/hydrate/<image digest>].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Byte quota of the local cache, e.g. 10G; least recently used content is evicted above it.
    #[arg(long, default_value = "10G")]
    pub cache_size: String,
    /// Stay attached to the terminal instead of running in the background; Ctrl-C unmounts.
    #[arg(long)]
    pub foreground: bool,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// Serve every read in user space (do not hand complete files to the kernel with FUSE passthrough).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Only the mounting user may access the mount (default: everyone, with permissions checked by the kernel).
    #[arg(long)]
    pub private: bool,
    /// Log file of the background daemon [default: <cache-dir>/daemon.log].
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Internal: descriptor on which the background daemon reports readiness to `hydrate mount`.
    #[arg(long, hide = true)]
    pub ready_fd: Option<i32>,
}

#[derive(ClapArgs, Debug)]
pub struct UmountArgs {
    /// Mount point to unmount.
    pub mountpoint: PathBuf,
    /// Detach now even if busy; the daemon exits when the last user closes.
    #[arg(long)]
    pub lazy: bool,
}

#[derive(ClapArgs, Debug)]
pub struct InspectArgs {
    /// Store holding the image.
    #[arg(long)]
    pub store: String,
    /// Image: a tag or a manifest digest.
    pub image: String,
    /// Path inside the image: a directory is listed, a file shows its chunk map.
    pub path: Option<String>,
    /// With a directory path (or none): list the whole tree below it.
    #[arg(long)]
    pub tree: bool,
}

#[derive(ClapArgs, Debug)]
pub struct StatusArgs {
    /// A mount point; without it, every running hydrate mount is listed.
    pub mountpoint: Option<PathBuf>,
    /// Print the mount's counters in Prometheus text format.
    #[arg(long)]
    pub metrics: bool,
}
