//! The filesystem core of hydrate: an image's tree, attributes and file data, served from a memory-mapped
//! manifest, a local cache and a fetch engine, with no knowledge of FUSE or fanotify.
//!
//! Front-ends are thin adapters over [`Volume`]; this crate can be tested without a kernel.
#![deny(unsafe_code)]

#[cfg(test)]
mod reftests;
#[cfg(test)]
mod tests;

mod elf;
mod error;
mod fill;
mod image;
mod prefetch;
mod stats;
mod trace;
mod volume;
mod writeback;

pub use error::{CoreError, Result};
pub use fill::FillOutcome;
pub use hydrate_format::{FileKind, ImageId, Ino, InodeAttr};
pub use image::{load_manifest, MappedManifest};
pub use prefetch::PlanOutcome;
pub use stats::VolumeStats;
pub use trace::{read_trace, TraceRecorder};
pub use volume::{DirEntry, FsTotals, Opened, Volume, VolumeConfig};
