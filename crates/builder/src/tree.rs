//! The prepared-tree half of a build: [`TreeBuild`] records a tree whose regular files have no content yet,
//! and [`FileSink`] is how their content is streamed in afterwards.
//!
//! This is the seam between "where a tree comes from" (a directory walk, a set of OCI layers) and the
//! packing machinery that every source shares. `TreeBuild` wraps the [`ManifestWriter`] rather than
//! exposing it so that every regular file is registered with its expected size and the counts are always
//! right: the packer can then prove, after the feed, that every file got exactly its content.

use std::collections::HashMap;
use std::io::Read;

use hydrate_format::{ContentId, Digest, FileKind, FormatError, ManifestWriter, NodeId, NodeMeta};

use crate::BuildError;

/// What a tree holds, counted as it is built.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BuildCounts {
    /// Regular-file inodes (hard links counted once).
    pub files: u64,
    /// Directories, including the root.
    pub dirs: u64,
    pub symlinks: u64,
    /// Devices, fifos and sockets.
    pub other: u64,
    /// Sum of regular file sizes (hard links counted once).
    pub logical_bytes: u64,
}

/// A regular file of a [`TreeBuild`] that still needs its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingFile {
    pub node: NodeId,
    pub size: u64,
}

/// A tree whose regular files are added with a size but no content; [`crate::build_tree`] fills them in
/// from a feed. Node handles are the writer's [`NodeId`]s.
#[derive(Debug)]
pub struct TreeBuild {
    writer: ManifestWriter,
    /// Regular files in the order they were added.
    pub(crate) files: Vec<PendingFile>,
    /// Parent and name of every directory and regular file (the first name of a hard-linked file), to name
    /// nodes in errors.
    names: HashMap<NodeId, (NodeId, Vec<u8>)>,
    counts: BuildCounts,
}

impl TreeBuild {
    /// A tree holding only the root directory, with `root` attributes.
    pub fn new(root: NodeMeta) -> Self {
        TreeBuild {
            writer: ManifestWriter::new(root),
            files: Vec::new(),
            names: HashMap::new(),
            counts: BuildCounts {
                dirs: 1,
                ..BuildCounts::default()
            },
        }
    }

    pub fn root(&self) -> NodeId {
        self.writer.root()
    }

    pub fn counts(&self) -> BuildCounts {
        self.counts
    }

    pub fn add_dir(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: NodeMeta,
    ) -> Result<NodeId, FormatError> {
        let node = self.writer.add_dir(parent, name, meta)?;
        self.names.insert(node, (parent, name.to_vec()));
        self.counts.dirs += 1;
        Ok(node)
    }

    /// Adds a regular file of `size` bytes; its content must later be fed exactly once.
    pub fn add_file(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: NodeMeta,
        size: u64,
    ) -> Result<NodeId, FormatError> {
        // The content id and chunk map are placeholders until the feed supplies the data.
        let node = self
            .writer
            .add_file(parent, name, meta, ContentId(Digest::ZERO), Vec::new())?;
        self.files.push(PendingFile { node, size });
        self.names.insert(node, (parent, name.to_vec()));
        self.counts.files += 1;
        self.counts.logical_bytes += size;
        Ok(node)
    }

    pub fn add_symlink(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: NodeMeta,
        target: &[u8],
    ) -> Result<NodeId, FormatError> {
        let node = self.writer.add_symlink(parent, name, meta, target)?;
        self.counts.symlinks += 1;
        Ok(node)
    }

    /// Adds a device node, fifo or socket (`rdev` is kept for devices only).
    pub fn add_special(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: NodeMeta,
        kind: FileKind,
        rdev: u64,
    ) -> Result<NodeId, FormatError> {
        let node = self.writer.add_special(parent, name, meta, kind, rdev)?;
        self.counts.other += 1;
        Ok(node)
    }

    /// Adds another name for an existing non-directory node (a hard link); counts nothing new.
    pub fn add_link(
        &mut self,
        parent: NodeId,
        name: &[u8],
        target: NodeId,
    ) -> Result<(), FormatError> {
        self.writer.add_link(parent, name, target)
    }

    /// Records an annotation (e.g. the source of a converted image) in the manifest.
    pub fn set_annotation(
        &mut self,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), FormatError> {
        self.writer.set_annotation(key, value)
    }

    /// The path of a directory or regular file below the root, for error messages.
    pub(crate) fn path_of(&self, node: NodeId) -> String {
        let mut parts = Vec::new();
        let mut at = node;
        while let Some((parent, name)) = self.names.get(&at) {
            parts.push(String::from_utf8_lossy(name));
            at = *parent;
            if parts.len() > self.names.len() {
                break; // unreachable for a writer-built tree; never loop forever on a bug
            }
        }
        if at != self.root() {
            return format!("{node:?}");
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    pub(crate) fn into_writer(self) -> ManifestWriter {
        self.writer
    }
}

/// Receives the content of a [`TreeBuild`]'s regular files during [`crate::build_tree`].
pub trait FileSink {
    /// Streams `data` (read to its end) as the content of regular file `node`, which must have been added
    /// with `size` bytes and not fed before. `what` names the source in errors, e.g.
    /// `layer 2 (sha256:…) entry usr/bin/x`.
    fn add(
        &mut self,
        node: NodeId,
        data: &mut dyn Read,
        size: u64,
        what: &str,
    ) -> Result<(), BuildError>;
}
