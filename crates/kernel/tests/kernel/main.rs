//! One test binary: a real image built from a real directory, served by BlobFs through a real FUSE mount and
//! mounted as erofs (root), plus BlobFs and the image builder without a kernel.

mod fixture;
mod golden;
mod killed;
mod layout;
mod mounted;
