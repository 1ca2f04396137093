//! [`HttpStore`]: a read-only store served by any HTTP(S) server that honours `Range`
//! (nginx, a CDN, an S3 bucket's public website), on `object_store`'s HTTP client.
//!
//! Address: `http://host[:port]/base` or `https://…`; the objects live at `base/blobs/<hex>`,
//! `base/manifests/<hex>` and `base/refs/<tag>`, exactly the layout of a local store
//! directory, so publishing a store is serving its directory. Writes and listings are
//! refused with a permanent error: a static web server has neither PUT nor a portable index.
//! Mounting needs neither (tags resolve with a GET).

use std::sync::Arc;

use object_store::http::HttpBuilder;

use crate::error::{ErrorKind, StoreError};
use crate::remote::{Access, ObjectKeys, RemoteOptions};

/// A read-only store under a base URL.
#[derive(Debug)]
pub struct HttpStore {
    objects: ObjectKeys,
}

impl HttpStore {
    /// Opens the store under base URL `addr`. No request is made here.
    pub fn open(addr: &str, options: &RemoteOptions) -> Result<Self, StoreError> {
        let shown = crate::remote::redact(addr);
        let bad = |why: String| StoreError::new(ErrorKind::Permanent, &shown, "", why);
        let url = url::Url::parse(addr).map_err(|e| bad(format!("invalid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(
                "an HTTP store address starts with http:// or https://".into()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "credentials do not belong in the address (it shows in `ps`)".into(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad(
                "an HTTP store address takes no query or fragment".into()
            ));
        }
        // object_store appends key segments to the URL's path; a trailing '/' would leave an
        // empty segment (`base//blobs/..`).
        let base = addr.trim_end_matches('/');
        let inner = HttpBuilder::new()
            .with_url(base)
            .with_client_options(options.client_options().with_allow_http(true))
            .with_retry(options.retry_config())
            .build()
            .map_err(|e| {
                StoreError::new(ErrorKind::Permanent, base, "", "configuring HTTP client")
                    .with_cause(e)
            })?;
        Ok(HttpStore {
            objects: ObjectKeys::new(Arc::new(inner), "", base.to_owned(), Access::ReadOnly),
        })
    }
}

crate::remote::blob_store_over_object_keys!(HttpStore, is_local: false);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlobStore;
    use bytes::Bytes;

    #[tokio::test]
    async fn addresses_are_checked_and_writes_refused() {
        let o = RemoteOptions::default();
        for bad in ["ftp://h/x", "http://u:pw@h/x", "http://h/x?a=1"] {
            let err = HttpStore::open(bad, &o).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Permanent, "{bad}");
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
        let store = HttpStore::open("http://127.0.0.1:9/images/", &o).unwrap();
        assert_eq!(store.describe(), "http://127.0.0.1:9/images");
        let err = store.put("refs/a", Bytes::new()).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        assert!(store.list("refs/").await.is_err());
        // Nothing listens on port 9 (discard): a connection failure is temporary.
        let err = store.get_range("blobs/aa", 0..4).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Temporary, "{err}");
    }
}
