//! The on-disk and on-store formats of the HSM (`hydrate hsm`), with no I/O.
//!
//! - [`filemap`]: the archive of one file — its size, content digest and chunk map — stored in the blob
//!   store at `hsm/maps/<hex>` and named by the digest of its bytes;
//! - [`journal`]: the values of the local journal's tables (file records, chunk locations, audit log
//!   entries), versioned by [`journal::JOURNAL_VERSION`];
//! - [`stub`]: the extended attribute a released file carries.
//!
//! They live here, next to the manifest and the trace, so that every byte layout hydrate writes is defined,
//! validated and golden-tested in one crate. The HSM crate converts these records to its working types (the
//! fetch engine's chunk locations, its range sets) at its boundary; nothing here depends on the fetch engine.

pub mod filemap;
pub mod journal;
pub mod stub;

pub use filemap::{ChunkLocation, FileMap, FileMapEntry, FileMapId, FILE_MAPS_PREFIX};
pub use journal::{ArchiveRecord, FileRecord, FileState, Fingerprint, LogRecord, JOURNAL_VERSION};
pub use stub::{StubMark, STUB_XATTR};

/// A bounds-checked little-endian reader over a record; every read names the field it was reading, so a
/// truncated record is reported as "ends inside <field>".
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    pub(crate) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "ends inside {field} ({} bytes, {field} needs {n} at offset {})",
                    self.bytes.len(),
                    self.at
                )
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], String> {
        Ok(self
            .take(N, field)?
            .try_into()
            .expect("take returned N bytes"))
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, String> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn i64(&mut self, field: &str) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }

    /// `n` bytes that must all be zero (padding, reserved fields).
    pub(crate) fn zeros(&mut self, n: usize, field: &str) -> Result<(), String> {
        if self.take(n, field)?.iter().any(|b| *b != 0) {
            return Err(format!("{field} is not zero"));
        }
        Ok(())
    }

    /// Checks a magic and a version, the first eight bytes of every HSM record.
    pub(crate) fn header(&mut self, magic: &[u8; 4], version: u32) -> Result<(), String> {
        let found: [u8; 4] = self.array("magic")?;
        if &found != magic {
            return Err(format!(
                "bad magic {:?}, expected {:?}",
                String::from_utf8_lossy(&found),
                String::from_utf8_lossy(magic)
            ));
        }
        let v = self.u32("version")?;
        if v != version {
            return Err(format!("version {v}, this build reads version {version}"));
        }
        Ok(())
    }

    /// Fails if bytes are left over.
    pub(crate) fn end(&self) -> Result<(), String> {
        if self.at != self.bytes.len() {
            return Err(format!(
                "{} trailing bytes after offset {}",
                self.bytes.len() - self.at,
                self.at
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
