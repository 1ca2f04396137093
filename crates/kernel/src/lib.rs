//! Kernel mode (`hydrate mount --kernel`): the image is mounted as **erofs**, so the kernel itself serves
//! lookups, stat, readdir, xattrs, symlinks and every cached read; hydrate only supplies file data the kernel
//! has not cached yet.
//!
//! # Design
//! ```text
//!  reader ──► erofs (metadata file on local disk, device=<fuse mnt>/blob)
//!                │ page cache miss: read of the blob range
//!                ▼
//!             FUSE ──► BlobFs::read ──► Blob layout: blob range → (inode, offset) pieces
//!                                         └──► Volume::read (cache, fetch, verify) per piece
//! ```
//! - [`KernelImage::build`] walks the manifest and writes an erofs metadata image (every entry kind, modes,
//!   32-bit ids, nanosecond mtimes, xattrs, symlink targets, hard links, device nodes) whose regular files'
//!   data lives in **one** blob device, laid out by [`hydrate_erofs::BlobLayout`]: block-aligned extents in
//!   walk order, identical contents (same content digest) sharing one extent.
//! - [`BlobFs`] is a FUSE filesystem with one read-only file, `blob`, of the layout's size. Its reads map the
//!   range back to file pieces and read them through the [`hydrate_core::Volume`]: fetched, verified and
//!   cached exactly like a FUSE read of the image. Slack after a file's last byte is zeros (erofs never
//!   shows it to anyone).
//! - [`ErofsMount`] mounts the metadata file with a raw mount(2), `device=<BlobFs mount>/blob`.
//!
//! # Why the blob is on FUSE: failing closed
//! The alternative is a sparse local blob whose holes a fanotify pre-content listener fills. When every
//! holder of the fanotify group dies, the kernel allows the pending and all later accesses and erofs reads
//! the holes as **zeros**: it fails open, and 6.18 has no restartable events. Through FUSE, a dead server
//! means an aborted connection, and every read of a blob range erofs has not cached fails with ENOTCONN
//! (seen by the erofs reader as an error, EIO or ENOTCONN): never zeros. While a holder keeps the /dev/fuse
//! descriptor (hydrate's supervisor, or systemd's fd store), readers block instead, and a new worker can
//! take the connection over as for the ordinary FUSE mount. Measured by the integration test (kernel 6.18):
//! - BlobFs served by a separate process that is then SIGKILLed (the only /dev/fuse holder), and likewise
//!   the connection aborted through `/sys/fs/fuse/connections/N/abort`: reads of data erofs had not cached
//!   fail with EIO (within ~0.2 ms); stat, readdir and data erofs already had keep working (they never
//!   reach BlobFs);
//! - worker stopped while the connection is held: a reader of unread data blocks (0.5 s checked) and gets
//!   the right bytes ~40 ms after a new BlobFs resumes the connection ([`hydrate_fuse_transport::Session::resume`]).
//!
//! The price is one FUSE round trip per erofs cache miss of up to the erofs readahead (128 KiB by
//! default, 1 MiB with [`ErofsMount::set_readahead`]); page cache hits cost nothing, and lookups, stat and
//! readdir never leave the kernel.
//!
//! BlobFs opens the blob with FOPEN_DIRECT_IO by default: the data is cached once (by erofs), and each erofs
//! miss is exactly one FUSE request of the erofs readahead size. The FUSE mount needs no `allow_other`:
//! erofs reads through the file it opened at mount time, and an unprivileged reader of the erofs mount was
//! checked to get its data.
//!
//! # Measured throughput
//! `measure_64mib_cold_read_erofs_vs_fuse` (release build, 2 shared cores, local store, 3 rounds, MiB/s;
//! cold = fresh hydrate cache, warm = hydrate cache full but kernel pages dropped):
//!
//! | path                                   | cold          | warm           | requests per 128 MiB |
//! |----------------------------------------|---------------|----------------|----------------------|
//! | hydrate FUSE mount                     | 612, 796, 801 | 722, 962, 921  |                      |
//! | erofs/BlobFs, direct I/O, ra 128 KiB    | 526, 704, 818 | 768, 1149, 1058| 1026                 |
//! | erofs/BlobFs, direct I/O, ra 1 MiB      | 614, 922, 955 | 1182, 1086, 1278| ~160                |
//! | erofs/BlobFs, page cache, ra 128 KiB    | 665, 687, 572 | 1420, 1405, 811| 514                  |
//! | erofs/BlobFs, page cache, ra 1 MiB      | 688, 585, 575 | 1337, 861, 1412| 514                  |
//!
//! Cold reads are bound by fetching, verifying and decompressing in the Volume, the same for both front
//! ends; kernel mode with 1 MiB readahead is at least as fast and makes 6× fewer upcalls than the default.
//! Without FOPEN_DIRECT_IO the second read still reached BlobFs as often as the first (514 = 2 × 257): the
//! FUSE page cache of the blob kept nothing, so direct I/O costs no caching and makes request sizes follow
//! the readahead setting.
//!
//! # How `hydrate mount --kernel` uses this crate (crate `hydrate-mountd`)
//! User guide: docs/kernel-mode.md. The supervisor and worker of a kernel-mode mount do this:
//! 1. The worker loads the manifest and opens the Volume as for a FUSE mount (`MountSpec::kernel`).
//! 2. Before it takes the connection (while a predecessor may still serve), it runs
//!    `KernelImage::build(&manifest)` and writes `<cache dir>/`[`KernelImage::metadata_file_name`] with
//!    [`KernelImage::write_metadata`], or reuses that file when it exists (the name carries the image id and
//!    [`LAYOUT_VERSION`], the build is deterministic, the write is temp file + fsync + rename). It keeps the
//!    blob layout (built anyway: the layout is not stored) and where each file is named
//!    ([`KernelImage::into_parts`], [`BlobFs::with_parents`]: erofs answers lookups itself, so BlobFs tells
//!    the Volume a file's name before opening it, for its directory and ELF heuristics), and reports the
//!    metadata path to the supervisor in the hand-over state (note `kernel_metadata`).
//! 3. The supervisor mounts the connection at a private directory,
//!    `/run/hydrate/kernel/<key of the mount point>-<supervisor pid>` (`hydrate_control::mount::kernel_blob_dir`),
//!    fsname `hydrate-blob:<image>`, no `allow_other`, and holds its /dev/fuse descriptor exactly as for an
//!    ordinary FUSE mount; the worker serves [`BlobFs`] (with [`BlobFs::session_config`]) wrapped for its
//!    init hook and in-flight tracking (`mountd::kernel_worker::BlobFront`). A worker crash or upgrade is a
//!    takeover with RESEND: BlobFs has no handle state to journal (its only open is the blob, fh 0; Volume
//!    handles are reopened lazily), so the successor resumes with the negotiated state alone.
//! 4. Once the first worker serves, a thread of the supervisor (the supervisor loop must keep restarting
//!    workers meanwhile: erofs' mount(2) waits for the blob's LOOKUP and OPEN) mounts erofs on the user's
//!    mount point with [`ErofsMount::mount`] (`MS_NOSUID | MS_NODEV`, as FUSE mounts of images are), raises
//!    its readahead to [`READAHEAD_KB`] with [`ErofsMount::set_readahead`], and only then reports the mount
//!    ready. A kernel without erofs (ENODEV) or without file-backed erofs (ENOTBLK) is named in the error.
//! 5. Unmounting goes in the other order: erofs first, then BlobFs (erofs holds the blob open; the FUSE mount
//!    is busy until it is gone). On a stop signal the supervisor detaches erofs before the blob mount.
//! 6. The same thread watches /proc/self/mountinfo with poll(POLLPRI) (`hydrate-mountinfo`): when the mount
//!    id of our erofs mount is no longer at the mount point (`hydrate umount`, a plain `umount`,
//!    `umount -l`), it detaches the blob mount, so the connection ends once erofs releases the blob and the
//!    daemon exits as after a FUSE unmount. `hydrate umount` also detaches blob mounts whose supervisor was
//!    killed, and `hydrate abort` aborts the blob connection.
//! 7. Cache eviction needs nothing special: erofs asks BlobFs again for ranges it no longer caches, and
//!    BlobFs asks the Volume, so an evicted range is a miss fetched again (the test evicts, drops erofs'
//!    pages, and sees EIO while the store fails, then the bytes). BlobFs keeps at most
//!    [`BlobFsConfig::open_files`] Volume handles open (an open handle pins its content), and the worker
//!    releases those idle for [`BlobFsConfig::idle_release`] ([`BlobFs::release_idle`]): erofs never says
//!    when a file is closed, and without it kernel mode could not keep its quota (measured: 48 MiB cached
//!    under an 8 MiB quota, nothing evicted; with it, evicted on the next write).
//!
//! `crates/hydrate/tests/kernel_mode.rs` checks all of it with real mounts: the tree against its source,
//! laziness, mmap of a never-read file, a corrupt store (EIO), plain and lazy `umount`, SIGTERM and
//! `hydrate abort`, the cache quota and trace recording, 100 SIGKILLs of the worker and an upgrade under
//! verifying readers (no failed read), SIGKILL of every hydrate process (reads of uncached data fail, none
//! returns wrong bytes), and runc on a `hydrate rootfs --kernel` bundle; the containerd tests run a
//! converted image through `hydrate snapshotter --kernel`.
//!
//! # Limits
//! One blob of at most 2^32 - 1 blocks (16 TiB of distinct file data). erofs reads the blob for one file
//! at a time (its readahead is per erofs inode), so a BlobFs request covers one file's extent and never
//! waits for several files' fetches in turn (the test counts multi-extent requests: none); BlobFs still
//! handles such ranges piece by piece. Small files are one round trip each, as through FUSE; the Volume's
//! directory prefetch has their neighbours fetched meanwhile.

#![forbid(unsafe_code)]

mod blobfs;
mod error;
mod image;
mod mount;

pub use blobfs::{BlobFs, BlobFsConfig, BlobFsStats, BLOB_INO, BLOB_NAME, ROOT_INO};
pub use error::{KernelError, Result};
pub use image::{Blob, BuildStats, FileParents, KernelImage, LAYOUT_VERSION};
pub use mount::{ErofsMount, READAHEAD_KB};
