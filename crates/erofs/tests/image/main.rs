//! hydrate-erofs against reality: the kernel mounts what the writer wrote, fsck.erofs checks it, and the
//! bytes of a fixed tree are pinned.

mod fixture;
mod fsck;
mod golden;
mod hostile;
mod mount;
mod validation;
