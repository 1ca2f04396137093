//! The erofs on-disk structures this writer emits, as fixed-width little-endian byte encoders.
//!
//! Field offsets follow the kernel's `fs/erofs/erofs_fs.h` (6.x): a 128-byte superblock at byte 1024, 128-byte
//! device slots, 64-byte extended inodes, 12-byte dirents, 8-byte chunk indexes. Only the subset the writer
//! uses is here; every other field is written as zero, which is what the kernel expects of features that are
//! off (48-bit addressing, metabox, compression, long xattr prefixes, xattr filters).

/// Block size: 4 KiB, the page size, the only size every kernel's file-backed mount supports.
pub const BLOCK_SIZE: u64 = 4096;
/// `blkszbits` of [`BLOCK_SIZE`].
pub const BLOCK_BITS: u8 = 12;
/// Where the superblock starts (the first KiB is left for boot sectors).
pub const SUPER_OFFSET: usize = 1024;
/// The superblock's magic number (`EROFS_SUPER_MAGIC_V1`).
pub const MAGIC: u32 = 0xE0F5_E1E2;
/// Size of the superblock without extension slots.
pub const SUPERBLOCK_SIZE: usize = 128;
/// Size of one device table slot.
pub const DEVICE_SLOT_SIZE: usize = 128;
/// Inodes are addressed in 32-byte slots: `nid = (offset - meta_blkaddr * BLOCK_SIZE) / 32`.
pub const INODE_SLOT_SIZE: u64 = 32;
/// Size of an extended (64-byte) inode.
pub const EXTENDED_INODE_SIZE: usize = 64;
/// Size of one directory entry header; the names follow all headers of a block.
pub const DIRENT_SIZE: usize = 12;
/// Size of one chunk index entry.
pub const CHUNK_INDEX_SIZE: usize = 8;
/// Longest file name erofs stores (`EROFS_NAME_LEN`).
pub const NAME_MAX: usize = 255;
/// Size of the in-inode xattr header (`erofs_xattr_ibody_header`).
pub const XATTR_IBODY_HEADER_SIZE: usize = 12;
/// Size of one xattr entry header (`erofs_xattr_entry`, before name and value).
pub const XATTR_ENTRY_HEADER_SIZE: usize = 4;

/// `feature_compat`: the superblock carries a crc32c of its block.
pub const FEATURE_COMPAT_SB_CHKSUM: u32 = 0x1;
/// `feature_incompat`: chunk-based inodes exist.
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// `feature_incompat`: a device table follows the superblock.
pub const FEATURE_INCOMPAT_DEVICE_TABLE: u32 = 0x8;

/// `i_format` bit 0: the extended (64-byte) inode layout.
const INODE_LAYOUT_EXTENDED: u16 = 1;
/// `i_format` bits 1-3: how the inode's data is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLayout {
    /// Data in consecutive blocks from `i_u` (the start block); nothing inline.
    FlatPlain = 0,
    /// Full blocks from `i_u`, the tail (size % block size) right after the inode and its xattrs.
    FlatInline = 2,
    /// Chunk index entries after the inode and its xattrs, each naming a device and a start block.
    ChunkBased = 4,
}

/// `i_u.c.format` flag: chunk index entries (8 bytes, with a device id) rather than a bare block array.
pub const CHUNK_FORMAT_INDEXES: u16 = 0x20;
/// Largest chunk size exponent over the block size (`EROFS_CHUNK_FORMAT_BLKBITS_MASK`).
pub const CHUNK_BITS_MAX: u32 = 31;

/// Directory entry file types (the kernel's `FT_*`).
pub mod file_type {
    pub const REGULAR: u8 = 1;
    pub const DIRECTORY: u8 = 2;
    pub const CHAR_DEVICE: u8 = 3;
    pub const BLOCK_DEVICE: u8 = 4;
    pub const FIFO: u8 = 5;
    pub const SOCKET: u8 = 6;
    pub const SYMLINK: u8 = 7;
}

/// The superblock fields the writer sets; everything else is zero.
#[derive(Debug, Clone, Default)]
pub struct SuperBlock {
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub root_nid: u16,
    pub inodes: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub extra_devices: u16,
    pub devt_slotoff: u16,
}

impl SuperBlock {
    /// The 128 bytes at [`SUPER_OFFSET`], with a zero checksum (see [`superblock_checksum`]).
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        put_u32(&mut b, 0, MAGIC);
        put_u32(&mut b, 8, self.feature_compat);
        b[12] = BLOCK_BITS;
        // 13: sb_extslots = 0 (a 128-byte superblock).
        put_u16(&mut b, 14, self.root_nid);
        put_u64(&mut b, 16, self.inodes);
        put_u64(&mut b, 24, self.build_time);
        put_u32(&mut b, 32, self.build_time_nsec);
        put_u32(&mut b, 36, self.blocks);
        put_u32(&mut b, 40, self.meta_blkaddr);
        // 44: xattr_blkaddr = 0 (no shared xattrs).
        b[48..64].copy_from_slice(&self.uuid);
        b[64..80].copy_from_slice(&self.volume_name);
        put_u32(&mut b, 80, self.feature_incompat);
        put_u16(&mut b, 86, self.extra_devices);
        put_u16(&mut b, 88, self.devt_slotoff);
        // 90: dirblkbits = 0 (directory blocks are filesystem blocks); the rest stays zero.
        b
    }
}

