//! The OCI runtime spec (`config.json`) of a `hydrate rootfs` bundle, derived from the image's OCI config.
//!
//! This crate owns the translation from what the image author wrote (Entrypoint, Cmd, Env, User, WorkingDir,
//! Labels) to what `runc run` executes, with Docker's semantics for each field and for the command-line
//! overrides, so a converted image starts in runc as it starts in Docker. Everything else (mounts, namespaces,
//! masked and read-only paths, rlimits) is what `runc spec` generates, with two deliberate differences: a
//! cgroup namespace is added (as in the oci-spec defaults), and the capability set is Docker's default set
//! rather than runc's three, because images are written and tested against Docker's set (`chown` in an
//! entrypoint, `setuid` in gosu/su-exec, raw sockets for ping…). As Docker does, a non-root user starts with
//! empty effective and permitted sets (the bounding set still caps what setuid binaries get).
//!
//! The only I/O is reading the image's /etc/passwd and /etc/group to resolve `User`; both are read with
//! symlinks resolved inside the image root, never on the host.

use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use oci_spec::OciSpecError;
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// PATH of a container whose image sets none (Docker's and runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set (moby `oci/caps/defaults.go`).
const DOCKER_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Host files a container sharing the host's network reads its name service configuration from.
const HOST_NETWORK_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/hosts"];

/// What the image says about itself, as read from its manifest's annotations.
#[derive(Debug, Clone, Default)]
pub struct ImageInfo<'a> {
    /// How the user named the image (for messages).
    pub name: &'a str,
    /// The hydrate image id, recorded as an annotation of the container.
    pub image_id: &'a str,
    /// The raw OCI image config JSON; `None` for an image built from a directory.
    pub config: Option<&'a [u8]>,
    /// The reference the image was converted from.
    pub source: Option<&'a str>,
    /// The digest of the source image manifest.
    pub source_digest: Option<&'a str>,
}

