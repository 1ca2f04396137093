//! The Linux FUSE kernel ABI (include/uapi/linux/fuse.h), transcribed for protocol 7.44.
//!
//! Everything the kernel and a server exchange over /dev/fuse is defined here and nowhere else: opcodes,
//! INIT flags, open flags, notification codes, ioctl numbers, and the `#[repr(C)]` structs. The kernel uses
//! the host's native byte order and layout, so the structs hold plain native integers; zerocopy derives give
//! checked, copy-free conversion from and to byte slices (no pointer casts anywhere in the crate). Only the
//! structs this transport decodes or encodes are transcribed; comments name the protocol minor that
//! introduced a field when the transport depends on it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Major protocol version spoken by this transport (and every kernel since 2.6.14).
pub const FUSE_KERNEL_VERSION: u32 = 7;
/// Highest minor protocol version this transport implements. 7.40 added passthrough and RESEND,
/// 7.43 the request timeout field (left zero), 7.44 the epoch notification (unused).
pub const FUSE_KERNEL_MINOR_VERSION: u32 = 44;
/// The inode number of the mount's root directory.
pub const FUSE_ROOT_ID: u64 = 1;
/// The kernel refuses reads from /dev/fuse into smaller buffers.
pub const FUSE_MIN_READ_BUFFER: usize = 8192;
/// Default per-request page limit when FUSE_MAX_PAGES is not negotiated.
pub const FUSE_DEFAULT_MAX_PAGES_PER_REQ: u16 = 32;
/// Set in `fuse_in_header.unique` of requests the kernel re-sent after FUSE_NOTIFY_RESEND (7.40).
pub const FUSE_UNIQUE_RESEND: u64 = 1 << 63;

// Opcodes (enum fuse_opcode).
pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_FORGET: u32 = 2;
pub const FUSE_GETATTR: u32 = 3;
pub const FUSE_SETATTR: u32 = 4;
pub const FUSE_READLINK: u32 = 5;
pub const FUSE_SYMLINK: u32 = 6;
pub const FUSE_MKNOD: u32 = 8;
pub const FUSE_MKDIR: u32 = 9;
pub const FUSE_UNLINK: u32 = 10;
pub const FUSE_RMDIR: u32 = 11;
pub const FUSE_RENAME: u32 = 12;
pub const FUSE_LINK: u32 = 13;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_READ: u32 = 15;
pub const FUSE_WRITE: u32 = 16;
pub const FUSE_STATFS: u32 = 17;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_FSYNC: u32 = 20;
pub const FUSE_SETXATTR: u32 = 21;
pub const FUSE_GETXATTR: u32 = 22;
pub const FUSE_LISTXATTR: u32 = 23;
pub const FUSE_REMOVEXATTR: u32 = 24;
pub const FUSE_FLUSH: u32 = 25;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_OPENDIR: u32 = 27;
pub const FUSE_READDIR: u32 = 28;
pub const FUSE_RELEASEDIR: u32 = 29;
pub const FUSE_FSYNCDIR: u32 = 30;
pub const FUSE_GETLK: u32 = 31;
pub const FUSE_SETLK: u32 = 32;
pub const FUSE_SETLKW: u32 = 33;
pub const FUSE_ACCESS: u32 = 34;
pub const FUSE_CREATE: u32 = 35;
pub const FUSE_INTERRUPT: u32 = 36;
pub const FUSE_BMAP: u32 = 37;
pub const FUSE_DESTROY: u32 = 38;
pub const FUSE_IOCTL: u32 = 39;
pub const FUSE_POLL: u32 = 40;
pub const FUSE_NOTIFY_REPLY: u32 = 41;
pub const FUSE_BATCH_FORGET: u32 = 42;
pub const FUSE_FALLOCATE: u32 = 43;
pub const FUSE_READDIRPLUS: u32 = 44;
pub const FUSE_RENAME2: u32 = 45;
pub const FUSE_LSEEK: u32 = 46;
pub const FUSE_COPY_FILE_RANGE: u32 = 47;
pub const FUSE_SETUPMAPPING: u32 = 48;
pub const FUSE_REMOVEMAPPING: u32 = 49;
pub const FUSE_SYNCFS: u32 = 50;
pub const FUSE_TMPFILE: u32 = 51;
pub const FUSE_STATX: u32 = 52;
/// One past the highest opcode; sizes the per-opcode statistics table.
pub const FUSE_OPCODE_LIMIT: u32 = 53;

