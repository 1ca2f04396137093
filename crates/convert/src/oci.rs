//! OCI and Docker image JSON: descriptors, manifests, indexes, the config's `rootfs.diff_ids`, platform
//! selection and digest checks. The media types and the sha256 function themselves are in
//! `hydrate_format::oci`.
//!
//! Own small serde structs rather than a full spec crate: the converter needs a handful of fields, must
//! accept both OCI and Docker schema2 documents (same shapes, other media types), and must refuse everything
//! else (schema1, artifacts, encrypted layers) with a message saying what was found.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;

use crate::ConvertError;

use hydrate_format::oci::{
    sha256_digest, sha256_hex, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_SCHEMA1, OCI_INDEX,
    OCI_MANIFEST,
};

/// Largest manifest, index or config accepted (hostile sources must not make us hold gigabytes).
pub const JSON_MAX: u64 = 16 << 20;

/// A content descriptor as found in manifests and indexes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// An image platform; `variant` distinguishes e.g. arm/v7 from arm/v6.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Linux on this machine's architecture, named the way OCI (Go's GOARCH) names it.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an index entry for `self` serves a request for `want`. arm64's only variant is v8, so an
    /// absent variant and "v8" are the same there; otherwise an asked-for variant must match exactly.
    fn serves(&self, want: &Platform) -> bool {
        if self.os != want.os || self.architecture != want.architecture {
            return false;
        }
        let norm = |v: &Option<String>| match (self.architecture.as_str(), v.as_deref()) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_owned),
        };
        match norm(&want.variant) {
            None => true,
            Some(v) => norm(&self.variant).as_deref() == Some(v.as_str()),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A parsed manifest document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedManifest {
    /// An OCI image index or Docker manifest list.
    Index(Vec<Descriptor>),
    /// An OCI image manifest or Docker schema2 manifest.
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

/// Parses an image manifest or index (OCI or Docker schema2). `content_type` is the media type the source
/// announced (a registry's Content-Type), used when the document does not carry one.
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<ParsedManifest, ConvertError> {
    let what = "image manifest";
    let announced = content_type.map(|t| t.split(';').next().unwrap_or(t).trim());
    if announced.is_some_and(|t| t.starts_with(DOCKER_SCHEMA1)) {
        return Err(schema1());
    }
    let raw: RawManifest = serde_json::from_slice(bytes)
        .map_err(|e| ConvertError::corrupt(what, format!("invalid JSON: {e}")))?;
    if raw.schema_version == Some(1) {
        return Err(schema1());
    }
    if raw.schema_version != Some(2) {
        return Err(ConvertError::unsupported(
            what,
            format!("schemaVersion {:?}, expected 2", raw.schema_version),
        ));
    }
    let media_type = raw.media_type.as_deref().or(announced);
    let is_index = match media_type {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        // OCI allows omitting mediaType; the shape then decides.
        None | Some("application/json") => raw.manifests.is_some(),
        Some(other) => {
            return Err(ConvertError::unsupported(
                what,
                format!("media type {other} is not an image manifest or index"),
            ))
        }
    };
    if is_index {
        let manifests = raw
            .manifests
            .ok_or_else(|| ConvertError::corrupt("image index", "no \"manifests\" list"))?;
        return Ok(ParsedManifest::Index(manifests));
    }
    match (raw.config, raw.layers) {
        (Some(config), Some(layers)) => Ok(ParsedManifest::Image { config, layers }),
        _ => Err(ConvertError::corrupt(
            what,
            "an image manifest needs \"config\" and \"layers\"",
        )),
    }
}

fn schema1() -> ConvertError {
    ConvertError::unsupported(
        "image manifest",
        "Docker schema1 manifests are not supported (deprecated format); push the image again with a \
         current client to get a schema2 or OCI manifest",
    )
}

/// Picks the manifest for `want` from an index; the error lists the platforms the index offers.
pub fn select_platform(index: &[Descriptor], want: &Platform) -> Result<Descriptor, ConvertError> {
    index
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.serves(want)))
        .cloned()
        .ok_or_else(|| {
            let available: Vec<String> = index
                .iter()
                .filter_map(|d| d.platform.as_ref())
                // Attestation manifests are listed as unknown/unknown: not a choice.
                .filter(|p| p.os != "unknown")
                .map(Platform::to_string)
                .collect();
            ConvertError::NotFound {
                what: format!("platform {want} in the image index"),
                available: if available.is_empty() {
                    "none".into()
                } else {
                    available.join(", ")
                },
            }
        })
}

#[derive(Deserialize)]
struct RawConfig {
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: Option<String>,
    diff_ids: Option<Vec<String>>,
}

/// The `rootfs.diff_ids` of an image config: the sha256 of each layer's uncompressed tar, in order.
pub fn diff_ids(config: &[u8], what: &str) -> Result<Vec<String>, ConvertError> {
    let raw: RawConfig = serde_json::from_slice(config)
        .map_err(|e| ConvertError::corrupt(what, format!("invalid JSON: {e}")))?;
    let rootfs = raw
        .rootfs
        .ok_or_else(|| ConvertError::corrupt(what, "no \"rootfs\" section"))?;
    if rootfs.kind.as_deref() != Some("layers") {
        return Err(ConvertError::unsupported(
            what,
            format!("rootfs type {:?}, expected \"layers\"", rootfs.kind),
        ));
    }
    let ids = rootfs
        .diff_ids
        .ok_or_else(|| ConvertError::corrupt(what, "no \"rootfs.diff_ids\""))?;
    for id in &ids {
        check_digest(id, what)?;
    }
    Ok(ids)
}

/// Checks `digest` is `sha256:` and 64 lowercase hex digits (the only algorithm accepted, and the check
/// that makes it safe to use in a path); returns the hex part.
pub fn check_digest<'a>(digest: &'a str, what: &str) -> Result<&'a str, ConvertError> {
    let Some((alg, _)) = digest.split_once(':') else {
        return Err(ConvertError::corrupt(
            what,
            format!("malformed digest {digest:?}"),
        ));
    };
    if alg != "sha256" {
        return Err(ConvertError::unsupported(
            what,
            format!("digest algorithm {alg} is not supported yet (only sha256)"),
        ));
    }
    sha256_hex(digest).ok_or_else(|| {
        ConvertError::corrupt(
            what,
            format!("malformed digest {digest:?} (expected sha256:<64 hex digits>)"),
        )
    })
}

/// Reads a small JSON blob of `expected_size` bytes, checking size and digest.
pub(crate) fn read_verified(
    mut r: impl Read,
    digest: &str,
    expected_size: u64,
    what: &str,
) -> Result<Vec<u8>, ConvertError> {
    if expected_size > JSON_MAX {
        return Err(ConvertError::unsupported(
            what,
            format!("{expected_size} bytes is larger than the {JSON_MAX}-byte limit"),
        ));
    }
    let mut buf = Vec::new();
    (&mut r)
        .take(expected_size + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ConvertError::corrupt(what, format!("reading: {e}")))?;
    if buf.len() as u64 != expected_size {
        return Err(ConvertError::corrupt(
            what,
            format!(
                "size is {}{} bytes, the descriptor says {expected_size}",
                if buf.len() as u64 > expected_size {
                    "more than "
                } else {
                    ""
                },
                buf.len().min(expected_size as usize)
            ),
        ));
    }
    let actual = sha256_digest(&buf);
    if actual != digest {
        return Err(ConvertError::DigestMismatch {
            what: what.to_owned(),
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(buf)
}