/// Command-line choices that override or complete the image's config.
#[derive(Debug, Clone, Default)]
pub struct SpecOverrides {
    /// `--entrypoint`: replaces the image's Entrypoint and clears its Cmd; `Some("")` clears the Entrypoint.
    pub entrypoint: Option<String>,
    /// Arguments after `--`: replace the image's Cmd when not empty.
    pub args: Vec<String>,
    /// `--env NAME=VALUE`, applied over the image's Env in order.
    pub env: Vec<String>,
    /// `--user`: replaces the image's User (same forms: name, uid, name:group, uid:gid).
    pub user: Option<String>,
    /// `--workdir`: replaces the image's WorkingDir.
    pub workdir: Option<String>,
    /// The container's hostname (also its HOSTNAME variable).
    pub hostname: String,
    /// Give the process a terminal (and TERM=xterm unless set).
    pub tty: bool,
    /// Share the host's network namespace (and bind its resolv.conf and hosts read-only).
    pub host_network: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("image {image} carries no container config (it was not made by hydrate convert); give the command after --")]
    NoConfig { image: String },
    #[error("image {image} has no command (its config sets neither Entrypoint nor Cmd); give the command after --")]
    NoCommand { image: String },
    #[error("container config of image {image} is not a valid OCI image config: {source}")]
    BadConfig {
        image: String,
        source: serde_json::Error,
    },
    #[error("user {user:?} not found in the image's {file}")]
    UnknownUser { user: String, file: &'static str },
    #[error("group {group:?} not found in the image's {file}")]
    UnknownGroup { group: String, file: &'static str },
    #[error("the image has no {file} to look up {what} {name:?} in")]
    MissingFile {
        file: &'static str,
        what: &'static str,
        name: String,
    },
    #[error("reading the image's {file}: {source}")]
    ReadFile {
        file: &'static str,
        source: io::Error,
    },
    #[error("user {spec:?}: {id:?} is neither a name nor an id from 0 to 2147483647")]
    BadId { spec: String, id: String },
    #[error("--env {0:?} is not of the form NAME=VALUE")]
    BadEnv(String),
    #[error("working directory {0:?} is not an absolute path")]
    BadWorkdir(String),
    #[error("building the runtime spec: {0}")]
    Oci(#[from] OciSpecError),
}

/// Derives the runtime spec of a container of `image`, resolving its user against the image tree at
/// `rootfs_for_lookups` (the lower mount or a merged root).
pub fn runtime_spec(
    image: &ImageInfo<'_>,
    rootfs_for_lookups: &Path,
    overrides: &SpecOverrides,
) -> Result<Spec, SpecError> {
    let config = match image.config {
        Some(raw) => parse_image_config(image.name, raw, overrides.host_network)?,
        None if overrides.args.is_empty() && overrides.entrypoint.is_none() => {
            return Err(SpecError::NoConfig {
                image: image.name.to_owned(),
            })
        }
        None => ImageConfig::default(),
    };
    let args = command(&config, overrides);
    if args.is_empty() {
        return Err(SpecError::NoCommand {
            image: image.name.to_owned(),
        });
    }
    let user_spec = overrides
        .user
        .clone()
        .or_else(|| config.user().clone())
        .unwrap_or_default();
    let user = resolve_user(&user_spec, rootfs_for_lookups)?;
    let cwd = match overrides.workdir.as_ref().or(config.working_dir().as_ref()) {
        Some(dir) if dir.is_empty() => "/".to_owned(),
        Some(dir) if !dir.starts_with('/') => return Err(SpecError::BadWorkdir(dir.clone())),
        Some(dir) => dir.clone(),
        None => "/".to_owned(),
    };
    let env = environment(
        config.env().as_deref().unwrap_or_default(),
        overrides,
        &user.home,
    )?;

    let caps: oci_spec::runtime::Capabilities = DOCKER_CAPABILITIES.into_iter().collect();
    // Docker: a non-root process starts without effective or permitted capabilities.
    let held = if user.uid == 0 {
        caps.clone()
    } else {
        Default::default()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(held.clone())
        .permitted(held)
        .inheritable(oci_spec::runtime::Capabilities::default())
        .ambient(oci_spec::runtime::Capabilities::default())
        .build()?;
    let mut process_user = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        process_user = process_user.additional_gids(user.additional_gids.clone());
    }
    let process = ProcessBuilder::default()
        .terminal(overrides.tty)
        .user(process_user.build()?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()?])
        .no_new_privileges(true)
        .build()?;

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .filter(|ns| !(overrides.host_network && *ns == LinuxNamespaceType::Network))
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<LinuxNamespace>, _>>()?;
    // runc spec: deny every device; runc itself then allows the standard ones (null, zero, tty…).
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?])
        .build()?;
    let linux = LinuxBuilder::default()
        .resources(resources)
        .namespaces(namespaces)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    if overrides.host_network {
        mounts.extend(host_network_mounts()?);
    }

    let mut spec = Spec::default();
    spec.set_process(Some(process))
        .set_root(Some(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        ))
        .set_hostname(Some(overrides.hostname.clone()))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux))
        .set_annotations(Some(annotations(image, &config)));
    Ok(spec)
}

/// Parses the `config` object of an OCI image config, warning about the fields a bundle cannot honour.
fn parse_image_config(
    image: &str,
    raw: &[u8],
    host_network: bool,
) -> Result<ImageConfig, SpecError> {
    let bad = |source| SpecError::BadConfig {
        image: image.to_owned(),
        source,
    };
    let whole: serde_json::Value = serde_json::from_slice(raw).map_err(bad)?;
    // Only `config` matters here; it is parsed alone so an image config without the (required, but irrelevant
    // to running) architecture/os/rootfs fields still works.
    let config = match whole.get("config") {
        None | Some(serde_json::Value::Null) => return Ok(ImageConfig::default()),
        Some(config) => config,
    };
    for key in ["Volumes", "Healthcheck", "OnBuild"] {
        if config.get(key).is_some_and(|v| !is_empty_json(v)) {
            tracing::warn!(
                image,
                field = key,
                "the image config's {key} is not supported by hydrate rootfs and is ignored"
            );
        }
    }
    if !host_network
        && config
            .get("ExposedPorts")
            .is_some_and(|v| !is_empty_json(v))
    {
        tracing::warn!(
            image,
            "the image config's ExposedPorts are not published: the container gets its own network namespace \
             with loopback only (use --net host to share the host's network)"
        );
    }
    serde_json::from_value(config.clone()).map_err(bad)
}

