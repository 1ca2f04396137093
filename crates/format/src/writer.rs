//! Write side: an in-memory tree model that the builder fills in any order, serialized into deterministic
//! manifest bytes.
//!
//! Determinism is the point of this module: the bytes depend only on the tree (entries are kept sorted by
//! name bytes, inode numbers are assigned breadth-first in name order, strings are laid out in first-use order
//! of that walk, annotations are kept sorted by key) and on the blob/chunk tables in the order the caller
//! added them. Insertion order of entries,
//! and the `NodeId`s handed out, never show in the output.

use std::collections::{BTreeMap, HashMap};

use zerocopy::IntoBytes;

use crate::annotation;
use crate::ids::{ContentId, FileKind, S_IFMT};
use crate::records::*;
use crate::validate::{align8, check_name, SYMLINK_MAX, XATTR_NAME_MAX, XATTR_VALUE_MAX};
use crate::{BlobId, FormatError, Manifest};

/// Handle of a node in a [`ManifestWriter`]'s tree (not an inode number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NodeId(usize);

/// Attributes the caller supplies for a node. The type bits of `mode` are replaced by the node's kind; size
/// and nlink are computed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Extended attributes in any order; names must be unique.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
enum NodeData {
    Dir(BTreeMap<Vec<u8>, NodeId>),
    Regular {
        content: ContentId,
        chunks: Vec<u32>,
    },
    Symlink(Vec<u8>),
    Special {
        kind: FileKind,
        rdev: u64,
    },
}

#[derive(Debug)]
struct Node {
    meta: NodeMeta,
    data: NodeData,
}

/// Builds a manifest: blob table, chunk table, tree, annotations and prefetch hints.
#[derive(Debug)]
pub struct ManifestWriter {
    blobs: Vec<BlobRecord>,
    chunks: Vec<ChunkRecord>,
    nodes: Vec<Node>,
    prefetch: Vec<(NodeId, u64, u64)>,
    annotations: BTreeMap<String, Vec<u8>>,
}

