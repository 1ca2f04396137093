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
kernel directly (FUSE passthrough).\n\nStores: a local directory path (the embedded default), s3://bucket/prefix, http(s)://… \
(read-only), oci://registry/repository[:tag] (an OCI registry; its :tag is the default image).",
    after_help = "Example:\n  hydrate build ./rootfs --store ./store --tag app:1\n  hydrate mount --store ./store app:1 /mnt/app\n  \
cat /mnt/app/usr/bin/tool          # fetched on first touch, then local\n  hydrate inspect --store ./store app:1 usr/bin/tool\n  \
hydrate status /mnt/app\n  hydrate umount /mnt/app\n  \
hydrate push --store ./store app:1 oci://registry.example/team/app:1\n  \
hydrate mount --store oci://registry.example/team/app:1 /mnt/app",
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
    /// Store a copy of an image with a prefetch plan made from a recorded trace (same data, new image id).
    AttachTrace(AttachTraceArgs),
    /// Show running mounts and their counters.
    Status(StatusArgs),
    /// Copy an image (manifest, every blob it references, then its tag) from one store to another.
    Push(PushArgs),
    /// Replace a mount's worker with the installed binary without unmounting (no request fails).
    Upgrade(UpgradeArgs),
    /// End a stuck mount's FUSE connection (as /sys/fs/fuse/connections/N/abort): every waiting access fails.
    Abort(AbortArgs),
    /// Internal: the worker process a mount's supervisor runs.
    #[command(name = "__worker", hide = true)]
    Worker(WorkerArgs),
    /// Internal: a background mount's supervisor (its spec on stdin).
    #[command(name = "__supervise", hide = true)]
    Supervise(SuperviseArgs),
    /// Tier a local directory to a store: archive, release to stubs, recall on access (see docs/hsm.md).
    Hsm(crate::cmd_hsm::HsmArgs),
    /// Prepare an OCI runtime bundle from an image (lazy lower, writable upper) for `runc run --bundle`.
    Rootfs(crate::cmd_rootfs::RootfsArgs),
    /// Convert a container image (registry or OCI layout) into a hydrate image: layers applied and flattened,
    /// the source digest and image config recorded (see docs/containers.md).
    Convert(ConvertArgs),
    /// Serve containerd as its `hydrate` snapshotter (a proxy plugin on a Unix socket): overlay snapshots for
    /// ordinary layers, lazy hydrate mounts for images made with `hydrate convert --containerd-tag`.
    Snapshotter(SnapshotterArgs),
    /// Learn a prefetch plan in one step: run the image's command once in a container (runc), record what it
    /// reads, and store the image again with that plan under its tag (see docs/containers.md).
    Learn(crate::cmd_learn::LearnArgs),
}

#[derive(ClapArgs, Debug)]
pub struct SnapshotterArgs {
    /// State directory: snapshots, and the mount points of lazy images.
    #[arg(long, default_value = "/var/lib/hydrate-snapshotter")]
    pub root: PathBuf,
    /// Unix socket to serve on (containerd's `[proxy_plugins.hydrate] address`).
    #[arg(long, default_value = "/run/hydrate-snapshotter/hydrate.sock")]
    pub address: PathBuf,
    /// Directory of the lazy images' caches, one per image [default: ROOT/cache].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Byte quota of each image's cache, e.g. 10G.
    #[arg(long, default_value = "10G")]
    pub cache_size: String,
    /// Keep an image's cache when its last snapshot is removed (default: delete it with the image).
    #[arg(long)]
    pub keep_cache: bool,
    /// Time limit of one store request of the lazy mounts (then retried) [default: the mounts' default].
    #[arg(long)]
    pub fetch_timeout: Option<String>,
    /// Background fill budget of the lazy mounts, stored bytes (0: purely lazy) [default: the mounts' default].
    #[arg(long)]
    pub fill_budget: Option<String>,
    /// ELF prefetch of the lazy mounts (see `hydrate mount --elf-prefetch`; 0: off) [default: the mounts'
    /// default]. With it, an image's command and its libraries start arriving as soon as the pull mounts it.
    #[arg(long)]
    pub elf_prefetch: Option<String>,
    /// Mount the lazy images in kernel mode, as `hydrate mount --kernel`: erofs, whose reads of data not yet
    /// fetched block while only a mount's worker is restarted and fail with EIO (never zeros) if every process
    /// of the mount is killed.
    #[arg(long)]
    pub kernel: bool,
}

