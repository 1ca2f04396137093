//! [`ImageSource`]: read access to ordinary container images in a registry, for `hydrate convert`.
//!
//! This is not a store: it reads what docker, podman and skopeo push (OCI or Docker manifests,
//! indexes and tar layers) rather than hydrate objects. It shares the registry client, so auth
//! (Basic, Bearer tokens, credential files) and error wording are the same as for [`OciStore`].
//! Layers are streamed to a file while their SHA-256 is computed: a layer can be gigabytes and
//! must never be held in memory, and nothing unverified is handed on.
//!
//! [`OciStore`]: super::OciStore

use std::io::{Seek, SeekFrom, Write};

use hydrate_format::oci::{is_sha256_digest, sha256_digest, Sha256Hasher};

use super::address::{validate_oci_tag, OciAddress};
use super::auth::{self, AuthEnv};
use super::client::{Failure, RegistryClient};
use super::failure_to_error;
use crate::error::{ErrorKind, StoreError};
use crate::remote::RemoteOptions;

/// A parsed `docker://host[:port]/repository[:tag|@sha256:…]` image reference (skopeo's syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// Registry and repository (its `tag` is unused: see `reference`).
    pub address: OciAddress,
    /// The tag or `sha256:` digest to read.
    pub reference: String,
}

impl ImageReference {
    /// Parses `docker://host[:port]/repo[:tag|@digest]`; without tag or digest, `latest`.
    /// Docker Hub short names (`docker://debian:12`) are refused: the registry host must be given.
    pub fn parse(text: &str) -> Result<ImageReference, StoreError> {
        let bad = |why: String| StoreError::new(ErrorKind::Permanent, text, "", why);
        let rest = text.strip_prefix("docker://").ok_or_else(|| {
            bad("a registry image reference starts with docker:// (docker://host/repo:tag)".into())
        })?;
        let (name, digest) = match rest.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (rest, None),
        };
        let host = name.split('/').next().unwrap_or_default();
        if !name.contains('/') || !(host.contains('.') || host.contains(':') || host == "localhost")
        {
            return Err(bad(format!(
                "{name:?} names no registry host: write docker://HOST[:PORT]/REPOSITORY[:TAG]"
            )));
        }
        let mut address = OciAddress::parse(&format!("oci://{name}"))?;
        let reference = match digest {
            Some(d) => {
                if !is_sha256_digest(d) {
                    return Err(bad(format!("{d:?} is not a sha256:<64 hex digits> digest")));
                }
                d.to_owned()
            }
            None => {
                let tag = address.tag.clone().unwrap_or_else(|| "latest".to_owned());
                validate_oci_tag(&tag).map_err(bad)?;
                tag
            }
        };
        address.tag = None;
        Ok(ImageReference { address, reference })
    }

    /// `docker://host/repo:tag` or `docker://host/repo@sha256:…`, as recorded in a converted image.
    pub fn to_text(&self) -> String {
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        format!(
            "docker://{}/{}{sep}{}",
            self.address.registry, self.address.repository, self.reference
        )
    }
}

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct SourceManifest {
    pub bytes: Vec<u8>,
    /// The `Content-Type` the registry sent (without parameters), if any.
    pub media_type: Option<String>,
    /// `sha256:…` of `bytes` (verified against the registry's `Docker-Content-Digest`).
    pub digest: String,
}

/// One repository of a registry, read as container images.
#[derive(Debug)]
pub struct ImageSource {
    description: String,
    client: RegistryClient,
    searched: Vec<String>,
}

impl ImageSource {
    /// Opens the repository of `image` with credentials from the usual docker/podman files.
    /// Makes no request.
    pub fn open(image: &ImageReference, remote: &RemoteOptions) -> Result<ImageSource, StoreError> {
        let addr = &image.address;
        let description = format!("docker://{}/{}", addr.registry, addr.repository);
        let env = AuthEnv::from_process();
        let credentials = auth::find_credentials(&env, &addr.registry, &addr.repository)
            .map_err(|e| StoreError::new(ErrorKind::Permanent, &description, "", e))?;
        let client = RegistryClient::new(addr, credentials, remote)
            .map_err(|e| StoreError::new(ErrorKind::Permanent, &description, "", e))?;
        Ok(ImageSource {
            searched: env
                .files()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            description,
            client,
        })
    }

    fn fail(&self, key: &str, f: Failure) -> StoreError {
        failure_to_error(&self.client, &self.searched, &self.description, key, f)
    }

    /// The manifest (image manifest or index, OCI or Docker) that `reference` (tag or digest) names.
    pub async fn manifest(&self, reference: &str) -> Result<SourceManifest, StoreError> {
        let key = format!("manifests/{reference}");
        let (bytes, media_type) = self
            .client
            .get_manifest(reference)
            .await
            .map_err(|f| self.fail(&key, f))?
            .ok_or_else(|| StoreError::not_found(&self.description, &key))?;
        let digest = sha256_digest(&bytes);
        Ok(SourceManifest {
            bytes: bytes.to_vec(),
            media_type,
            digest,
        })
    }

