//! The containerd-pullable form of a hydrate image: an ordinary OCI image whose one layer is a tiny tar
//! holding a marker file, [`MARKER_PATH`], that names the hydrate image (store and image id).
//!
//! containerd 1.6 downloads every layer of an image into its content store before unpacking, so the layers
//! must be metadata, not data. The image built here has:
//! - the **source image's config**, unchanged except `rootfs.diff_ids` (the one marker layer) and `history`
//!   (the source's entries kept as `empty_layer`, one entry for the marker appended), so entrypoint, env,
//!   user and workdir behave as with the original;
//! - **one gzip layer** of a few hundred bytes: the directory `.hydrate/` and [`MARKER_PATH`], a JSON
//!   [`LazyImageMarker`].
//!
//! containerd unpacks the layer with its own applier into a snapshot prepared by `hydrate snapshotter`; at
//! commit the snapshotter finds the marker, mounts the hydrate image lazily and uses that mount as the
//! snapshot's content. Any other snapshotter would give the container a root holding only the marker: the
//! image is meant for the hydrate snapshotter.
//!
//! Everything is deterministic (no timestamps, fixed gzip header), so converting the same image into the
//! same store gives the same manifest digest.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use hydrate_format::oci::{sha256_digest, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ConvertError;

/// Path of the marker inside the metadata layer (and so inside the unpacked snapshot).
pub const MARKER_PATH: &str = ".hydrate/image.json";
/// Version of the marker format; a snapshotter refuses versions it does not know.
pub const MARKER_VERSION: u32 = 1;
/// Largest marker accepted when reading one back (real ones are a few hundred bytes).
pub const MAX_MARKER_BYTES: u64 = 64 << 10;
/// Annotation on the container image's manifest repeating the hydrate image id.
pub const IMAGE_ANNOTATION: &str = "dev.hydrate.image";

/// What the marker file says: where the hydrate image is and which one it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LazyImageMarker {
    pub version: u32,
    /// Store address of the hydrate image, e.g. `oci://registry/team/app` (no tag: the image is named by id).
    pub store: String,
    /// The hydrate image id (64 lowercase hex digits): immutable, so a moved tag never changes what runs.
    pub image: String,
    /// The tag the hydrate image was stored under at conversion, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The source image reference and manifest digest, for messages and provenance.
    pub source: String,
    pub source_manifest: String,
}

impl LazyImageMarker {
    /// Parses and validates a marker read from an unpacked layer.
    pub fn parse(bytes: &[u8]) -> Result<LazyImageMarker, String> {
        let marker: LazyImageMarker = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a hydrate image marker: {e}"))?;
        if marker.version != MARKER_VERSION {
            return Err(format!(
                "marker version {} is not supported (this hydrate reads version {MARKER_VERSION})",
                marker.version
            ));
        }
        if marker.image.len() != 64
            || !marker
                .image
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "image id {:?} is not 64 lowercase hex digits",
                marker.image
            ));
        }
        if marker.store.is_empty() {
            return Err("no store address".into());
        }
        Ok(marker)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a marker of strings serializes");
        bytes.push(b'\n');
        bytes
    }
}

/// The blobs and manifest of a containerd-pullable image, ready to upload.
#[derive(Debug, Clone)]
pub struct ContainerdImage {
    pub config: Vec<u8>,
    /// The gzip-compressed metadata layer.
    pub layer: Vec<u8>,
    /// `sha256:…` of the uncompressed layer tar (the config's diff_id).
    pub diff_id: String,
    /// The OCI image manifest (media type [`OCI_MANIFEST`]).
    pub manifest: Vec<u8>,
}

/// Builds the containerd form of the hydrate image `marker` names, with `source_config` (the source
/// image's config JSON) as its config.
pub fn containerd_image(
    source_config: &[u8],
    marker: &LazyImageMarker,
) -> Result<ContainerdImage, ConvertError> {
    let tar = marker_tar(marker)?;
    let diff_id = sha256_digest(&tar);
    let gzip_error =
        |e: std::io::Error| ConvertError::corrupt("metadata layer", format!("gzip: {e}"));
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).map_err(gzip_error)?;
    let layer = gz.finish().map_err(gzip_error)?;
    let config = rewrite_config(source_config, &diff_id, marker)?;
    let manifest = manifest_json(&config, &layer, marker);
    Ok(ContainerdImage {
        config,
        layer,
        diff_id,
        manifest,
    })
}

/// The uncompressed metadata layer: `.hydrate/` and the marker, owned by root, timestamps zero.
fn marker_tar(marker: &LazyImageMarker) -> Result<Vec<u8>, ConvertError> {
    let bad = |e: std::io::Error| ConvertError::corrupt("metadata layer", format!("tar: {e}"));
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    dir.set_uid(0);
    dir.set_gid(0);
    builder
        .append_data(&mut dir, ".hydrate/", std::io::empty())
        .map_err(bad)?;
    let body = marker.to_json();
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o644);
    file.set_size(body.len() as u64);
    file.set_mtime(0);
    file.set_uid(0);
    file.set_gid(0);
    builder
        .append_data(&mut file, MARKER_PATH, &body[..])
        .map_err(bad)?;
    builder.into_inner().map_err(bad)
}

