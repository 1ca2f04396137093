//! The [`Filesystem`] trait a server implements, and the directory fillers its readdir handlers write into.
//!
//! The trait is read-only by construction: every operation that would modify the tree is answered by the
//! transport with EROFS and never reaches the filesystem. Handlers return `Result<_, Errno>`; turning that
//! into a reply (including the getxattr size probe and ERANGE rules) is the transport's job, done in one
//! place in `dispatch`.

use crate::abi;
use crate::negotiate::Negotiated;
use crate::types::{AttrOut, EntryOut, Errno, OpenOut, RequestCtx, StatfsOut};
use zerocopy::IntoBytes;

/// A read-only filesystem served over FUSE. Handlers run concurrently on the session's worker threads.
pub trait Filesystem: Send + Sync + 'static {
    /// Called once INIT is answered (or, on resume, before workers start) with what was agreed.
    fn init(&self, _negotiated: &Negotiated) {}

    /// Called once when the connection ends by unmount or abort; not when a session is stopped for a
    /// hand-over, because the mount lives on.
    fn destroy(&self) {}

    fn lookup(&self, ctx: &RequestCtx, parent: u64, name: &[u8]) -> Result<EntryOut, Errno>;

    /// The kernel dropped `nlookup` references to `ino` (FORGET and each item of BATCH_FORGET).
    fn forget(&self, _ino: u64, _nlookup: u64) {}

    /// `fh` is set when the kernel asks about an open file (fstat).
    fn getattr(&self, ctx: &RequestCtx, ino: u64, fh: Option<u64>) -> Result<AttrOut, Errno>;

    fn readlink(&self, _ctx: &RequestCtx, _ino: u64) -> Result<Vec<u8>, Errno> {
        Err(Errno::EINVAL)
    }

    fn open(&self, _ctx: &RequestCtx, _ino: u64, _flags: u32) -> Result<OpenOut, Errno> {
        Ok(OpenOut::default())
    }

    /// Fill `buf` (its length is the requested size, clamped to the connection's maximum) and return how
    /// many bytes are valid; fewer than requested means end of file. The transport replies with that
    /// prefix straight from `buf`.
    fn read(
        &self,
        ctx: &RequestCtx,
        ino: u64,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno>;

    fn release(&self, _ctx: &RequestCtx, _ino: u64, _fh: u64, _flags: u32) {}

    /// Not called when the connection agreed on [`crate::SessionConfig::stateless_dirs`].
    fn opendir(&self, _ctx: &RequestCtx, _ino: u64, _flags: u32) -> Result<OpenOut, Errno> {
        Ok(OpenOut::default())
    }

    /// Push entries starting after `offset` (0 = from the start) until `push` returns false.
    fn readdir(
        &self,
        ctx: &RequestCtx,
        ino: u64,
        fh: u64,
        offset: u64,
        out: &mut DirFiller,
    ) -> Result<(), Errno>;

    /// Like readdir with attributes. Each pushed entry with a non-zero inode number (other than "." and
    /// "..") counts as one lookup the kernel will FORGET.
    fn readdirplus(
        &self,
        _ctx: &RequestCtx,
        _ino: u64,
        _fh: u64,
        _offset: u64,
        _out: &mut DirPlusFiller,
    ) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }

    fn releasedir(&self, _ctx: &RequestCtx, _ino: u64, _fh: u64) {}

    fn statfs(&self, _ctx: &RequestCtx, _ino: u64) -> Result<StatfsOut, Errno> {
        Ok(StatfsOut {
            bsize: 4096,
            frsize: 4096,
            namelen: 255,
            ..StatfsOut::default()
        })
    }

    /// Return the whole value; the transport implements the size probe and ERANGE. ENOSYS makes the
    /// kernel stop asking for the lifetime of the mount.
    fn getxattr(&self, _ctx: &RequestCtx, _ino: u64, _name: &[u8]) -> Result<Vec<u8>, Errno> {
        Err(Errno::ENOSYS)
    }

    /// Return all names, each NUL-terminated; the transport implements the size probe and ERANGE.
    fn listxattr(&self, _ctx: &RequestCtx, _ino: u64) -> Result<Vec<u8>, Errno> {
        Err(Errno::ENOSYS)
    }

    /// ENOSYS makes the kernel grant every later access check itself (or rely on default_permissions).
    fn access(&self, _ctx: &RequestCtx, _ino: u64, _mask: u32) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
}

