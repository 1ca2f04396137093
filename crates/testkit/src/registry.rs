//! An OCI distribution registry on loopback: Debian's `docker-registry` (distribution 2.8).
//!
//! Each [`Registry`] gets its own temporary directory holding the generated config, the
//! filesystem storage and, with [`Registry::start_with_auth`], an htpasswd file made by
//! `htpasswd -Bbn` (bcrypt, the only hash distribution accepts), or, with
//! [`Registry::start_with_token_auth`], the certificate of a [`TokenServer`] whose signed tokens
//! it requires (docker's token protocol). The registry logs one JSON
//! line per request ("response completed", with method, URI, status and bytes written), which
//! [`Registry::requests`] parses so tests can prove what went over the wire, e.g. that a lazy
//! mount reads blobs with ranged GETs (status 206) and never downloads one whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

use crate::token_server::{self, TokenServer};
use crate::{require_binary, server_dir, wait_for_port, ServerProcess, TestkitError};

const SERVER: &str = "docker-registry";
/// How long the request log must stay unchanged to count as settled.
const LOG_QUIET: Duration = Duration::from_millis(300);
/// The longest [`Registry::requests`] waits for a busy log to settle.
const LOG_SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// One request as the registry logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub uri: String,
    pub status: u16,
    /// Response body bytes written.
    pub written: u64,
}

impl LoggedRequest {
    /// Whether this is a blob download (`GET /v2/<repo>/blobs/sha256:…`).
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.uri.contains("/blobs/sha256:")
    }
}

/// A running registry, killed by PID when dropped.
#[derive(Debug)]
pub struct Registry {
    process: ServerProcess,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    credentials: Option<(String, String)>,
    /// The token service of a registry started with [`Registry::start_with_token_auth`].
    token: Option<TokenServer>,
}

impl Registry {
    /// The `docker-registry` binary, or `None` (with a loud SKIPPED message) if it is missing
    /// and `HYDRATE_REQUIRE_SERVERS` is unset; see [`require_binary`].
    pub fn binary(test: &str) -> Option<PathBuf> {
        require_binary(SERVER, test)
    }

    /// Starts a registry without authentication.
    pub fn start(binary: &Path) -> Result<Registry, TestkitError> {
        Registry::launch(binary, None, false)
    }

    /// Starts a registry that requires HTTP Basic auth as `user`/`password` (htpasswd).
    pub fn start_with_auth(
        binary: &Path,
        user: &str,
        password: &str,
    ) -> Result<Registry, TestkitError> {
        Registry::launch(binary, Some((user.to_owned(), password.to_owned())), false)
    }

    /// Starts a registry that requires Bearer tokens (docker's token protocol) from a [`TokenServer`] that
    /// issues them to `user`/`password`: the flow of hosted registries.
    pub fn start_with_token_auth(
        binary: &Path,
        user: &str,
        password: &str,
    ) -> Result<Registry, TestkitError> {
        Registry::launch(binary, Some((user.to_owned(), password.to_owned())), true)
    }

    fn launch(
        binary: &Path,
        credentials: Option<(String, String)>,
        tokens: bool,
    ) -> Result<Registry, TestkitError> {
        let dir = server_dir("hydrate-registry", SERVER)?;
        let io = |what: &str, source| TestkitError::Io {
            server: SERVER,
            what: what.to_owned(),
            source,
        };
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(|e| io("creating the storage directory", e))?;
        let mut token = None;
        let auth = match &credentials {
            Some((user, password)) if tokens => {
                let server = TokenServer::start(user, password)
                    .map_err(|e| io("starting the token service", e))?;
                let bundle = dir.path().join("token-root.pem");
                std::fs::write(&bundle, server.cert_pem())
                    .map_err(|e| io("writing the token certificate", e))?;
                let auth = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    server.realm(),
                    token_server::SERVICE,
                    token_server::ISSUER,
                    bundle.display()
                );
                token = Some(server);
                auth
            }
            Some((user, password)) => {
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .map_err(|e| io("running htpasswd (apache2-utils)", e))?;
                if !out.status.success() {
                    return Err(TestkitError::Command {
                        server: SERVER,
                        command: format!("htpasswd -Bbn {user} ***"),
                        output: String::from_utf8_lossy(&out.stderr).into_owned(),
                    });
                }
                std::fs::write(&htpasswd, &out.stdout).map_err(|e| io("writing htpasswd", e))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: hydrate-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let port = crate::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: hydrate-test-secret\n\
             {auth}",
            data.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| io("writing config.yml", e))?;
        let mut command = Command::new(binary);
        command.arg("serve").arg(&config_path);
        let mut process = ServerProcess::spawn(SERVER, command, &dir.path().join("registry.log"))?;
        wait_for_port(SERVER, &mut process, addr, Duration::from_secs(20))?;
        Ok(Registry {
            process,
            dir,
            addr,
            credentials,
            token,
        })
    }