/// One device table slot: the device's tag and size. `uniaddr` (the flat address space) stays zero: data
/// addresses name their device explicitly in chunk indexes.
pub fn device_slot(tag: &[u8; 64], blocks: u32) -> [u8; DEVICE_SLOT_SIZE] {
    let mut b = [0u8; DEVICE_SLOT_SIZE];
    b[..64].copy_from_slice(tag);
    put_u32(&mut b, 64, blocks);
    b
}

/// The fields of one extended inode.
#[derive(Debug, Clone, Default)]
pub struct ExtendedInode {
    pub layout: u16,
    pub xattr_icount: u16,
    pub mode: u16,
    pub size: u64,
    /// `i_u`: start block (flat layouts), encoded device number (devices), chunk format (chunk-based).
    pub union: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
    pub nlink: u32,
}

impl ExtendedInode {
    pub fn encode(&self) -> [u8; EXTENDED_INODE_SIZE] {
        let mut b = [0u8; EXTENDED_INODE_SIZE];
        put_u16(&mut b, 0, INODE_LAYOUT_EXTENDED | (self.layout << 1));
        put_u16(&mut b, 2, self.xattr_icount);
        put_u16(&mut b, 4, self.mode);
        // 6: i_nb (48-bit block address MSBs), unused without the 48BIT feature.
        put_u64(&mut b, 8, self.size);
        put_u32(&mut b, 16, self.union);
        put_u32(&mut b, 20, self.ino);
        put_u32(&mut b, 24, self.uid);
        put_u32(&mut b, 28, self.gid);
        put_u64(&mut b, 32, self.mtime);
        put_u32(&mut b, 40, self.mtime_nsec);
        put_u32(&mut b, 44, self.nlink);
        b
    }
}

/// One directory entry header.
pub fn dirent(nid: u64, nameoff: u16, file_type: u8) -> [u8; DIRENT_SIZE] {
    let mut b = [0u8; DIRENT_SIZE];
    put_u64(&mut b, 0, nid);
    put_u16(&mut b, 8, nameoff);
    b[10] = file_type;
    b
}

/// One chunk index entry: the chunk's device (0 = this image, 1.. = the device table's slots) and start block.
pub fn chunk_index(device_id: u16, start_block: u32) -> [u8; CHUNK_INDEX_SIZE] {
    let mut b = [0u8; CHUNK_INDEX_SIZE];
    // 0: startblk_hi, used only with the 48BIT feature.
    put_u16(&mut b, 2, device_id);
    put_u32(&mut b, 4, start_block);
    b
}

/// The kernel's `new_encode_dev`: 12 bits of major, 20 bits of minor in one 32-bit word.
pub fn encode_rdev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Splits a Linux `dev_t` as userspace sees it (glibc's `makedev` encoding, as in `st_rdev`).
pub fn split_dev_t(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    (major as u32, minor as u32)
}

/// The superblock checksum as the kernel computes it: crc32c seeded with `!0` and not inverted at the end,
/// over the superblock's block from [`SUPER_OFFSET`] on, with the checksum field zeroed.
pub fn superblock_checksum(block0_from_super: &[u8]) -> u32 {
    crc32c_update(!0, block0_from_super)
}

/// Raw crc32c (Castagnoli, reflected polynomial 0x82F63B78) register update, without pre- or post-inversion.
fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = crc32c_table();
    for &byte in data {
        crc = TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The standard crc32c of "123456789" is 0xE3069283 (with pre- and post-inversion).
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn rdev_round_trips_through_both_encodings() {
        // /dev/null is 1:3, /dev/sda1 8:1; a large minor exercises the split 20-bit field.
        assert_eq!(encode_rdev(1, 3), 0x103);
        assert_eq!(encode_rdev(8, 1), 0x801);
        assert_eq!(encode_rdev(0xabc, 0x12345), 0x123a_bc45);
        assert_eq!(split_dev_t(libc::makedev(0xabc, 0x12345)), (0xabc, 0x12345));
        assert_eq!(split_dev_t(libc::makedev(1, 3)), (1, 3));
    }

    #[test]
    fn extended_inode_fields_land_at_the_kernel_offsets() {
        let inode = ExtendedInode {
            layout: DataLayout::ChunkBased as u16,
            xattr_icount: 7,
            mode: 0o100644,
            size: 5 << 30,
            union: u32::from(CHUNK_FORMAT_INDEXES | 3),
            ino: 9,
            uid: 100_000,
            gid: 200_000,
            mtime: (-1i64) as u64,
            mtime_nsec: 999_999_999,
            nlink: 3,
        }
        .encode();
        assert_eq!(u16::from_le_bytes([inode[0], inode[1]]), 1 | (4 << 1));
        assert_eq!(
            u64::from_le_bytes(inode[8..16].try_into().unwrap()),
            5 << 30
        );
        assert_eq!(
            u32::from_le_bytes(inode[24..28].try_into().unwrap()),
            100_000
        );
        assert_eq!(u32::from_le_bytes(inode[44..48].try_into().unwrap()), 3);
        assert!(inode[48..].iter().all(|&b| b == 0));
    }
}
