//! Lays the collected tree out as an erofs image and writes it in one sequential pass.
//!
//! Layout, in order:
//! 1. block 0: the superblock at byte 1024, the device table right after it (byte 1152, `devt_slotoff` 9),
//!    spilling into further blocks when there are more than 23 devices;
//! 2. the inode area (`meta_blkaddr`): inodes in breadth-first order from the root (so the root's nid is 0
//!    and a directory's children sit together), each a 64-byte extended inode, its inline xattrs, then either
//!    its inline tail (a directory's last block, a symlink's target) or its chunk index entries. Inodes start
//!    on 32-byte slots, and a record that fits in a block never crosses one (inline tails must not);
//! 3. the directory data area: the full blocks of directories too big to inline, and the targets of
//!    symlinks too long to inline next to their inode.
//!
//! Every position is computed before the first byte is written (nids go into dirents), so the writer needs
//! no `Seek`, and the same tree always gives the same bytes.

use std::collections::HashMap;
use std::io::Write;

use crate::dir::{encode_block, sort_names, DirEntry, DirLayout};
use crate::error::{show, ErofsError, Result};
use crate::format::{
    chunk_index, device_slot, encode_rdev, file_type, split_dev_t, superblock_checksum, DataLayout,
    ExtendedInode, SuperBlock, BLOCK_SIZE, CHUNK_FORMAT_INDEXES, CHUNK_INDEX_SIZE,
    DEVICE_SLOT_SIZE, EXTENDED_INODE_SIZE, FEATURE_COMPAT_SB_CHKSUM, FEATURE_INCOMPAT_CHUNKED_FILE,
    FEATURE_INCOMPAT_DEVICE_TABLE, INODE_SLOT_SIZE, SUPERBLOCK_SIZE, SUPER_OFFSET,
};
use crate::tree::{split_parent, Entry, EntryKind, ErofsWriter, Node};
use crate::xattr;

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Size of the metadata image in 4 KiB blocks.
    pub blocks: u64,
    /// Number of inodes (hard links counted once).
    pub inodes: u64,
    /// The root directory's nid.
    pub root_nid: u64,
}

/// Largest chunk: 2^14 blocks (64 MiB). The kernel takes chunks up to 2^31 blocks, but fsck.erofs 1.5
/// reads a chunk in one buffer and crashes (SIGSEGV in `--extract`) on a 5 GiB one; 64 MiB chunks cost 8
/// bytes of index per 64 MiB of file.
const CHUNK_BITS_CAP: u32 = 14;

/// The device table starts at this slot (byte 1152), right after the superblock.
const DEVT_SLOTOFF: u16 = ((SUPER_OFFSET + SUPERBLOCK_SIZE) / DEVICE_SLOT_SIZE) as u16;

/// A directory's child: its name and its own path (a hard link's path, not its target's).
type NamedChild<'a> = (&'a [u8], &'a [u8]);

/// One inode and everything about its placement.
struct InodePlan<'a> {
    /// Position in breadth-first order (the inode's `i_ino` is this plus one).
    index: usize,
    key: &'a [u8],
    entry: &'a Entry,
    nlink: u32,
    /// Directories: the parent's inode index and the children by name (without `.` and `..`).
    parent: usize,
    children: Vec<(&'a [u8], usize)>,
    dir: Option<DirLayout>,
    xattrs: Vec<u8>,
    xattr_icount: u16,
    layout: DataLayout,
    /// Bytes stored right after the xattrs (a directory tail or a symlink target).
    inline: usize,
    /// Chunk-based files: chunk size exponent over the block size, and the number of index entries.
    chunk_bits: u32,
    chunks: u64,
    /// Blocks of this inode in the directory data area, and the first of them.
    data_blocks: u64,
    first_block: u64,
    /// Byte offset of the inode in the image, and its nid.
    pos: u64,
    nid: u64,
}

impl InodePlan<'_> {
    fn record_len(&self) -> u64 {
        let base = (EXTENDED_INODE_SIZE + self.xattrs.len()) as u64;
        match self.layout {
            DataLayout::ChunkBased => {
                base.next_multiple_of(8) + self.chunks * CHUNK_INDEX_SIZE as u64
            }
            DataLayout::FlatInline => base + self.inline as u64,
            DataLayout::FlatPlain => base,
        }
    }
}

