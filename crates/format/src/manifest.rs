//! Read-side view of a manifest: zero-copy over the bytes (a `Vec<u8>` or an mmap), validated once in
//! [`Manifest::parse`], then answered by direct indexing and binary search. The core resolves every FUSE
//! lookup/getattr/readdir/read through these accessors, so they never allocate.

use std::ops::Range;

use crate::annotation;
use crate::ids::{ContentId, Digest, FileKind, ImageId, Ino, InodeAttr};
use crate::records::*;
use crate::validate::{table, validate, SectionRanges};
use crate::FormatError;

/// A validated manifest.
pub struct Manifest<B: AsRef<[u8]>> {
    buf: B,
    sections: SectionRanges,
}

impl<B: AsRef<[u8]>> std::fmt::Debug for Manifest<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("bytes", &self.buf.as_ref().len())
            .field("inodes", &self.inode_count())
            .field("chunks", &self.chunks().len())
            .field("blobs", &self.blobs().len())
            .finish()
    }
}

impl<B: AsRef<[u8]>> Manifest<B> {
    /// Validates `buf` completely (O(size)) and wraps it. See [`crate::validate`] for the rules.
    pub fn parse(buf: B) -> Result<Self, FormatError> {
        let sections = validate(buf.as_ref())?;
        Ok(Manifest { buf, sections })
    }

