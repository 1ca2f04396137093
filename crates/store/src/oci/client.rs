//! A small client for the OCI distribution API of one repository, with Basic and Bearer auth.
//!
//! Why not the `oci-client` crate: it can do ranged blob GETs and token flows, but (0.18) for
//! anonymous access it probes `GET /v2/` before every request once any auth is registered
//! (which `list_tags` always does), doubling the round trips of every cold read; it drops
//! token-endpoint failures silently, so a wrong password surfaces as an unrelated 401; and its
//! error type loses the HTTP status of registry errors, which the retry classification needs.
//! The part of the API hydrate uses is eight requests, so it is spoken directly over reqwest
//! (already in the tree through `object_store`).
//!
//! Auth is negotiated lazily, as docker does: a request goes out with what worked last
//! (nothing, Basic credentials or a Bearer token); a 401 carries `WWW-Authenticate`, which
//! says whether to send Basic credentials or to fetch a token from the named realm for
//! `repository:<repo>:pull[,push]`, after which the request is sent once more. A second 401
//! is an authentication failure. Anonymous registries therefore cost no extra request, and
//! an expired token costs one refresh.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use bytes::Bytes;
use hydrate_format::oci::{sha256_digest, ACCEPT_MANIFEST};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode};

use super::address::OciAddress;
use super::auth::Credentials;
use crate::error::ErrorKind;
use crate::remote::RemoteOptions;

/// Why a registry request failed, before it is given a store and key.
#[derive(Debug)]
pub(crate) struct Failure {
    pub kind: ErrorKind,
    /// True for 401/403: the caller words the message around the credentials used.
    pub auth: bool,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            auth: false,
            message: message.into(),
        }
    }

    pub(crate) fn transport(what: &str, e: &reqwest::Error) -> Failure {
        // Connection, timeout and body errors are the network's; a request that could not
        // even be built or redirected sensibly will fail the same way again.
        let kind = if e.is_builder() || e.is_redirect() {
            ErrorKind::Permanent
        } else {
            ErrorKind::Temporary
        };
        Failure::new(kind, format!("{what}: {}", error_chain(e)))
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Which access a request needs; decides the token scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Pull,
    Push,
}

#[derive(Debug, Clone)]
enum AuthState {
    /// Nothing learned yet, or the registry wants nothing.
    None,
    /// The registry asked for Basic auth.
    Basic,
    /// A token from the registry's token service, and whether its scope includes push.
    Bearer { token: String, push: bool },
}

/// A challenge from `WWW-Authenticate`.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

pub(crate) struct RegistryClient {
    http: reqwest::Client,
    base: String,
    registry: String,
    repository: String,
    credentials: Option<Credentials>,
    state: RwLock<AuthState>,
    /// Bumped whenever `state` changes, so a refused request can tell whether someone else already renewed
    /// the credentials it was sent with.
    generation: AtomicU64,
    /// Held while answering a challenge: concurrent requests refused together (the first requests of a
    /// parallel push, or every request in flight when a token expires) cost one token request, not one each.
    renewing: tokio::sync::Mutex<()>,
    /// Set once a request needed push: later tokens keep the push scope, so a pull request that renews an
    /// expired token does not narrow it under a running push.
    pushed: AtomicBool,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .field("repository", &self.repository)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    pub fn new(
        addr: &OciAddress,
        credentials: Option<Credentials>,
        opts: &RemoteOptions,
    ) -> Result<RegistryClient, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .read_timeout(opts.read_timeout)
            .pool_idle_timeout(opts.pool_idle_timeout)
            .pool_max_idle_per_host(opts.pool_max_idle_per_host)
            .tcp_nodelay(true)
            .user_agent(concat!("hydrate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("creating the HTTP client: {}", error_chain(&e)))?;
        Ok(RegistryClient {
            http,
            base: addr.base_url(),
            registry: addr.registry.clone(),
            repository: addr.repository.clone(),
            credentials,
            state: RwLock::new(AuthState::None),
            generation: AtomicU64::new(0),
            renewing: tokio::sync::Mutex::new(()),
            pushed: AtomicBool::new(false),
        })
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repository)
    }

