//! On-disk record layouts of the manifest, as zerocopy views.
//!
//! Every field is a fixed-width little-endian integer type from `zerocopy::byteorder`, whose alignment is 1, so
//! a slice of records can be viewed in place over any byte buffer (a `Vec<u8>` has no 8-byte alignment
//! guarantee); the format still places every section on an 8-byte boundary so that an mmap view is aligned
//! for readers that want native loads. Padding fields must be zero; the validator refuses anything else so that
//! one image has exactly one encoding.

use zerocopy::byteorder::little_endian::{I64, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::ids::{BlobId, ChunkId, ContentId, Digest, Ino};

/// "HYDRATE" + format marker byte.
pub const MAGIC: [u8; 8] = *b"HYDRATEM";
/// Bump whenever any byte of the encoding changes meaning (the golden test fails to remind you).
pub const VERSION: u32 = 2;
/// Number of sections listed in the header, in file order.
pub const SECTION_COUNT: usize = 9;

/// The sections of a manifest, in the order they appear in the file; the discriminant is the section's index in
/// the header's table. Prefetch stays last: [`crate::Manifest::with_prefetch`] rewrites the file from its start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Section {
    Blobs = 0,
    Chunks = 1,
    FileChunks = 2,
    Inodes = 3,
    Dirents = 4,
    Strings = 5,
    Xattrs = 6,
    Annotations = 7,
    Prefetch = 8,
}

impl Section {
    pub const ALL: [Section; SECTION_COUNT] = [
        Section::Blobs,
        Section::Chunks,
        Section::FileChunks,
        Section::Inodes,
        Section::Dirents,
        Section::Strings,
        Section::Xattrs,
        Section::Annotations,
        Section::Prefetch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Blobs => "blobs",
            Section::Chunks => "chunks",
            Section::FileChunks => "file-chunks",
            Section::Inodes => "inodes",
            Section::Dirents => "dirents",
            Section::Strings => "strings",
            Section::Xattrs => "xattrs",
            Section::Annotations => "annotations",
            Section::Prefetch => "prefetch",
        }
    }

    /// Size of one record; 1 for the byte-granular string table and annotations.
    pub fn record_size(self) -> usize {
        match self {
            Section::Blobs => size_of::<BlobRecord>(),
            Section::Chunks => size_of::<ChunkRecord>(),
            Section::FileChunks => size_of::<FileChunk>(),
            Section::Inodes => size_of::<InodeRecord>(),
            Section::Dirents => size_of::<DirentRecord>(),
            Section::Strings => 1,
            Section::Xattrs => size_of::<XattrRecord>(),
            Section::Annotations => 1,
            Section::Prefetch => size_of::<PrefetchEntry>(),
        }
    }
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct SectionEntry {
    pub offset: U64,
    pub len: U64,
}

/// The fixed header at offset 0.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: U32,
    /// No flags are defined; must be 0.
    pub flags: U32,
    /// Total manifest length, so truncation is reported as such rather than as a bad section.
    pub total_len: U64,
    pub sections: [SectionEntry; SECTION_COUNT],
}

pub const HEADER_LEN: usize = size_of::<Header>();

/// One blob of the store referenced by this image.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct BlobRecord {
    pub id: [u8; 32],
    pub size: U64,
}

impl BlobRecord {
    pub fn new(id: BlobId, size: u64) -> Self {
        BlobRecord {
            id: *id.as_bytes(),
            size: size.into(),
        }
    }

    pub fn id(&self) -> BlobId {
        BlobId::from_bytes(self.id)
    }

    pub fn size(&self) -> u64 {
        self.size.get()
    }
}

/// Chunk compression codes.
pub const COMPRESSION_NONE: u8 = 0;
pub const COMPRESSION_ZSTD: u8 = 1;

/// One distinct chunk of the image and where it is stored.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ChunkRecord {
    pub id: [u8; 32],
    /// Index into the blob table.
    pub blob: U32,
    pub compression: u8,
    pub pad: [u8; 3],
    pub blob_offset: U64,
    pub stored_len: U32,
    pub plain_len: U32,
}

impl ChunkRecord {
    pub fn new(
        id: ChunkId,
        blob_index: u32,
        compression: u8,
        blob_offset: u64,
        stored_len: u32,
        plain_len: u32,
    ) -> Self {
        ChunkRecord {
            id: *id.as_bytes(),
            blob: blob_index.into(),
            compression,
            pad: [0; 3],
            blob_offset: blob_offset.into(),
            stored_len: stored_len.into(),
            plain_len: plain_len.into(),
        }
    }