/// Name of an opcode for logs and statistics ("UNKNOWN" for anything unassigned).
pub fn opcode_name(opcode: u32) -> &'static str {
    match opcode {
        FUSE_LOOKUP => "LOOKUP",
        FUSE_FORGET => "FORGET",
        FUSE_GETATTR => "GETATTR",
        FUSE_SETATTR => "SETATTR",
        FUSE_READLINK => "READLINK",
        FUSE_SYMLINK => "SYMLINK",
        FUSE_MKNOD => "MKNOD",
        FUSE_MKDIR => "MKDIR",
        FUSE_UNLINK => "UNLINK",
        FUSE_RMDIR => "RMDIR",
        FUSE_RENAME => "RENAME",
        FUSE_LINK => "LINK",
        FUSE_OPEN => "OPEN",
        FUSE_READ => "READ",
        FUSE_WRITE => "WRITE",
        FUSE_STATFS => "STATFS",
        FUSE_RELEASE => "RELEASE",
        FUSE_FSYNC => "FSYNC",
        FUSE_SETXATTR => "SETXATTR",
        FUSE_GETXATTR => "GETXATTR",
        FUSE_LISTXATTR => "LISTXATTR",
        FUSE_REMOVEXATTR => "REMOVEXATTR",
        FUSE_FLUSH => "FLUSH",
        FUSE_INIT => "INIT",
        FUSE_OPENDIR => "OPENDIR",
        FUSE_READDIR => "READDIR",
        FUSE_RELEASEDIR => "RELEASEDIR",
        FUSE_FSYNCDIR => "FSYNCDIR",
        FUSE_GETLK => "GETLK",
        FUSE_SETLK => "SETLK",
        FUSE_SETLKW => "SETLKW",
        FUSE_ACCESS => "ACCESS",
        FUSE_CREATE => "CREATE",
        FUSE_INTERRUPT => "INTERRUPT",
        FUSE_BMAP => "BMAP",
        FUSE_DESTROY => "DESTROY",
        FUSE_IOCTL => "IOCTL",
        FUSE_POLL => "POLL",
        FUSE_NOTIFY_REPLY => "NOTIFY_REPLY",
        FUSE_BATCH_FORGET => "BATCH_FORGET",
        FUSE_FALLOCATE => "FALLOCATE",
        FUSE_READDIRPLUS => "READDIRPLUS",
        FUSE_RENAME2 => "RENAME2",
        FUSE_LSEEK => "LSEEK",
        FUSE_COPY_FILE_RANGE => "COPY_FILE_RANGE",
        FUSE_SETUPMAPPING => "SETUPMAPPING",
        FUSE_REMOVEMAPPING => "REMOVEMAPPING",
        FUSE_SYNCFS => "SYNCFS",
        FUSE_TMPFILE => "TMPFILE",
        FUSE_STATX => "STATX",
        _ => "UNKNOWN",
    }
}

// Notification codes (enum fuse_notify_code), sent in fuse_out_header.error with unique 0.
pub const FUSE_NOTIFY_POLL: i32 = 1;
pub const FUSE_NOTIFY_INVAL_INODE: i32 = 2;
pub const FUSE_NOTIFY_INVAL_ENTRY: i32 = 3;
pub const FUSE_NOTIFY_STORE: i32 = 4;
pub const FUSE_NOTIFY_RETRIEVE: i32 = 5;
pub const FUSE_NOTIFY_DELETE: i32 = 6;
pub const FUSE_NOTIFY_RESEND: i32 = 7;

