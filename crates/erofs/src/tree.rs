//! The builder: devices and entries by path, checked as they are added; [`ErofsWriter::write`] lays them out.
//!
//! Entries are kept in a map ordered by path, so the image does not depend on the order they were added in.
//! Parent directories are **not** created implicitly: a manifest lists every directory with its own mode,
//! owner and times, and a missing one is a bug worth reporting ([`ErofsError::MissingParent`], found at
//! write time so that entries may be added in any order). The root exists from the start with mode 0755,
//! owner 0:0 and the build time; adding `/` once replaces that.

use std::collections::BTreeMap;

use crate::error::{show, ErofsError, Result};
use crate::format::{split_dev_t, BLOCK_SIZE, NAME_MAX};
use crate::xattr;

/// An erofs device id: 1 for the first blob device added, 2 for the next... (0 is the metadata image itself,
/// which holds no file data here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub(crate) u16);

impl DeviceId {
    /// The id as chunk indexes store it.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The position of this device's `device=` option in the mount options (0-based).
    pub fn slot(self) -> usize {
        usize::from(self.0) - 1
    }
}

/// Seconds and nanoseconds since the epoch; negative seconds are before 1970.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// What every entry has besides its kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (at most 0o7777); the file type comes from the kind.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// Full xattr names (`user.x`, `security.capability`, `trusted.overlay.opaque`...) and values.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Where a regular file's data starts: a block of a blob device. The file's bytes are contiguous from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataLocation {
    pub device: DeviceId,
    pub block: u64,
}

/// The kind of an entry and what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    /// `data` is `None` exactly when `size` is 0.
    Regular {
        size: u64,
        data: Option<DataLocation>,
    },
    /// The target is stored in the metadata image (at most 4095 bytes, no NUL).
    Symlink {
        target: Vec<u8>,
    },
    /// `rdev` as userspace sees it (`st_rdev`, `libc::makedev`).
    CharDevice {
        rdev: u64,
    },
    BlockDevice {
        rdev: u64,
    },
    Fifo,
    Socket,
}

impl EntryKind {
    /// The `S_IFMT` bits of this kind.
    pub(crate) fn type_bits(&self) -> u16 {
        match self {
            Self::Directory => 0o040000,
            Self::Regular { .. } => 0o100000,
            Self::Symlink { .. } => 0o120000,
            Self::CharDevice { .. } => 0o020000,
            Self::BlockDevice { .. } => 0o060000,
            Self::Fifo => 0o010000,
            Self::Socket => 0o140000,
        }
    }
}

/// One file, directory, link or special file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub meta: Metadata,
}

/// Image-wide settings. The defaults give reproducible images: build time 0, zero UUID, no volume name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErofsOptions {
    /// The superblock's build time, also the default root directory's mtime.
    pub build_time: Timestamp,
    pub uuid: [u8; 16],
    /// At most 15 bytes (the kernel wants a NUL within the 16-byte field).
    pub volume_name: Vec<u8>,
    /// Whether to set the superblock crc32c (`EROFS_FEATURE_COMPAT_SB_CHKSUM`), which the kernel verifies.
    pub checksum: bool,
}

impl Default for ErofsOptions {
    fn default() -> Self {
        Self {
            build_time: Timestamp::default(),
            uuid: [0; 16],
            volume_name: Vec::new(),
            checksum: true,
        }
    }
}

/// A blob device as the device table describes it.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub tag: [u8; 64],
    pub blocks: u32,
}

/// A path's node: an entry, or a hard link to another path's entry.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Entry(Entry),
    Link(Vec<u8>),
}

/// Collects devices and entries, then writes the metadata image.
#[derive(Debug, Clone)]
pub struct ErofsWriter {
    pub(crate) options: ErofsOptions,
    pub(crate) devices: Vec<Device>,
    /// Normalized paths (no leading `/`; the root is empty) to their nodes.
    pub(crate) nodes: BTreeMap<Vec<u8>, Node>,
    root_added: bool,
}

/// Most devices the writer accepts; the device table then still fits a few blocks.
pub const MAX_DEVICES: usize = 1024;
/// Longest symlink target (PATH_MAX without its NUL).
pub const SYMLINK_MAX: usize = 4095;

