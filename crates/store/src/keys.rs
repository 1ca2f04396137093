//! The key layout of a store: where blobs, manifests and tags live.
//!
//! The layout is part of the on-store format shared by every backend, so it is defined once
//! here. Keys are plain `/`-separated ASCII made only of characters that every backend
//! (local directory, S3, HTTP, OCI) maps without escaping, so `blobs/<hex>` is literally the
//! file `ROOT/blobs/<hex>` in a local store.

use hydrate_format::{BlobId, ImageId};

use crate::error::{ErrorKind, StoreError};

/// Prefix under which blobs (packs of compressed chunks) live.
pub const BLOBS_PREFIX: &str = "blobs/";
/// Prefix under which manifests live, one object per image, named by the image digest.
pub const MANIFESTS_PREFIX: &str = "manifests/";
/// Prefix under which tags (mutable names of images) live.
pub const TAGS_PREFIX: &str = "refs/";
/// Longest accepted tag name, in bytes.
pub const MAX_TAG_LEN: usize = 255;

/// Key of a blob: `blobs/<hex>`.
pub fn blob(id: &BlobId) -> String {
    format!("{BLOBS_PREFIX}{id}")
}

/// Key of a manifest: `manifests/<hex>`.
pub fn manifest(id: &ImageId) -> String {
    format!("{MANIFESTS_PREFIX}{id}")
}

/// Key of a tag: `refs/<name>`. The name is not validated here; see [`validate_tag`].
pub fn tag(name: &str) -> String {
    format!("{TAGS_PREFIX}{name}")
}

/// Checks that `name` is an acceptable tag name.
///
/// Accepted: 1 to 255 bytes of `[A-Za-z0-9._:/-]`, not starting or ending with `/`, with no
/// empty, `.` or `..` path segment. `/` is allowed so that names can be namespaced
/// (`team/app:v1`); the segment rules keep a tag from escaping `refs/` in a directory store.
pub fn validate_tag(name: &str) -> Result<(), StoreError> {
    let invalid = |why: &str| {
        Err(StoreError::new(
            ErrorKind::Permanent,
            "invalid tag",
            name,
            why,
        ))
    };
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > MAX_TAG_LEN {
        return invalid("longer than 255 bytes");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')))
    {
        return invalid(&format!(
            "character {c:?} not allowed (use A-Z a-z 0-9 . _ : / -)"
        ));
    }
    if name.starts_with('/') || name.ends_with('/') {
        return invalid("must not start or end with '/'");
    }
    if name.contains("..") {
        return invalid("must not contain \"..\"");
    }
    if name.split('/').any(|s| s.is_empty() || s == ".") {
        return invalid("must not contain empty or \".\" segments");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_names() {
        for name in [
            "latest",
            "app:v1.2",
            "team/app:v1",
            "a-b_c.d",
            "x",
            &"a".repeat(255),
        ] {
            validate_tag(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_names() {
        for name in [
            "",
            "/abs",
            "trail/",
            "a/../b",
            "..",
            "a..b",
            "a//b",
            "./a",
            "a/./b",
            "sp ace",
            "new\nline",
            "pct%41",
            "hash#1",
            "ü",
            &"a".repeat(256),
        ] {
            let err = validate_tag(name).expect_err(name);
            assert_eq!(err.kind(), ErrorKind::Permanent, "{name}");
            assert!(err.to_string().starts_with("invalid tag: "), "{err}");
        }
    }
}