impl ErofsWriter {
    /// Writes the complete metadata image to `out` (buffered here; `out` needs no `Seek`).
    pub fn write(&self, out: &mut impl Write) -> Result<ImageInfo> {
        let mut plans = self.collect()?;
        let (meta_start, data_start, total_blocks) = self.place(&mut plans)?;
        let io = |source| ErofsError::Io {
            target: "the output".into(),
            source,
        };
        let mut out = Sequential {
            inner: std::io::BufWriter::with_capacity(1 << 20, out),
            pos: 0,
        };
        out.write(&self.head(&plans, meta_start, total_blocks))
            .map_err(io)?;
        for plan in &plans {
            write_record(&mut out, plan, &plans).map_err(io)?;
        }
        out.pad_to(data_start * BLOCK_SIZE).map_err(io)?;
        for plan in plans.iter().filter(|p| p.data_blocks > 0) {
            assert_eq!(
                out.pos,
                plan.first_block * BLOCK_SIZE,
                "data block of {}",
                show(plan.key)
            );
            write_data_blocks(&mut out, plan, &plans).map_err(io)?;
        }
        out.pad_to(total_blocks * BLOCK_SIZE).map_err(io)?;
        out.inner.flush().map_err(io)?;
        Ok(ImageInfo {
            blocks: total_blocks,
            inodes: plans.len() as u64,
            root_nid: plans[0].nid,
        })
    }

