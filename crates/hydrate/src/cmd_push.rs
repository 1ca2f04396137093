//! `hydrate push`: copy an image from one store to another, whatever their kinds.
//!
//! Written only against `BlobStore`, so a directory, S3 and an OCI registry are all sources and
//! destinations (an HTTP store only a source: it is read-only). The order makes a destination
//! consistent at every moment: blobs first, then the manifest that references them, then the
//! tag that names the manifest, so a reader never resolves a tag to an image with missing
//! parts, and a registry (which checks that a manifest's blobs exist) accepts the tag. Objects
//! the destination already has with the right size are skipped, which makes a repeated or
//! interrupted push cheap. Every object is verified against its BLAKE3 id before it is written:
//! a damaged source is reported, never propagated, and written with `put_verified` (read back from a remote
//! destination before the manifest or tag may refer to it). Each request is retried on temporary errors
//! (5xx, timeouts, resets) and a damaged read is read again (`crate::retry`), so a long push
//! survives a flaky link; a copy damaged in the source itself fails after the last attempt.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::TryFutureExt;
use hydrate_format::{BlobId, Digest, ImageId, Manifest};
use hydrate_store::{keys, put_verified, BlobStore};
use indicatif::ProgressBar;

use crate::cli::PushArgs;
use crate::retry::{with_retries, Damaged};
use hydrate_units::human;

/// What a push did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushReport {
    pub image: Option<ImageId>,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    pub blobs_present: u64,
    pub bytes_present: u64,
    pub manifest_bytes: u64,
    pub manifest_copied: bool,
}

pub fn run(args: PushArgs) -> Result<()> {
    if args.dest.starts_with("http://") || args.dest.starts_with("https://") {
        bail!(
            "{} is an HTTP store, which is read-only: push to a directory, s3:// or oci:// store (and serve a \
             directory over HTTP if readers need that)",
            args.dest
        );
    }
    let tag = dest_tag(&args)?;
    let src = hydrate_store::open_existing_store(&args.store)
        .with_context(|| format!("store {}", args.store))?;
    let dest =
        hydrate_store::open_store(&args.dest).with_context(|| format!("store {}", args.dest))?;
    let bar = crate::cmd_build::Bar::new().0;
    let rt = crate::cmd_build::command_runtime()?;
    let started = Instant::now();
    let report = rt
        .block_on(push(
            src.clone(),
            dest.clone(),
            &args.image,
            tag.as_deref(),
            args.jobs as usize,
            &bar,
        ))
        .with_context(|| {
            format!(
                "pushing {} from {} to {}",
                args.image,
                src.describe(),
                dest.describe()
            )
        })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let image = report.image.expect("a finished push knows its image");
    let named = match &tag {
        Some(tag) => format!(" as {tag}"),
        None => " (untagged: reachable by digest only)".to_owned(),
    };
    println!("{} {image}", tag.as_deref().unwrap_or("image"));
    println!(
        "pushed {} to {}{named}: {} blobs copied ({}), {} already there ({}); manifest {} ({}); {:.1}s ({}/s)",
        args.image,
        dest.describe(),
        report.blobs_copied,
        human(report.bytes_copied),
        report.blobs_present,
        human(report.bytes_present),
        if report.manifest_copied { "copied" } else { "already there" },
        human(report.manifest_bytes),
        secs,
        human((report.bytes_copied as f64 / secs.max(1e-9)) as u64),
    );
    Ok(())
}

/// The tag to write in the destination: `--tag`, else the tag of an `oci://…:tag` destination,
/// else the source IMAGE if it is a tag rather than a digest.
fn dest_tag(args: &PushArgs) -> Result<Option<String>> {
    let from_address = hydrate_store::default_image(&args.dest);
    let tag = match (&args.tag, from_address) {
        (Some(flag), Some(addr)) if *flag != addr => {
            bail!(
                "--tag {flag} contradicts the tag {addr} in the destination address {}",
                args.dest
            )
        }
        (Some(flag), _) => Some(flag.clone()),
        (None, Some(addr)) => Some(addr),
        (None, None) => {
            let hex = args.image.strip_prefix("blake3:").unwrap_or(&args.image);
            hex.parse::<ImageId>().is_err().then(|| args.image.clone())
        }
    };
    if let Some(tag) = &tag {
        keys::validate_tag(tag).with_context(|| format!("destination tag {tag:?}"))?;
    }
    Ok(tag)
}

