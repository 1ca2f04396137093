//! Streaming one layer blob: decompression by media type, sha256 of the compressed blob (its digest) and of
//! the tar stream (its diff_id) while reading, and translation of tar entries into [`EntryInfo`].
//!
//! Both conversion passes read layers through [`read_layer`], so both verify both digests: a blob that
//! changed between the passes is caught, not silently mixed.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::rc::Rc;

use hydrate_format::{FileKind, NodeMeta};
use tar::EntryType;

use crate::ConvertError;
use hydrate_format::oci::{
    Sha256Hasher, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type; anything else is refused with the layer named.
    pub fn of(media_type: &str, what: &str) -> Result<Compression, ConvertError> {
        match media_type {
            OCI_LAYER_TAR | DOCKER_LAYER_TAR => Ok(Compression::None),
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
            OCI_LAYER_ZSTD => Ok(Compression::Zstd),
            m if m.contains("nondistributable") || m.contains("foreign") => {
                Err(ConvertError::unsupported(
                    what,
                    format!(
                        "non-distributable (foreign) layer of media type {m} is not supported yet"
                    ),
                ))
            }
            m if m.contains("encrypted") => Err(ConvertError::unsupported(
                what,
                format!("encrypted layer of media type {m} is not supported yet"),
            )),
            m => Err(ConvertError::unsupported(
                what,
                format!("layer media type {m} is not supported yet"),
            )),
        }
    }
}

/// A layer ready to be read: where it is and what it must hash to.
#[derive(Debug, Clone)]
pub(crate) struct LayerPlan {
    pub index: usize,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub path: PathBuf,
    pub compression: Compression,
}

impl LayerPlan {
    /// How errors name this layer: `layer 2 (sha256:…)`, counted from 1 as tools show them.
    pub fn what(&self) -> String {
        format!("layer {} ({})", self.index + 1, self.digest)
    }
}

/// sha256 state shared between a reader and the code that checks it afterwards.
#[derive(Default)]
struct HashState {
    hasher: Sha256Hasher,
    bytes: u64,
}

pub(crate) struct HashingReader<R> {
    inner: R,
    state: Rc<RefCell<HashState>>,
}

impl<R> HashingReader<R> {
    /// A reader whose hash nobody checks (the fuzz entry point).
    pub(crate) fn unchecked(inner: R) -> Self {
        HashingReader {
            inner,
            state: Rc::default(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.borrow_mut();
        s.hasher.update(&buf[..n]);
        s.bytes += n as u64;
        Ok(n)
    }
}

/// The reader the tar parser sees: the decompressed layer, hashed for the diff_id.
pub(crate) type Plain = HashingReader<Box<dyn Read>>;

/// Streams layer `plan`, calling `on_entry` with every tar entry and its ordinal (its position in the
/// layer, counted the same way in both passes). The entry's data may be read or not; the rest of the
/// stream is read (and hashed) anyway. Fails if either digest does not match.
pub(crate) fn read_layer(
    plan: &LayerPlan,
    mut on_entry: impl FnMut(u64, &mut tar::Entry<'_, Plain>) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    let what = plan.what();
    let file = File::open(&plan.path).map_err(|e| ConvertError::io("opening", &plan.path, e))?;
    // A clone shares the file offset: after decompression it reads (and hashes) whatever the decoder left.
    let tail = file
        .try_clone()
        .map_err(|e| ConvertError::io("opening", &plan.path, e))?;
    let blob_state = Rc::new(RefCell::new(HashState::default()));
    let blob = HashingReader {
        inner: file,
        state: blob_state.clone(),
    };
    let decoded: Box<dyn Read> = match plan.compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(blob))),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(blob).map_err(|e| stream_error(&what, e))?)
        }
    };
    let plain_state = Rc::new(RefCell::new(HashState::default()));
    let mut archive = tar::Archive::new(HashingReader {
        inner: decoded,
        state: plain_state.clone(),
    });
    let entries = archive.entries().map_err(|e| stream_error(&what, e))?;
    for (ordinal, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| stream_error(&what, e))?;
        on_entry(ordinal as u64, &mut entry)?;
    }
    // The tar end marker may be followed by padding; the diff_id covers every byte.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
        .map_err(|e| stream_error(&what, e))?;
    std::io::copy(
        &mut HashingReader {
            inner: tail,
            state: blob_state.clone(),
        },
        &mut std::io::sink(),
    )
    .map_err(|e| ConvertError::io("reading", &plan.path, e))?;

    let blob = std::mem::take(&mut *blob_state.borrow_mut());
    if blob.bytes != plan.size {
        return Err(ConvertError::corrupt(
            what,
            format!(
                "blob {} is {} bytes, the manifest says {}",
                plan.path.display(),
                blob.bytes,
                plan.size
            ),
        ));
    }
    check(&what, "blob", &plan.digest, blob.hasher)?;
    let plain = std::mem::take(&mut *plain_state.borrow_mut());
    check(
        &what,
        "uncompressed tar (diff_id)",
        &plan.diff_id,
        plain.hasher,
    )
}

