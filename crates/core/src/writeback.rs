//! Storing fetched chunks in their cache files in large writes.
//!
//! Chunks are ~64 KiB; written one by one they leave the page cache of a cache file in small folios, and the
//! kernel's own reads of that file later (FUSE passthrough right after the fetch) run at a fraction of the
//! speed of a file written in large pieces. The fetch engine delivers the chunks of a coalesced request
//! together, so the callers here group each batch into runs of adjacent chunks of the same file and store each
//! run with one `pwritev`, copying nothing.

use bytes::Bytes;
use hydrate_cache::CacheFile;

/// One fetched chunk bound for `file` at `offset`; `tag` identifies it in the outcomes.
pub(crate) struct Piece<'a> {
    pub tag: usize,
    pub file: &'a CacheFile,
    pub offset: u64,
    pub data: Bytes,
}

/// Writes `pieces` (in any order), one system call per run of contiguous pieces of one file. Runs already
/// present in the file are skipped (another reader stored them first). Returns each piece's tag with the
/// outcome of its run (the error as text: it is shared by the run).
pub(crate) fn store_runs(mut pieces: Vec<Piece<'_>>) -> Vec<(usize, Result<(), String>)> {
    pieces.sort_by_key(|p| (p.file as *const CacheFile as usize, p.offset));
    let mut outcomes = Vec::with_capacity(pieces.len());
    let mut start = 0;
    while start < pieces.len() {
        let first = &pieces[start];
        let mut end = start + 1;
        let mut run_end = first.offset + first.data.len() as u64;
        while end < pieces.len()
            && std::ptr::eq(pieces[end].file, first.file)
            && pieces[end].offset == run_end
        {
            run_end += pieces[end].data.len() as u64;
            end += 1;
        }
        let run = &pieces[start..end];
        let result = if first.file.missing(first.offset..run_end).is_empty() {
            Ok(())
        } else {
            let parts: Vec<&[u8]> = run.iter().map(|p| &p.data[..]).collect();
            first
                .file
                .write_parts_at(&parts, first.offset)
                .map_err(|e| e.to_string())
        };
        for p in run {
            outcomes.push((p.tag, result.clone()));
        }
        start = end;
    }
    outcomes
}