    /// Sends a request, answering one auth challenge if the registry poses one.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
        access: Access,
    ) -> Result<Response, Failure> {
        let what = format!("{method} {url}");
        if access == Access::Push {
            self.pushed.store(true, Ordering::Relaxed);
        }
        for attempt in 0..2 {
            let sent_with = self.generation.load(Ordering::Acquire);
            let mut request = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            request = self.authorize(request);
            let response = request
                .send()
                .await
                .map_err(|e| Failure::transport(&what, &e))?;
            let needs_push = access == Access::Push && self.bearer_lacks_push();
            let refused = response.status() == StatusCode::UNAUTHORIZED
                || (response.status() == StatusCode::FORBIDDEN && needs_push);
            if !refused || attempt == 1 {
                return Ok(response);
            }
            let _renewing = self.renewing.lock().await;
            if self.generation.load(Ordering::Acquire) != sent_with
                && !(access == Access::Push && self.bearer_lacks_push())
            {
                // Renewed by another request while this one was on its way: try what it got.
                continue;
            }
            let challenge = response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            match challenge {
                Some(Challenge::Basic) if self.credentials.is_some() => {
                    self.set_state(AuthState::Basic);
                }
                Some(Challenge::Bearer { realm, service }) => {
                    let push = self.pushed.load(Ordering::Relaxed);
                    let scope = if push { Access::Push } else { Access::Pull };
                    let token = self.fetch_token(&realm, service.as_deref(), scope).await?;
                    self.set_state(AuthState::Bearer { token, push });
                }
                // Basic without credentials, or a scheme we do not speak: the 401 stands.
                _ => return Ok(response),
            }
        }
        unreachable!("the second attempt always returns")
    }

    fn set_state(&self, state: AuthState) {
        *self.state.write().expect("auth state lock") = state;
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn bearer_lacks_push(&self) -> bool {
        matches!(
            &*self.state.read().expect("auth state lock"),
            AuthState::Bearer { push: false, .. }
        )
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &*self.state.read().expect("auth state lock") {
            AuthState::None => request,
            AuthState::Basic => match &self.credentials {
                Some(c) => request.basic_auth(&c.username, Some(&c.password)),
                None => request,
            },
            // A pull token is still sent for a push: the 401 it earns brings the challenge
            // for the wider scope.
            AuthState::Bearer { token, .. } => request.bearer_auth(token),
        }
    }

    /// Gets a token from the registry's token service (docker's token protocol), with the
    /// credentials as Basic auth if there are any.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        access: Access,
    ) -> Result<String, Failure> {
        let actions = match access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        };
        let scope = format!("repository:{}:{actions}", self.repository);
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let url = url::Url::parse_with_params(realm, &query).map_err(|e| {
            Failure::new(
                ErrorKind::Permanent,
                format!(
                    "registry {} names an invalid token realm {realm:?}: {e}",
                    self.registry
                ),
            )
        })?;
        let mut request = self.http.get(url);
        if let Some(c) = &self.credentials {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let what = format!("token request to {realm}");
        let response = request
            .send()
            .await
            .map_err(|e| Failure::transport(&what, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::transport(&what, &e))?;
        if !status.is_success() {
            let mut failure = status_failure(&what, status, &body);
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                failure.auth = true;
            }
            return Err(failure);
        }
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            Failure::new(
                ErrorKind::Permanent,
                format!("{what}: answer is not JSON: {e}"),
            )
        })?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                Failure::new(ErrorKind::Permanent, format!("{what}: answer has no token"))
            })
    }

    /// The raw manifest for `reference` (a tag or a digest) with the media type the registry gave it, or
    /// `None` if there is none. Any manifest kind is accepted (see `ACCEPT_MANIFEST`). The body is checked
    /// against a digest `reference` and against the advertised `Docker-Content-Digest`, so a tag read is
    /// verified too.
    pub async fn get_manifest(
        &self,
        reference: &str,
    ) -> Result<Option<(Bytes, Option<String>)>, Failure> {
        let url = self.url(&format!("manifests/{reference}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static(ACCEPT_MANIFEST),
        );
        let response = self
            .send(Method::GET, &url, headers, None, Access::Pull)
            .await?;
        let Some(response) = found(&url, response).await? else {
            return Ok(None);
        };
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let advertised = header("docker-content-digest");
        let media_type = header("content-type").map(|t| {
            // "application/json; charset=utf-8" style parameters are not part of the type.
            t.split(';').next().unwrap_or_default().trim().to_owned()
        });
        let body = read_body(&url, response).await?;
        let actual = sha256_digest(&body);
        let expected = advertised
            .iter()
            .map(String::as_str)
            .chain(reference.starts_with("sha256:").then_some(reference));
        for want in expected.filter(|d| d.starts_with("sha256:")) {
            if want != actual {
                return Err(Failure::new(
                    ErrorKind::Temporary,
                    format!("GET {url}: manifest digest {actual} differs from {want}"),
                ));
            }
        }
        Ok(Some((body, media_type)))
    }

    /// Starts a GET of blob `digest` from byte `from` on (`Range: bytes=from-` when `from > 0`): the caller
    /// streams the body, checks the status (206 if the range was honoured, 200 for the whole blob) and
    /// verifies it.
    pub async fn open_blob(&self, digest: &str, from: u64) -> Result<Response, Failure> {
        let url = self.url(&format!("blobs/{digest}"));
        let mut headers = HeaderMap::new();
        if from > 0 {
            headers.insert(
                RANGE,
                HeaderValue::from_str(&format!("bytes={from}-")).expect("ASCII range header"),
            );
        }
        let response = self
            .send(Method::GET, &url, headers, None, Access::Pull)
            .await?;
        found(&url, response)
            .await?
            .ok_or_else(|| Failure::new(ErrorKind::NotFound, format!("GET {url}: not found")))
    }

    /// Stores `body` as the manifest tagged `tag`.
    pub async fn put_manifest(
        &self,
        tag: &str,
        body: Bytes,
        media_type: &'static str,
    ) -> Result<(), Failure> {
        let url = self.url(&format!("manifests/{tag}"));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(media_type));
        let response = self
            .send(Method::PUT, &url, headers, Some(body), Access::Push)
            .await?;
        expect_success(&format!("PUT {url}"), response).await
    }

    /// The size of blob `digest`, or `None` if the repository does not have it.
    pub async fn blob_size(&self, digest: &str) -> Result<Option<u64>, Failure> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self
            .send(Method::HEAD, &url, HeaderMap::new(), None, Access::Pull)
            .await?;
        let Some(response) = found(&url, response).await? else {
            return Ok(None);
        };
        let size = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Failure::new(
                    ErrorKind::Permanent,
                    format!("HEAD {url}: no Content-Length"),
                )
            })?;
        Ok(Some(size))
    }

    /// Blob `digest`, whole (verified against its digest) or the byte `range` of it.
    pub async fn get_blob(
        &self,
        digest: &str,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, Failure> {
        let url = self.url(&format!("blobs/{digest}"));
        let mut headers = HeaderMap::new();
        if let Some(r) = &range {
            let value = format!("bytes={}-{}", r.start, r.end - 1);
            headers.insert(
                RANGE,
                HeaderValue::from_str(&value).expect("ASCII range header"),
            );
        }
        let response = self
            .send(Method::GET, &url, headers, None, Access::Pull)
            .await?;
        let Some(response) = found(&url, response).await? else {
            return Err(Failure::new(ErrorKind::NotFound, "not found"));
        };
        let status = response.status();
        let body = read_body(&url, response).await?;
        match range {
            Some(_) if status == StatusCode::PARTIAL_CONTENT => Ok(body),
            Some(r) => {
                // A registry (or a proxy) that ignores Range sends the whole blob: still correct,
                // but the laziness is lost, so say so.
                tracing::warn!(%url, "registry ignored the Range header and sent the whole blob");
                if r.end > body.len() as u64 {
                    return Err(Failure::new(
                        ErrorKind::Permanent,
                        format!(
                            "GET {url}: range {}..{} past the end of {} bytes",
                            r.start,
                            r.end,
                            body.len()
                        ),
                    ));
                }
                Ok(body.slice(r.start as usize..r.end as usize))
            }
            None => {
                let actual = sha256_digest(&body);
                if actual != digest {
                    return Err(Failure::new(
                        ErrorKind::Temporary,
                        format!("GET {url}: received content has digest {actual}"),
                    ));
                }
                Ok(body)
            }
        }
    }

    /// Uploads `data` as blob `digest` in one piece: `POST` opens an upload session, one `PUT`
    /// with the digest completes it.
    pub async fn upload_blob(&self, digest: &str, data: Bytes) -> Result<(), Failure> {
        let url = self.url("blobs/uploads/");
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let response = self
            .send(Method::POST, &url, headers, None, Access::Push)
            .await?;
        let what = format!("POST {url}");
        if response.status() != StatusCode::ACCEPTED {
            return Err(expect_success(&what, response)
                .await
                .err()
                .unwrap_or_else(|| {
                    Failure::new(
                        ErrorKind::Permanent,
                        format!("{what}: expected 202 Accepted"),
                    )
                }));
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Failure::new(ErrorKind::Permanent, format!("{what}: no Location header"))
            })?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_owned()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{separator}digest={digest}");
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let response = self
            .send(Method::PUT, &put_url, headers, Some(data), Access::Push)
            .await?;
        expect_success(&format!("PUT {location}"), response).await
    }

    /// All tags of the repository (following `Link` pagination); none if it does not exist.
    pub async fn list_tags(&self) -> Result<Vec<String>, Failure> {
        let mut tags = Vec::new();
        let mut url = self.url("tags/list?n=1000");
        loop {
            let response = self
                .send(Method::GET, &url, HeaderMap::new(), None, Access::Pull)
                .await?;
            let Some(response) = found(&url, response).await? else {
                return Ok(tags);
            };
            let next = response
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let body = read_body(&url, response).await?;
            let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                Failure::new(
                    ErrorKind::Permanent,
                    format!("GET {url}: answer is not JSON: {e}"),
                )
            })?;
            // "tags": null is what distribution answers for a repository without tags.
            if let Some(list) = json.get("tags").and_then(|t| t.as_array()) {
                tags.extend(list.iter().filter_map(|t| t.as_str()).map(str::to_owned));
            }
            match next {
                Some(next) if next.starts_with('/') => url = format!("{}{next}", self.base),
                Some(next) => url = next,
                None => return Ok(tags),
            }
        }
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }
}

