//! Registry credentials, read from where docker and podman users already keep them.
//!
//! Credentials never come from the command line (they would show in `ps`). The files are
//! searched in the order podman/skopeo use (containers-auth.json(5)), then docker's:
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config`), `$DOCKER_CONFIG/config.json`
//! (default `~/.docker/config.json`). The first file with an entry for the registry wins. An
//! entry is `auths.<key>.auth` (base64 `user:password`) or `username` + `password`; keys may
//! carry a scheme (`https://`), an API suffix (`/v1/`) or a repository namespace, the most
//! specific namespace match winning. Docker credential helpers (`credHelpers`, `credsStore`)
//! are run as `docker-credential-<name> get` like docker does.
//!
//! The result only decides what the client offers; whether the registry then wants Basic
//! auth or a Bearer token obtained with these credentials is negotiated per request.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::Value;

/// Username and password for one registry, and the file they came from (for error messages).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub username: String,
    pub password: String,
    pub source: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password, not even in debug logs.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The environment the search depends on, captured once so tests need not touch the process's.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthEnv {
    pub registry_auth_file: Option<PathBuf>,
    pub xdg_runtime_dir: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub docker_config: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

impl AuthEnv {
    pub fn from_process() -> AuthEnv {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        AuthEnv {
            registry_auth_file: var("REGISTRY_AUTH_FILE"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            docker_config: var("DOCKER_CONFIG"),
            home: var("HOME"),
        }
    }

    /// The candidate files, in search order.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(f) = &self.registry_auth_file {
            files.push(f.clone());
        }
        if let Some(d) = &self.xdg_runtime_dir {
            files.push(d.join("containers/auth.json"));
        }
        match (&self.xdg_config_home, &self.home) {
            (Some(d), _) => files.push(d.join("containers/auth.json")),
            (None, Some(h)) => files.push(h.join(".config/containers/auth.json")),
            (None, None) => {}
        }
        match (&self.docker_config, &self.home) {
            (Some(d), _) => files.push(d.join("config.json")),
            (None, Some(h)) => files.push(h.join(".docker/config.json")),
            (None, None) => {}
        }
        files
    }
}

/// Finds credentials for `registry` (`host[:port]`) and `repository`. `Ok(None)` means
/// anonymous access; an unreadable or malformed file is an error naming it, since silently
/// going anonymous would turn it into a confusing "authentication failed" later.
pub(crate) fn find_credentials(
    env: &AuthEnv,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, String> {
    for file in env.files() {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(format!(
                    "reading registry credentials {}: {e}",
                    file.display()
                ))
            }
        };
        let json: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "registry credentials {} are not valid JSON: {e}",
                file.display()
            )
        })?;
        if let Some(found) = lookup(&json, &file, registry, repository)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The credentials for `registry` in one parsed auth file, if it has any.
fn lookup(
    json: &Value,
    file: &Path,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, String> {
    let source = file.display().to_string();
    let helper = |name: &str| run_helper(name, registry, &source);
    if let Some(name) = json
        .get("credHelpers")
        .and_then(|h| h.get(registry))
        .and_then(Value::as_str)
    {
        return helper(name);
    }
    if let Some(auths) = json.get("auths").and_then(Value::as_object) {
        // Most specific first: registry/team/app, registry/team, registry.
        let mut scopes = vec![registry.to_owned()];
        let mut prefix = registry.to_owned();
        for component in repository.split('/') {
            prefix = format!("{prefix}/{component}");
            scopes.push(prefix.clone());
        }
        for scope in scopes.iter().rev() {
            let entry = auths
                .iter()
                .find(|(key, _)| normalize_key(key) == *scope)
                .map(|(_, v)| v);
            if let Some(entry) = entry {
                if let Some(creds) = parse_entry(entry, &source, scope)? {
                    return Ok(Some(creds));
                }
            }
        }
    }
    if let Some(name) = json.get("credsStore").and_then(Value::as_str) {
        return helper(name);
    }
    Ok(None)
}

/// `https://host:port/v1/` → `host:port`; docker's historical name of Docker Hub included.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let key = key
        .strip_suffix("/v1")
        .or_else(|| key.strip_suffix("/v2"))
        .unwrap_or(key);
    match key {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

fn parse_entry(entry: &Value, source: &str, key: &str) -> Result<Option<Credentials>, String> {
    let bad = |why: &str| format!("registry credentials {source}: entry {key:?}: {why}");
    if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
        if auth.is_empty() {
            return Ok(None);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(&format!("\"auth\" is not base64: {e}")))?;
        let text = String::from_utf8(decoded).map_err(|_| bad("\"auth\" is not UTF-8"))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| bad("\"auth\" does not decode to user:password"))?;
        return Ok(Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
            source: source.to_owned(),
        }));
    }
    let field = |name| {
        entry
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let (Some(username), Some(password)) = (field("username"), field("password")) {
        return Ok(Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
            source: source.to_owned(),
        }));
    }
    if field("identitytoken").is_some() {
        return Err(bad(
            "identity tokens (OAuth refresh tokens) are not supported; log in with a password or token",
        ));
    }
    Ok(None)
}

