//! Where files' data goes in a blob device, and back: from a blob offset to the file and offset it holds.
//!
//! Each non-empty file gets one contiguous extent starting on a 4 KiB block; extents follow each other in
//! the order files are placed, with the last block's slack left as a hole (zeros). Files placed with the same
//! dedup key (a content digest) share the first one's extent. The fanotify filler works the other way round:
//! a pre-content event names a blob range, and [`BlobLayout::pieces`] says which file bytes fill it. Bytes
//! of the range in block slack or beyond the last extent belong to no file and read as zeros.

use std::collections::HashMap;

use crate::error::{ErofsError, Result};
use crate::format::BLOCK_SIZE;

/// One extent of a blob: its first block, its data length, and the files whose data it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobExtent<F> {
    pub block: u64,
    pub size: u64,
    /// The files placed here, in placement order; all have the same content.
    pub files: Vec<F>,
}

impl<F> BlobExtent<F> {
    /// Byte offset of the extent in the blob.
    pub fn offset(&self) -> u64 {
        self.block * BLOCK_SIZE
    }

    /// Blocks the extent occupies, slack included.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(BLOCK_SIZE)
    }
}

/// Where [`BlobLayout::place`] put a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// First block of the file's data in the blob device.
    pub block: u64,
    /// Whether an earlier file with the same dedup key already had this extent.
    pub shared: bool,
}

/// A part of a blob range that holds file data: `len` bytes at `blob_offset` are the extent's files' bytes
/// at `file_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobPiece<'a, F> {
    pub extent: &'a BlobExtent<F>,
    pub blob_offset: u64,
    pub file_offset: u64,
    pub len: u64,
}

/// The extents of one blob device, in block order.
#[derive(Debug, Clone)]
pub struct BlobLayout<F> {
    extents: Vec<BlobExtent<F>>,
    by_key: HashMap<Vec<u8>, usize>,
    next_block: u64,
}

impl<F> Default for BlobLayout<F> {
    fn default() -> Self {
        Self {
            extents: Vec::new(),
            by_key: HashMap::new(),
            next_block: 0,
        }
    }
}

