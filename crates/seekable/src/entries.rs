//! The files of a layer tar as the index records them: metadata plus the uncompressed offset of the data.
//!
//! The `tar` crate parses the headers: it resolves PAX and GNU long names and link names, applies a PAX
//! `size`, and tracks `raw_file_position` (the data offset in the uncompressed stream) while reading a
//! plain, non-seekable stream, which is all we need. PAX `uid`, `gid`, `mtime` and `SCHILY.xattr.*` records
//! it leaves to us. Whiteouts (`.wh.NAME`, `.wh..wh..opq`) are ordinary entries here: flattening layers is the
//! caller's job.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use tar::EntryType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    /// A hard link to `link_target`, an earlier entry of the same layer (or a lower layer).
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// A GNU sparse file: `data_offset` is where its packed extents start, not a plain image of the file.
    Sparse,
    /// Any other type flag, reported as found.
    Other(u8),
}

/// One entry of a layer tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// As written in the archive (PAX `path` / GNU long name applied), not normalized.
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Permission bits and set-id/sticky bits as in the header.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch (a PAX `mtime` wins, its fraction dropped).
    pub mtime: u64,
    /// Bytes of data stored for this entry (0 for links, directories, devices).
    pub size: u64,
    /// Offset of the first data byte in the uncompressed layer stream.
    pub data_offset: u64,
    /// Symlink or hard-link target.
    pub link_target: Option<PathBuf>,
    /// From PAX `SCHILY.xattr.NAME` records, in archive order; values are raw bytes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// (major, minor) of character and block devices.
    pub device: Option<(u32, u32)>,
}

impl TarEntry {
    /// The uncompressed byte range of this entry's data.
    pub fn data_range(&self) -> std::ops::Range<u64> {
        self.data_offset..self.data_offset + self.size
    }
}

fn kind(entry_type: EntryType) -> EntryKind {
    match entry_type {
        EntryType::Regular | EntryType::Continuous => EntryKind::File,
        EntryType::Directory => EntryKind::Directory,
        EntryType::Symlink => EntryKind::Symlink,
        EntryType::Link => EntryKind::HardLink,
        EntryType::Char => EntryKind::CharDevice,
        EntryType::Block => EntryKind::BlockDevice,
        EntryType::Fifo => EntryKind::Fifo,
        EntryType::GNUSparse => EntryKind::Sparse,
        other => EntryKind::Other(other.as_byte()),
    }
}

fn path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

fn pax_number(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let whole = text.split('.').next()?;
    whole.parse().ok()
}

fn invalid(what: &str, entry: &[u8], err: io::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} of {:?}: {err}", String::from_utf8_lossy(entry)),
    )
}

fn entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Option<TarEntry>> {
    let header = entry.header();
    let entry_type = header.entry_type();
    if entry_type == EntryType::XGlobalHeader {
        // pax global records (rare in layers) carry no file.
        return Ok(None);
    }
    let name = entry.path_bytes().into_owned();
    let mode = header.mode().map_err(|e| invalid("mode", &name, e))?;
    let mut uid = header.uid().map_err(|e| invalid("uid", &name, e))?;
    let mut gid = header.gid().map_err(|e| invalid("gid", &name, e))?;
    let mut mtime = header.mtime().map_err(|e| invalid("mtime", &name, e))?;
    let kind = kind(entry_type);
    let device = match kind {
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            let major = header
                .device_major()
                .map_err(|e| invalid("device", &name, e))?;
            let minor = header
                .device_minor()
                .map_err(|e| invalid("device", &name, e))?;
            major.zip(minor)
        }
        _ => None,
    };
    let link_target = entry.link_name_bytes().map(|bytes| path(&bytes));
    let size = entry.size();
    let data_offset = entry.raw_file_position();
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            let key = extension.key_bytes();
            let value = extension.value_bytes();
            if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((xattr.to_vec(), value.to_vec()));
            } else if key == b"uid" {
                uid = pax_number(value).unwrap_or(uid);
            } else if key == b"gid" {
                gid = pax_number(value).unwrap_or(gid);
            } else if key == b"mtime" {
                mtime = pax_number(value).unwrap_or(mtime);
            }
        }
    }
    Ok(Some(TarEntry {
        path: path(&name),
        kind,
        mode,
        uid,
        gid,
        mtime,
        size,
        data_offset,
        link_target,
        xattrs,
        device,
    }))
}

/// Lists the entries of the tar read from `stream`, stopping at its end-of-archive marker (the caller drains
/// the padding that may follow). Entry data is skipped, never buffered.
pub(crate) fn scan<R: Read>(stream: R) -> io::Result<Vec<TarEntry>> {
    let mut archive = tar::Archive::new(stream);
    let mut entries = Vec::new();
    for item in archive.entries()? {
        let mut item = item?;
        if let Some(found) = entry(&mut item)? {
            entries.push(found);
        }
    }
    Ok(entries)
}
