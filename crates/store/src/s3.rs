//! [`S3Store`]: a store in a bucket of any S3-compatible object store (Garage, MinIO, Ceph,
//! AWS), on `object_store`'s `AmazonS3` client.
//!
//! Address: `s3://bucket[/prefix][?endpoint=URL&region=NAME]`. A custom endpoint implies
//! path-style requests (`http://host:port/bucket/key`), which every self-hosted engine
//! understands, and an `http://` endpoint allows plain HTTP. Credentials are never part of the
//! address (it shows in `ps` and in logs): they come from where AWS tools keep them, in this
//! order: the `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`), then the
//! profile `AWS_PROFILE` (or `default`) of the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`) and config file
//! (`AWS_CONFIG_FILE`, default `~/.aws/config`). Query parameters of the address override
//! region and endpoint from either source.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

use crate::error::{ErrorKind, StoreError};
use crate::remote::{Access, ObjectKeys, RemoteOptions};

/// A store in an S3 bucket, under an optional key prefix.
#[derive(Debug)]
pub struct S3Store {
    objects: ObjectKeys,
}

/// The parts of an `s3://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S3Address {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `credentials=instance`: no keys are configured on purpose; the client asks the instance's metadata
    /// service (EC2 instance roles) for them.
    pub instance_credentials: bool,
}

impl S3Address {
    pub fn parse(addr: &str) -> Result<Self, StoreError> {
        let shown = crate::remote::redact(addr);
        let bad = |why: String| StoreError::new(ErrorKind::Permanent, &shown, "", why);
        let url = url::Url::parse(addr).map_err(|e| bad(format!("invalid s3 address: {e}")))?;
        if url.scheme() != "s3" {
            return Err(bad("an s3 address starts with s3://".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "credentials do not belong in the address (it shows in `ps`); use AWS_ACCESS_KEY_ID/\
                 AWS_SECRET_ACCESS_KEY or ~/.aws/credentials"
                    .into(),
            ));
        }
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("missing bucket name (s3://BUCKET/prefix)".into()))?
            .to_owned();
        let mut out = S3Address {
            bucket,
            prefix: url.path().trim_matches('/').to_owned(),
            endpoint: None,
            region: None,
            instance_credentials: false,
        };
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "endpoint" => out.endpoint = Some(value.into_owned()),
                "region" => out.region = Some(value.into_owned()),
                "credentials" if value == "instance" => out.instance_credentials = true,
                "credentials" => {
                    return Err(bad(format!(
                        "credentials={value:?}: the only value is \"instance\" (keys come from the \
                         environment or ~/.aws, never from the address)"
                    )))
                }
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?} (known: endpoint, region, credentials)"
                    )))
                }
            }
        }
        Ok(out)
    }

    /// `s3://bucket/prefix` plus the endpoint, for logs: never credentials.
    fn describe(&self) -> String {
        let mut s = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        if let Some(endpoint) = &self.endpoint {
            s.push_str(&format!(" at {endpoint}"));
        }
        s
    }
}