impl ErofsWriter {
    pub fn new(options: ErofsOptions) -> Result<Self> {
        if options.volume_name.len() > 15 {
            return Err(ErofsError::VolumeName {
                reason: "longer than 15 bytes",
            });
        }
        if options.volume_name.contains(&0) {
            return Err(ErofsError::VolumeName {
                reason: "contains a NUL byte",
            });
        }
        check_nanos(b"", options.build_time.nanos)?;
        let root = Entry {
            kind: EntryKind::Directory,
            meta: Metadata {
                mode: 0o755,
                mtime: options.build_time,
                ..Metadata::default()
            },
        };
        Ok(Self {
            options,
            devices: Vec::new(),
            nodes: BTreeMap::from([(Vec::new(), Node::Entry(root))]),
            root_added: false,
        })
    }

    /// Adds a blob device of `blocks` 4 KiB blocks (at most 2^32 - 1: 16 TiB). `tag` (at most 64 bytes, the
    /// device slot's tag) is what the kernel opens when the mount gives no `device=` options, so a path or a
    /// digest both make sense; with `device=` options the kernel ignores it. Devices are mounted in the order
    /// they were added.
    pub fn add_device(&mut self, blocks: u64, tag: &[u8]) -> Result<DeviceId> {
        if self.devices.len() >= MAX_DEVICES {
            return Err(ErofsError::Device {
                reason: format!("more than {MAX_DEVICES} devices"),
            });
        }
        let blocks = u32::try_from(blocks).map_err(|_| ErofsError::Device {
            reason: format!(
                "{blocks} blocks: erofs without 48-bit addressing counts at most 2^32 - 1"
            ),
        })?;
        if tag.len() > 64 {
            return Err(ErofsError::Device {
                reason: format!("tag of {} bytes (at most 64)", tag.len()),
            });
        }
        let mut slot_tag = [0u8; 64];
        slot_tag[..tag.len()].copy_from_slice(tag);
        self.devices.push(Device {
            tag: slot_tag,
            blocks,
        });
        Ok(DeviceId(self.devices.len() as u16))
    }

    /// Adds an entry at `path` (`/a/b` or `a/b`; `/` is the root, which must be a directory).
    pub fn add(&mut self, path: impl AsRef<[u8]>, entry: Entry) -> Result<()> {
        let key = normalize(path.as_ref())?;
        self.check_entry(&key, &entry)?;
        if key.is_empty() {
            if entry.kind != EntryKind::Directory {
                return Err(ErofsError::InvalidPath {
                    path: show(&key),
                    reason: "the root must be a directory",
                });
            }
            if self.root_added {
                return Err(ErofsError::DuplicatePath { path: show(&key) });
            }
            self.root_added = true;
            self.nodes.insert(key, Node::Entry(sorted_xattrs(entry)));
            return Ok(());
        }
        if self.nodes.contains_key(&key) {
            return Err(ErofsError::DuplicatePath { path: show(&key) });
        }
        self.nodes.insert(key, Node::Entry(sorted_xattrs(entry)));
        Ok(())
    }

