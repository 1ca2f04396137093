//! The OCI and Docker names hydrate shares between crates: SHA-256 content digests (`sha256:<hex>`) and the
//! media types of image manifests, indexes, configs and layers.
//!
//! It lives in the bottom crate so the converter (reads images), the OCI store (pushes hydrate images as
//! artifacts and pulls sources), the test kit (writes images) and the tests all use one digest function and
//! one spelling of each media type. The hydrate-specific artifact types stay with the artifact encoding in
//! `hydrate-store`.

use sha2::{Digest as _, Sha256};

/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index (a multi-platform image, or an OCI layout's `index.json`).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of a Docker schema2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker manifest list (Docker's multi-platform index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Prefix of the retired Docker schema1 manifests (`…v1+json`, `…v1+prettyjws`), which are refused.
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";
/// Media type of an OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Gzip-compressed OCI layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Zstandard-compressed OCI layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Gzip-compressed Docker layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Uncompressed Docker layer (what some tools push when they skip compression).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// The annotation naming a manifest in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The `Accept` header of a manifest request: every manifest and index kind hydrate reads. hydrate images
/// are OCI manifests, but a repository also holds ordinary images (Docker schema 2, indexes) that must be
/// readable to be recognised and skipped; a registry asked for an OCI manifest only may answer 400
/// MANIFEST_INVALID for a Docker one (docker-registry 2.8 does).
pub const ACCEPT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// `sha256:` and the 64 lowercase hex digits of the SHA-256 of `bytes`: an OCI content digest.
pub fn sha256_digest(bytes: &[u8]) -> String {
    Sha256Hasher::new().update(bytes).digest()
}

/// The hex part of `digest` if it is `sha256:` followed by exactly 64 lowercase hex digits (the only form
/// hydrate accepts, and the check that makes a digest safe to use as a file name).
pub fn sha256_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Whether `digest` is `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(digest: &str) -> bool {
    sha256_hex(digest).is_some()
}

/// SHA-256 of a stream fed in pieces (a download, a layer being read), giving the same `sha256:<hex>` text
/// as [`sha256_digest`].
#[derive(Clone, Default)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    pub fn new() -> Sha256Hasher {
        Sha256Hasher(Sha256::new())
    }

    /// Feeds the next piece.
    pub fn update(&mut self, bytes: &[u8]) -> &mut Sha256Hasher {
        self.0.update(bytes);
        self
    }

    /// The digest of everything fed so far (the hasher can go on being fed).
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.0.clone().finalize()))
    }
}

impl std::fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256Hasher({})", self.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digests_match_the_published_vectors() {
        assert_eq!(sha256_digest(b""), EMPTY);
        assert_eq!(
            sha256_digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn streamed_digest_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut hasher = Sha256Hasher::new();
        assert_eq!(hasher.digest(), EMPTY);
        for piece in data.chunks(4093) {
            hasher.update(piece);
        }
        assert_eq!(hasher.digest(), sha256_digest(&data));
    }

    #[test]
    fn only_well_formed_sha256_digests_pass() {
        let hex = &EMPTY["sha256:".len()..];
        assert_eq!(sha256_hex(EMPTY), Some(hex));
        assert!(is_sha256_digest(EMPTY));
        for bad in [
            "",
            hex,
            "sha256:abc",
            &EMPTY.to_uppercase(),
            &EMPTY.replace("sha256", "sha512"),
            &format!("{EMPTY}0"),
            &EMPTY.replace('e', "g"),
            "sha256:../../../../../../../../../../../../../../../../../../../../etc",
        ] {
            assert!(!is_sha256_digest(bad), "{bad}");
        }
    }

    #[test]
    fn the_accept_header_lists_every_manifest_kind() {
        let kinds = [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ];
        assert_eq!(ACCEPT_MANIFEST, kinds.join(", "));
    }
}