impl ManifestWriter {
    /// A writer whose tree holds only the root directory, with `root` attributes.
    pub fn new(root: NodeMeta) -> Self {
        ManifestWriter {
            blobs: Vec::new(),
            chunks: Vec::new(),
            nodes: vec![Node {
                meta: root,
                data: NodeData::Dir(BTreeMap::new()),
            }],
            prefetch: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> NodeId {
        NodeId(0)
    }

    /// Appends a blob; returns its index for [`ChunkRecord::new`].
    pub fn add_blob(&mut self, id: BlobId, size: u64) -> u32 {
        self.blobs.push(BlobRecord::new(id, size));
        (self.blobs.len() - 1) as u32
    }

    /// Appends a chunk record; returns its index for file chunk maps.
    pub fn add_chunk(&mut self, rec: ChunkRecord) -> u32 {
        self.chunks.push(rec);
        (self.chunks.len() - 1) as u32
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    fn insert(&mut self, parent: NodeId, name: &[u8], node: Node) -> Result<NodeId, FormatError> {
        check_entry(self, parent, name)?;
        let id = NodeId(self.nodes.len());
        self.nodes.push(node);
        if let NodeData::Dir(entries) = &mut self.nodes[parent.0].data {
            entries.insert(name.to_vec(), id);
        }
        Ok(id)
    }

    pub fn add_dir(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: NodeMeta,
    ) -> Result<NodeId, FormatError> {
        let data = NodeData::Dir(BTreeMap::new());
        self.insert(parent, name, Node { meta, data })
    }

    /// Adds a regular file whose content is the concatenation of `chunks` (indices into the chunk table).
    pub fn add_file(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: NodeMeta,
        content: ContentId,
        chunks: Vec<u32>,
    ) -> Result<NodeId, FormatError> {
        let data = NodeData::Regular { content, chunks };
        self.insert(parent, name, Node { meta, data })
    }

    /// Sets the content of a regular file added earlier (the builder adds files while walking and chunks
    /// them afterwards).
    pub fn set_file_data(
        &mut self,
        file: NodeId,
        content: ContentId,
        chunks: Vec<u32>,
    ) -> Result<(), FormatError> {
        match self.nodes.get_mut(file.0).map(|n| &mut n.data) {
            Some(NodeData::Regular {
                content: c,
                chunks: ch,
            }) => {
                *c = content;
                *ch = chunks;
                Ok(())
            }
            _ => Err(FormatError::writer(format!(
                "{file:?} is not a regular file"
            ))),
        }
    }

    pub fn add_symlink(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: NodeMeta,
        target: &[u8],
    ) -> Result<NodeId, FormatError> {
        if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
            return Err(FormatError::writer(format!(
                "symlink {:?}: target of {} bytes is empty, longer than {SYMLINK_MAX} or contains NUL",
                String::from_utf8_lossy(name),
                target.len()
            )));
        }
        let data = NodeData::Symlink(target.to_vec());
        self.insert(parent, name, Node { meta, data })
    }

    /// Adds a device node, fifo or socket. `rdev` is kept for devices only.
    pub fn add_special(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: NodeMeta,
        kind: FileKind,
        rdev: u64,
    ) -> Result<NodeId, FormatError> {
        let rdev = match kind {
            FileKind::CharDevice | FileKind::BlockDevice => rdev,
            FileKind::Fifo | FileKind::Socket => 0,
            _ => {
                return Err(FormatError::writer(format!(
                    "{kind:?} is not a special file kind"
                )))
            }
        };
        let data = NodeData::Special { kind, rdev };
        self.insert(parent, name, Node { meta, data })
    }

    /// Adds another name for an existing non-directory node (a hard link).
    pub fn add_link(
        &mut self,
        parent: NodeId,
        name: &[u8],
        target: NodeId,
    ) -> Result<(), FormatError> {
        match self.nodes.get(target.0).map(|n| &n.data) {
            None => return Err(FormatError::writer(format!("unknown node {target:?}"))),
            Some(NodeData::Dir(_)) => {
                return Err(FormatError::writer(format!(
                    "hard link {:?} to a directory",
                    String::from_utf8_lossy(name)
                )))
            }
            Some(_) => {}
        }
        check_entry(self, parent, name)?;
        if let NodeData::Dir(entries) = &mut self.nodes[parent.0].data {
            entries.insert(name.to_vec(), target);
        }
        Ok(())
    }

    /// Adds a prefetch hint for a regular file.
    pub fn add_prefetch(&mut self, file: NodeId, offset: u64, len: u64) {
        self.prefetch.push((file, offset, len));
    }

    /// Sets annotation `key` to `value`, replacing any earlier value of `key`. The key (1..=256 bytes of
    /// printable ASCII without spaces), the value size and the entry count are checked here, so a refusal
    /// names the caller's key rather than surfacing in [`ManifestWriter::finish`]. See [`crate::annotation`].
    pub fn set_annotation(
        &mut self,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), FormatError> {
        let shown = annotation::show_key(key.as_bytes());
        annotation::check_key(key.as_bytes())
            .map_err(|d| FormatError::writer(format!("annotation {shown}: {d}")))?;
        let value = value.into();
        if value.len() > annotation::VALUE_MAX {
            return Err(FormatError::writer(format!(
                "annotation {shown}: value of {} bytes exceeds {}",
                value.len(),
                annotation::VALUE_MAX
            )));
        }
        if let Some(old) = self.annotations.get_mut(key) {
            *old = value;
            return Ok(());
        }
        if self.annotations.len() == annotation::COUNT_MAX {
            return Err(FormatError::writer(format!(
                "annotation {shown}: the image already has the maximum of {} annotations",
                annotation::COUNT_MAX
            )));
        }
        self.annotations.insert(key.to_owned(), value);
        Ok(())
    }

    /// Serializes the image. The output is re-parsed before it is returned, so a writer bug or invalid input
    /// (e.g. a chunk index out of range) surfaces here rather than at mount time.
    pub fn finish(self) -> Result<Vec<u8>, FormatError> {
        let out = Serializer::new(&self).run()?;
        Manifest::parse(&out[..])?;
        Ok(out)
    }
}

fn check_entry(w: &ManifestWriter, parent: NodeId, name: &[u8]) -> Result<(), FormatError> {
    let lossy = || String::from_utf8_lossy(name).into_owned();
    check_name(name).map_err(|d| FormatError::writer(format!("entry {:?}: {d}", lossy())))?;
    match w.nodes.get(parent.0).map(|n| &n.data) {
        Some(NodeData::Dir(entries)) if entries.contains_key(name) => Err(FormatError::writer(
            format!("duplicate entry {:?}", lossy()),
        )),
        Some(NodeData::Dir(_)) => Ok(()),
        _ => Err(FormatError::writer(format!(
            "parent of {:?} is not a directory",
            lossy()
        ))),
    }
}

struct Serializer<'a> {
    w: &'a ManifestWriter,
    strings: Vec<u8>,
    string_index: HashMap<&'a [u8], u64>,
}

impl<'a> Serializer<'a> {
    fn new(w: &'a ManifestWriter) -> Self {
        Serializer {
            w,
            strings: Vec::new(),
            string_index: HashMap::new(),
        }
    }