fn is_empty_json(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Object(map) => map.is_empty(),
        serde_json::Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// Entrypoint ++ Cmd with Docker's override rules: `--entrypoint` replaces the Entrypoint and drops the
/// image's Cmd (an empty one clears the Entrypoint); arguments after `--` replace the Cmd.
fn command(config: &ImageConfig, overrides: &SpecOverrides) -> Vec<String> {
    let (entrypoint, image_cmd) = match &overrides.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (
            config.entrypoint().clone().unwrap_or_default(),
            config.cmd().clone().unwrap_or_default(),
        ),
    };
    let cmd = if overrides.args.is_empty() {
        image_cmd
    } else {
        overrides.args.clone()
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// The image's Env, then `--env`, then what Docker adds when absent: PATH, HOSTNAME, HOME (and TERM with a
/// terminal).
fn environment(
    image_env: &[String],
    overrides: &SpecOverrides,
    home: &str,
) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<String> = Vec::new();
    for entry in image_env {
        set_env(&mut env, entry.clone());
    }
    for entry in &overrides.env {
        if !entry.contains('=') || entry.starts_with('=') {
            return Err(SpecError::BadEnv(entry.clone()));
        }
        set_env(&mut env, entry.clone());
    }
    let mut defaults = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={}", overrides.hostname),
        format!("HOME={home}"),
    ];
    if overrides.tty {
        defaults.push("TERM=xterm".to_owned());
    }
    for entry in defaults {
        if !env.iter().any(|e| env_key(e) == env_key(&entry)) {
            env.push(entry);
        }
    }
    Ok(env)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}

/// Sets `entry` (NAME=VALUE) in `env`, replacing an earlier value of NAME in place.
fn set_env(env: &mut Vec<String>, entry: String) {
    match env.iter_mut().find(|e| env_key(e) == env_key(&entry)) {
        Some(slot) => *slot = entry,
        None => env.push(entry),
    }
}

/// Read-only binds of the host's name service files, for a container in the host's network namespace.
fn host_network_mounts() -> Result<Vec<Mount>, SpecError> {
    HOST_NETWORK_FILES
        .iter()
        .filter(|file| Path::new(file).exists())
        .map(|file| {
            Ok(MountBuilder::default()
                .destination(*file)
                .typ("bind")
                .source(*file)
                .options(vec![
                    "rbind".into(),
                    "ro".into(),
                    "nosuid".into(),
                    "nodev".into(),
                ])
                .build()?)
        })
        .collect()
}

/// Image labels, then the image's provenance (which wins over a label of the same key).
fn annotations(image: &ImageInfo<'_>, config: &ImageConfig) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = config.labels().clone().unwrap_or_default();
    if let Some(source) = image.source {
        // The OCI keys for "the image this one was made from" take a plain reference, not a transport URL.
        let reference = source.strip_prefix("docker://").unwrap_or(source);
        out.insert(
            "org.opencontainers.image.base.name".into(),
            reference.into(),
        );
    }
    if let Some(digest) = image.source_digest {
        out.insert("org.opencontainers.image.base.digest".into(), digest.into());
    }
    if let Some(signal) = config.stop_signal() {
        // Podman's key for the signal that should stop the container (runc kill takes it as an argument).
        out.insert("org.opencontainers.image.stopSignal".into(), signal.clone());
    }
    if !image.image_id.is_empty() {
        out.insert("dev.hydrate.image".into(), image.image_id.to_owned());
    }
    out
}