fn check(what: &str, part: &str, expected: &str, hasher: Sha256Hasher) -> Result<(), ConvertError> {
    let actual = hasher.digest();
    if actual != expected {
        return Err(ConvertError::DigestMismatch {
            what: format!("{what} {part}"),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// A damaged layer stream; an early end is called what it is.
pub(crate) fn stream_error(what: &str, e: std::io::Error) -> ConvertError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ConvertError::corrupt(what, format!("truncated layer: {e}"))
    } else {
        ConvertError::corrupt(what, format!("damaged layer stream: {e}"))
    }
}

/// What a tar entry means for the merged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// Content stays in the layer and is read in the second pass.
    File {
        size: u64,
    },
    Dir,
    Symlink(Vec<u8>),
    /// A hard link to the (raw, unnormalized) target path.
    HardLink(Vec<u8>),
    Special {
        kind: FileKind,
        rdev: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryInfo {
    /// The raw path as stored (pax and GNU long names applied).
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub meta: NodeMeta,
}

/// Translates a tar entry; `None` for entries that carry no file (pax global headers).
pub(crate) fn entry_info(
    entry: &mut tar::Entry<'_, Plain>,
    what: &str,
) -> Result<Option<EntryInfo>, ConvertError> {
    let path = entry.path_bytes().into_owned();
    let named = || format!("{what} entry {}", String::from_utf8_lossy(&path));
    let header = entry.header();
    let bad_header = |field: &str, e: std::io::Error| {
        ConvertError::corrupt(named(), format!("bad header field {field}: {e}"))
    };
    let kind = match header.entry_type() {
        EntryType::Regular | EntryType::Continuous => EntryKind::File { size: entry.size() },
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => EntryKind::Symlink(link_target(entry, &named)?),
        EntryType::Link => EntryKind::HardLink(link_target(entry, &named)?),
        t @ (EntryType::Char | EntryType::Block) => {
            let major = header
                .device_major()
                .map_err(|e| bad_header("devmajor", e))?
                .unwrap_or(0);
            let minor = header
                .device_minor()
                .map_err(|e| bad_header("devminor", e))?
                .unwrap_or(0);
            let kind = if t == EntryType::Char {
                FileKind::CharDevice
            } else {
                FileKind::BlockDevice
            };
            EntryKind::Special {
                kind,
                rdev: libc::makedev(major, minor),
            }
        }
        EntryType::Fifo => EntryKind::Special {
            kind: FileKind::Fifo,
            rdev: 0,
        },
        EntryType::XGlobalHeader => return Ok(None),
        other => {
            return Err(ConvertError::unsupported(
                named(),
                format!("tar entry type {other:?} is not supported yet"),
            ))
        }
    };
    let mut meta = NodeMeta {
        mode: header.mode().map_err(|e| bad_header("mode", e))? & 0o7777,
        uid: clamp_id(header.uid().map_err(|e| bad_header("uid", e))?),
        gid: clamp_id(header.gid().map_err(|e| bad_header("gid", e))?),
        mtime_sec: i64::try_from(header.mtime().map_err(|e| bad_header("mtime", e))?)
            .unwrap_or(i64::MAX),
        mtime_nsec: 0,
        xattrs: Vec::new(),
    };
    apply_pax(entry, &mut meta, &named)?;
    Ok(Some(EntryInfo { path, kind, meta }))
}

fn clamp_id(id: u64) -> u32 {
    u32::try_from(id).unwrap_or(u32::MAX)
}

fn link_target(
    entry: &tar::Entry<'_, Plain>,
    named: &dyn Fn() -> String,
) -> Result<Vec<u8>, ConvertError> {
    entry
        .link_name_bytes()
        .map(|t| t.into_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ConvertError::corrupt(named(), "link without a target"))
}

/// Applies the pax records that refine the header: larger uid/gid, fractional mtime, xattrs.
fn apply_pax(
    entry: &mut tar::Entry<'_, Plain>,
    meta: &mut NodeMeta,
    named: &dyn Fn() -> String,
) -> Result<(), ConvertError> {
    let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| ConvertError::corrupt(named(), format!("bad pax header: {e}")))?
    else {
        return Ok(());
    };
    for ext in exts {
        let ext =
            ext.map_err(|e| ConvertError::corrupt(named(), format!("bad pax record: {e}")))?;
        let Ok(key) = ext.key() else { continue };
        let value = ext.value_bytes();
        let text = || std::str::from_utf8(value).ok().map(str::trim);
        let bad = |field: &str| {
            ConvertError::corrupt(
                named(),
                format!("bad pax {field} value {:?}", String::from_utf8_lossy(value)),
            )
        };
        match key {
            "uid" => {
                meta.uid = clamp_id(
                    text()
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| bad("uid"))?,
                )
            }
            "gid" => {
                meta.gid = clamp_id(
                    text()
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| bad("gid"))?,
                )
            }
            "mtime" => {
                (meta.mtime_sec, meta.mtime_nsec) = text()
                    .and_then(parse_pax_time)
                    .ok_or_else(|| bad("mtime"))?
            }
            k => {
                if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                    if meta.xattrs.iter().all(|(n, _)| n != name.as_bytes()) {
                        meta.xattrs.push((name.as_bytes().to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parses a pax time `[-]SECONDS[.FRACTION]` into seconds and nanoseconds (floor semantics for negative
/// times, as stat reports them).
pub(crate) fn parse_pax_time(t: &str) -> Option<(i64, u32)> {
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some((secs, nanos));
    }
    if nanos == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - nanos))
    }
}
