//! The local tier of hydrate: a bounded, crash-safe cache of file contents.
//!
//! Each distinct file content (keyed by its [`ContentId`]) is one sparse data file plus a
//! persisted record of which byte ranges it holds ([`hydrate_format::RangeSet`] in a redb index). A complete
//! data file is what FUSE passthrough hands to the kernel. See [`DiskCache`] for the
//! durability and eviction rules.
//!
//! [`ContentId`]: hydrate_format::ContentId

#![forbid(unsafe_code)]
// Tests compare range lists with one-element arrays on purpose.
#![cfg_attr(test, allow(clippy::single_range_in_vec_init))]

mod disk;
mod error;
mod file;
mod index;

pub use disk::{CacheConfig, CacheStats, DiskCache};
pub use error::CacheError;
pub use file::CacheFile;

#[cfg(test)]
mod tests;
