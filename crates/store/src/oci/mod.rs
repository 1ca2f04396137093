//! [`OciStore`]: a store in one repository of an OCI distribution registry.
//!
//! Images travel as ordinary OCI artifacts (see [`artifact`] for the layout), so any registry
//! keeps them and `skopeo copy` moves them. The store keys map onto the registry like this:
//!
//! | key                 | registry                                                         |
//! |---------------------|------------------------------------------------------------------|
//! | `blobs/<blake3>`    | blob `sha256:…` of the repository; ranged reads answer 206       |
//! | `manifests/<blake3>`| blob `sha256:…` (the artifact's config)                          |
//! | `refs/<tag>`        | the OCI manifest tagged `<tag>`; reads as `<image id>\n`         |
//!
//! Registries address content by SHA-256, hydrate by BLAKE3. The store keeps the mapping in
//! memory, learnt from every OCI manifest it reads (each descriptor carries its BLAKE3 id as an
//! annotation) and every object it uploads. A key it cannot map makes it read all tags of the
//! repository once (at most every [`RESCAN_INTERVAL`]), which is how an image named by digest
//! is found. Writing `refs/<tag>` writes the OCI manifest listing the hydrate manifest and
//! every blob it references, so a tag must be written after its objects (as `put_tag` callers
//! do). Registries cannot list untagged content: `list` shows what the tags reach.

mod address;
pub(crate) mod artifact;
mod auth;
mod client;
mod source;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hydrate_format::{BlobId, Digest, ImageId, Manifest};

pub use address::OciAddress;
use artifact::{Artifact, Located};
use auth::AuthEnv;
use client::{Failure, RegistryClient};
use hydrate_format::oci::{sha256_digest, OCI_MANIFEST};
pub use source::{BlobDownload, ImageReference, ImageSource, SourceManifest};

use crate::error::{ErrorKind, StoreError};
use crate::keys;
use crate::remote::RemoteOptions;
use crate::BlobStore;

/// A miss in the digest mapping re-reads the repository's tags at most this often, so that a
/// build probing many new blobs costs one scan, not one per blob.
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// What the store has learnt about the repository.
#[derive(Debug, Default)]
struct Index {
    /// BLAKE3 id → registry location, for blobs and manifests alike.
    objects: HashMap<Digest, Located>,
    /// The hydrate images behind the tags seen by the last scan or read.
    tags: BTreeMap<String, Artifact>,
    /// When the last full scan of the tags finished.
    scanned: Option<Instant>,
}

/// A store in one repository of an OCI registry: `oci://host[:port]/repository[:tag]`.
#[derive(Debug)]
pub struct OciStore {
    addr: OciAddress,
    description: String,
    client: RegistryClient,
    /// The credential files searched, named in "no credentials" errors.
    searched: Vec<String>,
    index: Mutex<Index>,
    /// Serializes scans so that a burst of misses causes one.
    scanning: tokio::sync::Mutex<()>,
}

/// The object a key names.
enum Key {
    Object(Digest),
    Tag(String),
}

impl OciStore {
    /// Opens the repository named by `addr`, with credentials from the usual docker/podman
    /// files (see the `auth` module). Makes no request: a wrong address or credential shows at
    /// the first operation.
    pub fn open(addr: &str, remote: &RemoteOptions) -> Result<OciStore, StoreError> {
        let parsed = OciAddress::parse(addr)?;
        let description = parsed.describe();
        let env = AuthEnv::from_process();
        let credentials = auth::find_credentials(&env, &parsed.registry, &parsed.repository)
            .map_err(|e| StoreError::new(ErrorKind::Permanent, &description, "", e))?;
        let client = RegistryClient::new(&parsed, credentials, remote)
            .map_err(|e| StoreError::new(ErrorKind::Permanent, &description, "", e))?;
        Ok(OciStore {
            searched: env
                .files()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            addr: parsed,
            description,
            client,
            index: Mutex::new(Index::default()),
            scanning: tokio::sync::Mutex::new(()),
        })
    }

