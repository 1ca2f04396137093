//! Loading an image's manifest: the only thing a mount reads up front.
//!
//! The manifest is fetched once from the store, checked against its digest (the image identity), validated, and
//! kept as a local file named by that digest next to the cache. Later mounts map that file instead of asking the
//! store, after checking its digest again (so the copy needs no syncs: a damaged one is simply fetched again).
//! The manifest is memory-mapped, never materialized, so a million-file image costs page cache, not heap.

use crate::error::{CoreError, Result};
use hydrate_format::{ImageId, Manifest};
use hydrate_store::{keys, BlobStore};
use memmap2::Mmap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A validated manifest backed by a private, immutable local file.
pub type MappedManifest = Manifest<Mmap>;

/// Returns the validated manifest of `image`, from `local_dir` if a verified copy is there, else from the store.
pub async fn load_manifest(
    store: &dyn BlobStore,
    image: &ImageId,
    local_dir: &Path,
) -> Result<MappedManifest> {
    let path = local_dir.join(format!("{image}.manifest"));
    if path.exists() {
        match map_verified(&path, image, true) {
            Ok(manifest) => return Ok(manifest),
            Err(err) => {
                // A damaged local copy is not fatal: it is only a copy. Drop it and fetch again.
                tracing::warn!(path = %path.display(), error = %err, "local manifest copy unusable; fetching again");
                let _ = fs::remove_file(&path);
            }
        }
    }
    let key = keys::manifest(image);
    let bytes = store.get(&key).await.map_err(|source| CoreError::Store {
        image: image.to_string(),
        source: Box::new(source),
    })?;
    let actual = ImageId(hydrate_format::Digest::of(&bytes));
    if actual != *image {
        return Err(CoreError::Image {
            image: image.to_string(),
            what: format!(
                "manifest {key} from {} does not match its digest (got {actual}): refusing it",
                store.describe()
            ),
        });
    }
    // Validate before anything is written locally, so a hostile manifest never lands in the cache.
    Manifest::parse(bytes.as_ref()).map_err(|source| CoreError::Manifest {
        image: *image,
        source: Box::new(source),
    })?;
    write_copy(&path, &bytes)?;
    drop(bytes);
    // These bytes were just hashed: skip the digest (a second pass over 200 MiB for a million files).
    map_verified(&path, image, false)
}

/// Maps `path` and checks digest (if `check_digest`) and structure. The digest is re-checked on every mount of
/// a copy written earlier: the file may have been damaged on disk since, and the check costs about a
/// millisecond per MB.
fn map_verified(path: &Path, image: &ImageId, check_digest: bool) -> Result<MappedManifest> {
    let file = File::open(path).map_err(|source| CoreError::LocalIo {
        what: "opening manifest copy",
        path: path.to_path_buf(),
        source,
    })?;
    let map = map_file(&file, path)?;
    let actual = if check_digest {
        ImageId(hydrate_format::Digest::of(&map))
    } else {
        *image
    };
    if actual != *image {
        return Err(CoreError::Image {
            image: image.to_string(),
            what: format!("local manifest {} has digest {actual}", path.display()),
        });
    }
    let manifest = Manifest::parse(map).map_err(|source| CoreError::Manifest {
        image: *image,
        source: Box::new(source),
    })?;
    release_pages(manifest.as_bytes());
    Ok(manifest)
}

/// The digest check and the validation touched every page of the mapping; without this they would all stay
/// in the process's resident set (200 MiB for a million files) although a mount uses a small part. They stay in
/// the page cache: a later access is a minor fault, not a disk read.
#[allow(unsafe_code)]
fn release_pages(map: &[u8]) {
    if map.is_empty() {
        return;
    }
    // SAFETY: `map` is the whole of a read-only private file mapping that was never written (Mmap::map gives
    // PROT_READ, MAP_PRIVATE) and starts on a page boundary. MADV_DONTNEED on such a mapping only drops this
    // process's page-table entries: the next access maps the same file contents again, so no reference into
    // the mapping observes a change. A failure leaves the pages mapped, which is harmless.
    let rc = unsafe {
        libc::madvise(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            libc::MADV_DONTNEED,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "madvise(MADV_DONTNEED) of the manifest failed");
    }
}

#[allow(unsafe_code)]
fn map_file(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: the file lives in hydrate's private cache directory, is named by its digest, and is never modified
    // after the atomic rename that created it (a new copy is always written to a new temp file). A concurrent
    // truncation by another root process could still raise SIGBUS; that is outside what a mapping can guard against.
    unsafe { Mmap::map(file) }.map_err(|source| CoreError::LocalIo {
        what: "mapping manifest copy",
        path: path.to_path_buf(),
        source,
    })
}

/// temp file + rename, without syncs: a reader sees the whole copy or none. A crash may still leave a torn or
/// empty copy behind, which the digest check of the next load detects and replaces; syncing here would only put
/// two disk flushes on the path of every first mount.
fn write_copy(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io_err =
        |what: &'static str, path: PathBuf| move |source| CoreError::LocalIo { what, path, source };
    fs::create_dir_all(dir).map_err(io_err("creating directory", dir.to_path_buf()))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = File::create(&tmp).map_err(io_err("creating", tmp.clone()))?;
    file.write_all(bytes)
        .map_err(io_err("writing", tmp.clone()))?;
    fs::rename(&tmp, path).map_err(io_err("renaming into place", path.to_path_buf()))?;
    Ok(())
}
