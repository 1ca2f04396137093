//! The OCI artifact that carries a hydrate image through a registry.
//!
//! An image is an ordinary OCI image manifest (`application/vnd.oci.image.manifest.v1+json`)
//! with `artifactType` `application/vnd.hydrate.image.v1`, so any registry stores, garbage
//! collects and replicates it and `skopeo copy` moves it unchanged:
//!
//! - `config` is the hydrate manifest itself (media type `application/vnd.hydrate.manifest.v1`).
//!   The hydrate manifest describes how the blobs form a tree, which is the role an image
//!   config plays, and using it as the config needs no extra empty blob and keeps `layers`
//!   exactly the list of hydrate blobs. Pre-1.1 tools see the artifact type in
//!   `config.mediaType`, the way Helm and ORAS artifacts are recognised.
//! - `layers` are the hydrate blobs (`application/vnd.hydrate.blob.v1`), in the order the
//!   hydrate manifest lists them.
//! - hydrate names content by BLAKE3, registries by SHA-256: every descriptor carries its
//!   BLAKE3 id in the annotation `dev.hydrate.blake3`, and the manifest-level annotation
//!   `dev.hydrate.image` repeats the image id. Reading a tag's OCI manifest therefore yields
//!   the whole BLAKE3 → SHA-256 mapping the store needs for ranged blob reads.
//!
//! Nothing time-dependent goes into the manifest, so pushing the same image twice produces
//! the same OCI manifest digest.

use std::collections::BTreeMap;

use hydrate_format::oci::{is_sha256_digest, OCI_MANIFEST};
use hydrate_format::{BlobId, Digest, ImageId};
use serde::{Deserialize, Serialize};

/// `artifactType` of a hydrate image.
pub const ARTIFACT_TYPE: &str = "application/vnd.hydrate.image.v1";
/// Media type of the config descriptor: the hydrate manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.hydrate.manifest.v1";
/// Media type of each layer descriptor: a hydrate blob.
pub const BLOB_MEDIA_TYPE: &str = "application/vnd.hydrate.blob.v1";
/// Annotation holding a descriptor's BLAKE3 id (64 lowercase hex digits).
pub const BLAKE3_ANNOTATION: &str = "dev.hydrate.blake3";
/// Manifest-level annotation holding the image id.
pub const IMAGE_ANNOTATION: &str = "dev.hydrate.image";

/// An OCI image manifest: only the fields hydrate writes and reads; unknown fields (added by
/// other tools or later spec versions) are ignored on reading.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// An OCI content descriptor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// Where a content-addressed object lives in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The registry digest, `sha256:<hex>`.
    pub digest: String,
    /// The size in bytes.
    pub size: u64,
}

/// The hydrate view of one OCI manifest: the image and where its objects are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub image: ImageId,
    pub manifest: Located,
    pub blobs: Vec<(BlobId, Located)>,
}

impl Artifact {
    /// The JSON of the OCI manifest describing this artifact (compact, fields in a fixed
    /// order, annotations sorted).
    pub fn to_oci_json(&self) -> Vec<u8> {
        let manifest = OciManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_owned()),
            artifact_type: Some(ARTIFACT_TYPE.to_owned()),
            config: descriptor(MANIFEST_MEDIA_TYPE, &self.image.0, &self.manifest),
            layers: self
                .blobs
                .iter()
                .map(|(id, at)| descriptor(BLOB_MEDIA_TYPE, &id.0, at))
                .collect(),
            annotations: BTreeMap::from([(IMAGE_ANNOTATION.to_owned(), self.image.to_string())]),
        };
        serde_json::to_vec(&manifest).expect("a manifest of strings and numbers serializes")
    }

    /// Reads a hydrate artifact from an OCI manifest's JSON. The error says why the manifest
    /// is not one (another kind of image in the same repository, or a damaged manifest).
    pub fn from_oci_json(json: &[u8]) -> Result<Artifact, String> {
        let m: OciManifest =
            serde_json::from_slice(json).map_err(|e| format!("not an OCI image manifest: {e}"))?;
        if m.schema_version != 2 {
            return Err(format!("unsupported schemaVersion {}", m.schema_version));
        }
        if let Some(mt) = m.media_type.as_deref().filter(|mt| *mt != OCI_MANIFEST) {
            return Err(format!("media type {mt} is not an OCI image manifest"));
        }
        if m.config.media_type != MANIFEST_MEDIA_TYPE {
            return Err(format!(
                "not a hydrate image (config media type {}, expected {MANIFEST_MEDIA_TYPE})",
                m.config.media_type
            ));
        }
        let (image, manifest) = located(&m.config, "config")?;
        let mut blobs = Vec::with_capacity(m.layers.len());
        for (i, layer) in m.layers.iter().enumerate() {
            if layer.media_type != BLOB_MEDIA_TYPE {
                return Err(format!(
                    "layer {i} has media type {}, expected {BLOB_MEDIA_TYPE}",
                    layer.media_type
                ));
            }
            let (id, at) = located(layer, &format!("layer {i}"))?;
            blobs.push((BlobId(id), at));
        }
        Ok(Artifact {
            image: ImageId(image),
            manifest,
            blobs,
        })
    }
}

