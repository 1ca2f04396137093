//! Validation of untrusted manifest bytes.
//!
//! A manifest comes from a store we do not control, so nothing is used before every rule below holds; after
//! that, the accessors of [`crate::Manifest`] can index without further checks. Rules (each refusal names the
//! section/inode/entry):
//! - header: magic, version (older versions are reported as retired: rebuild the image), no flags, total
//!   length equal to the buffer;
//! - sections: in fixed order, 8-byte aligned, no overlap, no gaps beyond zero padding to the next 8-byte
//!   boundary, within the buffer, lengths whole records;
//! - chunks: blob index in range, `blob_offset + stored_len` inside the blob, `1 <= plain_len <= CHUNK_MAX`,
//!   `stored_len <= plain_len`, known compression, raw chunks stored at their plain length;
//! - inodes: known kind agreeing with the mode's type bits, kind-specific fields zero where meaningless, the
//!   dirent/file-chunk/xattr ranges of inodes laid out contiguously in inode order (so every record belongs to
//!   exactly one inode), files' chunks contiguous from offset 0 and summing to the size, symlink targets and
//!   xattrs inside the string table;
//! - tree: inode numbers are assigned breadth-first (directories in inode order, entries in name order, a new
//!   inode takes the next number), which makes a cycle impossible and is checked in one pass without a visited
//!   set: each directory is reached exactly once from its recorded parent, hard links only to non-directories,
//!   every inode reachable, names valid and strictly sorted, nlink equal to the number of entries (directories:
//!   2 + subdirectories);
//! - annotations: whole entries, keys valid and strictly sorted, values and entry count within limits (see
//!   [`crate::annotation`]).
//!
//! Memory beyond the input: one hash map entry per extra hard link (each costs a 24-byte entry in the input).

use std::collections::HashMap;
use std::ops::Range;

use zerocopy::FromBytes;

use crate::annotation;
use crate::chunk::CHUNK_MAX;
use crate::ids::FileKind;
use crate::records::*;
use crate::FormatError;

/// Longest entry name (Linux NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target (Linux PATH_MAX - 1).
pub const SYMLINK_MAX: usize = 4095;
/// Longest xattr name (Linux XATTR_NAME_MAX).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest xattr value (Linux XATTR_SIZE_MAX).
pub const XATTR_VALUE_MAX: usize = 65536;

pub(crate) fn align8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// Byte ranges of the sections after a successful validation.
pub(crate) type SectionRanges = [Range<usize>; SECTION_COUNT];

pub(crate) fn table<T: FromBytes + zerocopy::Immutable + zerocopy::KnownLayout>(
    bytes: &[u8],
) -> &[T] {
    <[T]>::ref_from_bytes(bytes).unwrap_or(&[])
}

pub(crate) fn validate(buf: &[u8]) -> Result<SectionRanges, FormatError> {
    let sections = validate_layout(buf)?;
    let t = Tables {
        blobs: table(&buf[sections[Section::Blobs as usize].clone()]),
        chunks: table(&buf[sections[Section::Chunks as usize].clone()]),
        file_chunks: table(&buf[sections[Section::FileChunks as usize].clone()]),
        inodes: table(&buf[sections[Section::Inodes as usize].clone()]),
        dirents: table(&buf[sections[Section::Dirents as usize].clone()]),
        strings: &buf[sections[Section::Strings as usize].clone()],
        xattrs: table(&buf[sections[Section::Xattrs as usize].clone()]),
        prefetch: table(&buf[sections[Section::Prefetch as usize].clone()]),
    };
    t.check_chunks()?;
    t.check_inodes()?;
    t.check_tree()?;
    annotation::check_section(&buf[sections[Section::Annotations as usize].clone()])?;
    t.check_prefetch()?;
    Ok(sections)
}

