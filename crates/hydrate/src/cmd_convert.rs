//! `hydrate convert`: a container image (from a registry or an OCI layout directory) → one flattened hydrate
//! image in a store, recording the source's digest and keeping its image config for `hydrate rootfs`.
//!
//! The source side lives here: resolving `docker://…` and `oci-layout:DIR[:REF]` references, picking this
//! machine's platform from an index, and downloading layers (verified by SHA-256 as they stream, to temporary
//! files, several at once). Layer semantics and the build are `hydrate-convert`'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryFutureExt, TryStreamExt};
use hydrate_builder::BuildOptions;
use hydrate_convert::{ParsedManifest, Platform, SourceImage, SourceLayer};
use hydrate_store::{BlobDownload, ImageReference, ImageSource, RemoteOptions};

use crate::cli::ConvertArgs;
use crate::cmd_build::Bar;
use crate::retry::with_retries;
use hydrate_units::{human, parse_size};

/// Largest image config accepted (real ones are a few KiB; this bounds memory against a hostile registry).
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Layers downloaded at once.
const PARALLEL_LAYERS: usize = 3;

/// Where the image comes from.
enum Source {
    Registry(ImageReference),
    Layout {
        dir: PathBuf,
        reference: Option<String>,
    },
}

fn parse_source(text: &str) -> Result<Source> {
    if text.starts_with("docker://") {
        return Ok(Source::Registry(ImageReference::parse(text)?));
    }
    // skopeo spells a layout `oci:DIR[:REF]`; hydrate's own `oci://` is a store, so only the long form
    // `oci-layout:` and skopeo's are taken.
    let rest = text
        .strip_prefix("oci-layout:")
        .or_else(|| text.strip_prefix("oci:").filter(|r| !r.starts_with("//")));
    let Some(rest) = rest else {
        bail!(
            "source {text:?}: expected docker://HOST/REPOSITORY[:TAG|@DIGEST] or oci-layout:DIR[:REF]"
        );
    };
    // The reference follows the last ':' unless that ':' belongs to the directory path.
    let (dir, reference) = match rest.rsplit_once(':') {
        Some((dir, r)) if !r.contains('/') && !r.is_empty() => (dir, Some(r.to_owned())),
        _ => (rest, None),
    };
    if dir.is_empty() {
        bail!("source {text:?} names no directory");
    }
    Ok(Source::Layout {
        dir: PathBuf::from(dir),
        reference,
    })
}

/// The store and tag the image goes to: `DEST` (`oci://…:tag`, or any store address with `--tag`), or
/// `--store` with `--tag`.
fn destination(args: &ConvertArgs) -> Result<(String, Option<String>)> {
    match (&args.dest, &args.store) {
        (Some(_), Some(_)) => bail!("give either DEST or --store, not both"),
        (None, None) => bail!("give a destination: DEST (e.g. oci://host/repo:tag) or --store DIR"),
        (Some(dest), None) => {
            let tag = args
                .tag
                .clone()
                .or_else(|| hydrate_store::default_image(dest));
            Ok((dest.clone(), tag))
        }
        (None, Some(store)) => Ok((store.clone(), args.tag.clone())),
    }
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let source = parse_source(&args.source)?;
    let (dest, tag) = destination(&args)?;
    if let Some(tag) = &tag {
        hydrate_store::keys::validate_tag(tag).with_context(|| format!("tag {tag:?}"))?;
    }
    let platform = match &args.platform {
        Some(p) => parse_platform(p)?,
        None => Platform::host(),
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let blob_target_size = parse_size(&args.blob_size).context("--blob-size")?;
    if !(1 << 20..=4 << 30).contains(&blob_target_size) {
        bail!("--blob-size {} must be between 1M and 4G", args.blob_size);
    }
    if let Some(ctd_tag) = &args.containerd_tag {
        check_containerd_tag(&dest, tag.as_deref(), ctd_tag)?;
    }
    let store = hydrate_store::open_store(&dest).with_context(|| format!("store {dest}"))?;
    let opts = BuildOptions {
        zstd_level: args.zstd_level,
        blob_target_size,
        threads,
        tag: tag.clone(),
    };
    let rt = crate::cmd_build::command_runtime()?;
    let started = Instant::now();
    // Downloads land here and go when the conversion ends, also on an error.
    let tmp_parent = args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("hydrate-convert-")
        .tempdir_in(&tmp_parent)
        .with_context(|| format!("creating a temporary directory in {}", tmp_parent.display()))?;
    let src = match &source {
        Source::Registry(image) => rt
            .block_on(fetch_registry(image, &platform, tmp.path()))
            .with_context(|| format!("reading {}", image.to_text()))?,
        Source::Layout { dir, reference } => {
            hydrate_convert::open_layout(dir, reference.as_deref(), &platform)
                .with_context(|| format!("reading the OCI layout {}", dir.display()))?
        }
    };
    let fetched = started.elapsed();
    let bar = Bar::new();
    let report = rt
        .block_on(hydrate_convert::convert(&src, store.as_ref(), &opts, &bar))
        .with_context(|| format!("converting {} into {}", src.reference, store.describe()))?;
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    let b = &report.build;
    println!("{} {}", tag.as_deref().unwrap_or("image"), b.image);
    if let Some(ctd_tag) = &args.containerd_tag {
        let reference = rt
            .block_on(publish_for_containerd(
                &dest,
                tag.as_deref(),
                ctd_tag,
                &LazySource {
                    config: &src.config,
                    reference: &src.reference,
                    manifest_digest: &src.manifest_digest,
                },
                &b.image.to_string(),
            ))
            .with_context(|| format!("publishing the containerd image {ctd_tag}"))?;
        println!("containerd {reference}");
    }
    println!(
        "converted {} ({}) from {} layers: {} files, {} dirs, {} symlinks, {} other; {} logical; {} whiteouts, \
         {} opaque dirs applied; {} new stored in {} blobs ({} chunks reused from the store); {:.1}s ({:.1}s \
         reading the source)",
        src.reference,
        src.manifest_digest,
        report.layers,
        b.files,
        b.dirs,
        b.symlinks,
        b.other,
        human(b.logical_bytes),
        report.whiteouts,
        report.opaque_dirs,
        human(b.stored_bytes),
        b.new_blobs,
        b.reused_chunks,
        secs,
        fetched.as_secs_f64(),
    );
    Ok(())
}

/// Refuses a `--containerd-tag` that cannot work, before anything is converted or pushed.
pub(crate) fn check_containerd_tag(dest: &str, tag: Option<&str>, ctd_tag: &str) -> Result<()> {
    if !dest.starts_with("oci://") {
        bail!("--containerd-tag {ctd_tag}: the store must be an oci:// registry store (containerd pulls images from registries)");
    }
    hydrate_store::keys::validate_tag(ctd_tag)
        .with_context(|| format!("--containerd-tag {ctd_tag:?}"))?;
    match tag {
        Some(tag) if tag == ctd_tag => bail!(
            "--containerd-tag {ctd_tag} is also the hydrate image's tag: give them different tags"
        ),
        Some(_) => Ok(()),
        None => bail!(
            "--containerd-tag needs a tag for the hydrate image too (it keeps the image's blobs reachable in the registry)"
        ),
    }
}

/// What the containerd form of a hydrate image repeats of the container image it was converted from.
pub(crate) struct LazySource<'a> {
    /// The source image's config JSON.
    pub config: &'a [u8],
    pub reference: &'a str,
    pub manifest_digest: &'a str,
}

