//! OCI runtime bundles over hydrate images (`hydrate rootfs`): a bundle's layout and state file, the overlay of
//! a lazy image mount (lower) and a writable directory (upper), image mounts shared by the bundles of one image,
//! and taking a bundle apart again. The runtime spec (`config.json`) is crate `hydrate-runtime-spec`; the image
//! mount itself is `hydrate-mountd`'s.
//!
//! Errors are `anyhow` chains naming the path and what to do: every caller is a command that reports them.

pub mod layout;
pub mod shared;
pub mod teardown;
#[cfg(test)]
mod tests;

pub use layout::{
    create_layout, plan_layout, private_cache_if_shared_busy, save_state, BundleState,
    STATE_VERSION,
};
pub use shared::SharedLower;
pub use teardown::{is_mount_point, remove, teardown, unmount_lower};

/// Mounts overlayfs on the bundle's rootfs: the image mount below, the container's writes above.
pub fn mount_overlay(state: &BundleState) -> anyhow::Result<()> {
    use anyhow::Context;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        state.lower.display(),
        state.upper.display(),
        state.work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &state.rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .with_context(|| {
        format!(
            "mounting overlayfs on {} ({options})",
            state.rootfs.display()
        )
    })
}

/// Writes the runtime spec as the bundle's config.json (whole or not at all).
pub fn write_config(state: &BundleState, json: &[u8]) -> anyhow::Result<()> {
    layout::write_atomic(&state.bundle.join("config.json"), json)
}