/// The kernel rejects a directory entry with an empty name or one longer than this (FUSE_NAME_MAX).
const FUSE_NAME_MAX: usize = 1024;

/// Checks a directory entry name the kernel would otherwise reject with EIO for the whole listing, and
/// logs the ones that get skipped.
fn valid_entry_name(ino: u64, name: &[u8]) -> bool {
    let valid = !name.is_empty()
        && name.len() <= FUSE_NAME_MAX
        && !name.contains(&b'/')
        && !name.contains(&0);
    if !valid {
        tracing::warn!(ino, name = %String::from_utf8_lossy(name), "skipping directory entry with an invalid name");
    }
    valid
}

/// Appends `header` + `name` + zero padding to `buf` if the aligned record fits within `capacity`.
fn push_record(buf: &mut Vec<u8>, capacity: usize, header: &[u8], name: &[u8]) -> bool {
    let record = abi::fuse_rec_align(header.len() + name.len());
    if buf.len() + record > capacity {
        return false;
    }
    let start = buf.len();
    buf.extend_from_slice(header);
    buf.extend_from_slice(name);
    buf.resize(start + record, 0);
    true
}

/// Collects READDIR entries into the reply buffer, never beyond the size the kernel asked for.
#[derive(Debug)]
pub struct DirFiller {
    buf: Vec<u8>,
    capacity: usize,
}

impl DirFiller {
    pub(crate) fn new(capacity: usize) -> Self {
        DirFiller {
            buf: Vec::with_capacity(capacity.min(64 * 1024)),
            capacity,
        }
    }