    pub fn id(&self) -> ChunkId {
        ChunkId::from_bytes(self.id)
    }

    pub fn blob_index(&self) -> u32 {
        self.blob.get()
    }

    pub fn compression(&self) -> u8 {
        self.compression
    }

    pub fn blob_offset(&self) -> u64 {
        self.blob_offset.get()
    }

    pub fn stored_len(&self) -> u32 {
        self.stored_len.get()
    }

    pub fn plain_len(&self) -> u32 {
        self.plain_len.get()
    }

    /// The byte range of the stored chunk inside its blob.
    pub fn stored_range(&self) -> std::ops::Range<u64> {
        let start = self.blob_offset();
        start..start.saturating_add(u64::from(self.stored_len()))
    }
}

/// One piece of a regular file: the chunk holding bytes `[file_offset, file_offset + plain_len)`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FileChunk {
    pub file_offset: U64,
    /// Index into the chunk table.
    pub chunk: U32,
    pub pad: U32,
}

impl FileChunk {
    pub fn new(file_offset: u64, chunk: u32) -> Self {
        FileChunk {
            file_offset: file_offset.into(),
            chunk: chunk.into(),
            pad: 0.into(),
        }
    }

    pub fn file_offset(&self) -> u64 {
        self.file_offset.get()
    }

    pub fn chunk_index(&self) -> u32 {
        self.chunk.get()
    }
}

/// A hint that a range of a file is read early (e.g. at container start). Reserved for prefetch.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct PrefetchEntry {
    pub ino: U64,
    pub offset: U64,
    pub len: U64,
}

impl PrefetchEntry {
    pub fn new(ino: Ino, offset: u64, len: u64) -> Self {
        PrefetchEntry {
            ino: ino.0.into(),
            offset: offset.into(),
            len: len.into(),
        }
    }

    pub fn ino(&self) -> Ino {
        Ino(self.ino.get())
    }

    pub fn offset(&self) -> u64 {
        self.offset.get()
    }

    pub fn len(&self) -> u64 {
        self.len.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One inode; inode `n` is record `n - 1`.
///
/// `data_start`/`data_len` depend on the kind: directories → range of the dirent table, regular files → range
/// of the file-chunk table, symlinks → offset/length of the target in the string table, others → 0/0.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct InodeRecord {
    pub kind: u8,
    pub pad: [u8; 3],
    pub mode: U32,
    pub uid: U32,
    pub gid: U32,
    pub nlink: U32,
    pub mtime_nsec: U32,
    pub size: U64,
    pub mtime_sec: I64,
    pub rdev: U64,
    /// Directories: the parent directory (the root's parent is the root). Others: 0.
    pub parent: U64,
    pub data_start: U64,
    pub data_len: U64,
    pub xattr_start: U64,
    pub xattr_count: U64,
    pub content: [u8; 32],
}

impl InodeRecord {
    pub fn content(&self) -> ContentId {
        ContentId(Digest(self.content))
    }
}

/// One directory entry: a name in the string table and the inode it names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct DirentRecord {
    pub name_off: U64,
    pub name_len: U32,
    pub pad: U32,
    pub ino: U64,
}

/// One extended attribute: name and value in the string table.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct XattrRecord {
    pub name_off: U64,
    pub value_off: U64,
    pub name_len: U32,
    pub value_len: U32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_are_fixed_and_8_byte_multiples() {
        // These sizes are part of the format: changing one needs a version bump.
        assert_eq!(HEADER_LEN, 168);
        assert_eq!(size_of::<BlobRecord>(), 40);
        assert_eq!(size_of::<ChunkRecord>(), 56);
        assert_eq!(size_of::<FileChunk>(), 16);
        assert_eq!(size_of::<InodeRecord>(), 120);
        assert_eq!(size_of::<DirentRecord>(), 24);
        assert_eq!(size_of::<XattrRecord>(), 24);
        assert_eq!(size_of::<PrefetchEntry>(), 24);
        for (i, s) in Section::ALL.into_iter().enumerate() {
            assert_eq!(s as usize, i, "discriminant is the header index");
            let bytes = matches!(s, Section::Strings | Section::Annotations);
            assert_eq!(s.record_size() % 8 == 0, !bytes);
        }
        assert_eq!(Section::ALL.last(), Some(&Section::Prefetch));
    }
}
