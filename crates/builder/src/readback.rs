//! Reading a regular file of an image straight back from its store, chunk by chunk, without a cache or the
//! fetch engine: the check that a build or conversion stored what it read (the builder's and the
//! converter's tests use it; so can a tool that audits a store).

use hydrate_format::{decode_chunk, Ino, Manifest};
use hydrate_store::{keys, BlobStore};

use crate::BuildError;

/// The bytes of regular file `ino` of `manifest`, each chunk read with one ranged request and decoded
/// (decoding checks the chunk's digest). Fails if a chunk is missing, damaged, or the chunks do not tile the
/// file exactly.
pub async fn read_file<B: AsRef<[u8]>>(
    store: &dyn BlobStore,
    manifest: &Manifest<B>,
    ino: Ino,
) -> Result<Vec<u8>, BuildError> {
    let mut out = Vec::new();
    for fc in manifest.file_chunks(ino) {
        let key = || {
            keys::blob(
                &manifest
                    .blob(manifest.chunk(fc.chunk_index()).blob_index())
                    .id(),
            )
        };
        if fc.file_offset() != out.len() as u64 {
            return Err(BuildError::Worker(format!(
                "inode {ino:?}: a chunk starts at {} where {} bytes were read",
                fc.file_offset(),
                out.len()
            )));
        }
        let rec = manifest.chunk(fc.chunk_index());
        let stored = store
            .get_range(&key(), rec.stored_range())
            .await
            .map_err(|e| BuildError::store(format!("reading a chunk of inode {ino:?}"), e))?;
        let plain = decode_chunk(rec, &stored).map_err(|source| BuildError::Format {
            path: key().into(),
            source,
        })?;
        out.extend(plain);
    }
    Ok(out)
}
