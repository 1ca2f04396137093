//! Reading an OCI image layout directory (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`) into a
//! [`SourceImage`]: the reference is matched against `org.opencontainers.image.ref.name`, nested indexes
//! are resolved for the wanted platform, and every blob read here is size- and digest-checked (layers are
//! checked while they are converted).

use std::fs::File;
use std::path::{Path, PathBuf};

use hydrate_format::oci::{DOCKER_CONFIG, OCI_CONFIG, REF_NAME};
use serde::Deserialize;

use crate::oci::{
    check_digest, parse_manifest, read_verified, select_platform, ParsedManifest, Platform,
};
use crate::{ConvertError, SourceImage, SourceLayer};

/// Index levels followed before giving up (an index of indexes is legal; a cycle is not).
const NESTING_LIMIT: usize = 8;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutFile {
    image_layout_version: String,
}

/// Opens the image `reference` (a `ref.name` annotation; `None` = the only manifest) of the OCI image
/// layout in `dir`, for `platform` when it is multi-platform.
pub fn open_layout(
    dir: &Path,
    reference: Option<&str>,
    platform: &Platform,
) -> Result<SourceImage, ConvertError> {
    let dir = std::path::absolute(dir).map_err(|e| ConvertError::io("resolving", dir, e))?;
    let layout_path = dir.join("oci-layout");
    let layout =
        std::fs::read(&layout_path).map_err(|e| ConvertError::io("reading", &layout_path, e))?;
    let layout: LayoutFile = serde_json::from_slice(&layout).map_err(|e| {
        ConvertError::corrupt(
            layout_path.display().to_string(),
            format!("invalid JSON: {e}"),
        )
    })?;
    if layout.image_layout_version != "1.0.0" {
        return Err(ConvertError::unsupported(
            layout_path.display().to_string(),
            format!(
                "image layout version {} is not supported (only 1.0.0)",
                layout.image_layout_version
            ),
        ));
    }
    let index_path = dir.join("index.json");
    let index_bytes =
        std::fs::read(&index_path).map_err(|e| ConvertError::io("reading", &index_path, e))?;
    let ParsedManifest::Index(manifests) = parse_manifest(&index_bytes, None)? else {
        return Err(ConvertError::corrupt(
            index_path.display().to_string(),
            "not an image index",
        ));
    };
    let names = || {
        let v: Vec<&str> = manifests
            .iter()
            .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
            .collect();
        if v.is_empty() {
            "no named manifests".to_owned()
        } else {
            v.join(", ")
        }
    };
    let mut desc = match reference {
        Some(r) => {
            let found: Vec<_> = manifests
                .iter()
                .filter(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(r))
                .collect();
            match found.as_slice() {
                [d] => (*d).clone(),
                [] => {
                    return Err(ConvertError::NotFound {
                        what: format!("reference {r:?} in {}", index_path.display()),
                        available: names(),
                    })
                }
                _ => {
                    return Err(ConvertError::corrupt(
                        index_path.display().to_string(),
                        format!("reference {r:?} names several manifests"),
                    ))
                }
            }
        }
        None => match manifests.as_slice() {
            [d] => d.clone(),
            _ => {
                return Err(ConvertError::NotFound {
                    what: format!(
                        "a single manifest in {} ({} present; name one)",
                        index_path.display(),
                        manifests.len()
                    ),
                    available: names(),
                })
            }
        },
    };
    let reference_text = match reference {
        Some(r) => format!("oci-layout:{}:{r}", dir.display()),
        None => format!("oci-layout:{}", dir.display()),
    };
    for _ in 0..NESTING_LIMIT {
        let what = format!("manifest {}", desc.digest);
        let bytes = read_blob(&dir, &desc.digest, desc.size, &what)?;
        match parse_manifest(&bytes, Some(&desc.media_type))? {
            ParsedManifest::Index(list) => desc = select_platform(&list, platform)?,
            ParsedManifest::Image { config, layers } => {
                let config_what = format!("image config {}", config.digest);
                if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
                    return Err(ConvertError::unsupported(
                        &what,
                        format!(
                            "config media type {} is not a container image config",
                            config.media_type
                        ),
                    ));
                }
                let config_bytes = read_blob(&dir, &config.digest, config.size, &config_what)?;
                let layers = layers
                    .into_iter()
                    .map(|l| {
                        let path = blob_path(&dir, &l.digest, &format!("layer {}", l.digest))?;
                        Ok(SourceLayer {
                            digest: l.digest,
                            media_type: l.media_type,
                            size: l.size,
                            path,
                        })
                    })
                    .collect::<Result<Vec<_>, ConvertError>>()?;
                return Ok(SourceImage {
                    reference: reference_text,
                    manifest_digest: desc.digest,
                    config: config_bytes,
                    config_digest: config.digest,
                    layers,
                });
            }
        }
    }
    Err(ConvertError::corrupt(
        index_path.display().to_string(),
        format!("image indexes nested more than {NESTING_LIMIT} deep"),
    ))
}

fn blob_path(dir: &Path, digest: &str, what: &str) -> Result<PathBuf, ConvertError> {
    let hex = check_digest(digest, what)?;
    Ok(dir.join("blobs").join("sha256").join(hex))
}

fn read_blob(dir: &Path, digest: &str, size: u64, what: &str) -> Result<Vec<u8>, ConvertError> {
    let path = blob_path(dir, digest, what)?;
    let f = File::open(&path).map_err(|e| ConvertError::io("opening", &path, e))?;
    read_verified(f, digest, size, what)
}
