//! Directory walk: turns a source tree into the manifest writer's tree model plus the list of regular files
//! to chunk.
//!
//! Everything is read with lstat/llistxattr/lgetxattr (symlinks are recorded, never followed). Entries are
//! sorted by name bytes and directories visited depth-first in that order, so the file list (and therefore
//! the chunk table and blob packing order) depends only on the tree, never on readdir order. Hard links are
//! recognised by (st_dev, st_ino) among non-directories with st_nlink > 1 and become one inode; the nlink in
//! the image counts the names inside the image, not on the source filesystem.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use hydrate_format::{FileKind, NodeId, NodeMeta};

use crate::{BuildError, TreeBuild};

/// A regular file whose content still has to be chunked.
#[derive(Debug)]
pub(crate) struct FileJob {
    pub node: NodeId,
    pub path: PathBuf,
    /// Identity and state at scan time; the file must look the same after it is read.
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime: (i64, i64),
}

pub(crate) struct Walked {
    pub tree: TreeBuild,
    pub files: Vec<FileJob>,
}

fn meta_of(path: &Path, md: &Metadata) -> Result<NodeMeta, BuildError> {
    Ok(NodeMeta {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        xattrs: read_xattrs(path)?,
    })
}

/// (name, value) pairs of extended attributes.
type XattrList = Vec<(Vec<u8>, Vec<u8>)>;

/// All extended attributes of `path` (not following symlinks), in any order (the writer sorts them).
pub(crate) fn read_xattrs(path: &Path) -> Result<XattrList, BuildError> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        // A filesystem without xattr support simply has none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(BuildError::io("listing xattrs of", path, e)),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push((name.into_vec(), value)),
            // Removed between list and get: the attribute is no longer part of the tree.
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => {
                return Err(BuildError::io(
                    "reading xattr",
                    path.join(format!("@{}", name.to_string_lossy())),
                    e,
                ))
            }
        }
    }
    Ok(out)
}

fn lstat(path: &Path) -> Result<Metadata, BuildError> {
    std::fs::symlink_metadata(path).map_err(|e| BuildError::io("lstat", path, e))
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>, BuildError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| BuildError::io("reading directory", dir, e))? {
        let entry = entry.map_err(|e| BuildError::io("reading directory", dir, e))?;
        names.push(entry.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

pub(crate) fn walk(src: &Path) -> Result<Walked, BuildError> {
    let root_md = lstat(src)?;
    if !root_md.is_dir() {
        return Err(BuildError::Unsupported {
            path: src.to_path_buf(),
            detail: "the build source is not a directory".into(),
        });
    }
    let mut tree = TreeBuild::new(meta_of(src, &root_md)?);
    let mut files = Vec::new();
    let mut links: HashMap<(u64, u64), NodeId> = HashMap::new();
    let mut stack = vec![(src.to_path_buf(), tree.root())];
    while let Some((dir, dir_node)) = stack.pop() {
        let mut subdirs = Vec::new();
        for name in sorted_names(&dir)? {
            let path = dir.join(&name);
            let md = match std::fs::symlink_metadata(&path) {
                Ok(md) => md,
                // Deleted since readdir: it is not part of the tree we capture.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BuildError::io("lstat", &path, e)),
            };
            let name = name.as_bytes();
            let ft = md.file_type();
            let fmt_err = |source| BuildError::Format {
                path: path.clone(),
                source,
            };
            if !ft.is_dir() && md.nlink() > 1 {
                if let Some(&existing) = links.get(&(md.dev(), md.ino())) {
                    tree.add_link(dir_node, name, existing).map_err(fmt_err)?;
                    continue;
                }
            }
            let meta = meta_of(&path, &md)?;
            let node = if ft.is_dir() {
                let node = tree.add_dir(dir_node, name, meta).map_err(fmt_err)?;
                subdirs.push((path.clone(), node));
                node
            } else if ft.is_file() {
                // Content is fed once the tree is complete.
                let node = tree
                    .add_file(dir_node, name, meta, md.size())
                    .map_err(fmt_err)?;
                files.push(FileJob {
                    node,
                    path: path.clone(),
                    size: md.size(),
                    dev: md.dev(),
                    ino: md.ino(),
                    mtime: (md.mtime(), md.mtime_nsec()),
                });
                node
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)
                    .map_err(|e| BuildError::io("reading symlink", &path, e))?;
                tree.add_symlink(dir_node, name, meta, target.as_os_str().as_bytes())
                    .map_err(fmt_err)?
            } else {
                let kind = if ft.is_char_device() {
                    FileKind::CharDevice
                } else if ft.is_block_device() {
                    FileKind::BlockDevice
                } else if ft.is_fifo() {
                    FileKind::Fifo
                } else if ft.is_socket() {
                    FileKind::Socket
                } else {
                    return Err(BuildError::Unsupported {
                        path,
                        detail: format!("unknown file type (mode {:#o})", md.mode()),
                    });
                };
                tree.add_special(dir_node, name, meta, kind, md.rdev())
                    .map_err(fmt_err)?
            };
            if !ft.is_dir() && md.nlink() > 1 {
                links.insert((md.dev(), md.ino()), node);
            }
        }
        // Reversed so that popping visits subdirectories in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(Walked { tree, files })
}