    /// Adds one entry. `next_offset` is the offset the kernel passes back to continue after this entry;
    /// `file_type` is a `DT_*` value. Returns false (entry not added) when the buffer is full. An invalid
    /// name (empty, too long, containing '/' or NUL) is skipped with a warning, since the kernel would fail
    /// the whole listing over it.
    pub fn push(&mut self, ino: u64, next_offset: u64, file_type: u32, name: &[u8]) -> bool {
        if !valid_entry_name(ino, name) {
            return true;
        }
        let dirent = abi::fuse_dirent {
            ino,
            off: next_offset,
            namelen: name.len() as u32,
            r#type: file_type,
        };
        push_record(&mut self.buf, self.capacity, dirent.as_bytes(), name)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Collects READDIRPLUS entries (entry attributes + dirent) into the reply buffer.
#[derive(Debug)]
pub struct DirPlusFiller {
    buf: Vec<u8>,
    capacity: usize,
}

impl DirPlusFiller {
    pub(crate) fn new(capacity: usize) -> Self {
        DirPlusFiller {
            buf: Vec::with_capacity(capacity.min(64 * 1024)),
            capacity,
        }
    }

    /// Adds one entry; the `DT_*` type is derived from `entry.attr.mode`. Returns false (entry not added)
    /// when the buffer is full. Invalid names are skipped as in [`DirFiller::push`].
    pub fn push(&mut self, entry: &EntryOut, next_offset: u64, name: &[u8]) -> bool {
        if !valid_entry_name(entry.ino, name) {
            return true;
        }
        let header = abi::fuse_direntplus_header {
            entry_out: entry.to_abi(),
            dirent: abi::fuse_dirent {
                ino: entry.attr.ino,
                off: next_offset,
                namelen: name.len() as u32,
                r#type: (entry.attr.mode & libc::S_IFMT) >> 12,
            },
        };
        push_record(&mut self.buf, self.capacity, header.as_bytes(), name)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Attr;
    use std::time::Duration;
    use zerocopy::FromBytes;

    #[test]
    fn dir_filler_encodes_aligned_dirents() {
        let mut filler = DirFiller::new(4096);
        assert!(filler.push(7, 1, libc::DT_REG as u32, b"abc"));
        let mut expected = Vec::new();
        expected.extend_from_slice(&7u64.to_ne_bytes());
        expected.extend_from_slice(&1u64.to_ne_bytes());
        expected.extend_from_slice(&3u32.to_ne_bytes());
        expected.extend_from_slice(&(libc::DT_REG as u32).to_ne_bytes());
        expected.extend_from_slice(b"abc\0\0\0\0\0");
        assert_eq!(filler.bytes(), &expected[..]);
    }

    #[test]
    fn dir_filler_refuses_entries_beyond_capacity() {
        // One entry with a 1..=8 byte name takes 32 bytes.
        let mut filler = DirFiller::new(40);
        assert!(filler.push(1, 1, 4, b"a"));
        assert!(!filler.push(2, 2, 4, b"b"));
        assert_eq!(filler.bytes().len(), 32);
    }

    #[test]
    fn dir_filler_skips_invalid_names() {
        let mut filler = DirFiller::new(4096);
        assert!(filler.push(1, 1, 4, b""));
        assert!(filler.push(1, 1, 4, b"a/b"));
        assert!(filler.is_empty());
    }

    #[test]
    fn dirplus_filler_derives_type_and_aligns() {
        let entry = EntryOut {
            ino: 5,
            generation: 1,
            attr: Attr {
                ino: 5,
                mode: libc::S_IFDIR | 0o755,
                ..Attr::default()
            },
            entry_valid: Duration::from_secs(1),
            attr_valid: Duration::from_secs(2),
        };
        let mut filler = DirPlusFiller::new(4096);
        assert!(filler.push(&entry, 3, b"dir"));
        let bytes = filler.bytes();
        assert_eq!(bytes.len(), 152 + 8);
        assert_eq!(u64::from_ne_bytes(bytes[0..8].try_into().unwrap()), 5);
        // dirent.type sits at 128 + 20.
        assert_eq!(
            u32::from_ne_bytes(bytes[148..152].try_into().unwrap()),
            libc::DT_DIR as u32
        );
        assert_eq!(&bytes[152..160], b"dir\0\0\0\0\0");
        let mut tiny = DirPlusFiller::new(100);
        assert!(!tiny.push(&entry, 3, b"dir"));
    }

    proptest::proptest! {
        /// The filler never exceeds the kernel's requested size, and every accepted entry decodes back.
        #[test]
        fn dir_filler_respects_capacity_and_round_trips(
            capacity in 0usize..600,
            names in proptest::collection::vec("[a-z]{1,40}", 0..30),
        ) {
            let mut filler = DirFiller::new(capacity);
            let mut accepted = Vec::new();
            for (i, name) in names.iter().enumerate() {
                if !filler.push(i as u64 + 10, i as u64 + 1, 8, name.as_bytes()) {
                    break;
                }
                accepted.push(name.clone());
            }
            let bytes = filler.into_bytes();
            proptest::prop_assert!(bytes.len() <= capacity);
            let mut rest = &bytes[..];
            for (i, name) in accepted.iter().enumerate() {
                let (dirent, after) = abi::fuse_dirent::read_from_prefix(rest).unwrap();
                proptest::prop_assert_eq!(dirent.ino, i as u64 + 10);
                let namelen = dirent.namelen as usize;
                proptest::prop_assert_eq!(&after[..namelen], name.as_bytes());
                rest = &rest[abi::fuse_rec_align(24 + namelen)..];
            }
            proptest::prop_assert!(rest.is_empty());
        }
    }
}