    /// The parsed address.
    pub fn address(&self) -> &OciAddress {
        &self.addr
    }

    /// Publishes an ordinary OCI image (not a hydrate artifact) under `tag` in this repository: uploads each
    /// of `blobs` the registry lacks (addressed by SHA-256), then the image `manifest` (which must reference
    /// exactly them). Used for the containerd-pullable form of an image (`hydrate convert
    /// --containerd-tag`); scans of the repository skip such tags.
    pub async fn put_container_image(
        &self,
        tag: &str,
        blobs: &[&[u8]],
        manifest: &[u8],
    ) -> Result<(), StoreError> {
        let key = keys::tag(tag);
        address::validate_oci_tag(tag)
            .map_err(|e| StoreError::new(ErrorKind::Permanent, &self.description, &key, e))?;
        for blob in blobs {
            let digest = sha256_digest(blob);
            let present = self
                .client
                .blob_size(&digest)
                .await
                .map_err(|f| self.fail(&key, f))?;
            if present != Some(blob.len() as u64) {
                self.client
                    .upload_blob(&digest, Bytes::copy_from_slice(blob))
                    .await
                    .map_err(|f| self.fail(&key, f))?;
            }
        }
        self.client
            .put_manifest(tag, Bytes::copy_from_slice(manifest), OCI_MANIFEST)
            .await
            .map_err(|f| self.fail(&key, f))
    }

    fn parse_key(&self, key: &str) -> Result<Key, StoreError> {
        let digest = |hex: &str| {
            hex.parse::<Digest>().map_err(|_| {
                StoreError::new(
                    ErrorKind::Permanent,
                    &self.description,
                    key,
                    "invalid key: expected 64 lowercase hex digits after the prefix",
                )
            })
        };
        if let Some(hex) = key.strip_prefix(keys::BLOBS_PREFIX) {
            return Ok(Key::Object(digest(hex)?));
        }
        if let Some(hex) = key.strip_prefix(keys::MANIFESTS_PREFIX) {
            return Ok(Key::Object(digest(hex)?));
        }
        if let Some(tag) = key.strip_prefix(keys::TAGS_PREFIX) {
            address::validate_oci_tag(tag)
                .map_err(|e| StoreError::new(ErrorKind::Permanent, &self.description, key, e))?;
            return Ok(Key::Tag(tag.to_owned()));
        }
        Err(StoreError::new(
            ErrorKind::Permanent,
            &self.description,
            key,
            "an OCI registry only holds blobs/, manifests/ and refs/ keys",
        ))
    }

    /// Turns a request failure into a store error; authentication failures name the registry
    /// and where the credentials came from (or where none were found).
    fn fail(&self, key: &str, f: Failure) -> StoreError {
        failure_to_error(&self.client, &self.searched, &self.description, key, f)
    }

    fn lookup(&self, id: &Digest) -> Option<Located> {
        self.index
            .lock()
            .expect("index lock")
            .objects
            .get(id)
            .cloned()
    }

    fn learn(&self, tag: Option<&str>, artifact: &Artifact) {
        let mut index = self.index.lock().expect("index lock");
        index
            .objects
            .insert(artifact.image.0, artifact.manifest.clone());
        for (id, at) in &artifact.blobs {
            index.objects.insert(id.0, at.clone());
        }
        if let Some(tag) = tag {
            index.tags.insert(tag.to_owned(), artifact.clone());
        }
    }

    /// Where object `id` is, scanning the tags if it is unknown and the last scan is stale.
    async fn locate(&self, id: &Digest, key: &str) -> Result<Option<Located>, StoreError> {
        if let Some(at) = self.lookup(id) {
            return Ok(Some(at));
        }
        let _guard = self.scanning.lock().await;
        if let Some(at) = self.lookup(id) {
            return Ok(Some(at));
        }
        let stale = self
            .index
            .lock()
            .expect("index lock")
            .scanned
            .is_none_or(|t| t.elapsed() >= RESCAN_INTERVAL);
        if stale {
            self.scan(key).await?;
        }
        Ok(self.lookup(id))
    }

