//! A token service for registry Bearer auth (docker's token protocol), so the registry client's real flow runs
//! against distribution itself: a request without a token earns `401` with `WWW-Authenticate: Bearer
//! realm=…,service=…,scope=…`; the client asks this service (`GET realm?service=…&scope=…`, Basic
//! credentials); the JWT it gets back (ES256, certificate in `x5c`) is verified by the registry against the
//! certificate given to it as `rootcertbundle`, including the scope (repository and actions) it grants.
//!
//! This is the flow of Docker Hub, GHCR, Harbor and most hosted registries, which htpasswd (Basic) auth does
//! not exercise. The service grants exactly the actions asked for, to one user; it refuses anonymous requests
//! and wrong passwords with 401, and records every request so tests can show which scopes were asked for.
//! One thread answers one request per connection (`Connection: close`); it stops when dropped.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// The `iss` of every token; the registry is configured to accept only it.
pub const ISSUER: &str = "hydrate-test-issuer";
/// The `service` (token audience) the registry names in its challenge.
pub const SERVICE: &str = "hydrate-test-registry";
/// How long a token is valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// One token request as the service saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `scope` parameters (e.g. `repository:team/app:pull,push`).
    pub scopes: Vec<String>,
    pub service: Option<String>,
    /// The Basic auth user, if any was sent.
    pub user: Option<String>,
    /// Whether a token was issued (`false`: answered 401).
    pub granted: bool,
}

/// The running service; dropping it stops the thread.
#[derive(Debug)]
pub struct TokenServer {
    addr: SocketAddr,
    cert_pem: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Issuer {
    user: String,
    password: String,
    key: jsonwebtoken::EncodingKey,
    /// The certificate (DER, standard base64) for the token header's `x5c`.
    cert_b64: String,
}

impl TokenServer {
    /// Starts a service on a free loopback port that issues tokens to `user` with `password`.
    pub fn start(user: &str, password: &str) -> io::Result<TokenServer> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(io::Error::other)?;
        let cert = rcgen::CertificateParams::new(vec!["hydrate-token-issuer".to_owned()])
            .and_then(|p| p.self_signed(&key))
            .map_err(io::Error::other)?;
        let issuer = Issuer {
            user: user.to_owned(),
            password: password.to_owned(),
            key: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
                .map_err(io::Error::other)?,
            cert_b64: base64::engine::general_purpose::STANDARD.encode(cert.der()),
        };
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::Builder::new()
                .name("token-server".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Ok(stream) = stream {
                            // A broken client connection only affects that request.
                            let _ = serve(stream, &issuer, &requests);
                        }
                    }
                })?
        };
        Ok(TokenServer {
            addr,
            cert_pem: cert.pem(),
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// The realm URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The PEM certificate that verifies this service's tokens (the registry's `rootcertbundle`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Every token request so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream`.
fn serve(
    stream: TcpStream,
    issuer: &Issuer,
    requests: &Mutex<Vec<TokenRequest>>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    let url = url::Url::parse(&format!("http://token{target}")).map_err(io::Error::other)?;
    let mut request = TokenRequest {
        scopes: Vec::new(),
        service: None,
        user: None,
        granted: false,
    };
    for (name, value) in url.query_pairs() {
        match &*name {
            "scope" => request.scopes.extend(value.split(' ').map(str::to_owned)),
            "service" => request.service = Some(value.into_owned()),
            _ => {}
        }
    }
    let credentials = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    if let Some((user, _)) = credentials.as_deref().and_then(|c| c.split_once(':')) {
        request.user = Some(user.to_owned());
    }
    let allowed = url.path() == "/token"
        && request.service.as_deref() == Some(SERVICE)
        && credentials.as_deref() == Some(&format!("{}:{}", issuer.user, issuer.password));
    let reply = if allowed {
        let token = issue(issuer, &request).map_err(io::Error::other)?;
        request.granted = true;
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_LIFETIME.as_secs(),
        })
        .to_string();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(request);
    let mut stream = stream;
    stream.write_all(reply.as_bytes())?;
    stream.flush()
}

/// A JWT granting the actions `request` asked for, in distribution's claim format.
fn issue(issuer: &Issuer, request: &TokenRequest) -> Result<String, jsonwebtoken::errors::Error> {
    let access: Vec<serde_json::Value> = request
        .scopes
        .iter()
        .filter_map(|scope| {
            // type:name:actions, where the name may itself contain ':' (a port in a registry name).
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": issuer.user,
        "aud": SERVICE,
        "exp": now + TOKEN_LIFETIME.as_secs(),
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": hex::encode(rand::random::<[u8; 16]>()),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![issuer.cert_b64.clone()]);
    jsonwebtoken::encode(&header, &claims, &issuer.key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn ask(server: &TokenServer, query: &str, credentials: Option<&str>) -> String {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let auth = credentials.map_or(String::new(), |c| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
        });
        write!(
            stream,
            "GET /token?{query} HTTP/1.1\r\nHost: x\r\n{auth}\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    }

    #[test]
    fn issues_signed_tokens_for_the_asked_scope_to_the_right_user_only() {
        let server = TokenServer::start("u", "pw").unwrap();
        let query = format!("service={SERVICE}&scope=repository%3Ateam%2Fapp%3Apull%2Cpush");
        assert!(ask(&server, &query, None).starts_with("HTTP/1.1 401"));
        assert!(ask(&server, &query, Some("u:bad")).starts_with("HTTP/1.1 401"));
        assert!(ask(&server, "service=other&scope=x", Some("u:pw")).starts_with("HTTP/1.1 401"));
        let reply = ask(&server, &query, Some("u:pw"));
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let body: serde_json::Value =
            serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        let token = body["token"].as_str().unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        assert_eq!(header.x5c.map(|c| c.len()), Some(1));
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], SERVICE);
        assert_eq!(claims["access"][0]["name"], "team/app");
        assert_eq!(
            claims["access"][0]["actions"],
            serde_json::json!(["pull", "push"])
        );
        let seen = server.requests();
        assert_eq!(seen.len(), 4);
        assert_eq!(
            seen.iter().map(|r| r.granted).collect::<Vec<_>>(),
            [false, false, false, true]
        );
    }
}