/// Copies image `image` (a tag or digest in `src`) into `dest`, then points `tag` at it.
pub async fn push(
    src: Arc<dyn BlobStore>,
    dest: Arc<dyn BlobStore>,
    image: &str,
    tag: Option<&str>,
    jobs: usize,
    bar: &ProgressBar,
) -> Result<PushReport> {
    if let Some(tag) = tag {
        // Asking about the tag first makes the destination refuse a name it cannot hold
        // (an OCI registry's tag grammar is narrower) before anything is copied.
        let key = keys::tag(tag);
        with_retries(&key, || dest.head(&key).err_into())
            .await
            .with_context(|| format!("destination tag {tag:?}"))?;
    }
    let id = with_retries(image, || {
        hydrate_store::resolve(src.as_ref(), image).err_into()
    })
    .await?;
    let manifest_key = keys::manifest(&id);
    let manifest_bytes = with_retries(&manifest_key, || async {
        let bytes = src.get(&manifest_key).await?;
        verify(&manifest_key, &bytes, &id.0, None).await
    })
    .await?;
    let blobs: Vec<(BlobId, u64)> = Manifest::parse(&manifest_bytes[..])
        .with_context(|| format!("manifest of image {id} in {}", src.describe()))?
        .blobs()
        .iter()
        .map(|b| (b.id(), b.size()))
        .collect();
    let total: u64 = blobs.iter().map(|(_, size)| size).sum::<u64>() + manifest_bytes.len() as u64;
    bar.set_length(total);
    bar.set_message(format!("{} blobs", blobs.len()));

    let mut report = PushReport {
        image: Some(id),
        manifest_bytes: manifest_bytes.len() as u64,
        ..PushReport::default()
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = blobs.into_iter();
    loop {
        while tasks.len() < jobs.max(1) {
            let Some((blob, size)) = pending.next() else {
                break;
            };
            let (src, dest, bar) = (src.clone(), dest.clone(), bar.clone());
            tasks.spawn(async move {
                let copied = copy_blob(src.as_ref(), dest.as_ref(), blob, size).await;
                bar.inc(size);
                copied.map(|copied| (copied, size))
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        // The first failure stops the push; dropping the JoinSet aborts the other copies.
        let (copied, size) = done.context("a copy task failed")??;
        if copied {
            report.blobs_copied += 1;
            report.bytes_copied += size;
        } else {
            report.blobs_present += 1;
            report.bytes_present += size;
        }
    }

    let present = with_retries(&manifest_key, || dest.head(&manifest_key).err_into()).await?;
    if present != Some(manifest_bytes.len() as u64) {
        with_retries(&manifest_key, || {
            put_verified(dest.as_ref(), &manifest_key, manifest_bytes.clone()).err_into()
        })
        .await?;
        report.manifest_copied = true;
        report.bytes_copied += manifest_bytes.len() as u64;
    }
    bar.inc(manifest_bytes.len() as u64);
    if let Some(tag) = tag {
        bar.set_message(format!("tagging {tag}"));
        with_retries(tag, || {
            hydrate_store::put_tag(dest.as_ref(), tag, &id).err_into()
        })
        .await?;
    }
    Ok(report)
}

/// Copies one blob unless `dest` has it already; returns whether it copied.
async fn copy_blob(
    src: &dyn BlobStore,
    dest: &dyn BlobStore,
    blob: BlobId,
    size: u64,
) -> Result<bool> {
    let key = keys::blob(&blob);
    if with_retries(&key, || dest.head(&key).err_into()).await? == Some(size) {
        return Ok(false);
    }
    let data = with_retries(&key, || async {
        let data = src.get(&key).await?;
        verify(&key, &data, &blob.0, Some(size)).await
    })
    .await?;
    with_retries(&key, || put_verified(dest, &key, data.clone()).err_into()).await?;
    Ok(true)
}

/// Checks `data` against its id (and size) before it is written anywhere; hashing tens of MB
/// runs off the async threads.
async fn verify(key: &str, data: &Bytes, id: &Digest, size: Option<u64>) -> Result<Bytes> {
    if let Some(size) = size {
        if data.len() as u64 != size {
            return Err(Damaged(format!(
                "{key}: the source has {} bytes, the manifest says {size}",
                data.len()
            ))
            .into());
        }
    }
    let owned = data.clone();
    let actual = tokio::task::spawn_blocking(move || Digest::of(&owned))
        .await
        .context("hashing task failed")?;
    if actual != *id {
        return Err(Damaged(format!(
            "{key}: the source holds a damaged copy (BLAKE3 {actual})"
        ))
        .into());
    }
    Ok(data.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrate_store::LocalStore;

    fn stores() -> (tempfile::TempDir, Arc<dyn BlobStore>, Arc<dyn BlobStore>) {
        let dir = tempfile::tempdir().unwrap();
        let a: Arc<dyn BlobStore> = Arc::new(LocalStore::open(&dir.path().join("a")).unwrap());
        let b: Arc<dyn BlobStore> = Arc::new(LocalStore::open(&dir.path().join("b")).unwrap());
        (dir, a, b)
    }

    fn build(store: &dyn BlobStore, src: &std::path::Path, tag: &str) -> ImageId {
        std::fs::create_dir_all(src.join("d")).unwrap();
        for i in 0..20u32 {
            let data: Vec<u8> = (0..50_000u32)
                .map(|j| (j.wrapping_mul(i + 7) >> 3) as u8)
                .collect();
            std::fs::write(src.join(format!("d/f{i}")), data).unwrap();
        }
        let opts = hydrate_builder::BuildOptions {
            zstd_level: 1,
            blob_target_size: 1 << 20,
            threads: 1,
            tag: Some(tag.to_owned()),
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(hydrate_builder::build_dir(
            src,
            store,
            &opts,
            &hydrate_builder::NoProgress,
        ))
        .unwrap()
        .image
    }

    #[test]
    fn copies_everything_then_skips_what_is_there_and_refuses_damage() {
        let (dir, a, b) = stores();
        let id = build(a.as_ref(), &dir.path().join("src"), "app:1");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let bar = ProgressBar::hidden();
        let report = rt
            .block_on(push(a.clone(), b.clone(), "app:1", Some("copy:1"), 3, &bar))
            .unwrap();
        assert_eq!(report.image, Some(id));
        assert!(report.blobs_copied > 0 && report.manifest_copied);
        assert_eq!(report.blobs_present, 0);
        assert_eq!(
            rt.block_on(hydrate_store::resolve(b.as_ref(), "copy:1"))
                .unwrap(),
            id
        );
        let mut src_keys = rt.block_on(a.list("blobs/")).unwrap();
        src_keys.extend(rt.block_on(a.list("manifests/")).unwrap());
        let mut dest_keys = rt.block_on(b.list("blobs/")).unwrap();
        dest_keys.extend(rt.block_on(b.list("manifests/")).unwrap());
        assert_eq!(src_keys, dest_keys);
        for key in &src_keys {
            assert_eq!(
                rt.block_on(a.get(key)).unwrap(),
                rt.block_on(b.get(key)).unwrap(),
                "{key}"
            );
        }

        // Again, by digest: nothing to copy.
        let again = rt
            .block_on(push(a.clone(), b.clone(), &id.to_string(), None, 2, &bar))
            .unwrap();
        assert_eq!((again.blobs_copied, again.manifest_copied), (0, false));
        assert_eq!(again.blobs_present, report.blobs_copied);

        // A damaged source blob is refused, not copied.
        let (_d2, _a2, c) = stores();
        let victim = rt.block_on(a.list("blobs/")).unwrap().remove(0);
        let mut bytes = rt.block_on(a.get(&victim)).unwrap().to_vec();
        bytes[10] ^= 1;
        rt.block_on(a.put(&victim, bytes.into())).unwrap();
        let err = rt
            .block_on(push(a.clone(), c.clone(), "app:1", Some("x"), 2, &bar))
            .unwrap_err();
        assert!(format!("{err:#}").contains("damaged copy"), "{err:#}");
        assert!(
            rt.block_on(c.list("refs/")).unwrap().is_empty(),
            "no tag for a failed push"
        );
    }

    #[test]
    fn destination_tag_defaults() {
        let args = |image: &str, dest: &str, tag: Option<&str>| PushArgs {
            store: "./s".into(),
            image: image.into(),
            dest: dest.into(),
            tag: tag.map(str::to_owned),
            jobs: 1,
        };
        let digest = ImageId(Digest::of(b"m")).to_string();
        assert_eq!(
            dest_tag(&args("app:1", "./d", None)).unwrap().as_deref(),
            Some("app:1")
        );
        assert_eq!(dest_tag(&args(&digest, "./d", None)).unwrap(), None);
        assert_eq!(
            dest_tag(&args("app:1", "oci://r/team/app:2", None))
                .unwrap()
                .as_deref(),
            Some("2")
        );
        assert_eq!(
            dest_tag(&args("app:1", "./d", Some("x")))
                .unwrap()
                .as_deref(),
            Some("x")
        );
        assert!(dest_tag(&args("app:1", "oci://r/a:2", Some("3"))).is_err());
        assert!(dest_tag(&args("app:1", "./d", Some("../x"))).is_err());
    }
}