// INIT flags; bits 32..63 travel in flags2 when FUSE_INIT_EXT is agreed.
pub const FUSE_ASYNC_READ: u64 = 1 << 0;
pub const FUSE_POSIX_LOCKS: u64 = 1 << 1;
pub const FUSE_FILE_OPS: u64 = 1 << 2;
pub const FUSE_ATOMIC_O_TRUNC: u64 = 1 << 3;
pub const FUSE_EXPORT_SUPPORT: u64 = 1 << 4;
pub const FUSE_BIG_WRITES: u64 = 1 << 5;
pub const FUSE_DONT_MASK: u64 = 1 << 6;
pub const FUSE_SPLICE_WRITE: u64 = 1 << 7;
pub const FUSE_SPLICE_MOVE: u64 = 1 << 8;
pub const FUSE_SPLICE_READ: u64 = 1 << 9;
pub const FUSE_FLOCK_LOCKS: u64 = 1 << 10;
pub const FUSE_HAS_IOCTL_DIR: u64 = 1 << 11;
pub const FUSE_AUTO_INVAL_DATA: u64 = 1 << 12;
pub const FUSE_DO_READDIRPLUS: u64 = 1 << 13;
pub const FUSE_READDIRPLUS_AUTO: u64 = 1 << 14;
pub const FUSE_ASYNC_DIO: u64 = 1 << 15;
pub const FUSE_WRITEBACK_CACHE: u64 = 1 << 16;
pub const FUSE_NO_OPEN_SUPPORT: u64 = 1 << 17;
pub const FUSE_PARALLEL_DIROPS: u64 = 1 << 18;
pub const FUSE_HANDLE_KILLPRIV: u64 = 1 << 19;
pub const FUSE_POSIX_ACL: u64 = 1 << 20;
pub const FUSE_ABORT_ERROR: u64 = 1 << 21;
pub const FUSE_MAX_PAGES: u64 = 1 << 22;
pub const FUSE_CACHE_SYMLINKS: u64 = 1 << 23;
pub const FUSE_NO_OPENDIR_SUPPORT: u64 = 1 << 24;
pub const FUSE_EXPLICIT_INVAL_DATA: u64 = 1 << 25;
pub const FUSE_MAP_ALIGNMENT: u64 = 1 << 26;
pub const FUSE_SUBMOUNTS: u64 = 1 << 27;
pub const FUSE_HANDLE_KILLPRIV_V2: u64 = 1 << 28;
pub const FUSE_SETXATTR_EXT: u64 = 1 << 29;
pub const FUSE_INIT_EXT: u64 = 1 << 30;
pub const FUSE_INIT_RESERVED: u64 = 1 << 31;
pub const FUSE_SECURITY_CTX: u64 = 1 << 32;
pub const FUSE_HAS_INODE_DAX: u64 = 1 << 33;
pub const FUSE_CREATE_SUPP_GROUP: u64 = 1 << 34;
pub const FUSE_HAS_EXPIRE_ONLY: u64 = 1 << 35;
pub const FUSE_DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
pub const FUSE_PASSTHROUGH: u64 = 1 << 37;
pub const FUSE_NO_EXPORT_SUPPORT: u64 = 1 << 38;
pub const FUSE_HAS_RESEND: u64 = 1 << 39;
pub const FUSE_ALLOW_IDMAP: u64 = 1 << 40;
pub const FUSE_OVER_IO_URING: u64 = 1 << 41;
pub const FUSE_REQUEST_TIMEOUT: u64 = 1 << 42;

// Open reply flags (fuse_open_out.open_flags).
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_NONSEEKABLE: u32 = 1 << 2;
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
pub const FOPEN_STREAM: u32 = 1 << 4;
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
pub const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// fuse_getattr_in.getattr_flags: `fh` is valid.
pub const FUSE_GETATTR_FH: u32 = 1 << 0;

/// The deepest filesystem stack the kernel accepts (FILESYSTEM_MAX_STACK_DEPTH); a passthrough
/// INIT reply with a larger `max_stack_depth` silently disables passthrough.
pub const FILESYSTEM_MAX_STACK_DEPTH: u32 = 2;

// Device ioctls (FUSE_DEV_IOC_MAGIC = 229).
const FUSE_DEV_IOC_MAGIC: u8 = 229;
/// The platform's ioctl request number type.
pub type IoctlRequest = nix::sys::ioctl::ioctl_num_type;
/// `_IOR(229, 0, uint32_t)`: bind a fresh /dev/fuse file to an existing connection.
pub const FUSE_DEV_IOC_CLONE: IoctlRequest = nix::request_code_read!(FUSE_DEV_IOC_MAGIC, 0, 4);
/// `_IOW(229, 1, struct fuse_backing_map)`: register a backing file; returns its id (7.40).
pub const FUSE_DEV_IOC_BACKING_OPEN: IoctlRequest =
    nix::request_code_write!(FUSE_DEV_IOC_MAGIC, 1, size_of::<fuse_backing_map>());
