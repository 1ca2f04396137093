//! Parsing of `oci://host[:port]/repo[:tag][?insecure=1]` store addresses.
//!
//! The repository is the store (blobs, manifests and tags all live in it); the optional tag is
//! the image the address names by default, so `hydrate mount --store oci://r/team/app:1 /mnt`
//! needs no separate image argument. Names are checked against the OCI distribution spec's
//! grammar here, before any request, so a typo is reported as a bad address rather than as a
//! registry error. Plain HTTP is used for loopback registries and with `?insecure=1`; every
//! other registry is spoken to over HTTPS.

use crate::error::{ErrorKind, StoreError};

/// Longest tag the OCI distribution spec allows.
const MAX_OCI_TAG_LEN: usize = 128;

/// A parsed `oci://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciAddress {
    /// `host` or `host:port`, as used in URLs and auth files.
    pub registry: String,
    /// The repository path inside the registry, e.g. `team/app`.
    pub repository: String,
    /// The default image (a tag of the repository), if the address names one.
    pub tag: Option<String>,
    /// Whether to speak plain HTTP instead of HTTPS.
    pub plain_http: bool,
}

impl OciAddress {
    /// Parses `addr`, which must start with `oci://`.
    pub fn parse(addr: &str) -> Result<OciAddress, StoreError> {
        let bad = |why: String| StoreError::new(ErrorKind::Permanent, addr, "", why);
        let rest = addr
            .strip_prefix("oci://")
            .ok_or_else(|| bad("an OCI store address starts with oci://".into()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let mut insecure = false;
        for param in query.into_iter().flat_map(|q| q.split('&')) {
            match param.split_once('=').unwrap_or((param, "1")) {
                ("insecure", "1" | "true") => insecure = true,
                ("insecure", "0" | "false") => insecure = false,
                _ => {
                    return Err(bad(format!(
                        "unknown option {param:?} (the only option is insecure=1)"
                    )))
                }
            }
        }
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected oci://host[:port]/repository[:tag]".into()))?;
        validate_registry(registry).map_err(&bad)?;
        // A ':' after the last '/' separates the tag; one before it belongs to the host.
        let (repository, tag) = match path.rfind(':') {
            Some(i) if !path[i..].contains('/') => (&path[..i], Some(&path[i + 1..])),
            _ => (path, None),
        };
        validate_repository(repository).map_err(&bad)?;
        if let Some(tag) = tag {
            validate_oci_tag(tag).map_err(&bad)?;
        }
        let host = host_of(registry);
        let loopback =
            matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.starts_with("127.");
        Ok(OciAddress {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            plain_http: insecure || loopback,
        })
    }

    /// `oci://registry/repository`: the store, without the default tag.
    pub fn describe(&self) -> String {
        format!("oci://{}/{}", self.registry, self.repository)
    }

    /// The base URL of the registry's API.
    pub fn base_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.registry)
    }
}

/// The host part of `host[:port]` (an IPv6 literal keeps its brackets).
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry.find(']').map_or(registry, |i| &registry[..=i]);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn validate_registry(registry: &str) -> Result<(), String> {
    if registry.is_empty() {
        return Err("missing registry host".into());
    }
    let ok = registry
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok {
        return Err(format!("invalid registry host {registry:?}"));
    }
    Ok(())
}

/// Repository names per the distribution spec: `/`-separated components of lowercase
/// alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn validate_repository(repo: &str) -> Result<(), String> {
    let invalid = || {
        Err(format!(
            "invalid repository name {repo:?} (lowercase letters, digits and . _ - separators, \
             components joined by /)"
        ))
    };
    if repo.is_empty() || repo.len() > 255 {
        return invalid();
    }
    for component in repo.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
            return invalid();
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(&bytes[i]) {
                i += 1;
                continue;
            }
            // A separator run: ".", "_", "__" or one or more "-".
            let start = i;
            while i < bytes.len() && !alnum(&bytes[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
            if !ok {
                return invalid();
            }
        }
    }
    Ok(())
}

/// Tags per the distribution spec: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub(crate) fn validate_oci_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !rest_ok || tag.len() > MAX_OCI_TAG_LEN {
        return Err(format!(
            "invalid OCI tag {tag:?} (1 to 128 of A-Z a-z 0-9 . _ -, not starting with . or -)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_registry_repository_and_tag() {
        let a = OciAddress::parse("oci://127.0.0.1:5000/team/app:1").unwrap();
        assert_eq!(a.registry, "127.0.0.1:5000");
        assert_eq!(a.repository, "team/app");
        assert_eq!(a.tag.as_deref(), Some("1"));
        assert!(a.plain_http);
        assert_eq!(a.describe(), "oci://127.0.0.1:5000/team/app");
        assert_eq!(a.base_url(), "http://127.0.0.1:5000");

        let a = OciAddress::parse("oci://ghcr.io/org/images").unwrap();
        assert_eq!(a.tag, None);
        assert!(!a.plain_http);
        assert_eq!(a.base_url(), "https://ghcr.io");

        let a = OciAddress::parse("oci://registry.lan:5000/a/b/c:v1.2-rc_3?insecure=1").unwrap();
        assert!(a.plain_http);
        assert_eq!(a.repository, "a/b/c");
        assert_eq!(a.tag.as_deref(), Some("v1.2-rc_3"));

        let a = OciAddress::parse("oci://localhost/x").unwrap();
        assert!(a.plain_http);
        assert_eq!(a.registry, "localhost");
        let a = OciAddress::parse("oci://[::1]:5000/x:t").unwrap();
        assert!(a.plain_http);
        assert_eq!(a.registry, "[::1]:5000");
    }

    #[test]
    fn rejects_malformed_addresses() {
        for addr in [
            "oci://",
            "oci://host",
            "oci://host/",
            "oci://host/Team/app",
            "oci://host/team//app",
            "oci://host/team/app:",
            "oci://host/team/app:-x",
            "oci://host/team/app:a/b",
            "oci://host/-app",
            "oci://host/a..b",
            "oci://host/app?tls=0",
            "oci://ho st/app",
            "s3://host/app",
        ] {
            let err = OciAddress::parse(addr).expect_err(addr);
            assert_eq!(err.kind(), ErrorKind::Permanent, "{addr}");
            assert!(err.to_string().starts_with(addr), "{err}");
        }
        let long_tag = format!("oci://h/a:{}", "t".repeat(129));
        assert!(OciAddress::parse(&long_tag).is_err());
    }

    #[test]
    fn repository_separators_follow_the_spec() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "a/b-c/d.e", "0x"] {
            validate_repository(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["a___b", "a.-b", "a_.b", "_a", "a_", "A", "a b"] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Whatever valid repository and tag go in come back out unchanged.
        #[test]
        fn round_trips_valid_names(
            repo in "[a-z0-9]{1,8}(([._]|__|-{1,3})[a-z0-9]{1,8}){0,2}(/[a-z0-9]{1,8}){0,3}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9._-]{0,20}"),
            port in proptest::option::of(1u16..),
        ) {
            let registry = match port {
                Some(p) => format!("reg.example:{p}"),
                None => "reg.example".to_owned(),
            };
            let addr = match &tag {
                Some(t) => format!("oci://{registry}/{repo}:{t}"),
                None => format!("oci://{registry}/{repo}"),
            };
            let a = OciAddress::parse(&addr).unwrap();
            prop_assert_eq!(a.registry, registry);
            prop_assert_eq!(a.repository, repo);
            prop_assert_eq!(a.tag, tag);
            prop_assert!(!a.plain_http);
        }
    }
}