impl S3Store {
    /// Opens the store at `addr` (see the module documentation). No request is made: a wrong
    /// endpoint or credentials show at the first operation.
    pub fn open(addr: &str, options: &RemoteOptions) -> Result<Self, StoreError> {
        let address = S3Address::parse(addr)?;
        let description = address.describe();
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        let mut builder = AmazonS3Builder::new();
        for (key, value) in &env {
            if let Ok(config_key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(config_key, value);
            }
        }
        let profile = SharedProfile::load(&env).map_err(|(file, e)| {
            StoreError::new(
                ErrorKind::Permanent,
                &description,
                "",
                format!("reading AWS shared config {}", file.display()),
            )
            .with_cause(e)
        })?;
        if !env.contains_key("AWS_ACCESS_KEY_ID") {
            if let (Some(id), Some(secret)) = (
                profile.get("aws_access_key_id"),
                profile.get("aws_secret_access_key"),
            ) {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(token) = profile.get("aws_session_token") {
                    builder = builder.with_token(token);
                }
            }
        }
        check_credentials(&address, &env, &profile)
            .map_err(|why| StoreError::new(ErrorKind::Permanent, &description, "", why))?;
        let has_region = env.contains_key("AWS_REGION") || env.contains_key("AWS_DEFAULT_REGION");
        if let (false, Some(region)) = (has_region, profile.get("region")) {
            builder = builder.with_region(region);
        }
        let has_endpoint = env.contains_key("AWS_ENDPOINT_URL") || env.contains_key("AWS_ENDPOINT");
        if let (false, Some(endpoint)) = (has_endpoint, profile.get("endpoint_url")) {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &address.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &address.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        // Self-hosted engines answer path-style requests; a plain-http endpoint is a deliberate
        // choice of the address's author. (allow_http lives in the client options, which
        // `with_client_options` replaces whole: set it there.)
        let allow_http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        if endpoint.is_some() {
            builder = builder.with_virtual_hosted_style_request(false);
        }
        let inner = builder
            .with_bucket_name(&address.bucket)
            .with_client_options(options.client_options().with_allow_http(allow_http))
            .with_retry(options.retry_config())
            .build()
            .map_err(|e| {
                StoreError::new(
                    ErrorKind::Permanent,
                    &description,
                    "",
                    "configuring S3 client",
                )
                .with_cause(e)
            })?;
        Ok(S3Store {
            objects: ObjectKeys::new(
                Arc::new(inner),
                &address.prefix,
                description,
                Access::ReadWrite,
            ),
        })
    }
}

crate::remote::blob_store_over_object_keys!(S3Store, is_local: false);

/// The settings of one profile from the AWS shared credentials and config files (credentials
/// file first: it is where keys belong).
#[derive(Debug, Default)]
struct SharedProfile(HashMap<String, String>);

impl SharedProfile {
    fn load(env: &HashMap<String, String>) -> Result<Self, (PathBuf, std::io::Error)> {
        let (credentials, config) = shared_files(env);
        let profile = env.get("AWS_PROFILE").map_or("default", String::as_str);
        let mut out = SharedProfile::default();
        if let Some(path) = credentials {
            out.merge(&read_optional(&path)?, &[profile.to_owned()]);
        }
        if let Some(path) = config {
            // The config file names profiles "[profile NAME]", except "[default]".
            let sections = [format!("profile {profile}"), profile.to_owned()];
            out.merge(&read_optional(&path)?, &sections);
        }
        Ok(out)
    }

    fn merge(&mut self, text: &str, sections: &[String]) {
        for (key, value) in parse_ini_section(text, sections) {
            self.0.entry(key).or_insert(value);
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// Keys must come from the environment or the shared files, unless another source is chosen on purpose:
/// without keys the S3 client asks the cloud's instance metadata endpoint, and a machine that is not an
/// instance gets an HTTP error from an address the user never gave.
fn check_credentials(
    address: &S3Address,
    env: &HashMap<String, String>,
    profile: &SharedProfile,
) -> Result<(), String> {
    let has_keys =
        env.contains_key("AWS_ACCESS_KEY_ID") || profile.get("aws_access_key_id").is_some();
    let other_source = address.instance_credentials
        || [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_SKIP_SIGNATURE",
        ]
        .iter()
        .any(|k| env.contains_key(*k));
    if has_keys || other_source {
        return Ok(());
    }
    let (credentials, config) = shared_files(env);
    let shown =
        |p: Option<PathBuf>| p.map_or_else(|| "(no HOME)".to_owned(), |p| p.display().to_string());
    Err(format!(
        "no S3 credentials found: looked in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and in profile {:?} of {} \
         and {}; set those variables or add the keys to that profile (for an EC2 instance role add \
         credentials=instance to the address; for a public bucket set AWS_SKIP_SIGNATURE=true)",
        env.get("AWS_PROFILE").map_or("default", String::as_str),
        shown(credentials),
        shown(config)
    ))
}

/// The shared credentials and config files the environment points at (default: under ~/.aws).
fn shared_files(env: &HashMap<String, String>) -> (Option<PathBuf>, Option<PathBuf>) {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, default: &str| {
        env.get(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(default)))
    };
    (
        file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
        file("AWS_CONFIG_FILE", ".aws/config"),
    )
}

fn read_optional(path: &std::path::Path) -> Result<String, (PathBuf, std::io::Error)> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err((path.to_owned(), e)),
    }
}

/// `key = value` pairs of the first of `sections` present in an INI text (`#`/`;` comments).
fn parse_ini_section(text: &str, sections: &[String]) -> Vec<(String, String)> {
    let mut found: Vec<Vec<(String, String)>> = vec![Vec::new(); sections.len()];
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = sections.iter().position(|s| s == name.trim());
            continue;
        }
        if let (Some(i), Some((key, value))) = (current, line.split_once('=')) {
            found[i].push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    found
        .into_iter()
        .find(|f| !f.is_empty())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_refuse_credentials() {
        let a = S3Address::parse("s3://images/team/x?endpoint=http://127.0.0.1:3900&region=garage")
            .unwrap();
        assert_eq!(
            a,
            S3Address {
                bucket: "images".into(),
                prefix: "team/x".into(),
                endpoint: Some("http://127.0.0.1:3900".into()),
                region: Some("garage".into()),
                instance_credentials: false,
            }
        );
        assert_eq!(a.describe(), "s3://images/team/x at http://127.0.0.1:3900");
        let b = S3Address::parse("s3://b").unwrap();
        assert_eq!((b.prefix.as_str(), b.describe().as_str()), ("", "s3://b"));
        for bad in ["s3://key:secret@b/p", "s3:///p", "s3://b/p?colour=red"] {
            let err = S3Address::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Permanent, "{bad}");
            assert!(!err.to_string().contains("secret@"), "{err}");
        }
    }