/// A user resolved against the image's account files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves a Docker `User` value ("", name, uid, name:group, uid:gid and mixes) as moby's `GetExecUser`
/// does: a name must exist in /etc/passwd (a group name in /etc/group); a number needs no entry, but a
/// matching entry still supplies HOME, the primary group and, without an explicit group, the supplementary
/// groups listing the user.
pub fn resolve_user(spec: &str, root: &Path) -> Result<ResolvedUser, SpecError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let numeric = |id: &str| -> Result<Option<u32>, SpecError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        match id.parse::<u32>() {
            Ok(n) if n <= i32::MAX as u32 => Ok(Some(n)),
            _ => Err(SpecError::BadId {
                spec: spec.to_owned(),
                id: id.to_owned(),
            }),
        }
    };
    let passwd = read_in_root(root, PASSWD)
        .map_err(|source| SpecError::ReadFile {
            file: PASSWD,
            source,
        })?
        .map(|bytes| parse_passwd(&bytes));
    let user_id = if user_part.is_empty() {
        Some(0)
    } else {
        numeric(user_part)?
    };
    let entry = passwd.as_ref().and_then(|entries| {
        entries.iter().find(|e| match user_id {
            Some(uid) => e.uid == uid,
            None => e.name == user_part,
        })
    });
    let (uid, mut gid, home) = match (entry, user_id) {
        (Some(e), _) => (e.uid, e.gid, e.home.clone()),
        (None, Some(uid)) => (uid, 0, "/".to_owned()),
        (None, None) if passwd.is_none() => {
            return Err(SpecError::MissingFile {
                file: PASSWD,
                what: "user",
                name: user_part.to_owned(),
            })
        }
        (None, None) => {
            return Err(SpecError::UnknownUser {
                user: user_part.to_owned(),
                file: PASSWD,
            })
        }
    };
    let home = if home.is_empty() {
        "/".to_owned()
    } else {
        home
    };
    // "name:" means no group, as in moby.
    let group_part = group_part.filter(|g| !g.is_empty());
    let group_id = group_part.map(numeric).transpose()?.flatten();
    // /etc/group is needed for a group name, and for the supplementary groups of a user found by name or id.
    let groups = match (group_part, group_id, entry) {
        (Some(_), None, _) | (None, _, Some(_)) => read_in_root(root, GROUP)
            .map_err(|source| SpecError::ReadFile {
                file: GROUP,
                source,
            })?
            .map(|bytes| parse_group(&bytes)),
        _ => None,
    };
    let mut additional_gids = Vec::new();
    match (group_part, group_id) {
        (Some(_), Some(id)) => gid = id,
        (Some(name), None) => {
            let Some(groups) = groups else {
                return Err(SpecError::MissingFile {
                    file: GROUP,
                    what: "group",
                    name: name.to_owned(),
                });
            };
            gid = groups
                .iter()
                .find(|g| g.name == name)
                .ok_or_else(|| SpecError::UnknownGroup {
                    group: name.to_owned(),
                    file: GROUP,
                })?
                .gid;
        }
        (None, _) => {
            if let (Some(e), Some(groups)) = (entry, &groups) {
                let listed: BTreeSet<u32> = groups
                    .iter()
                    .filter(|g| g.members.contains(&e.name))
                    .map(|g| g.gid)
                    .filter(|g| *g != gid)
                    .collect();
                additional_gids = listed.into_iter().collect();
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// name:password:uid:gid:gecos:home:shell; malformed lines are skipped, as libc does.
fn parse_passwd(bytes: &[u8]) -> Vec<PasswdEntry> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 7 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_owned(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields[5].to_owned(),
            })
        })
        .collect()
}

/// name:password:gid:member,member…; malformed lines are skipped.
fn parse_group(bytes: &[u8]) -> Vec<GroupEntry> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_owned(),
                gid: fields[2].parse().ok()?,
                members: fields[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// Reads `path` (absolute, as the container sees it) from the tree at `root`, resolving every symlink as if
/// `root` were `/`: an image's `/etc/passwd -> /usr/share/base-passwd/passwd` stays inside the image, and no
/// `..` or absolute link reaches the host's files. `None`: the file does not exist in the image.
fn read_in_root(root: &Path, path: &str) -> io::Result<Option<Vec<u8>>> {
    const MAX_LINKS: usize = 40;
    let push_reversed = |pending: &mut Vec<OsString>, path: &Path| {
        let parts: Vec<OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name.to_owned()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        pending.extend(parts.into_iter().rev());
    };
    let mut pending = Vec::new();
    push_reversed(&mut pending, Path::new(path));
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                push_reversed(&mut pending, &target);
            }
            Ok(_) => resolved = candidate,
        }
    }
    match std::fs::read(root.join(resolved)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests;