/// `_IOW(229, 2, uint32_t)`: drop a backing file id (7.40).
pub const FUSE_DEV_IOC_BACKING_CLOSE: IoctlRequest =
    nix::request_code_write!(FUSE_DEV_IOC_MAGIC, 2, 4);

/// Derives shared by every ABI struct: checked conversion from and to bytes.
macro_rules! abi_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[allow(non_camel_case_types)]
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name { $($(#[$fmeta])* pub $field: $ty),* }
    };
}

abi_struct!(
    pub struct fuse_in_header {
        len: u32,
        opcode: u32,
        unique: u64,
        nodeid: u64,
        uid: u32,
        gid: u32,
        pid: u32,
        /// Length of request extensions in 8-byte units (7.38); they follow the arguments.
        total_extlen: u16,
        padding: u16,
    }
);

abi_struct!(
    pub struct fuse_out_header {
        len: u32,
        error: i32,
        unique: u64,
    }
);

abi_struct!(
    pub struct fuse_attr {
        ino: u64,
        size: u64,
        blocks: u64,
        atime: u64,
        mtime: u64,
        ctime: u64,
        atimensec: u32,
        mtimensec: u32,
        ctimensec: u32,
        mode: u32,
        nlink: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        blksize: u32,
        flags: u32,
    }
);

abi_struct!(
    pub struct fuse_kstatfs {
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
        padding: u32,
        spare: [u32; 6],
    }
);

abi_struct!(
    pub struct fuse_entry_out {
        nodeid: u64,
        generation: u64,
        entry_valid: u64,
        attr_valid: u64,
        entry_valid_nsec: u32,
        attr_valid_nsec: u32,
        attr: fuse_attr,
    }
);

abi_struct!(
    pub struct fuse_forget_in {
        nlookup: u64,
    }
);
abi_struct!(
    pub struct fuse_forget_one {
        nodeid: u64,
        nlookup: u64,
    }
);
abi_struct!(
    pub struct fuse_batch_forget_in {
        count: u32,
        dummy: u32,
    }
);
abi_struct!(
    pub struct fuse_getattr_in {
        getattr_flags: u32,
        dummy: u32,
        fh: u64,
    }
);
abi_struct!(
    pub struct fuse_attr_out {
        attr_valid: u64,
        attr_valid_nsec: u32,
        dummy: u32,
        attr: fuse_attr,
    }
);
abi_struct!(
    pub struct fuse_open_in {
        flags: u32,
        open_flags: u32,
    }
);
abi_struct!(
    pub struct fuse_create_in {
        flags: u32,
        mode: u32,
        umask: u32,
        open_flags: u32,
    }
);
abi_struct!(
    pub struct fuse_open_out {
        fh: u64,
        open_flags: u32,
        /// Backing file id from FUSE_DEV_IOC_BACKING_OPEN when FOPEN_PASSTHROUGH is set (7.40).
        backing_id: i32,
    }
);
abi_struct!(
    pub struct fuse_release_in {
        fh: u64,
        flags: u32,
        release_flags: u32,
        lock_owner: u64,
    }
);
abi_struct!(
    pub struct fuse_flush_in {
        fh: u64,
        unused: u32,
        padding: u32,
        lock_owner: u64,
    }
);
abi_struct!(
    pub struct fuse_read_in {
        fh: u64,
        offset: u64,
        size: u32,
        read_flags: u32,
        lock_owner: u64,
        flags: u32,
        padding: u32,
    }
);
abi_struct!(
    pub struct fuse_write_in {
        fh: u64,
        offset: u64,
        size: u32,
        write_flags: u32,
        lock_owner: u64,
        flags: u32,
        padding: u32,
    }
);
abi_struct!(
    pub struct fuse_statfs_out {
        st: fuse_kstatfs,
    }
);
abi_struct!(
    pub struct fuse_getxattr_in {
        size: u32,
        padding: u32,
    }
);
abi_struct!(
    pub struct fuse_getxattr_out {
        size: u32,
        padding: u32,
    }
);
abi_struct!(
    pub struct fuse_access_in {
        mask: u32,
        padding: u32,
    }
);
abi_struct!(
    pub struct fuse_interrupt_in {
        unique: u64,
    }
);

abi_struct!(
    /// The INIT request. Kernels before 7.36 send only the first 16 bytes.
    pub struct fuse_init_in {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
        flags2: u32,
        unused: [u32; 11],
    }
);
/// Size of the INIT request body sent by kernels that predate FUSE_INIT_EXT.
pub const FUSE_COMPAT_INIT_IN_SIZE: usize = 16;

abi_struct!(
    pub struct fuse_init_out {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
        max_background: u16,
        congestion_threshold: u16,
        max_write: u32,
        time_gran: u32,
        max_pages: u16,
        map_alignment: u16,
        flags2: u32,
        /// Depth of filesystem stacking allowed on passthrough backing files (7.40).
        max_stack_depth: u32,
        /// Request timeout in seconds (7.43); zero leaves timeouts off.
        request_timeout: u16,
        unused: [u16; 11],
    }
);
/// INIT reply length understood by protocol minors 5..=22.
pub const FUSE_COMPAT_22_INIT_OUT_SIZE: usize = 24;
/// INIT reply length understood by protocol minors below 5.
pub const FUSE_COMPAT_INIT_OUT_SIZE: usize = 8;

abi_struct!(
    pub struct fuse_dirent {
        ino: u64,
        off: u64,
        namelen: u32,
        r#type: u32,
    }
);
abi_struct!(
    pub struct fuse_direntplus_header {
        entry_out: fuse_entry_out,
        dirent: fuse_dirent,
    }
);

abi_struct!(
    pub struct fuse_notify_inval_inode_out {
        ino: u64,
        off: i64,
        len: i64,
    }
);
abi_struct!(
    pub struct fuse_notify_inval_entry_out {
        parent: u64,
        namelen: u32,
        flags: u32,
    }
);
abi_struct!(
    pub struct fuse_notify_store_out {
        nodeid: u64,
        offset: u64,
        size: u32,
        padding: u32,
    }
);

abi_struct!(
    /// Argument of FUSE_DEV_IOC_BACKING_OPEN (7.40).
    pub struct fuse_backing_map {
        fd: i32,
        flags: u32,
        padding: u64,
    }
);

/// Rounds a variable-length record (directory entries) up to the kernel's 8-byte alignment.
pub const fn fuse_rec_align(len: usize) -> usize {
    (len + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes from the C header; a mismatch means a transcription error that the kernel would reject.
    #[test]
    fn struct_sizes_match_the_kernel_header() {
        assert_eq!(size_of::<fuse_in_header>(), 40);
        assert_eq!(size_of::<fuse_out_header>(), 16);
        assert_eq!(size_of::<fuse_attr>(), 88);
        assert_eq!(size_of::<fuse_entry_out>(), 128);
        assert_eq!(size_of::<fuse_attr_out>(), 104);
        assert_eq!(size_of::<fuse_kstatfs>(), 80);
        assert_eq!(size_of::<fuse_open_out>(), 16);
        assert_eq!(size_of::<fuse_read_in>(), 40);
        assert_eq!(size_of::<fuse_write_in>(), 40);
        assert_eq!(size_of::<fuse_release_in>(), 24);
        assert_eq!(size_of::<fuse_init_in>(), 64);
        assert_eq!(size_of::<fuse_init_out>(), 64);
        assert_eq!(size_of::<fuse_dirent>(), 24);
        assert_eq!(size_of::<fuse_direntplus_header>(), 152);
        assert_eq!(size_of::<fuse_notify_inval_inode_out>(), 24);
        assert_eq!(size_of::<fuse_notify_inval_entry_out>(), 16);
        assert_eq!(size_of::<fuse_notify_store_out>(), 24);
        assert_eq!(size_of::<fuse_backing_map>(), 16);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        assert_eq!(FUSE_DEV_IOC_CLONE, 0x8004_e500);
        assert_eq!(FUSE_DEV_IOC_BACKING_OPEN, 0x4010_e501);
        assert_eq!(FUSE_DEV_IOC_BACKING_CLOSE, 0x4004_e502);
    }

    #[test]
    fn record_alignment_rounds_to_eight() {
        assert_eq!(fuse_rec_align(0), 0);
        assert_eq!(fuse_rec_align(1), 8);
        assert_eq!(fuse_rec_align(24 + 5), 32);
        assert_eq!(fuse_rec_align(32), 32);
    }
}