    /// Adds `path` as another name of the non-directory entry at `target` (one inode, `nlink` counts both).
    /// The target may be added later; it is resolved when the image is written.
    pub fn add_hard_link(
        &mut self,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> Result<()> {
        let key = normalize(path.as_ref())?;
        let target = normalize(target.as_ref())?;
        if key.is_empty() || self.nodes.contains_key(&key) {
            return Err(ErofsError::DuplicatePath { path: show(&key) });
        }
        if target == key {
            return Err(ErofsError::HardLink {
                path: show(&key),
                target: show(&target),
                reason: "links to itself",
            });
        }
        self.nodes.insert(key, Node::Link(target));
        Ok(())
    }

    fn check_entry(&self, key: &[u8], entry: &Entry) -> Result<()> {
        let meta = &entry.meta;
        if meta.mode & !0o7777 != 0 {
            return Err(ErofsError::InvalidMode {
                path: show(key),
                mode: meta.mode,
            });
        }
        check_nanos(key, meta.mtime.nanos)?;
        for (i, (name, value)) in meta.xattrs.iter().enumerate() {
            let problem = xattr::check(name, value).err();
            let duplicate = meta.xattrs[..i].iter().any(|(earlier, _)| earlier == name);
            if problem.is_some() || duplicate {
                return Err(ErofsError::Xattr {
                    path: show(key),
                    name: name.escape_ascii().to_string(),
                    problem: problem.unwrap_or(xattr::XattrProblem::Duplicate),
                });
            }
        }
        match &entry.kind {
            EntryKind::Symlink { target } => {
                let reason = if target.is_empty() {
                    Some("is empty")
                } else if target.len() > SYMLINK_MAX {
                    Some("is longer than 4095 bytes")
                } else if target.contains(&0) {
                    Some("contains a NUL byte")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(ErofsError::SymlinkTarget {
                        path: show(key),
                        reason,
                    });
                }
            }
            EntryKind::CharDevice { rdev } | EntryKind::BlockDevice { rdev } => {
                let (major, minor) = split_dev_t(*rdev);
                if major >= 1 << 12 || minor >= 1 << 20 {
                    return Err(ErofsError::RdevOutOfRange {
                        path: show(key),
                        major,
                        minor,
                    });
                }
            }
            EntryKind::Regular { size, data } => self.check_data(key, *size, *data)?,
            EntryKind::Directory | EntryKind::Fifo | EntryKind::Socket => {}
        }
        Ok(())
    }

    fn check_data(&self, key: &[u8], size: u64, data: Option<DataLocation>) -> Result<()> {
        let Some(location) = data else {
            if size == 0 {
                return Ok(());
            }
            return Err(ErofsError::FileData {
                path: show(key),
                reason: "a non-empty file needs a data location",
            });
        };
        if size == 0 {
            return Err(ErofsError::FileData {
                path: show(key),
                reason: "an empty file has no data location",
            });
        }
        let device = location.device.0;
        let Some(slot) = usize::from(device)
            .checked_sub(1)
            .and_then(|i| self.devices.get(i))
        else {
            return Err(ErofsError::UnknownDevice {
                path: show(key),
                device,
            });
        };
        let end = location.block.checked_add(size.div_ceil(BLOCK_SIZE));
        match end {
            Some(end) if end <= u64::from(slot.blocks) => Ok(()),
            _ => Err(ErofsError::ExtentBeyondDevice {
                path: show(key),
                device,
                start: location.block,
                end: end.unwrap_or(u64::MAX),
                device_blocks: u64::from(slot.blocks),
            }),
        }
    }
}

fn check_nanos(key: &[u8], nanos: u32) -> Result<()> {
    if nanos >= 1_000_000_000 {
        return Err(ErofsError::InvalidNanos {
            path: show(key),
            nanos,
        });
    }
    Ok(())
}

/// Xattrs in name order, so that the bytes do not depend on the order the caller listed them in.
fn sorted_xattrs(mut entry: Entry) -> Entry {
    entry.meta.xattrs.sort();
    entry
}

/// The map key of `path`: components joined by `/`, without leading `/`; one trailing `/` is allowed.
/// Components must be non-empty, neither `.` nor `..`, free of NUL, and at most 255 bytes.
pub(crate) fn normalize(path: &[u8]) -> Result<Vec<u8>> {
    let trimmed = path.strip_prefix(b"/").unwrap_or(path);
    let trimmed = trimmed.strip_suffix(b"/").unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let invalid = |reason| ErofsError::InvalidPath {
        path: show(trimmed),
        reason,
    };
    for name in trimmed.split(|&b| b == b'/') {
        match name {
            b"" => {
                return Err(invalid(
                    "empty component (`//` or a second leading or trailing `/`)",
                ))
            }
            b"." | b".." => return Err(invalid("`.` or `..` component")),
            _ if name.contains(&0) => return Err(invalid("NUL byte")),
            _ if name.len() > NAME_MAX => {
                return Err(ErofsError::NameTooLong {
                    path: show(trimmed),
                    len: name.len(),
                })
            }
            _ => {}
        }
    }
    Ok(trimmed.to_vec())
}

/// The parent key and last name of a non-root key.
pub(crate) fn split_parent(key: &[u8]) -> (&[u8], &[u8]) {
    match key.iter().rposition(|&b| b == b'/') {
        Some(i) => (&key[..i], &key[i + 1..]),
        None => (b"", key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_to_slash_joined_names() {
        assert_eq!(normalize(b"/").unwrap(), b"");
        assert_eq!(normalize(b"").unwrap(), b"");
        assert_eq!(normalize(b"/a/b c/").unwrap(), b"a/b c");
        assert_eq!(normalize(b"a/\xff\xfe").unwrap(), b"a/\xff\xfe");
        assert!(matches!(
            normalize(b"a//b"),
            Err(ErofsError::InvalidPath { .. })
        ));
        assert!(matches!(
            normalize(b"a/./b"),
            Err(ErofsError::InvalidPath { .. })
        ));
        assert!(matches!(
            normalize(b"a/../b"),
            Err(ErofsError::InvalidPath { .. })
        ));
        assert!(matches!(
            normalize(b"a\0b"),
            Err(ErofsError::InvalidPath { .. })
        ));
        assert!(normalize(&[b'n'; 255]).is_ok());
        assert!(matches!(
            normalize(&[b'n'; 256]),
            Err(ErofsError::NameTooLong { len: 256, .. })
        ));
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
    }
}