    /// Reads every tag's OCI manifest; tags of other kinds of images are skipped.
    async fn scan(&self, key: &str) -> Result<(), StoreError> {
        let names = self
            .client
            .list_tags()
            .await
            .map_err(|f| self.fail(key, f))?;
        let mut tags = BTreeMap::new();
        for name in names {
            // One unreadable tag (a manifest kind the registry will not serve) must not hide the others; an
            // authentication or temporary failure still fails the scan.
            let fetched = match self.fetch_tag(&name).await {
                Ok(fetched) => fetched,
                Err(f) if !f.auth && f.kind == ErrorKind::Permanent => {
                    tracing::warn!(store = %self.description, tag = %name, why = %f.message, "skipping unreadable tag");
                    continue;
                }
                Err(f) => return Err(self.fail(&keys::tag(&name), f)),
            };
            match fetched {
                Some(Ok(artifact)) => {
                    self.learn(None, &artifact);
                    tags.insert(name, artifact);
                }
                Some(Err(why)) => {
                    tracing::debug!(store = %self.description, tag = %name, %why, "skipping tag");
                }
                None => {} // deleted since the listing
            }
        }
        let mut index = self.index.lock().expect("index lock");
        index.tags = tags;
        index.scanned = Some(Instant::now());
        Ok(())
    }

    /// The OCI manifest tagged `tag` read as a hydrate artifact (or why it is not one);
    /// `None` if the tag is absent.
    async fn fetch_tag(&self, tag: &str) -> Result<Option<Result<Artifact, String>>, Failure> {
        let manifest = self.client.get_manifest(tag).await?;
        Ok(manifest.map(|(json, _)| Artifact::from_oci_json(&json)))
    }

    /// The hydrate artifact tagged `tag`, learnt into the index; `None` if the tag is absent.
    async fn read_tag(&self, tag: &str) -> Result<Option<Artifact>, StoreError> {
        let fetched = self
            .fetch_tag(tag)
            .await
            .map_err(|f| self.fail(&keys::tag(tag), f))?;
        match fetched {
            None => Ok(None),
            Some(Ok(artifact)) => {
                self.learn(Some(tag), &artifact);
                Ok(Some(artifact))
            }
            Some(Err(why)) => Err(StoreError::new(
                ErrorKind::Permanent,
                &self.description,
                keys::tag(tag),
                why,
            )),
        }
    }

    async fn put_object(&self, key: &str, id: Digest, data: Bytes) -> Result<(), StoreError> {
        if Digest::of(&data) != id {
            // The annotation would then lie about the content; refuse rather than publish it.
            return Err(StoreError::new(
                ErrorKind::Permanent,
                &self.description,
                key,
                "content does not match the BLAKE3 digest in its key",
            ));
        }
        let located = Located {
            digest: sha256_digest(&data),
            size: data.len() as u64,
        };
        let present = self
            .client
            .blob_size(&located.digest)
            .await
            .map_err(|f| self.fail(key, f))?;
        if present != Some(located.size) {
            self.client
                .upload_blob(&located.digest, data)
                .await
                .map_err(|f| self.fail(key, f))?;
        }
        self.index
            .lock()
            .expect("index lock")
            .objects
            .insert(id, located);
        Ok(())
    }