#[derive(ClapArgs, Debug)]
pub struct UpgradeArgs {
    /// Mount point whose worker to replace.
    pub mountpoint: PathBuf,
    /// Binary to run as the new worker [default: the path the mount was started from].
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

#[derive(ClapArgs, Debug)]
pub struct AbortArgs {
    /// Mount point whose connection to end.
    pub mountpoint: PathBuf,
}

#[derive(ClapArgs, Debug)]
pub struct WorkerArgs {
    /// Descriptor of the link to the supervisor.
    #[arg(long)]
    pub link_fd: i32,
    /// The supervisor's pid (the worker exits if its parent is not, or stops being, that process).
    #[arg(long)]
    pub supervisor_pid: i32,
}

#[derive(ClapArgs, Debug)]
pub struct SuperviseArgs {
    /// Descriptor on which the daemon reports readiness to `hydrate mount`.
    #[arg(long)]
    pub ready_fd: i32,
}

#[derive(ClapArgs, Debug)]
pub struct BuildArgs {
    /// Directory to build the image from (read as root sees it: owners, modes, xattrs, device nodes).
    pub source: PathBuf,
    /// Store to write to: a directory path (created if missing), s3://bucket/prefix?endpoint=URL&region=NAME
    /// (credentials from AWS_* variables or ~/.aws), or oci://registry/repository[:tag].
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
    /// Store a prefetch plan made from this trace (written by `hydrate mount --record-trace`): mounts replay it
    /// in the background, in the order the traced workload read.
    #[arg(long, value_name = "TRACE")]
    pub prefetch_from: Option<PathBuf>,
}

#[derive(ClapArgs, Debug)]
pub struct AttachTraceArgs {
    /// Store holding the image.
    #[arg(long)]
    pub store: String,
    /// Image: a tag or a manifest digest.
    pub image: String,
    /// Trace written by `hydrate mount --record-trace`.
    pub trace: PathBuf,
    /// Name to give the new image [default: none; it is printed, reachable by digest].
    #[arg(long)]
    pub tag: Option<String>,
    /// Files up to this size are prefetched whole at their first touch.
    #[arg(long, default_value = "256K")]
    pub small_file_max: String,
    /// Also publish the new image's containerd form under this tag (as `convert --containerd-tag` does; needs
    /// an oci:// store, --tag, and an image converted from a container image).
    #[arg(long)]
    pub containerd_tag: Option<String>,
}

#[derive(ClapArgs, Debug)]
// IMAGE may be left out before MOUNTPOINT when the store address names it (oci://…:tag).
#[command(allow_missing_positional = true)]
pub struct MountArgs {
    /// Store holding the image.
    #[arg(long)]
    pub store: String,
    /// Image to mount: a tag (app:1) or a manifest digest; "-" or absent: the tag in the store address.
    #[arg(default_value = "-")]
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
    /// Kernel mode: mount the image as erofs. The kernel serves lookups, stat, readdir, xattrs and cached reads
    /// itself; data it has not cached is read from a blob file on a private FUSE mount (under
    /// /run/hydrate/kernel), fetched and verified as in FUSE mode. Fails closed: a read of data that cannot be
    /// had fails with EIO, never shows zeros or wrong bytes; if only the worker dies, readers block and resume
    /// when its successor takes over (as in FUSE mode); if every hydrate process is killed, reads of uncached
    /// data fail with EIO. There is no window in which unfetched data reads as zeros. Needs erofs with
    /// file-backed mounts (Linux 6.12+). Passthrough does not apply, and --private is refused (erofs has no
    /// allow_other: the image's file modes decide who may read).
    #[arg(long)]
    pub kernel: bool,
    /// Only the mounting user may access the mount (default: everyone, with permissions checked by the kernel).
    #[arg(long)]
    pub private: bool,
    /// Log file of the background daemon [default: <cache-dir>/daemon.log].
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Testing only: delay every store read by this many milliseconds (to have reads blocked on fetches).
    #[arg(long, hide = true, default_value_t = 0)]
    pub test_store_latency_ms: u64,
    /// Time limit of one store request, e.g. 10s or 500ms; a request over it counts as a temporary failure and
    /// is retried.
    #[arg(long, default_value = "30s")]
    pub fetch_timeout: String,
    /// A read whose data cannot be fetched within this time fails with EIO, and the log names the store,
    /// object, range and cause; the same read works again once the store does.
    #[arg(long, default_value = "120s")]
    pub read_deadline: String,
    /// Store requests in flight at once (a quarter is kept for on-demand reads); a long link needs many: at
    /// 20 ms RTT, 64 keep 1 Gbit/s busy with readahead.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_in_flight: u32,
    /// Fetched data the worker holds at once (store reads, decompressed chunks, readahead not yet in the
    /// cache), e.g. 16M or 256M; requests wait for room, a quarter is kept for on-demand reads (min 8M). The
    /// daemon's memory is about this plus 25-40 MiB of buffers, code and allocator slack.
    #[arg(long, default_value = "16M")]
    pub memory_limit: String,
    /// Serve the mount's metrics (as `hydrate status --metrics` prints them) in Prometheus text format over
    /// HTTP at this address, e.g. 127.0.0.1:9100.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<String>,
    /// Tuning: widen store requests shorter than this many bytes [default: 64K for s3:// stores, else 0].
    #[arg(long, hide = true)]
    pub min_request_bytes: Option<u64>,
    /// Record which files the workload opens and which ranges it reads first, in order, into TRACE (rewritten
    /// every few seconds and at unmount); serves every read in user space meanwhile (no passthrough), so that
    /// none goes unseen. Feed it to `hydrate build --prefetch-from` or `hydrate attach-trace`.
    #[arg(long, value_name = "TRACE")]
    pub record_trace: Option<PathBuf>,
    /// Largest readahead window of a sequential stream (it starts at 1M, doubles per sequential read and
    /// resets on a seek); 0 turns readahead off.
    #[arg(long, default_value = "16M")]
    pub readahead: String,
    /// When a file of a directory is opened, prefetch the directory's files up to this size that follow it in
    /// name order (a 2M window; an open outside the windows so far starts another, twice as large, up to 16M);
    /// only for images without a prefetch plan; 0 turns it off.
    #[arg(long, default_value = "256K")]
    pub dir_prefetch: String,
    /// Do not replay the image's prefetch plan.
    #[arg(long)]
    pub no_prefetch: bool,
    /// Fetch an executable or shared library (an ELF file) up to SIZE whole, in the background, once its first
    /// bytes are read: the loader maps it and faults in most of it, one round trip per missing piece otherwise.
    /// Its interpreter and the libraries it names (DT_NEEDED, found as the loader finds them) are fetched whole
    /// too, and without a prefetch plan an image's own command (its OCI config's Entrypoint or Cmd) and its
    /// libraries are fetched as soon as it is mounted. 0 turns all of it off.
    #[arg(long, default_value = "64M", value_name = "SIZE")]
    pub elf_prefetch: String,
    /// Fetch the image in the background while it is used, reads first: its small files (up to 1M) in the
    /// order they are stored, then the rest if the whole image's stored bytes fit SIZE; a larger image gets only
    /// its small files, up to SIZE. Starts after the prefetch plan, if any; never more than half of
    /// --cache-size. 0 keeps the mount purely lazy (only what is read, read ahead or prefetched is fetched).
    #[arg(long, default_value = "256M", value_name = "SIZE")]
    pub fill_budget: String,
}

#[derive(ClapArgs, Debug)]
pub struct ConvertArgs {
    /// Image to convert: docker://HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST] (a registry; credentials as for
    /// oci:// stores) or oci-layout:DIR[:REF] (an OCI image layout directory, as `skopeo copy … oci:DIR:REF`
    /// writes; `oci:DIR[:REF]` is accepted too).
    pub source: String,
    /// Store to write the hydrate image to, with its tag: oci://HOST/REPOSITORY:TAG (e.g. next to the source in
    /// the same repository), or any store address together with --tag. Alternatively use --store.
    pub dest: Option<String>,
    /// Store to write to (a directory path, s3://…, oci://…), instead of DEST.
    #[arg(long)]
    pub store: Option<String>,
    /// Tag to give the image [default: the tag in an oci:// DEST].
    #[arg(long)]
    pub tag: Option<String>,
    /// Platform to pick from a multi-platform image, OS/ARCH[/VARIANT] [default: this machine's].
    #[arg(long)]
    pub platform: Option<String>,
    /// Directory for downloaded layers while converting [default: $TMPDIR or /tmp].
    #[arg(long)]
    pub tmp_dir: Option<std::path::PathBuf>,
    /// zstd compression level for chunks (1-19).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
    /// Target size of a blob, e.g. 32M.
    #[arg(long, default_value = "32M")]
    pub blob_size: String,
    /// Compression threads (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also publish a containerd-pullable image under this tag in the same repository (needs an oci:// DEST):
    /// the source's config and one tiny metadata layer, run lazily by `hydrate snapshotter`
    /// (`ctr image pull --snapshotter hydrate HOST/REPOSITORY:TAG`; see docs/containers.md).
    #[arg(long)]
    pub containerd_tag: Option<String>,
}

#[derive(ClapArgs, Debug)]
pub struct PushArgs {
    /// Store holding the image.
    #[arg(long)]
    pub store: String,
    /// Image to copy: a tag or a manifest digest; "-": the tag in the --store address.
    pub image: String,
    /// Store to copy into: a directory path, s3://…, or oci://registry/repository[:tag] (not http: read-only).
    pub dest: String,
    /// Tag to give the image in DEST [default: the tag in an oci:// DEST address, else IMAGE if it is a tag].
    #[arg(long)]
    pub tag: Option<String>,
    /// Blobs copied in parallel.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
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
    /// Image: a tag or a manifest digest; "-": the tag in the store address.
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
    /// Print the mount's status and metrics as one JSON object (the control protocol's typed answers).
    #[arg(long, conflicts_with = "metrics")]
    pub json: bool,
}

impl Command {
    /// Replaces an IMAGE of "-" (or a left-out one) by the tag of the command's `oci://…:tag` store
    /// address, so that every later stage (including a mount's re-executed daemon and worker) sees a name.
    pub fn fill_default_image(&mut self) -> anyhow::Result<()> {
        let (image, store) = match self {
            Command::Mount(a) => (&mut a.image, &a.store),
            Command::Inspect(a) => (&mut a.image, &a.store),
            Command::Push(a) => (&mut a.image, &a.store),
            _ => return Ok(()),
        };
        if image == "-" {
            *image = hydrate_store::default_image(store).ok_or_else(|| {
                anyhow::anyhow!(
                    "no image given and the store address {store} names none (give IMAGE, or use oci://…/repo:TAG)"
                )
            })?;
        }
        Ok(())
    }
}