/// The response if it is a success, `None` for 404, a failure otherwise.
async fn found(url: &str, response: Response) -> Result<Option<Response>, Failure> {
    let status = response.status();
    if status.is_success() {
        return Ok(Some(response));
    }
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(status_failure(url, status, &body))
}

async fn expect_success(what: &str, response: Response) -> Result<(), Failure> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| Failure::transport(what, &e))?;
    if status.is_success() {
        return Ok(());
    }
    Err(status_failure(what, status, &body))
}

async fn read_body(url: &str, response: Response) -> Result<Bytes, Failure> {
    response
        .bytes()
        .await
        .map_err(|e| Failure::transport(&format!("reading the body of {url}"), &e))
}

/// Classifies an unsuccessful status, quoting the registry's error envelope if it sent one.
fn status_failure(what: &str, status: StatusCode, body: &[u8]) -> Failure {
    let kind = match status.as_u16() {
        404 => ErrorKind::NotFound,
        408 | 425 | 429 | 500..=599 => ErrorKind::Temporary,
        _ => ErrorKind::Permanent,
    };
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| {
            let errors = json.get("errors")?.as_array()?;
            let parts: Vec<String> = errors
                .iter()
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("?");
                    let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                    format!("{code} {message}")
                })
                .collect();
            Some(parts.join("; "))
        })
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned()
        });
    let mut failure = Failure::new(kind, format!("{what}: {status}: {detail}"));
    failure.auth = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    failure
}