impl<F> BlobLayout<F> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `file` of `size` bytes: `None` for an empty file (no data), else its extent's first block. With
    /// a `dedup_key` seen before, the file shares that extent (the sizes must agree).
    pub fn place(
        &mut self,
        file: F,
        size: u64,
        dedup_key: Option<&[u8]>,
    ) -> Result<Option<Placement>> {
        if size == 0 {
            return Ok(None);
        }
        if let Some(&index) = dedup_key.and_then(|key| self.by_key.get(key)) {
            let extent = &mut self.extents[index];
            if extent.size != size {
                return Err(ErofsError::DedupSizeMismatch {
                    size,
                    earlier: extent.size,
                });
            }
            extent.files.push(file);
            return Ok(Some(Placement {
                block: extent.block,
                shared: true,
            }));
        }
        let block = self.next_block;
        let end = block + size.div_ceil(BLOCK_SIZE);
        if end > u64::from(u32::MAX) {
            return Err(ErofsError::TooLarge {
                what: format!("blob of {end} blocks (a device holds at most 2^32 - 1)"),
            });
        }
        self.next_block = end;
        if let Some(key) = dedup_key {
            self.by_key.insert(key.to_vec(), self.extents.len());
        }
        self.extents.push(BlobExtent {
            block,
            size,
            files: vec![file],
        });
        Ok(Some(Placement {
            block,
            shared: false,
        }))
    }

    /// The blob's size in blocks: what [`crate::ErofsWriter::add_device`] wants, and the blob file's length
    /// divided by 4096.
    pub fn blocks(&self) -> u64 {
        self.next_block
    }

    pub fn extents(&self) -> &[BlobExtent<F>] {
        &self.extents
    }

    /// The extent holding data at blob byte `offset`, and the offset within its files; `None` in block slack
    /// and past the end.
    pub fn locate(&self, offset: u64) -> Option<(&BlobExtent<F>, u64)> {
        let index = self
            .extents
            .partition_point(|e| e.offset() + e.size <= offset);
        let extent = self.extents.get(index)?;
        (offset >= extent.offset()).then(|| (extent, offset - extent.offset()))
    }

    /// The file data in the blob range `offset..offset + len`, in blob order (slack and gaps left out).
    pub fn pieces(&self, offset: u64, len: u64) -> Vec<BlobPiece<'_, F>> {
        let end = offset.saturating_add(len);
        let first = self
            .extents
            .partition_point(|e| e.offset() + e.size <= offset);
        self.extents[first..]
            .iter()
            .take_while(|e| e.offset() < end)
            .filter_map(|extent| {
                let start = offset.max(extent.offset());
                let stop = end.min(extent.offset() + extent.size);
                (start < stop).then(|| BlobPiece {
                    extent,
                    blob_offset: start,
                    file_offset: start - extent.offset(),
                    len: stop - start,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> BlobLayout<&'static str> {
        let mut layout = BlobLayout::new();
        assert_eq!(layout.place("empty", 0, None).unwrap(), None);
        let a = layout.place("a", 5000, Some(b"A")).unwrap().unwrap();
        let b = layout.place("b", 4096, None).unwrap().unwrap();
        let a2 = layout.place("a2", 5000, Some(b"A")).unwrap().unwrap();
        let c = layout.place("c", 1, Some(b"C")).unwrap().unwrap();
        assert_eq!(
            a,
            Placement {
                block: 0,
                shared: false
            }
        );
        assert_eq!(
            b,
            Placement {
                block: 2,
                shared: false
            }
        );
        assert_eq!(
            a2,
            Placement {
                block: 0,
                shared: true
            }
        );
        assert_eq!(
            c,
            Placement {
                block: 3,
                shared: false
            }
        );
        layout
    }

    #[test]
    fn extents_are_block_aligned_and_shared_by_key() {
        let layout = layout();
        assert_eq!(layout.blocks(), 4);
        assert_eq!(layout.extents()[0].files, vec!["a", "a2"]);
        let mut mismatched = layout.clone();
        assert!(matches!(
            mismatched.place("bad", 4999, Some(b"A")),
            Err(ErofsError::DedupSizeMismatch {
                size: 4999,
                earlier: 5000
            })
        ));
    }

    #[test]
    fn offsets_map_back_to_files_except_in_slack() {
        let layout = layout();
        let (extent, at) = layout.locate(4999).unwrap();
        assert_eq!((extent.files[0], at), ("a", 4999));
        assert!(layout.locate(5000).is_none(), "slack of a's second block");
        assert!(layout.locate(8191).is_none());
        assert_eq!(
            layout.locate(8192).map(|(e, at)| (e.files[0], at)),
            Some(("b", 0))
        );
        assert_eq!(
            layout.locate(3 * 4096).map(|(e, at)| (e.files[0], at)),
            Some(("c", 0))
        );
        assert!(layout.locate(3 * 4096 + 1).is_none());
        assert!(layout.locate(1 << 40).is_none());
    }

    #[test]
    fn a_range_splits_into_the_file_pieces_it_covers() {
        let layout = layout();
        // 4096..16384 covers the end of a, slack, all of b, and c's block.
        let pieces: Vec<_> = layout
            .pieces(4096, 12288)
            .iter()
            .map(|p| (p.extent.files[0], p.blob_offset, p.file_offset, p.len))
            .collect();
        assert_eq!(
            pieces,
            vec![
                ("a", 4096, 4096, 904),
                ("b", 8192, 0, 4096),
                ("c", 12288, 0, 1)
            ]
        );
        assert!(layout.pieces(5000, 3192).is_empty(), "slack only");
        assert_eq!(layout.pieces(0, 0).len(), 0);
    }
}