    /// Interns a string; repeated names (e.g. "Makefile" in every directory) are stored once.
    fn intern(&mut self, s: &'a [u8]) -> u64 {
        if let Some(&off) = self.string_index.get(s) {
            return off;
        }
        let off = self.strings.len() as u64;
        self.strings.extend_from_slice(s);
        self.string_index.insert(s, off);
        off
    }

    fn run(mut self) -> Result<Vec<u8>, FormatError> {
        let w = self.w;
        // Breadth-first numbering in name order: the order the validator expects.
        let mut order: Vec<NodeId> = vec![w.root()];
        let mut ino_of: HashMap<NodeId, u64> = HashMap::from([(w.root(), 1)]);
        let mut links: HashMap<NodeId, u32> = HashMap::new();
        let mut next = 0;
        while next < order.len() {
            let id = order[next];
            next += 1;
            if let NodeData::Dir(entries) = &w.nodes[id.0].data {
                for &child in entries.values() {
                    *links.entry(child).or_insert(0) += 1;
                    if let std::collections::hash_map::Entry::Vacant(v) = ino_of.entry(child) {
                        v.insert(order.len() as u64 + 1);
                        order.push(child);
                    }
                }
            }
        }

        let mut inodes = Vec::with_capacity(order.len());
        let mut dirents: Vec<DirentRecord> = Vec::new();
        let mut file_chunks: Vec<FileChunk> = Vec::new();
        let mut xattrs: Vec<XattrRecord> = Vec::new();
        let mut parent_of: HashMap<NodeId, u64> = HashMap::from([(w.root(), 1)]);
        for (i, &id) in order.iter().enumerate() {
            let ino = i as u64 + 1;
            let node = &w.nodes[id.0];
            let (mut size, mut rdev, mut content) = (0u64, 0u64, [0u8; 32]);
            let (mut data_start, mut data_len, mut parent, mut nlink) = (0u64, 0u64, 0u64, 0u32);
            let kind = match &node.data {
                NodeData::Dir(entries) => {
                    data_start = dirents.len() as u64;
                    data_len = entries.len() as u64;
                    parent = parent_of[&id];
                    let mut subdirs = 0;
                    for (name, &child) in entries {
                        if matches!(w.nodes[child.0].data, NodeData::Dir(_)) {
                            subdirs += 1;
                            parent_of.insert(child, ino);
                        }
                        let name_off = self.intern(name);
                        dirents.push(DirentRecord {
                            name_off: name_off.into(),
                            name_len: (name.len() as u32).into(),
                            pad: 0.into(),
                            ino: ino_of[&child].into(),
                        });
                    }
                    nlink = 2 + subdirs;
                    FileKind::Directory
                }
                NodeData::Regular { content: c, chunks } => {
                    data_start = file_chunks.len() as u64;
                    data_len = chunks.len() as u64;
                    for &ci in chunks {
                        let rec = w.chunks.get(ci as usize).ok_or_else(|| {
                            FormatError::writer(format!(
                                "inode {ino}: chunk index {ci} out of range ({} chunks)",
                                w.chunks.len()
                            ))
                        })?;
                        file_chunks.push(FileChunk::new(size, ci));
                        size += u64::from(rec.plain_len());
                    }
                    content = *c.as_bytes();
                    FileKind::Regular
                }
                NodeData::Symlink(target) => {
                    data_start = self.intern(target);
                    data_len = target.len() as u64;
                    size = data_len;
                    FileKind::Symlink
                }
                NodeData::Special { kind, rdev: r } => {
                    rdev = *r;
                    *kind
                }
            };
            if kind != FileKind::Directory {
                nlink = links.get(&id).copied().unwrap_or(1);
            }
            let xattr_start = xattrs.len() as u64;
            let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = node.meta.xattrs.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            for (j, (name, value)) in sorted.iter().map(|p| (&p.0, &p.1)).enumerate() {
                let lossy = String::from_utf8_lossy(name);
                if name.is_empty() || name.len() > XATTR_NAME_MAX || name.contains(&0) {
                    return Err(FormatError::writer(format!(
                        "inode {ino}: invalid xattr name {lossy:?}"
                    )));
                }
                if value.len() > XATTR_VALUE_MAX {
                    return Err(FormatError::writer(format!(
                        "inode {ino}: xattr {lossy:?} value too long"
                    )));
                }
                if j > 0 && sorted[j - 1].0 == *name {
                    return Err(FormatError::writer(format!(
                        "inode {ino}: duplicate xattr {lossy:?}"
                    )));
                }
                let name_off = self.intern(name);
                let value_off = self.intern(value);
                xattrs.push(XattrRecord {
                    name_off: name_off.into(),
                    value_off: value_off.into(),
                    name_len: (name.len() as u32).into(),
                    value_len: (value.len() as u32).into(),
                });
            }
            let m = &node.meta;
            inodes.push(InodeRecord {
                kind: kind as u8,
                pad: [0; 3],
                mode: ((m.mode & !S_IFMT) | kind.mode_bits()).into(),
                uid: m.uid.into(),
                gid: m.gid.into(),
                nlink: nlink.into(),
                mtime_nsec: m.mtime_nsec.into(),
                size: size.into(),
                mtime_sec: m.mtime_sec.into(),
                rdev: rdev.into(),
                parent: parent.into(),
                data_start: data_start.into(),
                data_len: data_len.into(),
                xattr_start: xattr_start.into(),
                xattr_count: (xattrs.len() as u64 - xattr_start).into(),
                content,
            });
        }
        let mut prefetch = Vec::with_capacity(w.prefetch.len());
        for &(id, offset, len) in &w.prefetch {
            let ino = ino_of
                .get(&id)
                .ok_or_else(|| FormatError::writer(format!("prefetch of unknown node {id:?}")))?;
            prefetch.push(PrefetchEntry::new(crate::Ino(*ino), offset, len));
        }

        let annotations = annotation::encode(&w.annotations);
        let parts: [&[u8]; SECTION_COUNT] = [
            w.blobs.as_bytes(),
            w.chunks.as_bytes(),
            file_chunks.as_bytes(),
            inodes.as_bytes(),
            dirents.as_bytes(),
            &self.strings,
            xattrs.as_bytes(),
            &annotations,
            prefetch.as_bytes(),
        ];
        let mut out = vec![0u8; HEADER_LEN];
        let mut entries = [SectionEntry::default(); SECTION_COUNT];
        for (entry, part) in entries.iter_mut().zip(parts) {
            out.resize(align8(out.len() as u64) as usize, 0);
            entry.offset = (out.len() as u64).into();
            entry.len = (part.len() as u64).into();
            out.extend_from_slice(part);
        }
        out.resize(align8(out.len() as u64) as usize, 0);
        let header = Header {
            magic: MAGIC,
            version: VERSION.into(),
            flags: 0.into(),
            total_len: (out.len() as u64).into(),
            sections: entries,
        };
        out[..HEADER_LEN].copy_from_slice(header.as_bytes());
        Ok(out)
    }
}