fn validate_layout(buf: &[u8]) -> Result<SectionRanges, FormatError> {
    let too_short = || FormatError::TooShort {
        len: buf.len() as u64,
        need: HEADER_LEN as u64,
    };
    // Magic and version are read before the rest of the header, whose size depends on the version, so an
    // old manifest is reported as such even if it is shorter than this version's header.
    let (magic, rest) = buf.split_first_chunk::<8>().ok_or_else(too_short)?;
    let (version, _) = rest.split_first_chunk::<4>().ok_or_else(too_short)?;
    if *magic != MAGIC {
        return Err(FormatError::BadMagic { found: *magic });
    }
    match u32::from_le_bytes(*version) {
        VERSION => {}
        found if found < VERSION => {
            return Err(FormatError::RetiredVersion {
                found,
                supported: VERSION,
            })
        }
        found => {
            return Err(FormatError::UnsupportedVersion {
                found,
                supported: VERSION,
            })
        }
    }
    let (header, _) = Header::read_from_prefix(buf).map_err(|_| too_short())?;
    if header.flags.get() != 0 {
        return Err(FormatError::Header {
            detail: format!("unknown flags {:#x}", header.flags.get()),
        });
    }
    let total = buf.len() as u64;
    if header.total_len.get() != total {
        return Err(FormatError::LengthMismatch {
            header: header.total_len.get(),
            actual: total,
        });
    }
    let mut prev_end = HEADER_LEN as u64;
    let mut prev_name = "header";
    let mut out: SectionRanges = Default::default();
    for (section, entry) in Section::ALL.iter().copied().zip(header.sections.iter()) {
        let (off, len) = (entry.offset.get(), entry.len.get());
        let err = |detail: String| FormatError::section(section, detail);
        if off % 8 != 0 {
            return Err(err(format!("offset {off} is not 8-byte aligned")));
        }
        if off < prev_end {
            return Err(err(format!(
                "starts at {off}, overlapping the previous section which ends at {prev_end}"
            )));
        }
        if off != align8(prev_end) {
            return Err(err(format!(
                "starts at {off}, expected {} (no gaps allowed)",
                align8(prev_end)
            )));
        }
        let end = off
            .checked_add(len)
            .filter(|&e| e <= total)
            .ok_or_else(|| {
                err(format!(
                    "{len} bytes at offset {off} run past the end of the manifest ({total} bytes)"
                ))
            })?;
        if len % section.record_size() as u64 != 0 {
            return Err(err(format!(
                "length {len} is not a whole number of {}-byte records",
                section.record_size()
            )));
        }
        if buf[prev_end as usize..off as usize].iter().any(|&b| b != 0) {
            return Err(err(format!(
                "padding between the {prev_name} and this section is not zero"
            )));
        }
        out[section as usize] = off as usize..end as usize;
        prev_end = end;
        prev_name = section.name();
    }
    if align8(prev_end) != total {
        return Err(FormatError::Header {
            detail: format!(
                "{} bytes after the last section (expected only padding to {})",
                total - prev_end,
                align8(prev_end)
            ),
        });
    }
    if buf[prev_end as usize..].iter().any(|&b| b != 0) {
        return Err(FormatError::Header {
            detail: "trailing padding is not zero".into(),
        });
    }
    Ok(out)
}

struct Tables<'a> {
    blobs: &'a [BlobRecord],
    chunks: &'a [ChunkRecord],
    file_chunks: &'a [FileChunk],
    inodes: &'a [InodeRecord],
    dirents: &'a [DirentRecord],
    strings: &'a [u8],
    xattrs: &'a [XattrRecord],
    prefetch: &'a [PrefetchEntry],
}

/// `start..start+len` if it lies within `0..limit`.
fn sub_range(start: u64, len: u64, limit: usize) -> Option<Range<usize>> {
    let end = start.checked_add(len)?;
    (end <= limit as u64).then_some(start as usize..end as usize)
}