impl<'a> LazySource<'a> {
    /// The source as a converted hydrate image records it in its manifest's annotations; `None` when the image
    /// was not converted from a container image (built from a directory: it has no config to run).
    pub(crate) fn of_manifest<B: AsRef<[u8]>>(
        manifest: &'a hydrate_format::Manifest<B>,
    ) -> Option<LazySource<'a>> {
        use hydrate_format::annotation::{OCI_CONFIG, OCI_SOURCE, OCI_SOURCE_DIGEST};
        let text = |key| std::str::from_utf8(manifest.annotation(key)?).ok();
        Some(LazySource {
            config: manifest.annotation(OCI_CONFIG)?,
            reference: text(OCI_SOURCE)?,
            manifest_digest: text(OCI_SOURCE_DIGEST)?,
        })
    }
}

/// Pushes the containerd-pullable form of hydrate image `image` (see `hydrate_convert::containerd`) as
/// `ctd_tag` into the repository of `dest`; returns the reference containerd pulls it by (`host/repo:tag`).
pub(crate) async fn publish_for_containerd(
    dest: &str,
    tag: Option<&str>,
    ctd_tag: &str,
    src: &LazySource<'_>,
    image: &str,
) -> Result<String> {
    use hydrate_convert::containerd::{containerd_image, LazyImageMarker, MARKER_VERSION};
    let store = hydrate_store::OciStore::open(dest, &RemoteOptions::default())?;
    let addr = store.address().clone();
    let marker = LazyImageMarker {
        version: MARKER_VERSION,
        // The address without its tag (the marker names the image by id), keeping plain HTTP if asked for.
        store: if addr.plain_http && dest.contains("insecure=") {
            format!("{}?insecure=1", addr.describe())
        } else {
            addr.describe()
        },
        image: image.to_owned(),
        tag: tag.map(str::to_owned),
        source: src.reference.to_owned(),
        source_manifest: src.manifest_digest.to_owned(),
    };
    let built = containerd_image(src.config, &marker)?;
    let blobs: [&[u8]; 2] = [&built.config, &built.layer];
    with_retries(ctd_tag, || {
        store
            .put_container_image(ctd_tag, &blobs, &built.manifest)
            .map_err(anyhow::Error::from)
    })
    .await?;
    Ok(format!("{}/{}:{ctd_tag}", addr.registry, addr.repository))
}