    /// The image identity: BLAKE3 of the manifest bytes (computed on each call).
    pub fn image_id(&self) -> ImageId {
        ImageId(Digest::of(self.buf.as_ref()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    pub fn into_inner(self) -> B {
        self.buf
    }

    fn section(&self, s: Section) -> &[u8] {
        &self.buf.as_ref()[self.sections[s as usize].clone()]
    }

    fn inodes(&self) -> &[InodeRecord] {
        table(self.section(Section::Inodes))
    }

    fn dirents(&self) -> &[DirentRecord] {
        table(self.section(Section::Dirents))
    }

    fn xattr_records(&self) -> &[XattrRecord] {
        table(self.section(Section::Xattrs))
    }

    fn strings(&self) -> &[u8] {
        self.section(Section::Strings)
    }

    fn string(&self, off: u64, len: u32) -> &[u8] {
        // Bounds were validated; `get` keeps this panic-free regardless.
        let start = off as usize;
        self.strings()
            .get(start..start + len as usize)
            .unwrap_or(&[])
    }

    fn inode(&self, ino: Ino) -> Option<&InodeRecord> {
        let index = ino.0.checked_sub(1)?;
        self.inodes().get(usize::try_from(index).ok()?)
    }

    fn inode_of_kind(&self, ino: Ino, kind: FileKind) -> Option<&InodeRecord> {
        self.inode(ino).filter(|r| r.kind == kind as u8)
    }

    pub fn inode_count(&self) -> u64 {
        self.inodes().len() as u64
    }

    pub fn attr(&self, ino: Ino) -> Option<InodeAttr> {
        let r = self.inode(ino)?;
        Some(InodeAttr {
            ino,
            kind: FileKind::from_code(r.kind)?,
            mode: r.mode.get(),
            uid: r.uid.get(),
            gid: r.gid.get(),
            nlink: r.nlink.get(),
            size: r.size.get(),
            mtime_sec: r.mtime_sec.get(),
            mtime_nsec: r.mtime_nsec.get(),
            rdev: r.rdev.get(),
            content: r.content(),
        })
    }

    /// The content digest of a regular file.
    pub fn content(&self, ino: Ino) -> Option<ContentId> {
        self.inode_of_kind(ino, FileKind::Regular)
            .map(InodeRecord::content)
    }

    /// The parent of a directory; the root's parent is the root. `None` for non-directories.
    pub fn parent(&self, ino: Ino) -> Option<Ino> {
        self.inode_of_kind(ino, FileKind::Directory)
            .map(|r| Ino(r.parent.get()))
    }

    fn entries(&self, dir: Ino) -> &[DirentRecord] {
        match self.inode_of_kind(dir, FileKind::Directory) {
            Some(r) => {
                let start = r.data_start.get() as usize;
                self.dirents()
                    .get(start..start + r.data_len.get() as usize)
                    .unwrap_or(&[])
            }
            None => &[],
        }
    }

    /// Finds `name` in directory `dir` (binary search; entries are sorted by name bytes).
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Option<Ino> {
        let entries = self.entries(dir);
        entries
            .binary_search_by(|e| self.string(e.name_off.get(), e.name_len.get()).cmp(name))
            .ok()
            .map(|i| Ino(entries[i].ino.get()))
    }

    /// Number of entries in a directory (excluding "." and ".."); 0 for non-directories.
    pub fn dir_len(&self, dir: Ino) -> usize {
        self.entries(dir).len()
    }

    /// Entry `index` of a directory in name order, for readdir offsets.
    pub fn dir_entry(&self, dir: Ino, index: usize) -> Option<(&[u8], Ino)> {
        let e = self.entries(dir).get(index)?;
        Some((
            self.string(e.name_off.get(), e.name_len.get()),
            Ino(e.ino.get()),
        ))
    }

    pub fn symlink_target(&self, ino: Ino) -> Option<&[u8]> {
        let r = self.inode_of_kind(ino, FileKind::Symlink)?;
        Some(self.string(r.data_start.get(), r.data_len.get() as u32))
    }

    fn xattr_slice(&self, ino: Ino) -> &[XattrRecord] {
        match self.inode(ino) {
            Some(r) => {
                let start = r.xattr_start.get() as usize;
                self.xattr_records()
                    .get(start..start + r.xattr_count.get() as usize)
                    .unwrap_or(&[])
            }
            None => &[],
        }
    }

    /// Extended attributes of an inode as (name, value), sorted by name.
    pub fn xattrs(&self, ino: Ino) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.xattr_slice(ino).iter().map(|x| {
            (
                self.string(x.name_off.get(), x.name_len.get()),
                self.string(x.value_off.get(), x.value_len.get()),
            )
        })
    }

    pub fn xattr(&self, ino: Ino, name: &[u8]) -> Option<&[u8]> {
        let xs = self.xattr_slice(ino);
        let i = xs
            .binary_search_by(|x| self.string(x.name_off.get(), x.name_len.get()).cmp(name))
            .ok()?;
        Some(self.string(xs[i].value_off.get(), xs[i].value_len.get()))
    }

    /// The chunk map of a regular file: sorted by `file_offset`, contiguous, covering `[0, size)`.
    /// Empty for anything else.
    pub fn file_chunks(&self, ino: Ino) -> &[FileChunk] {
        match self.inode_of_kind(ino, FileKind::Regular) {
            Some(r) => {
                let start = r.data_start.get() as usize;
                table::<FileChunk>(self.section(Section::FileChunks))
                    .get(start..start + r.data_len.get() as usize)
                    .unwrap_or(&[])
            }
            None => &[],
        }
    }

    /// Indices into `file_chunks(ino)` of the chunks covering `[offset, offset + len)`, clamped to the file
    /// size. An empty range (at 0) when nothing is covered.
    pub fn chunk_range(&self, ino: Ino, offset: u64, len: u64) -> Range<usize> {
        let Some(r) = self.inode_of_kind(ino, FileKind::Regular) else {
            return 0..0;
        };
        let end = offset.saturating_add(len).min(r.size.get());
        if offset >= end {
            return 0..0;
        }
        let fcs = self.file_chunks(ino);
        // The first chunk starts at 0 <= offset, so the partition point is at least 1.
        let first = fcs.partition_point(|fc| fc.file_offset() <= offset) - 1;
        let last = fcs.partition_point(|fc| fc.file_offset() < end);
        first..last
    }

    /// Chunk record `index`. Panics if out of range; indices from `file_chunks` are always in range.
    pub fn chunk(&self, index: u32) -> &ChunkRecord {
        &self.chunks()[index as usize]
    }

    pub fn chunks(&self) -> &[ChunkRecord] {
        table(self.section(Section::Chunks))
    }

    /// Blob record `index`. Panics if out of range; indices from chunk records are always in range.
    pub fn blob(&self, index: u32) -> &BlobRecord {
        &self.blobs()[index as usize]
    }

    pub fn blobs(&self) -> &[BlobRecord] {
        table(self.section(Section::Blobs))
    }

    /// The value of annotation `key`, borrowed from the manifest bytes.
    pub fn annotation(&self, key: &str) -> Option<&[u8]> {
        // Linear with an early stop: entries are sorted and few (at most `annotation::COUNT_MAX`), and their
        // variable length rules out indexing for a binary search.
        self.annotations()
            .take_while(|&(k, _)| k <= key)
            .find(|&(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// All annotations as (key, value), in key byte order, borrowed from the manifest bytes.
    pub fn annotations(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        annotation::Entries::new(self.section(Section::Annotations))
    }

    /// Prefetch hints (may be empty).
    pub fn prefetch(&self) -> &[PrefetchEntry] {
        table(self.section(Section::Prefetch))
    }

    /// The inode at `path` (relative to the root, `/`-separated; empty components are skipped), without
    /// following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Option<Ino> {
        let mut ino = Ino(1);
        for name in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            ino = self.lookup(ino, name)?;
        }
        Some(ino)
    }

    /// The bytes of this manifest with its prefetch section replaced by `entries` (everything else, annotations
    /// included, byte for byte the same, so every blob stays shared): a new, validated manifest and hence a
    /// new image identity.
    pub fn with_prefetch(&self, entries: &[PrefetchEntry]) -> Result<Vec<u8>, FormatError> {
        use zerocopy::{FromBytes, IntoBytes};
        let buf = self.buf.as_ref();
        // Prefetch is the last section, so everything before its start is kept as it is.
        let start = self.sections[Section::Prefetch as usize].start;
        let mut out = buf[..start].to_vec();
        out.extend_from_slice(entries.as_bytes());
        out.resize(crate::validate::align8(out.len() as u64) as usize, 0);
        let total = out.len() as u64;
        let (header, _) = Header::mut_from_prefix(&mut out)
            .map_err(|_| FormatError::writer("manifest header does not fit"))?;
        header.sections[Section::Prefetch as usize].len = (entries.as_bytes().len() as u64).into();
        header.total_len = total.into();
        Manifest::parse(out.as_slice())?;
        Ok(out)
    }

    /// Re-derives the invariants through the public accessors (every inode, entry, xattr, chunk, annotation
    /// and prefetch hint) and reports the first inconsistency. `parse` already guarantees all of this; the check
    /// exists for tests, the fuzzer and offline diagnosis (`O(size · log)`).
    pub fn self_check(&self) -> Result<(), FormatError> {
        let bad = |detail: String| Err(FormatError::Tree { detail });
        let count = self.inode_count();
        for n in 1..=count {
            let ino = Ino(n);
            let Some(a) = self.attr(ino) else {
                return bad(format!("inode {n} has no attributes"));
            };
            if FileKind::from_mode(a.mode) != Some(a.kind) {
                return bad(format!("inode {n}: mode/kind mismatch"));
            }
            let mut prev: Option<&[u8]> = None;
            for (name, value) in self.xattrs(ino) {
                if prev.is_some_and(|p| p >= name) || self.xattr(ino, name) != Some(value) {
                    return bad(format!("inode {n}: xattr {name:?} unsorted or not found"));
                }
                prev = Some(name);
            }
            match a.kind {
                FileKind::Directory => {
                    let Some(parent) = self.parent(ino) else {
                        return bad(format!("directory {n} has no parent"));
                    };
                    if parent.0 == 0 || parent.0 > count || (n == 1) != (parent == ino) {
                        return bad(format!("directory {n}: bad parent {parent}"));
                    }
                    for i in 0..self.dir_len(ino) {
                        let Some((name, child)) = self.dir_entry(ino, i) else {
                            return bad(format!("directory {n}: entry {i} missing"));
                        };
                        if self.lookup(ino, name) != Some(child) || self.attr(child).is_none() {
                            return bad(format!("directory {n}: entry {name:?} does not look up"));
                        }
                        if self.parent(child).is_some_and(|p| p != ino) {
                            return bad(format!("directory {n}: child {child} has another parent"));
                        }
                    }
                    if self.dir_entry(ino, self.dir_len(ino)).is_some() {
                        return bad(format!("directory {n}: entry past the end"));
                    }
                }
                FileKind::Regular => {
                    let mut off = 0u64;
                    for fc in self.file_chunks(ino) {
                        if fc.file_offset() != off
                            || fc.chunk_index() as usize >= self.chunks().len()
                        {
                            return bad(format!("file {n}: chunk map broken at {off}"));
                        }
                        let c = self.chunk(fc.chunk_index());
                        if c.blob_index() as usize >= self.blobs().len()
                            || c.stored_range().end > self.blob(c.blob_index()).size()
                        {
                            return bad(format!("file {n}: chunk outside its blob"));
                        }
                        off += u64::from(c.plain_len());
                    }
                    if off != a.size {
                        return bad(format!("file {n}: chunks cover {off} of {} bytes", a.size));
                    }
                    let all = self.chunk_range(ino, 0, u64::MAX);
                    if all.len() != self.file_chunks(ino).len() {
                        return bad(format!(
                            "file {n}: chunk_range of the whole file is {all:?}"
                        ));
                    }
                }
                FileKind::Symlink
                    if self.symlink_target(ino).map(|t| t.len() as u64) != Some(a.size) =>
                {
                    return bad(format!("symlink {n}: target length differs from size"));
                }
                _ => {}
            }
        }
        let mut prev: Option<&str> = None;
        let mut annotations = 0usize;
        for (key, value) in self.annotations() {
            annotations += 1;
            if prev.is_some_and(|p| p >= key)
                || annotation::check_key(key.as_bytes()).is_err()
                || value.len() > annotation::VALUE_MAX
                || self.annotation(key) != Some(value)
            {
                return bad(format!(
                    "annotation {}: invalid, unsorted or not found",
                    annotation::show_key(key.as_bytes())
                ));
            }
            prev = Some(key);
        }
        if annotations > annotation::COUNT_MAX {
            return bad(format!("{annotations} annotations"));
        }
        for (i, p) in self.prefetch().iter().enumerate() {
            if self
                .attr(p.ino())
                .is_none_or(|a| a.kind != FileKind::Regular)
            {
                return bad(format!(
                    "prefetch entry {i} names inode {} which is not a file",
                    p.ino()
                ));
            }
        }
        Ok(())
    }
}
