//! hydrate-convert: turns an OCI or Docker container image (manifest, config, tar layers) into one
//! flattened hydrate image.
//!
//! Flattened on purpose: one FUSE mount, one lookup per path, and passthrough per complete file. Base
//! layers shared by many images still dedup, because file contents are content-defined-chunked and the
//! builder dedups chunks against every image already in the store.
//!
//! [`convert`] makes two passes over the layers, so memory is bounded by metadata and never holds file
//! data:
//! 1. every layer is streamed in order and applied to a merged in-memory tree (see `merge` for the layer
//!    semantics); regular files only remember which layer entry holds their content;
//! 2. the tree is emitted into a [`TreeBuild`] (with the source recorded in annotations) and
//!    [`hydrate_builder::build_tree`] runs with a feed that streams the layers again and hands each
//!    surviving file's data to the builder, in layer then tar order.
//!
//! Both passes verify each layer's blob digest and diff_id, so a layer changed between the passes is an
//! error. The same source image converted into the same store state gives the same image id.
//!
//! Sources: [`open_layout`] reads an OCI image layout directory; a registry client can fill a
//! [`SourceImage`] itself with the help of [`parse_manifest`] and [`select_platform`].

#![forbid(unsafe_code)]

pub mod containerd;
mod error;
mod layer;
mod layout;
mod merge;
mod oci;

use std::path::PathBuf;

use hydrate_builder::{build_tree, BuildOptions, BuildReport, FileSink, Progress, TreeBuild};
use hydrate_format::annotation;
use hydrate_format::oci::sha256_digest;
use hydrate_store::BlobStore;

pub use error::ConvertError;
pub use layout::open_layout;
pub use merge::MergeStats;
pub use oci::{parse_manifest, select_platform, Descriptor, ParsedManifest, Platform};

use layer::{entry_info, read_layer, Compression, LayerPlan};
use merge::Merged;

/// A container image ready to convert: verified manifest and config, layer blobs in local files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    /// Where the image came from, recorded in the result, e.g. `docker://host/repo:tag` or
    /// `oci-layout:/abs/dir:tag`.
    pub reference: String,
    /// `sha256:…` of the (platform-specific) image manifest.
    pub manifest_digest: String,
    /// The raw config blob; its digest has been verified.
    pub config: Vec<u8>,
    pub config_digest: String,
    /// Bottom layer first.
    pub layers: Vec<SourceLayer>,
}

/// One layer blob, as stored (compressed or not), in a local file. Its digest is checked while it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLayer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub path: PathBuf,
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertReport {
    pub build: BuildReport,
    pub layers: usize,
    /// Tar entries read in pass 1, over all layers.
    pub entries: u64,
    /// Whiteout entries (`.wh.NAME`) seen.
    pub whiteouts: u64,
    /// Opaque-directory markers (`.wh..wh..opq`) seen.
    pub opaque_dirs: u64,
    /// Hard-link entries applied.
    pub hardlinks: u64,
}

/// Converts `src` into a flattened image in `store` (see the crate documentation).
pub async fn convert(
    src: &SourceImage,
    store: &dyn BlobStore,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<ConvertReport, ConvertError> {
    let plans = plan_layers(src)?;
    progress.message(&format!(
        "reading {} layers of {}",
        plans.len(),
        src.reference
    ));
    let pass1 = plans.clone();
    // The rule pass reads every layer once before any byte is stored; say which layer it is on.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let worker = tokio::task::spawn_blocking(move || {
        merge_layers(&pass1, &|msg| {
            let _ = tx.send(msg);
        })
    });
    while let Some(msg) = rx.recv().await {
        progress.message(&msg);
    }
    let (merged, entries) = worker
        .await
        .map_err(|e| ConvertError::Worker(format!("layer merge thread failed: {e}")))??;
    let stats = merged.stats;
    let (mut tree, files) = merged.emit()?;
    drop(merged);
    annotate(&mut tree, src)?;
    tracing::debug!(
        entries,
        files = files.len(),
        ?stats,
        "layers merged; streaming file contents"
    );

    let build = build_tree(
        tree,
        move |sink: &mut dyn FileSink| -> Result<(), ConvertError> {
            for plan in &plans {
                let what = plan.what();
                read_layer(plan, |ordinal, entry| {
                    let Some(&node) = files.get(&(plan.index, ordinal)) else {
                        return Ok(());
                    };
                    let size = entry.size();
                    let name = format!(
                        "{what} entry {}",
                        String::from_utf8_lossy(&entry.path_bytes())
                    );
                    sink.add(node, entry, size, &name)?;
                    Ok(())
                })?;
            }
            Ok(())
        },
        store,
        opts,
        progress,
    )
    .await?;
    Ok(ConvertReport {
        build,
        layers: src.layers.len(),
        entries,
        whiteouts: stats.whiteouts,
        opaque_dirs: stats.opaque_dirs,
        hardlinks: stats.hardlinks,
    })
}

