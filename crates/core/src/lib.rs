//! The filesystem core of hydrate: an image's tree, attributes and file data, served from a memory-mapped
//! manifest, a local cache and a fetch engine, with no knowledge of FUSE or fanotify.
//!
//! Front-ends are thin adapters over [`Volume`]; this crate can be tested without a kernel.
#![deny(unsafe_code)]

mod error;
mod image;
mod stats;
mod volume;

pub use error::{CoreError, Result};
pub use hydrate_format::{FileKind, ImageId, Ino, InodeAttr};
pub use image::{load_manifest, MappedManifest};
pub use stats::VolumeStats;
pub use volume::{DirEntry, FsTotals, Opened, Volume, VolumeConfig};