impl Tables<'_> {
    fn string(&self, off: u64, len: u32) -> Option<&[u8]> {
        sub_range(off, u64::from(len), self.strings.len()).map(|r| &self.strings[r])
    }

    fn check_chunks(&self) -> Result<(), FormatError> {
        for (i, c) in self.chunks.iter().enumerate() {
            let err = |detail: String| FormatError::Chunk {
                index: i as u64,
                detail: format!("{detail} (chunk {})", c.id()),
            };
            if c.pad != [0; 3] {
                return Err(err("padding is not zero".into()));
            }
            let blob = self.blobs.get(c.blob_index() as usize).ok_or_else(|| {
                err(format!(
                    "blob index {} out of range ({} blobs)",
                    c.blob_index(),
                    self.blobs.len()
                ))
            })?;
            let (plain, stored) = (c.plain_len(), c.stored_len());
            if plain == 0 || plain > CHUNK_MAX {
                return Err(err(format!("plain length {plain} outside 1..={CHUNK_MAX}")));
            }
            if stored == 0 || stored > plain {
                return Err(err(format!(
                    "stored length {stored} outside 1..={plain} (its plain length)"
                )));
            }
            match c.compression() {
                COMPRESSION_NONE if stored != plain => {
                    return Err(err(format!(
                        "uncompressed but stored length {stored} != plain length {plain}"
                    )))
                }
                COMPRESSION_NONE | COMPRESSION_ZSTD => {}
                other => return Err(err(format!("unknown compression code {other}"))),
            }
            let end = c.blob_offset().checked_add(u64::from(stored));
            if end.is_none_or(|e| e > blob.size()) {
                return Err(err(format!(
                    "{stored} bytes at offset {} run past the end of blob {} ({} bytes)",
                    c.blob_offset(),
                    blob.id(),
                    blob.size()
                )));
            }
        }
        Ok(())
    }

    fn check_inodes(&self) -> Result<(), FormatError> {
        if self.inodes.is_empty() {
            return Err(FormatError::section(Section::Inodes, "no root inode"));
        }
        let mut dirent_cursor = 0u64;
        let mut fc_cursor = 0u64;
        let mut xattr_cursor = 0u64;
        for (i, rec) in self.inodes.iter().enumerate() {
            let ino = i as u64 + 1;
            let err = |detail: String| FormatError::inode(ino, detail);
            if rec.pad != [0; 3] {
                return Err(err("padding is not zero".into()));
            }
            let kind = FileKind::from_code(rec.kind)
                .ok_or_else(|| err(format!("unknown kind code {}", rec.kind)))?;
            let mode = rec.mode.get();
            if FileKind::from_mode(mode) != Some(kind) {
                return Err(err(format!("mode {mode:#o} does not match kind {kind:?}")));
            }
            if rec.mtime_nsec.get() >= 1_000_000_000 {
                return Err(err(format!("mtime nanoseconds {} >= 1e9", rec.mtime_nsec)));
            }
            if kind != FileKind::Regular && !rec.content().0.is_zero() {
                return Err(err(format!("{kind:?} carries a content digest")));
            }
            if !matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) && rec.rdev.get() != 0
            {
                return Err(err(format!("{kind:?} carries a device number")));
            }
            if kind != FileKind::Directory && rec.parent.get() != 0 {
                return Err(err(format!("{kind:?} carries a parent")));
            }
            if kind != FileKind::Directory && rec.nlink.get() == 0 {
                return Err(err("nlink is 0".into()));
            }
            let (start, len) = (rec.data_start.get(), rec.data_len.get());
            match kind {
                FileKind::Directory => {
                    if rec.size.get() != 0 {
                        return Err(err(format!("directory size {} != 0", rec.size)));
                    }
                    if start != dirent_cursor {
                        return Err(err(format!(
                            "entries start at dirent {start}, expected {dirent_cursor} (not laid out in inode order)"
                        )));
                    }
                    sub_range(start, len, self.dirents.len()).ok_or_else(|| {
                        err(format!(
                            "{len} entries at dirent {start} run past the dirent table ({} records)",
                            self.dirents.len()
                        ))
                    })?;
                    dirent_cursor += len;
                }
                FileKind::Regular => {
                    if start != fc_cursor {
                        return Err(err(format!(
                            "chunk map starts at file chunk {start}, expected {fc_cursor} (not laid out in inode order)"
                        )));
                    }
                    let r = sub_range(start, len, self.file_chunks.len()).ok_or_else(|| {
                        err(format!(
                            "{len} file chunks at {start} run past the file-chunk table ({} records)",
                            self.file_chunks.len()
                        ))
                    })?;
                    self.check_file_chunks(ino, rec.size.get(), &self.file_chunks[r])?;
                    fc_cursor += len;
                }
                FileKind::Symlink => {
                    let target = u32::try_from(len)
                        .ok()
                        .and_then(|l| self.string(start, l))
                        .ok_or_else(|| {
                            err(format!(
                                "symlink target ({len} bytes at {start}) outside the string table ({} bytes)",
                                self.strings.len()
                            ))
                        })?;
                    if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
                        return Err(err(format!(
                            "symlink target of {} bytes is empty, longer than {SYMLINK_MAX} or contains NUL",
                            target.len()
                        )));
                    }
                    if rec.size.get() != len {
                        return Err(err(format!(
                            "symlink size {} != target length {len}",
                            rec.size
                        )));
                    }
                }
                _ => {
                    if start != 0 || len != 0 || rec.size.get() != 0 {
                        return Err(err(format!("{kind:?} carries data or a size")));
                    }
                }
            }
            let (xstart, xcount) = (rec.xattr_start.get(), rec.xattr_count.get());
            if xstart != xattr_cursor {
                return Err(err(format!(
                    "xattrs start at {xstart}, expected {xattr_cursor} (not laid out in inode order)"
                )));
            }
            let r = sub_range(xstart, xcount, self.xattrs.len()).ok_or_else(|| {
                err(format!(
                    "{xcount} xattrs at {xstart} run past the xattr table ({} records)",
                    self.xattrs.len()
                ))
            })?;
            self.check_xattrs(ino, &self.xattrs[r])?;
            xattr_cursor += xcount;
        }
        let leftover = |section: Section, used: u64, total: usize| {
            if used != total as u64 {
                Err(FormatError::section(
                    section,
                    format!("{} records not owned by any inode", total as u64 - used),
                ))
            } else {
                Ok(())
            }
        };
        leftover(Section::Dirents, dirent_cursor, self.dirents.len())?;
        leftover(Section::FileChunks, fc_cursor, self.file_chunks.len())?;
        leftover(Section::Xattrs, xattr_cursor, self.xattrs.len())
    }

    fn check_file_chunks(&self, ino: u64, size: u64, fcs: &[FileChunk]) -> Result<(), FormatError> {
        let mut expect = 0u64;
        for (i, fc) in fcs.iter().enumerate() {
            let err = |detail: String| FormatError::FileChunk {
                ino,
                index: i as u64,
                detail,
            };
            if fc.pad.get() != 0 {
                return Err(err("padding is not zero".into()));
            }
            if fc.file_offset() != expect {
                return Err(err(format!(
                    "starts at file offset {}, expected {expect} (chunks must be contiguous)",
                    fc.file_offset()
                )));
            }
            let chunk = self.chunks.get(fc.chunk_index() as usize).ok_or_else(|| {
                err(format!(
                    "chunk index {} out of range ({} chunks)",
                    fc.chunk_index(),
                    self.chunks.len()
                ))
            })?;
            // Cannot overflow past u64 in practice, but the input is untrusted.
            expect = expect
                .checked_add(u64::from(chunk.plain_len()))
                .ok_or_else(|| err("file length overflows".into()))?;
        }
        if expect != size {
            return Err(FormatError::inode(
                ino,
                format!("size {size} != sum of its chunks' plain lengths {expect}"),
            ));
        }
        Ok(())
    }

    fn check_xattrs(&self, ino: u64, xattrs: &[XattrRecord]) -> Result<(), FormatError> {
        let mut prev: Option<&[u8]> = None;
        for (i, x) in xattrs.iter().enumerate() {
            let err = |detail: String| FormatError::Xattr {
                ino,
                index: i as u64,
                detail,
            };
            let name = self
                .string(x.name_off.get(), x.name_len.get())
                .ok_or_else(|| err("name outside the string table".into()))?;
            if self.string(x.value_off.get(), x.value_len.get()).is_none() {
                return Err(err("value outside the string table".into()));
            }
            if name.is_empty() || name.len() > XATTR_NAME_MAX || name.contains(&0) {
                return Err(err(format!(
                    "name of {} bytes is empty, longer than {XATTR_NAME_MAX} or contains NUL",
                    name.len()
                )));
            }
            if x.value_len.get() as usize > XATTR_VALUE_MAX {
                return Err(err(format!("value longer than {XATTR_VALUE_MAX} bytes")));
            }
            if prev.is_some_and(|p| p >= name) {
                return Err(err(format!(
                    "name {:?} is not sorted after the previous one (or duplicates it)",
                    String::from_utf8_lossy(name)
                )));
            }
            prev = Some(name);
        }
        Ok(())
    }

    fn check_tree(&self) -> Result<(), FormatError> {
        let count = self.inodes.len() as u64;
        let root = &self.inodes[0];
        if root.kind != FileKind::Directory as u8 || root.parent.get() != 1 {
            return Err(FormatError::Tree {
                detail: "inode 1 is not a directory whose parent is itself".into(),
            });
        }
        let mut next_new = 2u64;
        // Entries beyond the first for each non-directory inode (hard links).
        let mut extra_links: HashMap<u64, u32> = HashMap::new();
        for (i, rec) in self.inodes.iter().enumerate() {
            let dir = i as u64 + 1;
            if rec.kind != FileKind::Directory as u8 {
                continue;
            }
            if dir >= next_new {
                return Err(FormatError::Tree {
                    detail: format!("directory inode {dir} is not reachable from the root"),
                });
            }
            let range =
                rec.data_start.get() as usize..(rec.data_start.get() + rec.data_len.get()) as usize;
            let mut prev: Option<&[u8]> = None;
            let mut subdirs = 0u64;
            for (index, e) in self.dirents[range].iter().enumerate() {
                let err = |detail: String| FormatError::Dirent {
                    dir,
                    index: index as u64,
                    detail,
                };
                if e.pad.get() != 0 {
                    return Err(err("padding is not zero".into()));
                }
                let name = self
                    .string(e.name_off.get(), e.name_len.get())
                    .ok_or_else(|| err("name outside the string table".into()))?;
                check_name(name).map_err(|d| err(d.into()))?;
                if prev.is_some_and(|p| p >= name) {
                    return Err(err(format!(
                        "name {:?} is not sorted after the previous one (or duplicates it)",
                        String::from_utf8_lossy(name)
                    )));
                }
                prev = Some(name);
                let target = e.ino.get();
                if target == 0 || target > count {
                    return Err(err(format!("inode {target} out of range 1..={count}")));
                }
                let trec = &self.inodes[target as usize - 1];
                let is_dir = trec.kind == FileKind::Directory as u8;
                if target == next_new {
                    next_new += 1;
                    if is_dir {
                        subdirs += 1;
                        if trec.parent.get() != dir {
                            return Err(err(format!(
                                "directory inode {target} records parent {}, but is entered from {dir}",
                                trec.parent
                            )));
                        }
                    }
                } else if target < next_new {
                    if is_dir {
                        return Err(err(format!(
                            "directory inode {target} is reachable twice (a directory has one parent)"
                        )));
                    }
                    *extra_links.entry(target).or_insert(0) += 1;
                } else {
                    return Err(err(format!(
                        "inode {target} breaks breadth-first numbering (next new inode is {next_new})"
                    )));
                }
            }
            if u64::from(rec.nlink.get()) != 2 + subdirs {
                return Err(FormatError::inode(
                    dir,
                    format!(
                        "directory nlink {} != 2 + {subdirs} subdirectories",
                        rec.nlink
                    ),
                ));
            }
        }
        if next_new != count + 1 {
            return Err(FormatError::Tree {
                detail: format!("inode {next_new} is not reachable from the root"),
            });
        }
        for (i, rec) in self.inodes.iter().enumerate() {
            let ino = i as u64 + 1;
            if rec.kind == FileKind::Directory as u8 {
                continue;
            }
            let entries = 1 + u64::from(extra_links.get(&ino).copied().unwrap_or(0));
            if u64::from(rec.nlink.get()) != entries {
                return Err(FormatError::inode(
                    ino,
                    format!("nlink {} != {entries} entries naming it", rec.nlink),
                ));
            }
        }
        Ok(())
    }

    fn check_prefetch(&self) -> Result<(), FormatError> {
        for (i, p) in self.prefetch.iter().enumerate() {
            let err = |detail: String| FormatError::Prefetch {
                index: i as u64,
                detail,
            };
            let ino = p.ino().0;
            let rec = ino
                .checked_sub(1)
                .and_then(|i| self.inodes.get(i as usize))
                .ok_or_else(|| err(format!("inode {ino} out of range")))?;
            if rec.kind != FileKind::Regular as u8 {
                return Err(err(format!("inode {ino} is not a regular file")));
            }
            if p.is_empty()
                || p.offset()
                    .checked_add(p.len())
                    .is_none_or(|e| e > rec.size.get())
            {
                return Err(err(format!(
                    "range {}+{} is empty or past the end of inode {ino} ({} bytes)",
                    p.offset(),
                    p.len(),
                    rec.size
                )));
            }
        }
        Ok(())
    }
}

/// Checks one directory entry name; returns what is wrong.
pub(crate) fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty name")
    } else if name.len() > NAME_MAX {
        Err("name longer than 255 bytes")
    } else if name == b"." || name == b".." {
        Err("name is \".\" or \"..\"")
    } else if name.contains(&b'/') || name.contains(&0) {
        Err("name contains '/' or NUL")
    } else {
        Ok(())
    }
}