    /// `127.0.0.1:PORT`, as used in `oci://` and `docker://` references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `oci://127.0.0.1:PORT/<repo_and_tag>`.
    pub fn store_address(&self, repo_and_tag: &str) -> String {
        format!("oci://{}/{repo_and_tag}", self.addr)
    }

    /// Writes a containers-auth.json(5) file with this registry's credentials (base64 `auth`
    /// entry) at `path`, for `REGISTRY_AUTH_FILE`. `password` overrides the real one (to test
    /// refusals).
    pub fn write_auth_file(&self, path: &Path, password: Option<&str>) -> std::io::Result<()> {
        let (user, real) = self
            .credentials
            .as_ref()
            .ok_or_else(|| std::io::Error::other("this registry runs without authentication"))?;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", password.unwrap_or(real)));
        std::fs::write(
            path,
            format!(
                "{{\"auths\":{{\"{}\":{{\"auth\":\"{token}\"}}}}}}\n",
                self.addr
            ),
        )
    }

    /// Every request logged so far, in order, once the log has settled.
    ///
    /// The registry writes a request's line after its response has gone out, so a client can hold every byte
    /// before the line exists (a CI run counted a finished ranged read as 0 bytes). The log is therefore read
    /// until it stops growing for [`LOG_QUIET`] (at most [`LOG_SETTLE_LIMIT`]).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let read = || std::fs::read_to_string(&self.process.log).unwrap_or_default();
        let deadline = std::time::Instant::now() + LOG_SETTLE_LIMIT;
        let mut text = read();
        loop {
            std::thread::sleep(LOG_QUIET);
            let now = read();
            if now.len() == text.len() || std::time::Instant::now() >= deadline {
                text = now;
                break;
            }
            text = now;
        }
        text.lines().filter_map(parse_log_line).collect()
    }

    /// The token service, for a registry started with [`Registry::start_with_token_auth`].
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// The directory holding the registry's config, storage and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PID of the registry process.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The end of the registry's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(4000)
    }
}

/// Parses a `"msg":"response completed"` JSON log line. distribution writes flat JSON objects
/// with string and number values, so a field is found by its quoted name.
fn parse_log_line(line: &str) -> Option<LoggedRequest> {
    if !line.contains("\"msg\":\"response completed\"") {
        return None;
    }
    let string = |name: &str| {
        let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_owned())
    };
    let number = |name: &str| {
        let start = line.find(&format!("\"{name}\":"))? + name.len() + 3;
        let end = line[start..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(line.len(), |e| e + start);
        line[start..end].parse::<u64>().ok()
    };
    Some(LoggedRequest {
        method: string("http.request.method")?,
        uri: string("http.request.uri")?,
        status: u16::try_from(number("http.response.status")?).ok()?,
        written: number("http.response.written").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_response_lines_only() {
        let line = r#"{"go.version":"go1.19.8","http.request.method":"GET","http.request.uri":"/v2/t/x/blobs/sha256:5b6e","http.response.status":206,"http.response.written":10,"level":"info","msg":"response completed"}"#;
        assert_eq!(
            parse_log_line(line),
            Some(LoggedRequest {
                method: "GET".into(),
                uri: "/v2/t/x/blobs/sha256:5b6e".into(),
                status: 206,
                written: 10
            })
        );
        assert!(parse_log_line(line).unwrap().is_blob_get());
        assert_eq!(
            parse_log_line(r#"{"msg":"listening on 127.0.0.1:5000"}"#),
            None
        );
    }

    #[test]
    fn registry_serves_the_api_and_enforces_auth() {
        let Some(binary) = Registry::binary("registry_serves_the_api_and_enforces_auth") else {
            return;
        };
        let get = |addr: &str| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            use std::io::{Read, Write};
            write!(stream, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).unwrap();
            reply
        };
        let open = Registry::start(&binary).unwrap();
        assert!(
            get(&open.host()).starts_with("HTTP/1.0 200"),
            "{}",
            open.log_tail()
        );
        assert!(open
            .requests()
            .iter()
            .any(|r| r.uri == "/v2/" && r.status == 200));

        let locked = Registry::start_with_auth(&binary, "hydrate", "s3cret").unwrap();
        let reply = get(&locked.host());
        assert!(reply.starts_with("HTTP/1.0 401"), "{reply}");
        assert!(reply.contains("Basic realm=\"hydrate-test\""), "{reply}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        locked.write_auth_file(&file, None).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains(&base64::engine::general_purpose::STANDARD.encode("hydrate:s3cret")),
            "{text}"
        );

        let tokens = Registry::start_with_token_auth(&binary, "hydrate", "s3cret").unwrap();
        let reply = get(&tokens.host());
        let realm = tokens.token_server().unwrap().realm();
        assert!(reply.starts_with("HTTP/1.0 401"), "{reply}");
        assert!(
            reply.contains(&format!(
                "Bearer realm=\"{realm}\",service=\"{}\"",
                token_server::SERVICE
            )),
            "{reply}"
        );

        let pid = open.pid().unwrap() as i32;
        drop(open);
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err());
    }
}