    #[test]
    fn missing_credentials_are_refused_naming_where_they_were_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        let env: HashMap<String, String> = [
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", "/nonexistent/config"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let addr = S3Address::parse("s3://b/p?endpoint=http://127.0.0.1:1").unwrap();
        let profile = SharedProfile::load(&env).unwrap();
        let err = check_credentials(&addr, &env, &profile).unwrap_err();
        assert!(err.contains("no S3 credentials found"), "{err}");
        assert!(err.contains(creds.to_str().unwrap()), "{err}");
        assert!(err.contains("/nonexistent/config"), "{err}");
        let instance = S3Address::parse("s3://b/p?credentials=instance").unwrap();
        assert!(check_credentials(&instance, &env, &profile).is_ok());
        assert!(S3Address::parse("s3://b/p?credentials=AKIA").is_err());
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = A\naws_secret_access_key = S\n",
        )
        .unwrap();
        let profile = SharedProfile::load(&env).unwrap();
        assert!(check_credentials(&addr, &env, &profile).is_ok());
    }

    #[test]
    fn ini_sections_pick_the_profile() {
        let text = "[default]\naws_access_key_id = A\n\n# comment\n[profile dev]\nregion=garage\n\
                    AWS_Secret_Access_Key = S \n[other]\nregion = no\n";
        let dev = parse_ini_section(text, &["profile dev".into(), "dev".into()]);
        assert_eq!(
            dev,
            [
                ("region".to_owned(), "garage".to_owned()),
                ("aws_secret_access_key".to_owned(), "S".to_owned())
            ]
        );
        let def = parse_ini_section(text, &["default".into()]);
        assert_eq!(def, [("aws_access_key_id".to_owned(), "A".to_owned())]);
        assert!(parse_ini_section(text, &["missing".into()]).is_empty());
    }

    #[test]
    fn shared_files_supply_credentials_when_env_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[ci]\naws_access_key_id = GKid\naws_secret_access_key = sec\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[profile ci]\nregion = garage\nendpoint_url = http://h:1\n",
        )
        .unwrap();
        let env: HashMap<String, String> = [
            ("AWS_PROFILE", "ci"),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let p = SharedProfile::load(&env).unwrap();
        assert_eq!(p.get("aws_access_key_id"), Some("GKid"));
        assert_eq!(p.get("aws_secret_access_key"), Some("sec"));
        assert_eq!(p.get("region"), Some("garage"));
        assert_eq!(p.get("endpoint_url"), Some("http://h:1"));
    }
}