/// `os/arch[/variant]`, as docker and podman spell it.
fn parse_platform(text: &str) -> Result<Platform> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
            os: (*os).to_owned(),
            architecture: (*arch).to_owned(),
            variant: None,
        }),
        [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
            Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            })
        }
        _ => bail!("--platform {text:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64"),
    }
}

/// Resolves `image` to this platform's manifest and downloads its config and layers into `tmp`.
async fn fetch_registry(
    image: &ImageReference,
    platform: &Platform,
    tmp: &Path,
) -> Result<SourceImage> {
    let source = Arc::new(ImageSource::open(image, &RemoteOptions::default())?);
    let mut manifest = with_retries(&image.reference, || {
        source
            .manifest(&image.reference)
            .map_err(anyhow::Error::from)
    })
    .await?;
    let mut parsed =
        hydrate_convert::parse_manifest(&manifest.bytes, manifest.media_type.as_deref())?;
    // An index (multi-platform image) names one manifest per platform; nested indexes are not followed.
    if let ParsedManifest::Index(entries) = &parsed {
        let chosen = hydrate_convert::select_platform(entries, platform)?;
        manifest = with_retries(&chosen.digest, || {
            source.manifest(&chosen.digest).map_err(anyhow::Error::from)
        })
        .await?;
        if manifest.digest != chosen.digest {
            bail!(
                "the registry answered manifest {} for {}",
                manifest.digest,
                chosen.digest
            );
        }
        parsed = hydrate_convert::parse_manifest(&manifest.bytes, manifest.media_type.as_deref())?;
    }
    let ParsedManifest::Image { config, layers } = parsed else {
        bail!(
            "manifest {} is an index inside an index: not supported yet",
            manifest.digest
        );
    };
    if config.size > MAX_CONFIG_BYTES {
        bail!(
            "image config {} is {} bytes (more than {MAX_CONFIG_BYTES}): refusing it",
            config.digest,
            config.size
        );
    }
    let config_bytes = with_retries(&config.digest, || {
        source
            .small_blob(&config.digest, config.size)
            .map_err(anyhow::Error::from)
    })
    .await?;

    let total: u64 = layers.iter().map(|l| l.size).sum();
    let bar = Bar::new();
    bar.0.set_length(total);
    bar.0
        .set_message(format!("downloading {} layers", layers.len()));
    let bar = Arc::new(bar);
    let jobs = layers.iter().enumerate().map(|(i, layer)| {
        let source = source.clone();
        let bar = bar.clone();
        let path = tmp.join(format!("layer-{i}"));
        let layer = layer.clone();
        async move {
            download_layer(&source, &layer.digest, layer.size, &path, &bar).await?;
            Ok::<_, anyhow::Error>(SourceLayer {
                digest: layer.digest,
                media_type: layer.media_type,
                size: layer.size,
                path,
            })
        }
    });
    let downloaded: Vec<SourceLayer> = futures::stream::iter(jobs)
        .buffered(PARALLEL_LAYERS)
        .try_collect()
        .await?;
    bar.finish();
    Ok(SourceImage {
        reference: image.to_text(),
        manifest_digest: manifest.digest,
        config: config_bytes,
        config_digest: config.digest,
        layers: downloaded,
    })
}

/// Downloads one layer into `path`, retrying temporary failures; an interrupted transfer continues where it
/// stopped (a Range request) rather than starting over.
async fn download_layer(
    source: &ImageSource,
    digest: &str,
    size: u64,
    path: &Path,
    bar: &Bar,
) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // One attempt at a time holds the state; the lock only lets each attempt's future borrow it.
    let state = futures::lock::Mutex::new((file, BlobDownload::new(digest, size), 0u64));
    with_retries(digest, || async {
        let mut guard = state.lock().await;
        let (file, download, shown) = &mut *guard;
        let result = source
            .download(download, file, &mut |received| {
                if received >= *shown {
                    bar.0.inc(received - *shown);
                } else {
                    bar.0.dec(*shown - received);
                }
                *shown = received;
            })
            .await;
        result.with_context(|| format!("downloading layer {digest}"))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        match parse_source("oci-layout:./app-oci:1").unwrap() {
            Source::Layout { dir, reference } => {
                assert_eq!(dir, PathBuf::from("./app-oci"));
                assert_eq!(reference.as_deref(), Some("1"));
            }
            Source::Registry(_) => panic!("a layout"),
        }
        match parse_source("oci:/tmp/x").unwrap() {
            Source::Layout { dir, reference } => {
                assert_eq!(dir, PathBuf::from("/tmp/x"));
                assert_eq!(reference, None);
            }
            Source::Registry(_) => panic!("a layout"),
        }
        assert!(matches!(
            parse_source("docker://127.0.0.1:5000/library/app:1").unwrap(),
            Source::Registry(r) if r.reference == "1"
        ));
        for bad in [
            "oci://127.0.0.1:5000/app:1",
            "./dir",
            "oci-layout:",
            "docker://app",
        ] {
            assert!(parse_source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_platforms() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            ("linux", "arm64", Some("v8"))
        );
        assert!(parse_platform("linux").is_err());
        assert!(parse_platform("linux//").is_err());
    }
}