    /// Blob `digest` of `size` bytes, whole and verified, in memory: for small blobs (configs).
    pub async fn small_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>, StoreError> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut download = BlobDownload::new(digest, size);
        self.download(&mut download, &mut out, &mut |_| {}).await?;
        Ok(out.into_inner())
    }

    /// One attempt at `download`: streams the rest of the blob into `out` (positioned at the bytes received
    /// so far, asked for with a Range request), checking that it is exactly its size (at most, while
    /// receiving) and that its SHA-256 matches; `progress` gets the count of bytes received so far.
    ///
    /// On an error `out` holds the verified-so-far prefix of `download.received()` bytes, and another call
    /// continues from there: an interrupted transfer (reset, timeout, short body) resumes instead of starting
    /// over. A registry that ignores the Range header, or a whole blob whose digest does not match, starts the
    /// download over (the prefix cannot be trusted then). `out` is complete only when this returns `Ok`.
    pub async fn download<W: Write + Seek>(
        &self,
        download: &mut BlobDownload,
        out: &mut W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        let digest = download.digest.clone();
        let key = format!("blobs/{digest}");
        if !is_sha256_digest(&digest) {
            return Err(StoreError::new(
                ErrorKind::Permanent,
                &self.description,
                &key,
                "only sha256:<64 hex digits> digests are supported",
            ));
        }
        let local = |e: std::io::Error| {
            StoreError::new(
                ErrorKind::Permanent,
                &self.description,
                &key,
                format!("writing the blob locally: {e}"),
            )
        };
        if download.received < download.size {
            let mut response = self
                .client
                .open_blob(&digest, download.received)
                .await
                .map_err(|f| self.fail(&key, f))?;
            if download.received > 0 && response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                tracing::warn!(%digest, "the registry ignored the Range header: downloading the blob again");
                download.restart();
                progress(0);
            }
            out.seek(SeekFrom::Start(download.received))
                .map_err(local)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut *out);
            let streamed = loop {
                let piece = match response.chunk().await {
                    Ok(Some(piece)) => piece,
                    Ok(None) => break Ok(()),
                    Err(e) => {
                        break Err(self.fail(
                            &key,
                            Failure::transport(&format!("reading blob {digest}"), &e),
                        ))
                    }
                };
                if download.received + piece.len() as u64 > download.size {
                    download.restart();
                    break Err(StoreError::new(
                        ErrorKind::Permanent,
                        &self.description,
                        &key,
                        format!(
                            "blob is longer than the {} bytes its descriptor gives",
                            download.size
                        ),
                    ));
                }
                if let Err(e) = out.write_all(&piece) {
                    download.restart();
                    break Err(local(e));
                }
                download.hasher.update(&piece);
                download.received += piece.len() as u64;
                progress(download.received);
            };
            // What was received stays usable for the next attempt only once it is in `out`.
            if let Err(e) = out.flush() {
                download.restart();
                return Err(local(e));
            }
            streamed?;
        }
        if download.received < download.size {
            return Err(StoreError::new(
                ErrorKind::Temporary,
                &self.description,
                &key,
                format!(
                    "truncated: received {} of {} bytes",
                    download.received, download.size
                ),
            ));
        }
        let actual = download.hasher.digest();
        if actual != digest {
            download.restart();
            progress(0);
            return Err(StoreError::new(
                ErrorKind::Temporary,
                &self.description,
                &key,
                format!("received content has digest {actual}"),
            ));
        }
        Ok(())
    }
}

/// The state of one blob download across attempts (see [`ImageSource::download`]): how many bytes have
/// been received and written, and the SHA-256 of exactly those bytes.
#[derive(Debug, Clone)]
pub struct BlobDownload {
    digest: String,
    size: u64,
    hasher: Sha256Hasher,
    received: u64,
}

impl BlobDownload {
    /// A download of blob `digest` (`sha256:…`), which its descriptor says is `size` bytes.
    pub fn new(digest: &str, size: u64) -> BlobDownload {
        BlobDownload {
            digest: digest.to_owned(),
            size,
            hasher: Sha256Hasher::new(),
            received: 0,
        }
    }

    /// Bytes received and written so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    fn restart(&mut self) {
        self.hasher = Sha256Hasher::new();
        self.received = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = ImageReference::parse("docker://127.0.0.1:5000/library/app:1").unwrap();
        assert_eq!(r.address.registry, "127.0.0.1:5000");
        assert_eq!(r.address.repository, "library/app");
        assert_eq!(r.reference, "1");
        assert!(r.address.plain_http);
        assert_eq!(r.to_text(), "docker://127.0.0.1:5000/library/app:1");

        let r = ImageReference::parse("docker://localhost/app").unwrap();
        assert_eq!(r.reference, "latest");

        let d = format!("sha256:{}", "ab".repeat(32));
        let r = ImageReference::parse(&format!("docker://reg.example:443/a/b@{d}")).unwrap();
        assert_eq!(r.reference, d);
        assert!(!r.address.plain_http);
        assert_eq!(r.to_text(), format!("docker://reg.example:443/a/b@{d}"));
    }

    #[test]
    fn refuses_bad_references() {
        let cases = [
            ("127.0.0.1:5000/app:1", "starts with docker://"),
            ("docker://debian:12", "names no registry host"),
            ("docker://app", "names no registry host"),
            ("docker://127.0.0.1:5000/app@sha256:12", "is not a sha256"),
            ("docker://127.0.0.1:5000/App:1", "App"),
        ];
        for (bad, why) in cases {
            let err = ImageReference::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