    /// Writes the image to `path` durably: a temporary file beside it, fsync, rename, fsync of the directory.
    pub fn write_to_path(&self, path: &std::path::Path) -> Result<ImageInfo> {
        let io = |source| ErofsError::Io {
            target: path.display().to_string(),
            source,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp_name);
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        let written = self.write(&mut file).and_then(|info| {
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            Ok(info)
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        let info = written?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(info)
    }

    /// The inodes in breadth-first order from the root, with link counts and directory children; checks
    /// parents and hard link targets.
    fn collect(&self) -> Result<Vec<InodePlan<'_>>> {
        let mut children: HashMap<&[u8], Vec<NamedChild<'_>>> = HashMap::new();
        for (key, node) in self.nodes.iter().filter(|(key, _)| !key.is_empty()) {
            let (parent, name) = split_parent(key);
            match self.nodes.get(parent) {
                Some(Node::Entry(Entry {
                    kind: EntryKind::Directory,
                    ..
                })) => {}
                Some(_) => {
                    return Err(ErofsError::ParentNotDirectory {
                        path: show(key),
                        parent: show(parent),
                    })
                }
                None => {
                    return Err(ErofsError::MissingParent {
                        path: show(key),
                        parent: show(parent),
                    })
                }
            }
            if let Node::Link(target) = node {
                let reason = match self.nodes.get(target) {
                    None => Some("the target was never added"),
                    Some(Node::Link(_)) => {
                        Some("the target is itself a hard link (link to its target)")
                    }
                    Some(Node::Entry(e)) if e.kind == EntryKind::Directory => {
                        Some("the target is a directory")
                    }
                    Some(Node::Entry(_)) => None,
                };
                if let Some(reason) = reason {
                    return Err(ErofsError::HardLink {
                        path: show(key),
                        target: show(target),
                        reason,
                    });
                }
            }
            // Keys iterate in path order, so each directory's children arrive sorted by name.
            children.entry(parent).or_default().push((name, key));
        }

        // A path's inode: its own entry, or for a hard link its target's (keys borrowed from the map).
        let entry_of = |key: &[u8]| -> (&[u8], &Entry) {
            let (own_key, node) = self
                .nodes
                .get_key_value(key)
                .expect("keys come from the map");
            match node {
                Node::Entry(entry) => (own_key.as_slice(), entry),
                Node::Link(target) => match self.nodes.get_key_value(target.as_slice()) {
                    Some((target_key, Node::Entry(entry))) => (target_key.as_slice(), entry),
                    _ => unreachable!("link targets are checked above"),
                },
            }
        };
        let (root_key, root) = entry_of(b"");
        let mut plans = vec![new_plan(0, root_key, root, 0)];
        let mut index_of: HashMap<&[u8], usize> = HashMap::from([(root_key, 0)]);
        let mut next_dir = 0;
        while next_dir < plans.len() {
            if plans[next_dir].entry.kind != EntryKind::Directory {
                next_dir += 1;
                continue;
            }
            let dir_key = plans[next_dir].key;
            let mut listed = Vec::new();
            for &(name, child_key) in children.get(dir_key).map(Vec::as_slice).unwrap_or_default() {
                let (key, entry) = entry_of(child_key);
                let index = *index_of.entry(key).or_insert_with(|| {
                    plans.push(new_plan(plans.len(), key, entry, next_dir));
                    plans.len() - 1
                });
                if entry.kind == EntryKind::Directory {
                    plans[next_dir].nlink += 1;
                } else {
                    plans[index].nlink += 1;
                }
                listed.push((name, index));
            }
            plans[next_dir].children = listed;
            next_dir += 1;
        }
        for plan in &mut plans {
            plan_data(plan);
        }
        Ok(plans)
    }

    /// Places every inode and data block; returns the inode area's first byte, the data area's first block
    /// and the image's total blocks.
    fn place(&self, plans: &mut [InodePlan<'_>]) -> Result<(u64, u64, u64)> {
        let table_end =
            (SUPER_OFFSET + SUPERBLOCK_SIZE + self.devices.len() * DEVICE_SLOT_SIZE) as u64;
        let meta_start = table_end.next_multiple_of(BLOCK_SIZE);
        let mut pos = meta_start;
        for plan in plans.iter_mut() {
            pos = pos.next_multiple_of(INODE_SLOT_SIZE);
            let len = plan.record_len();
            if len <= BLOCK_SIZE && pos % BLOCK_SIZE + len > BLOCK_SIZE {
                pos = pos.next_multiple_of(BLOCK_SIZE);
            }
            plan.pos = pos;
            plan.nid = (pos - meta_start) / INODE_SLOT_SIZE;
            pos += len;
        }
        let data_start = pos.div_ceil(BLOCK_SIZE);
        let mut block = data_start;
        for plan in plans.iter_mut().filter(|p| p.data_blocks > 0) {
            plan.first_block = block;
            block += plan.data_blocks;
        }
        if block > u64::from(u32::MAX) {
            return Err(ErofsError::TooLarge {
                what: format!(
                    "{block} metadata blocks (at most 2^32 - 1 without 48-bit addressing)"
                ),
            });
        }
        Ok((meta_start, data_start, block))
    }

    /// Block 0 (superblock, device table) and any further device table blocks, up to the inode area.
    fn head(&self, plans: &[InodePlan<'_>], meta_start: u64, total_blocks: u64) -> Vec<u8> {
        let mut head = vec![0u8; meta_start as usize];
        let mut feature_incompat = 0;
        if plans.iter().any(|p| p.layout == DataLayout::ChunkBased) {
            feature_incompat |= FEATURE_INCOMPAT_CHUNKED_FILE;
        }
        if !self.devices.is_empty() {
            feature_incompat |= FEATURE_INCOMPAT_DEVICE_TABLE;
        }
        let mut volume_name = [0u8; 16];
        volume_name[..self.options.volume_name.len()].copy_from_slice(&self.options.volume_name);
        let superblock = SuperBlock {
            feature_compat: if self.options.checksum {
                FEATURE_COMPAT_SB_CHKSUM
            } else {
                0
            },
            feature_incompat,
            root_nid: plans[0].nid as u16,
            inodes: plans.len() as u64,
            build_time: self.options.build_time.secs as u64,
            build_time_nsec: self.options.build_time.nanos,
            blocks: total_blocks as u32,
            meta_blkaddr: (meta_start / BLOCK_SIZE) as u32,
            uuid: self.options.uuid,
            volume_name,
            extra_devices: self.devices.len() as u16,
            devt_slotoff: if self.devices.is_empty() {
                0
            } else {
                DEVT_SLOTOFF
            },
        };
        head[SUPER_OFFSET..SUPER_OFFSET + SUPERBLOCK_SIZE].copy_from_slice(&superblock.encode());
        for (i, device) in self.devices.iter().enumerate() {
            let at = usize::from(DEVT_SLOTOFF) * DEVICE_SLOT_SIZE + i * DEVICE_SLOT_SIZE;
            head[at..at + DEVICE_SLOT_SIZE]
                .copy_from_slice(&device_slot(&device.tag, device.blocks));
        }
        if self.options.checksum {
            // Over the rest of block 0 from the superblock on, device slots included.
            let crc = superblock_checksum(&head[SUPER_OFFSET..BLOCK_SIZE as usize]);
            head[SUPER_OFFSET + 4..SUPER_OFFSET + 8].copy_from_slice(&crc.to_le_bytes());
        }
        head
    }
}

fn new_plan<'a>(index: usize, key: &'a [u8], entry: &'a Entry, parent: usize) -> InodePlan<'a> {
    let (xattrs, icount) = xattr::encode_body(
        entry
            .meta
            .xattrs
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice())),
    );
    InodePlan {
        index,
        key,
        entry,
        nlink: if entry.kind == EntryKind::Directory {
            2
        } else {
            0
        },
        parent,
        children: Vec::new(),
        dir: None,
        xattrs,
        // A 65535-byte value in every namespace still fits: 16 bits of 4-byte units is 256 KiB.
        xattr_icount: u16::try_from(icount).unwrap_or(u16::MAX),
        layout: DataLayout::FlatPlain,
        inline: 0,
        chunk_bits: 0,
        chunks: 0,
        data_blocks: 0,
        first_block: 0,
        pos: 0,
        nid: 0,
    }
}

/// Chooses the data layout: chunk indexes for file data, an inline tail when it fits beside the inode.
fn plan_data(plan: &mut InodePlan<'_>) {
    // Bytes left in a block after the inode and its xattrs: what an inline tail may use.
    let room = (BLOCK_SIZE as usize).saturating_sub(EXTENDED_INODE_SIZE + plan.xattrs.len());
    match &plan.entry.kind {
        EntryKind::Directory => {
            let mut names: Vec<&[u8]> = plan.children.iter().map(|(name, _)| *name).collect();
            names.extend([&b"."[..], b".."]);
            sort_names(&mut names, |name| name);
            let layout = DirLayout::plan(names);
            let size = layout.size();
            let tail = (size % BLOCK_SIZE) as usize;
            if tail != 0 && tail <= room {
                plan.layout = DataLayout::FlatInline;
                plan.inline = tail;
                plan.data_blocks = size / BLOCK_SIZE;
            } else {
                plan.data_blocks = size.div_ceil(BLOCK_SIZE);
            }
            plan.dir = Some(layout);
        }
        EntryKind::Symlink { target } => {
            if target.len() <= room {
                plan.layout = DataLayout::FlatInline;
                plan.inline = target.len();
            } else {
                plan.data_blocks = 1;
            }
        }
        EntryKind::Regular {
            size,
            data: Some(_),
        } => {
            let blocks = size.div_ceil(BLOCK_SIZE);
            // The smallest chunk holding the whole extent, at most 64 MiB (see the crate doc).
            let bits = (u64::BITS - (blocks - 1).leading_zeros()).min(CHUNK_BITS_CAP);
            plan.layout = DataLayout::ChunkBased;
            plan.chunk_bits = bits;
            plan.chunks = blocks.div_ceil(1 << bits);
        }
        _ => {}
    }
}

/// A directory's entries in name order with their nids, `.` and `..` included.
fn dir_entries<'a>(plan: &InodePlan<'a>, plans: &[InodePlan<'_>]) -> Vec<DirEntry<'a>> {
    let dirent = |name, index: usize| DirEntry {
        name,
        nid: plans[index].nid,
        file_type: file_type_of(&plans[index].entry.kind),
    };
    let mut entries = vec![
        dirent(&b"."[..], plan.index),
        dirent(&b".."[..], plan.parent),
    ];
    entries.extend(
        plan.children
            .iter()
            .map(|&(name, index)| dirent(name, index)),
    );
    sort_names(&mut entries, |entry| entry.name);
    entries
}

fn file_type_of(kind: &EntryKind) -> u8 {
    match kind {
        EntryKind::Directory => file_type::DIRECTORY,
        EntryKind::Regular { .. } => file_type::REGULAR,
        EntryKind::Symlink { .. } => file_type::SYMLINK,
        EntryKind::CharDevice { .. } => file_type::CHAR_DEVICE,
        EntryKind::BlockDevice { .. } => file_type::BLOCK_DEVICE,
        EntryKind::Fifo => file_type::FIFO,
        EntryKind::Socket => file_type::SOCKET,
    }
}

/// One inode's record: the inode, its xattrs, its inline tail or chunk indexes.
fn write_record(
    out: &mut Sequential<impl Write>,
    plan: &InodePlan<'_>,
    plans: &[InodePlan<'_>],
) -> std::io::Result<()> {
    out.pad_to(plan.pos)?;
    let entry = plan.entry;
    let (size, union) = match &entry.kind {
        EntryKind::Directory => {
            let size = plan.dir.as_ref().expect("directories are planned").size();
            (size, plan.first_block as u32)
        }
        EntryKind::Symlink { target } => (target.len() as u64, plan.first_block as u32),
        EntryKind::Regular { size, data: None } => (*size, 0),
        EntryKind::Regular {
            size,
            data: Some(_),
        } => (
            *size,
            u32::from(CHUNK_FORMAT_INDEXES | plan.chunk_bits as u16),
        ),
        EntryKind::CharDevice { rdev } | EntryKind::BlockDevice { rdev } => {
            let (major, minor) = split_dev_t(*rdev);
            (0, encode_rdev(major, minor))
        }
        EntryKind::Fifo | EntryKind::Socket => (0, 0),
    };
    let inode = ExtendedInode {
        layout: plan.layout as u16,
        xattr_icount: plan.xattr_icount,
        mode: entry.kind.type_bits() | entry.meta.mode,
        size,
        union,
        ino: plan.index as u32 + 1,
        uid: entry.meta.uid,
        gid: entry.meta.gid,
        mtime: entry.meta.mtime.secs as u64,
        mtime_nsec: entry.meta.mtime.nanos,
        nlink: plan.nlink,
    };
    out.write(&inode.encode())?;
    out.write(&plan.xattrs)?;
    match (&entry.kind, plan.layout) {
        (EntryKind::Directory, DataLayout::FlatInline) => {
            let layout = plan.dir.as_ref().expect("directories are planned");
            let entries = dir_entries(plan, plans);
            let last = layout.blocks() as usize - 1;
            out.write(&encode_block(&entries[layout.block_range(last)]))?;
        }
        (EntryKind::Symlink { target }, DataLayout::FlatInline) => out.write(target)?,
        (
            EntryKind::Regular {
                data: Some(location),
                ..
            },
            DataLayout::ChunkBased,
        ) => {
            out.pad_to(out.pos.next_multiple_of(8))?;
            let chunk_blocks = 1u64 << plan.chunk_bits;
            for i in 0..plan.chunks {
                let start = location.block + i * chunk_blocks;
                out.write(&chunk_index(location.device.get(), start as u32))?;
            }
        }
        _ => {}
    }
    debug_assert_eq!(out.pos, plan.pos + plan.record_len());
    Ok(())
}

/// An inode's blocks in the directory data area: a directory's full blocks, or a long symlink target.
fn write_data_blocks(
    out: &mut Sequential<impl Write>,
    plan: &InodePlan<'_>,
    plans: &[InodePlan<'_>],
) -> std::io::Result<()> {
    match &plan.entry.kind {
        EntryKind::Directory => {
            let layout = plan.dir.as_ref().expect("directories are planned");
            let entries = dir_entries(plan, plans);
            for block in 0..plan.data_blocks as usize {
                out.write(&encode_block(&entries[layout.block_range(block)]))?;
                out.pad_to(out.pos.next_multiple_of(BLOCK_SIZE))?;
            }
        }
        EntryKind::Symlink { target } => {
            out.write(target)?;
            out.pad_to(out.pos.next_multiple_of(BLOCK_SIZE))?;
        }
        _ => unreachable!("only directories and symlinks have metadata data blocks"),
    }
    Ok(())
}

/// A writer that knows its position and pads with zeros.
struct Sequential<W: Write> {
    inner: W,
    pos: u64,
}

impl<W: Write> Sequential<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, pos: u64) -> std::io::Result<()> {
        assert!(
            pos >= self.pos,
            "layout moves backwards: {} -> {pos}",
            self.pos
        );
        const ZEROS: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];
        while self.pos < pos {
            let n = (pos - self.pos).min(BLOCK_SIZE) as usize;
            self.write(&ZEROS[..n])?;
        }
        Ok(())
    }
}