/// The source config with `rootfs` naming the marker layer and `history` describing it.
fn rewrite_config(
    source_config: &[u8],
    diff_id: &str,
    marker: &LazyImageMarker,
) -> Result<Vec<u8>, ConvertError> {
    let mut config: Value = serde_json::from_slice(source_config)
        .map_err(|e| ConvertError::corrupt("source image config", e.to_string()))?;
    let Some(object) = config.as_object_mut() else {
        return Err(ConvertError::corrupt(
            "source image config",
            "not a JSON object",
        ));
    };
    object.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": [diff_id] }),
    );
    // containerd and docker pair non-empty history entries with layers: the source's layers are gone, so
    // their entries stay as documentation only.
    let mut history = match object.remove("history") {
        Some(Value::Array(entries)) => entries,
        _ => Vec::new(),
    };
    for entry in &mut history {
        if let Some(entry) = entry.as_object_mut() {
            entry.insert("empty_layer".into(), Value::Bool(true));
        }
    }
    history.push(json!({
        "created_by": format!("hydrate convert: lazy image {} in {}", marker.image, marker.store),
        "comment": "metadata only: the files are fetched on first access by the hydrate snapshotter",
    }));
    object.insert("history".into(), Value::Array(history));
    serde_json::to_vec(&config)
        .map_err(|e| ConvertError::corrupt("container image config", e.to_string()))
}

fn manifest_json(config: &[u8], layer: &[u8], marker: &LazyImageMarker) -> Vec<u8> {
    let mut annotations = BTreeMap::new();
    annotations.insert(IMAGE_ANNOTATION, marker.image.clone());
    annotations.insert("org.opencontainers.image.base.name", marker.source.clone());
    annotations.insert(
        "org.opencontainers.image.base.digest",
        marker.source_manifest.clone(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": sha256_digest(config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": OCI_LAYER_GZIP,
            "digest": sha256_digest(layer),
            "size": layer.len(),
        }],
        "annotations": annotations,
    });
    serde_json::to_vec(&manifest).expect("a manifest of strings and numbers serializes")
}

/// Reads the marker back out of a gzip metadata layer (tests and diagnostics).
pub fn marker_from_layer(layer: &[u8]) -> Result<LazyImageMarker, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        if path == std::path::Path::new(MARKER_PATH) {
            let mut bytes = Vec::new();
            entry
                .take(MAX_MARKER_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|e| e.to_string())?;
            return LazyImageMarker::parse(&bytes);
        }
    }
    Err(format!("the layer holds no {MARKER_PATH}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> LazyImageMarker {
        LazyImageMarker {
            version: MARKER_VERSION,
            store: "oci://127.0.0.1:5000/app".into(),
            image: "ab".repeat(32),
            tag: Some("1".into()),
            source: "docker://127.0.0.1:5000/src:1".into(),
            source_manifest: format!("sha256:{}", "cd".repeat(32)),
        }
    }

    #[test]
    fn keeps_the_source_config_and_replaces_the_layers() {
        let source = br#"{"architecture":"amd64","os":"linux","config":{"User":"1000","WorkingDir":"/w",
            "Entrypoint":["/bin/app"],"Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":["sha256:1","sha256:2"]},
            "history":[{"created_by":"a"},{"created_by":"b"}]}"#;
        let image = containerd_image(source, &marker()).unwrap();
        let config: Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(config["config"]["User"], "1000");
        assert_eq!(config["config"]["WorkingDir"], "/w");
        assert_eq!(config["config"]["Entrypoint"][0], "/bin/app");
        assert_eq!(config["rootfs"]["diff_ids"], json!([image.diff_id]));
        let history = config["history"].as_array().unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!(history[0]["empty_layer"], true);
        assert!(history[2].get("empty_layer").is_none());
        assert!(image.layer.len() < 1024, "{} bytes", image.layer.len());
        assert_eq!(marker_from_layer(&image.layer).unwrap(), marker());
        let manifest: Value = serde_json::from_slice(&image.manifest).unwrap();
        assert_eq!(
            manifest["layers"][0]["digest"],
            sha256_digest(&image.layer).as_str()
        );
        assert_eq!(
            manifest["config"]["digest"],
            sha256_digest(&image.config).as_str()
        );
        // Deterministic: the same input gives the same bytes.
        let again = containerd_image(source, &marker()).unwrap();
        assert_eq!(again.manifest, image.manifest);
        assert_eq!(again.layer, image.layer);
    }

    /// Golden bytes of marker version 1: a change here breaks every pulled image; bump MARKER_VERSION instead.
    #[test]
    fn marker_v1_bytes_are_stable() {
        let text = String::from_utf8(marker().to_json()).unwrap();
        let expected = format!(
            "{{\n  \"version\": 1,\n  \"store\": \"oci://127.0.0.1:5000/app\",\n  \"image\": \"{}\",\n  \
             \"tag\": \"1\",\n  \"source\": \"docker://127.0.0.1:5000/src:1\",\n  \"source_manifest\": \
             \"sha256:{}\"\n}}\n",
            "ab".repeat(32),
            "cd".repeat(32)
        );
        assert_eq!(text, expected);
        let layer = containerd_image(br#"{"config":{}}"#, &marker()).unwrap();
        assert_eq!(
            layer.diff_id,
            "sha256:4dca5de030c4995f1998b689a0d686c43de19bb8b19385a65653fcf40fbd36b9",
            "the metadata layer's bytes changed"
        );
    }

    #[test]
    fn refuses_bad_markers() {
        assert!(LazyImageMarker::parse(b"{").is_err());
        let mut m = marker();
        m.version = 2;
        assert!(LazyImageMarker::parse(&m.to_json())
            .unwrap_err()
            .contains("version 2"));
        let mut m = marker();
        m.image = "xyz".into();
        assert!(LazyImageMarker::parse(&m.to_json())
            .unwrap_err()
            .contains("hex"));
        assert!(
            LazyImageMarker::parse(br#"{"version":1,"store":"s","image":"a","extra":1}"#).is_err()
        );
        assert_eq!(
            LazyImageMarker::parse(&marker().to_json()).unwrap(),
            marker()
        );
    }
}
