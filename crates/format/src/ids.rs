//! Identifiers of the image format: BLAKE3 digests and their role newtypes, inode numbers and file kinds.
//!
//! Every object of an image is named by the BLAKE3 digest of its bytes. The newtypes keep the roles apart
//! (a chunk digest is never accepted where a blob digest is expected) while sharing one representation.

use std::fmt;
use std::str::FromStr;

use crate::FormatError;

/// A BLAKE3 digest. `Display`/`FromStr` use 64 lowercase hex digits; `Debug` shows a short prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The all-zero digest, used where a field has no meaning (e.g. the content of a directory).
    pub const ZERO: Digest = Digest([0; 32]);

    /// The BLAKE3 digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Twelve hex digits identify an object in logs without drowning them.
        f.write_str(&hex::encode(&self.0[..6]))
    }
}

impl FromStr for Digest {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FormatError::BadDigest {
            input: s.chars().take(80).collect(),
        };
        // Lowercase only, so that one digest has exactly one spelling (keys in stores are spelled this way).
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(Digest(out))
    }
}

macro_rules! digest_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        #[repr(transparent)]
        pub struct $name(pub Digest);

        impl $name {
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0 .0
            }

            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(Digest(bytes))
            }

            pub fn digest(&self) -> Digest {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = FormatError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }
    };
}

digest_newtype!(
    /// BLAKE3 of a chunk's plain (uncompressed) bytes.
    ChunkId
);
digest_newtype!(
    /// BLAKE3 of a whole blob object as stored (`blobs/<hex>`).
    BlobId
);
digest_newtype!(
    /// BLAKE3 of a regular file's whole content; the local cache keys on it.
    ContentId
);
digest_newtype!(
    /// BLAKE3 of the manifest bytes: the identity of an image.
    ImageId
);

/// An inode number. 1 is the root; numbers are dense `1..=inode_count` and fixed by the manifest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(1);
}

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The kind of an inode. The on-disk code is the discriminant (`kind as u8`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum FileKind {
    Directory = 0,
    Regular = 1,
    Symlink = 2,
    CharDevice = 3,
    BlockDevice = 4,
    Fifo = 5,
    Socket = 6,
}

impl FileKind {
    pub const ALL: [FileKind; 7] = [
        FileKind::Directory,
        FileKind::Regular,
        FileKind::Symlink,
        FileKind::CharDevice,
        FileKind::BlockDevice,
        FileKind::Fifo,
        FileKind::Socket,
    ];

    pub fn from_code(code: u8) -> Option<FileKind> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The `S_IFMT` bits of `st_mode` for this kind (Linux values).
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Directory => 0o040000,
            FileKind::Regular => 0o100000,
            FileKind::Symlink => 0o120000,
            FileKind::CharDevice => 0o020000,
            FileKind::BlockDevice => 0o060000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.mode_bits() == mode & S_IFMT)
    }
}

/// Mask of the file-type bits in `st_mode`.
pub const S_IFMT: u32 = 0o170000;

/// The attributes of one inode, decoded from the manifest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InodeAttr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Full `st_mode`, including the `S_IF*` type bits (which always agree with `kind`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files and the like: the number of entries naming the inode in the image.
    /// Directories: 2 + number of subdirectories.
    pub nlink: u32,
    /// Regular files: content length. Symlinks: target length. Everything else: 0.
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Device number for character and block devices; 0 otherwise.
    pub rdev: u64,
    /// Regular files: digest of the whole content. Zero digest otherwise.
    pub content: ContentId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trip_and_strictness() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert_eq!(s.parse::<ChunkId>().unwrap(), ChunkId(d));
        assert!(s.to_uppercase().parse::<Digest>().is_err());
        assert!(s[..63].parse::<Digest>().is_err());
        assert!(format!("{s}0").parse::<Digest>().is_err());
        assert_eq!(format!("{d:?}"), s[..12]);
    }

    #[test]
    fn kinds_round_trip_through_mode_and_code() {
        for k in FileKind::ALL {
            assert_eq!(FileKind::from_code(k as u8), Some(k));
            assert_eq!(FileKind::from_mode(k.mode_bits() | 0o755), Some(k));
        }
        assert_eq!(FileKind::from_code(7), None);
        assert_eq!(FileKind::from_mode(0o755), None);
    }
}