/// Checks the config against the layers and decides how to read each one, before any work.
fn plan_layers(src: &SourceImage) -> Result<Vec<LayerPlan>, ConvertError> {
    let config_what = format!("image config {}", src.config_digest);
    let actual = sha256_digest(&src.config);
    if actual != src.config_digest {
        return Err(ConvertError::DigestMismatch {
            what: config_what,
            expected: src.config_digest.clone(),
            actual,
        });
    }
    let diff_ids = oci::diff_ids(&src.config, &config_what)?;
    if diff_ids.len() != src.layers.len() {
        return Err(ConvertError::corrupt(
            config_what,
            format!(
                "lists {} diff_ids for {} layers",
                diff_ids.len(),
                src.layers.len()
            ),
        ));
    }
    src.layers
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(index, (l, diff_id))| {
            let what = format!("layer {} ({})", index + 1, l.digest);
            oci::check_digest(&l.digest, &what)?;
            Ok(LayerPlan {
                index,
                digest: l.digest.clone(),
                diff_id,
                size: l.size,
                path: l.path.clone(),
                compression: Compression::of(&l.media_type, &what)?,
            })
        })
        .collect()
}

/// Pass 1: applies every layer to the merged tree; returns it and the number of entries read.
fn merge_layers(plans: &[LayerPlan], say: &dyn Fn(String)) -> Result<(Merged, u64), ConvertError> {
    let mut merged = Merged::new();
    let mut entries = 0u64;
    for plan in plans {
        let what = plan.what();
        say(format!(
            "applying {what} of {} ({} bytes)",
            plans.len(),
            plan.size
        ));
        read_layer(plan, |ordinal, entry| {
            entries += 1;
            apply_entry(&mut merged, plan.index, ordinal, entry, &what)
        })?;
        merged.end_layer(plan.index);
    }
    Ok((merged, entries))
}

/// Applies tar entry `ordinal` of layer `layer` (named `what` in errors) to the merged tree.
fn apply_entry(
    merged: &mut Merged,
    layer: usize,
    ordinal: u64,
    entry: &mut tar::Entry<'_, layer::Plain>,
    what: &str,
) -> Result<(), ConvertError> {
    let Some(info) = entry_info(entry, what)? else {
        return Ok(());
    };
    let path = String::from_utf8_lossy(&info.path).into_owned();
    merged
        .apply(layer, ordinal, info)
        .map_err(|detail| ConvertError::corrupt(format!("{what} entry {path}"), detail))
}

/// Records the source in the manifest, so the image id covers it and a runtime finds the config.
fn annotate(tree: &mut TreeBuild, src: &SourceImage) -> Result<(), ConvertError> {
    let pairs: [(&str, &[u8]); 4] = [
        (annotation::OCI_CONFIG, &src.config),
        (annotation::OCI_CONFIG_DIGEST, src.config_digest.as_bytes()),
        (annotation::OCI_SOURCE, src.reference.as_bytes()),
        (
            annotation::OCI_SOURCE_DIGEST,
            src.manifest_digest.as_bytes(),
        ),
    ];
    for (key, value) in pairs {
        tree.set_annotation(key, value)
            .map_err(|e| ConvertError::corrupt(format!("annotation {key}"), e.to_string()))?;
    }
    Ok(())
}

/// Entry point of the `layers` fuzz target (`fuzz/`): the layer rules applied to raw, uncompressed tar
/// layers, then the merged tree emitted into a manifest tree. The digest checks are left out (a fuzzer cannot
/// forge SHA-256); everything after them is the code `convert` runs. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use std::io::Read;

    use crate::layer::{stream_error, HashingReader};
    use crate::merge::Merged;
    use crate::ConvertError;

    /// Applies `layers` (bottom first) and emits the result; the error a hostile layer gets.
    pub fn merge_tar_layers(layers: &[&[u8]]) -> Result<(), ConvertError> {
        let mut merged = Merged::new();
        for (index, bytes) in layers.iter().enumerate() {
            let what = format!("layer {}", index + 1);
            let reader: Box<dyn Read> = Box::new(std::io::Cursor::new(bytes.to_vec()));
            let mut archive = tar::Archive::new(HashingReader::unchecked(reader));
            let entries = archive.entries().map_err(|e| stream_error(&what, e))?;
            for (ordinal, entry) in entries.enumerate() {
                let mut entry = entry.map_err(|e| stream_error(&what, e))?;
                super::apply_entry(&mut merged, index, ordinal as u64, &mut entry, &what)?;
            }
            merged.end_layer(index);
        }
        merged.emit().map(drop)
    }
}