fn descriptor(media_type: &str, id: &Digest, at: &Located) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: at.digest.clone(),
        size: at.size,
        annotations: BTreeMap::from([(BLAKE3_ANNOTATION.to_owned(), id.to_string())]),
    }
}

fn located(d: &Descriptor, what: &str) -> Result<(Digest, Located), String> {
    let id = d
        .annotations
        .get(BLAKE3_ANNOTATION)
        .ok_or_else(|| format!("{what} has no {BLAKE3_ANNOTATION} annotation"))?;
    let id: Digest = id
        .parse()
        .map_err(|_| format!("{what}: {BLAKE3_ANNOTATION} {id:?} is not a BLAKE3 digest"))?;
    if !is_sha256_digest(&d.digest) {
        return Err(format!(
            "{what}: unsupported digest {:?} (expected sha256)",
            d.digest
        ));
    }
    Ok((
        id,
        Located {
            digest: d.digest.clone(),
            size: d.size,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrate_format::oci::{OCI_CONFIG, OCI_INDEX};
    use proptest::prelude::*;

    fn sha(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn sample(blobs: usize) -> Artifact {
        Artifact {
            image: ImageId(Digest::of(b"manifest")),
            manifest: Located {
                digest: sha(0),
                size: 1234,
            },
            blobs: (0..blobs)
                .map(|i| {
                    (
                        BlobId(Digest::of(&[i as u8])),
                        Located {
                            digest: sha(i as u8 + 1),
                            size: 1 << 25,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let a = sample(2);
        let json: serde_json::Value = serde_json::from_slice(&a.to_oci_json()).unwrap();
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(json["mediaType"], OCI_MANIFEST);
        assert_eq!(json["artifactType"], ARTIFACT_TYPE);
        assert_eq!(json["config"]["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(json["config"]["digest"], sha(0));
        assert_eq!(json["config"]["size"], 1234);
        assert_eq!(
            json["config"]["annotations"][BLAKE3_ANNOTATION],
            a.image.to_string()
        );
        assert_eq!(json["annotations"][IMAGE_ANNOTATION], a.image.to_string());
        assert_eq!(json["layers"][1]["mediaType"], BLOB_MEDIA_TYPE);
        assert_eq!(json["layers"][1]["digest"], sha(2));
        assert_eq!(
            json["layers"][1]["annotations"][BLAKE3_ANNOTATION],
            a.blobs[1].0.to_string()
        );
        // Deterministic: the same image always gives the same bytes (and OCI digest).
        assert_eq!(a.to_oci_json(), sample(2).to_oci_json());
    }

    #[test]
    fn other_manifests_are_refused_with_the_reason() {
        let mut other =
            serde_json::from_slice::<serde_json::Value>(&sample(1).to_oci_json()).unwrap();
        other["config"]["mediaType"] = OCI_CONFIG.into();
        let err = Artifact::from_oci_json(other.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("not a hydrate image"), "{err}");

        let mut v = serde_json::from_slice::<serde_json::Value>(&sample(1).to_oci_json()).unwrap();
        v["layers"][0]["annotations"] = serde_json::json!({});
        let err = Artifact::from_oci_json(v.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("layer 0 has no dev.hydrate.blake3"), "{err}");

        let mut v = serde_json::from_slice::<serde_json::Value>(&sample(1).to_oci_json()).unwrap();
        v["layers"][0]["digest"] = "sha512:00".into();
        let err = Artifact::from_oci_json(v.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("unsupported digest"), "{err}");

        let mut v = serde_json::from_slice::<serde_json::Value>(&sample(1).to_oci_json()).unwrap();
        v["mediaType"] = OCI_INDEX.into();
        assert!(Artifact::from_oci_json(v.to_string().as_bytes()).is_err());
        assert!(Artifact::from_oci_json(b"<html>").is_err());
    }

    #[test]
    fn digests_are_checked_strictly() {}

    proptest! {
        /// Any artifact survives the trip through JSON, as written by us or re-serialized by
        /// another tool (which may reorder keys).
        #[test]
        fn round_trips(blobs in 0usize..40, size in 0u64..(1 << 40)) {
            let mut a = sample(blobs);
            a.manifest.size = size;
            let json = a.to_oci_json();
            prop_assert_eq!(&Artifact::from_oci_json(&json).unwrap(), &a);
            let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            prop_assert_eq!(Artifact::from_oci_json(&pretty).unwrap(), a);
        }
    }
}
