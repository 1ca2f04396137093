//! The stub mark: the extended attribute a released file carries, a persistent record on the file itself
//! next to the journal's (a stub found without it was never punched, or was recalled completely).
//!
//! Layout (version 1): magic `HSM1` (the version is part of the magic), the 32-byte file map id, the u64 LE
//! size of the released content — 44 bytes, small enough to live inside a 256-byte ext4 inode, so a stub costs
//! no block at all.

use crate::hsm::filemap::FileMapId;
use crate::hsm::Reader;
use crate::ids::Digest;
use crate::FormatError;

/// The extended attribute holding the mark (`trusted.`: only root reads or changes it).
pub const STUB_XATTR: &str = "trusted.hydrate.hsm";
const MAGIC: &[u8; 4] = b"HSM1";
pub const STUB_MARK_LEN: usize = 44;

/// What a stub says about itself: which archive holds its content, and how large that content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StubMark {
    pub map: FileMapId,
    pub size: u64,
}

impl StubMark {
    pub fn encode(&self) -> [u8; STUB_MARK_LEN] {
        let mut b = [0u8; STUB_MARK_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4..36].copy_from_slice(self.map.0.as_bytes());
        b[36..].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<StubMark, FormatError> {
        let inner = || -> Result<StubMark, String> {
            let mut r = Reader::new(bytes);
            let magic: [u8; 4] = r.array("magic")?;
            if &magic != MAGIC {
                return Err(format!(
                    "bad magic {:?}, expected {:?} (written by a newer hydrate?)",
                    String::from_utf8_lossy(&magic),
                    String::from_utf8_lossy(MAGIC)
                ));
            }
            let map = FileMapId(Digest(r.array("map id")?));
            let size = r.u64("size")?;
            r.end()?;
            Ok(StubMark { map, size })
        };
        inner().map_err(|detail| FormatError::StubMark { detail })
    }
}
