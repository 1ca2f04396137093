//! erofs metadata images ("bootstraps") whose regular files' data lives in separate blob devices.
//!
//! `hydrate mount --kernel` mounts an image as erofs: the kernel reads this crate's metadata image (mounted
//! from a file with a raw `mount(2)`) and one or more sparse blob files given as `device=/abs/path` options,
//! in [`DeviceId`] order. Blob holes are filled on demand by someone else (fanotify pre-content events);
//! [`BlobLayout`] says where each file's data goes in a blob and which file a blob offset belongs to.
//!
//! ```text
//! let mut blob = BlobLayout::new();                          // one per blob device
//! let at = blob.place(path, size, Some(&digest))?;           // block-aligned extent, shared by digest
//! let mut writer = ErofsWriter::new(ErofsOptions::default())?;
//! let dev = writer.add_device(blob.blocks(), b"blob0")?;
//! writer.add(path, Entry { kind: EntryKind::Regular { size, data: at.map(|p| DataLocation { device: dev, block: p.block }) }, meta })?;
//! writer.write_to_path(&bootstrap)?;
//! mount(bootstrap, target, "erofs", MS_RDONLY, "device=/abs/blob0")
//! ```
//!
//! # Layout choices
//! - **Block size 4096**, the page size: file-backed erofs mounts need blocks no larger than a page, and
//!   blob extents are 4 KiB aligned.
//! - **Extended (64-byte) inodes everywhere**: 32-bit uid/gid, 64-bit size, 64-bit seconds and nanoseconds of
//!   mtime (compact inodes only keep an offset from the build time and no nanoseconds). erofs has one
//!   timestamp: atime, ctime and mtime all read back as the mtime.
//! - **Regular files are `EROFS_INODE_CHUNK_BASED` with 8-byte chunk indexes** (`EROFS_CHUNK_FORMAT_INDEXES`):
//!   each index entry names its device and a device-local start block, so blob addresses are the blob's own
//!   (what the fanotify filler sees) and no global address space has to be kept. The chunk size is the
//!   smallest power of two of blocks covering the file, capped at 64 MiB: a file up to 64 MiB has one index
//!   entry, a 5 GiB file 81 (the kernel clamps the last chunk to the file size). The kernel accepts chunks
//!   up to 2^31 blocks, but fsck.erofs 1.5 reads a whole chunk into one buffer and crashed (SIGSEGV)
//!   extracting a file whose one chunk was 8 GiB, hence the cap. The alternative, `FLAT_PLAIN` with a
//!   32-bit start block in the global address space of the device table's `mapped_blkaddr`, would tie every
//!   blob to an offset in one shared 16 TiB space, and the kernel resolves such addresses by scanning the
//!   devices' ranges; it has no advantage for one-extent files. Both kinds were read in the kernel
//!   (`erofs_map_blocks`, `erofs_map_dev`); the chunk-based one is what the mount test exercises.
//! - Empty files and special files are `FLAT_PLAIN` with no data. Device numbers use the kernel's 32-bit
//!   `new_encode_dev` (12-bit major, 20-bit minor).
//! - **Directories and symlinks live in the metadata image**: the last (partial) block of a directory and a
//!   symlink target are stored inline after the inode (`FLAT_INLINE`) when they fit in the inode's block;
//!   otherwise they take whole blocks in a data area after the inodes (`FLAT_PLAIN`). See [`dir`] for the
//!   dirent rules (byte order over the whole directory, `.` and `..` included).
//! - **Xattrs are inline** in each inode with erofs' short name prefixes (see [`xattr`]); no shared xattrs,
//!   no long prefixes, no xattr name filter. The kernel refuses an xattr body that is only a header, so an
//!   inode without xattrs has none at all.
//! - The superblock checksum (crc32c, `EROFS_FEATURE_COMPAT_SB_CHKSUM`) is on by default; it covers block 0
//!   from byte 1024, so the device table in block 0 is covered too.
//! - **Deterministic**: entries are kept sorted by path, inodes are numbered breadth-first from the root,
//!   xattrs sorted by name; the same tree gives the same bytes whatever order it was added in.
//!
//! # Limits
//! Names up to 255 bytes of anything but `/` and NUL; symlink targets up to 4095 bytes; xattr values up to
//! 65535 bytes; at most 1024 blob devices of at most 2^32 - 1 blocks (16 TiB) each; a metadata image of at
//! most 2^32 - 1 blocks. Files may be larger than 4 GiB (sizes are 64-bit; the chunk index addresses them).
//! No 48-bit addressing, compression, shared xattrs or long xattr prefixes.

#![forbid(unsafe_code)]

pub mod blob;
pub mod dir;
mod error;
pub mod format;
mod image;
mod tree;
pub mod xattr;

pub use blob::{BlobExtent, BlobLayout, BlobPiece, Placement};
pub use error::{ErofsError, Result};
pub use image::ImageInfo;
pub use tree::{
    DataLocation, DeviceId, Entry, EntryKind, ErofsOptions, ErofsWriter, Metadata, Timestamp,
    MAX_DEVICES, SYMLINK_MAX,
};