/// Asks docker credential helper `name` for the registry's credentials.
fn run_helper(name: &str, registry: &str, source: &str) -> Result<Option<Credentials>, String> {
    let program = format!("docker-credential-{name}");
    let failed = |why: String| format!("credential helper {program} (from {source}): {why}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(registry.as_bytes())
            .map_err(|e| failed(format!("writing its input: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("waiting for it: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The helper protocol's way of saying "nothing stored for this server".
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        return Err(failed(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let json: Value =
        serde_json::from_str(&stdout).map_err(|e| failed(format!("output is not JSON: {e}")))?;
    let field = |name| json.get(name).and_then(Value::as_str).unwrap_or_default();
    if field("Username") == "<token>" {
        return Err(failed("identity tokens are not supported".into()));
    }
    Ok(Some(Credentials {
        username: field("Username").to_owned(),
        password: field("Secret").to_owned(),
        source: program,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn env_with(dir: &Path) -> AuthEnv {
        AuthEnv {
            registry_auth_file: None,
            xdg_runtime_dir: Some(dir.join("run")),
            xdg_config_home: None,
            docker_config: None,
            home: Some(dir.join("home")),
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn search_order_follows_podman_then_docker() {
        let env = AuthEnv {
            registry_auth_file: Some("/a/auth.json".into()),
            xdg_runtime_dir: Some("/run/user/1".into()),
            xdg_config_home: None,
            docker_config: Some("/d".into()),
            home: Some("/h".into()),
        };
        let files: Vec<String> = env
            .files()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            files,
            [
                "/a/auth.json",
                "/run/user/1/containers/auth.json",
                "/h/.config/containers/auth.json",
                "/d/config.json"
            ]
        );
        let env = AuthEnv {
            home: Some("/h".into()),
            ..AuthEnv::default()
        };
        assert_eq!(
            env.files(),
            [
                PathBuf::from("/h/.config/containers/auth.json"),
                PathBuf::from("/h/.docker/config.json")
            ]
        );
    }

    #[test]
    fn finds_base64_and_plain_entries_first_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with(dir.path());
        assert_eq!(find_credentials(&env, "r:5000", "a").unwrap(), None);

        let docker = dir.path().join("home/.docker/config.json");
        write(
            &docker,
            &format!(
                r#"{{"auths":{{"https://r:5000/v1/":{{"auth":"{}"}},"other":{{"auth":"{}"}}}}}}"#,
                b64("docker:pw:with:colons"),
                b64("x:hunter2")
            ),
        );
        let c = find_credentials(&env, "r:5000", "a").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("docker", "pw:with:colons")
        );
        assert_eq!(c.source, docker.display().to_string());

        // podman's runtime file comes first.
        let podman = dir.path().join("run/containers/auth.json");
        write(
            &podman,
            r#"{"auths":{"r:5000":{"username":"pod","password":"man"}}}"#,
        );
        let c = find_credentials(&env, "r:5000", "a").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("pod", "man"));
        // A registry only the docker file knows still comes from there.
        let c = find_credentials(&env, "other", "a").unwrap().unwrap();
        assert_eq!(c.username, "x");
        // Debug output never shows the password.
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn most_specific_namespace_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        write(
            &file,
            &format!(
                r#"{{"auths":{{"r":{{"auth":"{}"}},"r/team":{{"auth":"{}"}},"r/team/app":{{"auth":"{}"}}}}}}"#,
                b64("all:1"),
                b64("team:2"),
                b64("app:3")
            ),
        );
        let env = AuthEnv {
            registry_auth_file: Some(file),
            ..AuthEnv::default()
        };
        let user = |repo| find_credentials(&env, "r", repo).unwrap().unwrap().username;
        assert_eq!(user("team/app"), "app");
        assert_eq!(user("team/other"), "team");
        assert_eq!(user("elsewhere"), "all");
    }

    #[test]
    fn malformed_files_and_entries_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        let env = AuthEnv {
            registry_auth_file: Some(file.clone()),
            ..AuthEnv::default()
        };
        for (text, expect) in [
            ("{not json", "not valid JSON"),
            (r#"{"auths":{"r":{"auth":"%%%"}}}"#, "not base64"),
            (
                &format!(r#"{{"auths":{{"r":{{"auth":"{}"}}}}}}"#, b64("nocolon")),
                "user:password",
            ),
            (
                r#"{"auths":{"r":{"identitytoken":"t"}}}"#,
                "identity tokens",
            ),
        ] {
            write(&file, text);
            let err = find_credentials(&env, "r", "a").unwrap_err();
            assert!(err.contains(&file.display().to_string()), "{err}");
            assert!(err.contains(expect), "{err}");
        }
        // An empty entry means "no credentials here", not an error.
        write(&file, r#"{"auths":{"r":{}}}"#);
        assert_eq!(find_credentials(&env, "r", "a").unwrap(), None);
    }

    #[test]
    fn credential_helpers_are_run_and_failures_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        write(
            &file,
            r#"{"credHelpers":{"r":"hydrate-test-no-such-helper"}}"#,
        );
        let env = AuthEnv {
            registry_auth_file: Some(file),
            ..AuthEnv::default()
        };
        let err = find_credentials(&env, "r", "a").unwrap_err();
        assert!(
            err.contains("docker-credential-hydrate-test-no-such-helper")
                && err.contains("cannot run"),
            "{err}"
        );
    }
}