    /// Writes the OCI manifest for `tag`: the image `content` names, with all its blobs.
    async fn put_tag(&self, key: &str, tag: &str, content: &[u8]) -> Result<(), StoreError> {
        let bad = |why: String| StoreError::new(ErrorKind::Permanent, &self.description, key, why);
        let image: ImageId = std::str::from_utf8(content)
            .ok()
            .and_then(|t| t.strip_suffix('\n'))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("tag content must be an image digest and a newline".into()))?;
        let manifest_key = keys::manifest(&image);
        let missing = |what: &str| {
            bad(format!(
                "{what} is not in the repository; put the image's blobs and manifest before its tag"
            ))
        };
        let manifest_at = self
            .locate(&image.0, key)
            .await?
            .ok_or_else(|| missing(&manifest_key))?;
        let bytes = self.get(&manifest_key).await?;
        let manifest = Manifest::parse(&bytes[..])
            .map_err(|e| bad(format!("manifest {image} is invalid: {e}")))?;
        let mut blobs = Vec::with_capacity(manifest.blobs().len());
        for record in manifest.blobs() {
            let id: BlobId = record.id();
            let blob_key = keys::blob(&id);
            let at = self
                .locate(&id.0, key)
                .await?
                .ok_or_else(|| missing(&blob_key))?;
            if at.size != record.size() {
                return Err(bad(format!(
                    "{blob_key} has {} bytes in the registry, the manifest says {}",
                    at.size,
                    record.size()
                )));
            }
            blobs.push((id, at));
        }
        let artifact = Artifact {
            image,
            manifest: manifest_at,
            blobs,
        };
        self.client
            .put_manifest(tag, artifact.to_oci_json().into(), OCI_MANIFEST)
            .await
            .map_err(|f| self.fail(key, f))?;
        self.learn(Some(tag), &artifact);
        Ok(())
    }

    /// Scans, then lists every key the tags reach.
    async fn all_keys(&self, prefix: &str) -> Result<BTreeSet<String>, StoreError> {
        {
            let _guard = self.scanning.lock().await;
            self.scan(prefix).await?;
        }
        let index = self.index.lock().expect("index lock");
        let mut all = BTreeSet::new();
        for (tag, artifact) in &index.tags {
            all.insert(keys::tag(tag));
            all.insert(keys::manifest(&artifact.image));
            all.extend(artifact.blobs.iter().map(|(id, _)| keys::blob(id)));
        }
        Ok(all)
    }
}

