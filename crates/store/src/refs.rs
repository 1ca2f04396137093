//! Tags: mutable names that point at images, and resolution of what users type.
//!
//! A tag is the object `refs/<name>` whose content is the image digest in hex plus a newline,
//! so it can be read with `cat` in a directory store or `curl` from an HTTP one. Writing a
//! tag is one atomic `put`, so a reader sees the old or the new image, never a torn name.

use hydrate_format::ImageId;

use crate::error::{ErrorKind, StoreError};
use crate::keys;
use crate::BlobStore;

/// Points tag `name` at image `id` (creating or moving the tag).
pub async fn put_tag(store: &dyn BlobStore, name: &str, id: &ImageId) -> Result<(), StoreError> {
    keys::validate_tag(name)?;
    store.put(&keys::tag(name), format!("{id}\n").into()).await
}

/// Resolves what a user typed to an image: a 64-hex digest (optionally `blake3:`-prefixed)
/// names itself if its manifest exists in the store; anything else, or a digest whose
/// manifest is absent, is looked up as a tag.
pub async fn resolve(store: &dyn BlobStore, name_or_digest: &str) -> Result<ImageId, StoreError> {
    let hex = name_or_digest
        .strip_prefix("blake3:")
        .unwrap_or(name_or_digest);
    if let Ok(id) = hex.parse::<ImageId>() {
        if store.head(&keys::manifest(&id)).await?.is_some() {
            return Ok(id);
        }
    }
    if keys::validate_tag(name_or_digest).is_err() {
        // Not a tag either: report it as unknown rather than as a malformed tag.
        return Err(StoreError::new(
            ErrorKind::NotFound,
            store.describe(),
            name_or_digest,
            "no image with this digest and not a valid tag name",
        ));
    }
    read_tag(store, name_or_digest).await.map_err(|e| {
        if e.is_not_found() {
            StoreError::new(
                ErrorKind::NotFound,
                store.describe(),
                name_or_digest,
                "no image or tag with this name",
            )
        } else {
            e
        }
    })
}

/// All tags of the store with the images they point at, sorted by name.
pub async fn list_tags(store: &dyn BlobStore) -> Result<Vec<(String, ImageId)>, StoreError> {
    let mut tags = Vec::new();
    for key in store.list(keys::TAGS_PREFIX).await? {
        let name = &key[keys::TAGS_PREFIX.len()..];
        match read_tag(store, name).await {
            Ok(id) => tags.push((name.to_owned(), id)),
            // Deleted between list and read: it is simply not a tag any more.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    tags.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tags)
}

async fn read_tag(store: &dyn BlobStore, name: &str) -> Result<ImageId, StoreError> {
    let key = keys::tag(name);
    let data = store.get(&key).await?;
    let text = std::str::from_utf8(&data)
        .ok()
        .and_then(|t| t.strip_suffix('\n'))
        .unwrap_or("");
    text.parse::<ImageId>().map_err(|_| {
        StoreError::new(
            ErrorKind::Permanent,
            store.describe(),
            key,
            format!(
                "malformed tag content {:?} (expected 64 lowercase hex digits and a newline)",
                String::from_utf8_lossy(&data[..data.len().min(80)])
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalStore;
    use hydrate_format::Digest;

    fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn tags_round_trip_and_list_sorted() {
        let (_dir, store) = store();
        let a = ImageId(Digest::of(b"a"));
        let b = ImageId(Digest::of(b"b"));
        put_tag(&store, "team/app:v2", &b).await.unwrap();
        put_tag(&store, "app:v1", &a).await.unwrap();
        assert_eq!(
            store.get("refs/app:v1").await.unwrap(),
            format!("{a}\n").as_bytes()
        );
        assert_eq!(resolve(&store, "app:v1").await.unwrap(), a);
        assert_eq!(
            list_tags(&store).await.unwrap(),
            [("app:v1".to_owned(), a), ("team/app:v2".to_owned(), b)]
        );
        // Moving a tag.
        put_tag(&store, "app:v1", &b).await.unwrap();
        assert_eq!(resolve(&store, "app:v1").await.unwrap(), b);

        let err = put_tag(&store, "../escape", &a).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
    }

    #[tokio::test]
    async fn digests_resolve_to_themselves_only_if_the_manifest_exists() {
        let (_dir, store) = store();
        let id = ImageId(Digest::of(b"manifest"));
        let err = resolve(&store, &id.to_string()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);

        store
            .put(&keys::manifest(&id), bytes::Bytes::from_static(b"m"))
            .await
            .unwrap();
        assert_eq!(resolve(&store, &id.to_string()).await.unwrap(), id);
        assert_eq!(resolve(&store, &format!("blake3:{id}")).await.unwrap(), id);

        // A tag spelled like an absent digest still resolves as a tag.
        let other = ImageId(Digest::of(b"other"));
        let target = ImageId(Digest::of(b"target"));
        put_tag(&store, &other.to_string(), &target).await.unwrap();
        assert_eq!(resolve(&store, &other.to_string()).await.unwrap(), target);
    }

    #[tokio::test]
    async fn unknown_and_malformed_tags_are_reported() {
        let (_dir, store) = store();
        let err = resolve(&store, "nope").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("nope"), "{err}");
        let err = resolve(&store, "not a tag").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);

        store
            .put("refs/bad", bytes::Bytes::from_static(b"xyz\n"))
            .await
            .unwrap();
        let err = resolve(&store, "bad").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(err.to_string().contains("refs/bad: malformed tag"), "{err}");
        assert!(list_tags(&store).await.is_err());
    }
}