/// Parses `Basic realm="x"` or `Bearer realm="https://auth",service="reg",scope="…"`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        match name.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_owned()),
            "service" => service = Some(value.to_owned()),
            _ => {}
        }
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
    })
}

/// The target of `Link: <url>; rel="next"`.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge("Basic realm=\"Registry Realm\""),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:a/b:pull\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            parse_challenge("bearer service=reg, realm=http://127.0.0.1:1/t"),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: Some("reg".into())
            })
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn follows_next_links() {
        assert_eq!(
            next_link("</v2/a/tags/list?n=2&last=b>; rel=\"next\""),
            Some("/v2/a/tags/list?n=2&last=b".into())
        );
        assert_eq!(next_link("<x>; rel=\"prev\""), None);
    }

    #[test]
    fn statuses_are_classified_and_envelopes_quoted() {
        let body = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#;
        let f = status_failure("GET u", StatusCode::NOT_FOUND, body);
        assert_eq!(f.kind, ErrorKind::NotFound);
        assert!(
            f.message.contains("BLOB_UNKNOWN blob unknown"),
            "{}",
            f.message
        );
        for (code, kind) in [
            (503, ErrorKind::Temporary),
            (429, ErrorKind::Temporary),
            (400, ErrorKind::Permanent),
        ] {
            let f = status_failure("x", StatusCode::from_u16(code).unwrap(), b"plain");
            assert_eq!(f.kind, kind, "{code}");
            assert!(!f.auth);
        }
        let f = status_failure("x", StatusCode::UNAUTHORIZED, b"");
        assert!(f.auth && f.kind == ErrorKind::Permanent);
    }
}