#[async_trait::async_trait]
impl BlobStore for OciStore {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        match self.parse_key(key)? {
            Key::Tag(tag) => match self.read_tag(&tag).await? {
                Some(artifact) => Ok(format!("{}\n", artifact.image).into()),
                None => Err(StoreError::not_found(&self.description, key)),
            },
            Key::Object(id) => {
                let at = self
                    .locate(&id, key)
                    .await?
                    .ok_or_else(|| StoreError::not_found(&self.description, key))?;
                self.client
                    .get_blob(&at.digest, None)
                    .await
                    .map_err(|f| self.fail(key, f))
            }
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let Key::Object(id) = self.parse_key(key)? else {
            let data = self.get(key).await?;
            return slice(&self.description, key, data, range);
        };
        if crate::is_empty_range(&self.description, key, &range)? {
            return Ok(Bytes::new());
        }
        let at = self
            .locate(&id, key)
            .await?
            .ok_or_else(|| StoreError::not_found(&self.description, key))?;
        if range.end > at.size {
            return Err(StoreError::new(
                ErrorKind::Permanent,
                &self.description,
                key,
                format!(
                    "read range {}..{} past the end of the {} byte object",
                    range.start, range.end, at.size
                ),
            ));
        }
        let data = self
            .client
            .get_blob(&at.digest, Some(range.clone()))
            .await
            .map_err(|f| self.fail(key, f))?;
        crate::check_range_len(&self.description, key, &range, data)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        match self.parse_key(key)? {
            Key::Object(id) => self.put_object(key, id, data).await,
            Key::Tag(tag) => self.put_tag(key, &tag, &data).await,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.parse_key(key)? {
            Key::Tag(tag) => Ok(self
                .read_tag(&tag)
                .await?
                .map(|a| format!("{}\n", a.image).len() as u64)),
            Key::Object(id) => {
                let Some(at) = self.locate(&id, key).await? else {
                    return Ok(None);
                };
                // Confirm: the registry may have garbage-collected it since the mapping was learnt.
                self.client
                    .blob_size(&at.digest)
                    .await
                    .map_err(|f| self.fail(key, f))
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let all = self.all_keys(prefix).await?;
        Ok(all.into_iter().filter(|k| k.starts_with(prefix)).collect())
    }
}

/// `range` of a small object read whole (tags).
fn slice(store: &str, key: &str, data: Bytes, range: Range<u64>) -> Result<Bytes, StoreError> {
    if range.start > range.end || range.end > data.len() as u64 {
        return Err(StoreError::new(
            ErrorKind::Permanent,
            store,
            key,
            format!(
                "read range {}..{} outside the {} byte object",
                range.start,
                range.end,
                data.len()
            ),
        ));
    }
    Ok(data.slice(range.start as usize..range.end as usize))
}

/// Turns a request failure into a store error; authentication failures name the registry and
/// where the credentials came from (or which files were searched when none were found).
fn failure_to_error(
    client: &RegistryClient,
    searched: &[String],
    description: &str,
    key: &str,
    f: Failure,
) -> StoreError {
    if f.kind == ErrorKind::NotFound && !f.auth {
        return StoreError::not_found(description, key);
    }
    let message = if f.auth {
        let registry = client.registry();
        match client.credentials() {
            Some(c) => format!(
                "authentication failed: registry {registry} refused user {:?} from {} ({})",
                c.username, c.source, f.message
            ),
            None => format!(
                "authentication failed: registry {registry} requires credentials and none were \
                 found for it (searched {}; docker login or podman login writes them) ({})",
                searched.join(", "),
                f.message
            ),
        }
    } else {
        f.message
    };
    StoreError::new(f.kind, description, key, message)
}

/// The image an `oci://` address names by default (its `:tag`), if it names one.
pub fn default_image(addr: &str) -> Option<String> {
    OciAddress::parse(addr).ok()?.tag
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> OciStore {
        OciStore::open("oci://127.0.0.1:9/team/app:1", &RemoteOptions::default()).unwrap()
    }

    #[test]
    fn keys_map_to_objects_and_tags() {
        let s = store();
        let id = Digest::of(b"x");
        assert!(matches!(s.parse_key(&format!("blobs/{id}")), Ok(Key::Object(d)) if d == id));
        assert!(matches!(s.parse_key(&format!("manifests/{id}")), Ok(Key::Object(d)) if d == id));
        assert!(matches!(s.parse_key("refs/v1.0"), Ok(Key::Tag(t)) if t == "v1.0"));
        for bad in ["blobs/xyz", "refs/app:1", "refs/a/b", "other/x", ""] {
            let err = s
                .parse_key(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(err.kind(), ErrorKind::Permanent);
            assert!(
                err.to_string().starts_with("oci://127.0.0.1:9/team/app: "),
                "{err}"
            );
        }
    }

    #[test]
    fn default_image_is_the_address_tag() {
        assert_eq!(default_image("oci://r/team/app:1").as_deref(), Some("1"));
        assert_eq!(default_image("oci://r/team/app"), None);
        assert_eq!(default_image("./store"), None);
        assert_eq!(store().describe(), "oci://127.0.0.1:9/team/app");
    }

    #[tokio::test]
    async fn unreachable_registry_is_a_temporary_error_naming_the_store() {
        // Port 9 (discard) is closed on loopback: connection refused.
        let s = store();
        let err = s.get("refs/1").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Temporary, "{err}");
        assert!(
            err.to_string()
                .contains("oci://127.0.0.1:9/team/app: refs/1: "),
            "{err}"
        );
        // Mismatched content is refused before any request.
        let id = Digest::of(b"right");
        let err = s
            .put(&format!("blobs/{id}"), Bytes::from_static(b"wrong"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(s
            .get_range(&format!("blobs/{id}"), 3..3)
            .await
            .unwrap()
            .is_empty());
    }
}
