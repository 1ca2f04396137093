//! Directory data: dirents packed into blocks, sorted by name within and across blocks.
//!
//! A directory block holds all its 12-byte dirent headers first, then the names back to back with no
//! terminator; a name ends where the next one starts, the last one at the block's used end (the kernel stops
//! at a NUL or the end). The first header's `nameoff` also says how many headers the block has. Lookups
//! binary-search first over blocks (by each block's first name), then within a block, comparing bytes as
//! unsigned, a prefix before its extensions: so the order is plain byte order over the whole directory,
//! including `.` and `..`, which are ordinary entries here. A wrongly ordered name is not an error the kernel
//! reports: it is a name that `readdir` lists and `stat` cannot find.

use crate::format::{dirent, BLOCK_SIZE, DIRENT_SIZE};

/// The plan of one directory's data: which entries (in sorted order) go into which block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirLayout {
    /// For each block, the index of its first entry; block `i` ends where block `i + 1` starts.
    pub block_starts: Vec<usize>,
    /// Total entries.
    pub entries: usize,
    /// Bytes used in the last block.
    pub last_block_used: usize,
}

impl DirLayout {
    /// Packs entries whose sorted names are `names` greedily, as many per block as fit.
    pub fn plan<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut block_starts = vec![0];
        let mut used = 0usize;
        let mut entries = 0usize;
        for name in names {
            let need = DIRENT_SIZE + name.len();
            if used + need > BLOCK_SIZE as usize {
                block_starts.push(entries);
                used = 0;
            }
            used += need;
            entries += 1;
        }
        Self {
            block_starts,
            entries,
            last_block_used: used,
        }
    }

    /// Number of directory blocks.
    pub fn blocks(&self) -> u64 {
        self.block_starts.len() as u64
    }

    /// The directory's `i_size`: full blocks and the used part of the last one.
    pub fn size(&self) -> u64 {
        (self.blocks() - 1) * BLOCK_SIZE + self.last_block_used as u64
    }

    /// The entry index range of block `block`.
    pub fn block_range(&self, block: usize) -> std::ops::Range<usize> {
        let end = self
            .block_starts
            .get(block + 1)
            .copied()
            .unwrap_or(self.entries);
        self.block_starts[block]..end
    }
}

/// One entry as it is written: name, inode number and file type.
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    pub name: &'a [u8],
    pub nid: u64,
    pub file_type: u8,
}

/// The bytes of one directory block holding `entries` (already sorted, already planned to fit): headers,
/// then names, unpadded (the caller pads full blocks with zeros).
pub fn encode_block(entries: &[DirEntry<'_>]) -> Vec<u8> {
    let headers = entries.len() * DIRENT_SIZE;
    let mut out = Vec::with_capacity(BLOCK_SIZE as usize);
    let mut nameoff = headers;
    for entry in entries {
        out.extend_from_slice(&dirent(entry.nid, nameoff as u16, entry.file_type));
        nameoff += entry.name.len();
    }
    for entry in entries {
        out.extend_from_slice(entry.name);
    }
    debug_assert!(out.len() <= BLOCK_SIZE as usize);
    out
}

/// Sorts names as the kernel's lookup compares them: bytes as unsigned, a prefix first.
pub fn sort_names<T>(entries: &mut [T], name: impl Fn(&T) -> &[u8]) {
    entries.sort_by(|a, b| name(a).cmp(name(b)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_puts_dots_and_prefixes_where_the_kernel_expects_them() {
        let mut names: Vec<&[u8]> =
            vec![b"b", b"..", b"a", b"-x", b".", b"ab", b"\xff", b"A", b"a b"];
        sort_names(&mut names, |n| n);
        let expected: Vec<&[u8]> =
            vec![b"-x", b".", b"..", b"A", b"a", b"a b", b"ab", b"b", b"\xff"];
        assert_eq!(names, expected);
    }

    #[test]
    fn a_small_directory_is_one_partial_block() {
        let layout = DirLayout::plan([&b"."[..], b"..", b"file"]);
        assert_eq!(layout.blocks(), 1);
        assert_eq!(layout.size(), (3 * 12 + 1 + 2 + 4) as u64);
        assert_eq!(layout.block_range(0), 0..3);
    }

    #[test]
    fn entries_spill_into_the_next_block_exactly_when_they_do_not_fit() {
        // Entries of 12 + 244 = 256 bytes: 16 fill a block exactly, the 17th starts block 2.
        let names: Vec<Vec<u8>> = (0..33).map(|i| format!("{i:0244}").into_bytes()).collect();
        let layout = DirLayout::plan(names.iter().map(|n| n.as_slice()));
        assert_eq!(layout.block_starts, vec![0, 16, 32]);
        assert_eq!(layout.size(), 2 * BLOCK_SIZE + 256);
        assert_eq!(layout.block_range(1), 16..32);
        assert_eq!(layout.block_range(2), 32..33);
    }

    #[test]
    fn names_follow_the_headers_and_nameoffs_chain() {
        let entries = [
            DirEntry {
                name: b".",
                nid: 0,
                file_type: 2,
            },
            DirEntry {
                name: b"..",
                nid: 0,
                file_type: 2,
            },
            DirEntry {
                name: b"long name",
                nid: 77,
                file_type: 1,
            },
        ];
        let block = encode_block(&entries);
        assert_eq!(block.len(), 36 + 1 + 2 + 9);
        let nameoff =
            |i: usize| u16::from_le_bytes([block[i * 12 + 8], block[i * 12 + 9]]) as usize;
        assert_eq!((nameoff(0), nameoff(1), nameoff(2)), (36, 37, 39));
        // The first nameoff tells the kernel the header count.
        assert_eq!(nameoff(0) / DIRENT_SIZE, 3);
        assert_eq!(&block[39..], b"long name");
        assert_eq!(u64::from_le_bytes(block[24..32].try_into().unwrap()), 77);
        assert_eq!(block[24 + 10], 1);
    }
}
