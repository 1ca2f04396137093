//! Unit tests of `runtime_spec.rs`.

use super::*;
use serde_json::json;

const PASSWD_FILE: &str = "root:x:0:0:root:/root:/bin/sh\n\
    # a comment\n\
    daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
    broken line\n\
    app:x:1000:1000:App:/home/app:/bin/sh\n\
    nohome:x:1001:1001:::/bin/sh\n";
const GROUP_FILE: &str = "root:x:0:\n\
    wheel:x:10:app,other\n\
    audio:x:29:app\n\
    app:x:1000:app\n\
    staff:x:50:\n";

/// An image root with /etc/passwd and /etc/group as given (None: file absent).
fn root_with(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    if let Some(text) = passwd {
        std::fs::write(dir.path().join("etc/passwd"), text).unwrap();
    }
    if let Some(text) = group {
        std::fs::write(dir.path().join("etc/group"), text).unwrap();
    }
    dir
}

fn config_json(config: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "config": config})).unwrap()
}

fn spec_of(
    config: Option<&[u8]>,
    root: &Path,
    overrides: &SpecOverrides,
) -> Result<Spec, SpecError> {
    let image = ImageInfo {
        name: "app:1",
        image_id: "abc",
        config,
        source: Some("docker://127.0.0.1:5000/library/app:1"),
        source_digest: Some("sha256:0123"),
    };
    runtime_spec(&image, root, overrides)
}

fn overrides() -> SpecOverrides {
    SpecOverrides {
        hostname: "c1".into(),
        ..Default::default()
    }
}

fn args_of(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().args().clone().unwrap()
}

fn env_of(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().env().clone().unwrap()
}

#[test]
fn entrypoint_and_cmd_follow_docker_rules() {
    let root = root_with(Some(PASSWD_FILE), Some(GROUP_FILE));
    let raw = config_json(json!({"Entrypoint": ["/bin/tini", "--"], "Cmd": ["server", "-v"]}));
    let run = |o: SpecOverrides| args_of(&spec_of(Some(&raw), root.path(), &o).unwrap());
    assert_eq!(run(overrides()), ["/bin/tini", "--", "server", "-v"]);
    // Arguments after -- replace Cmd only.
    let o = SpecOverrides {
        args: vec!["client".into()],
        ..overrides()
    };
    assert_eq!(run(o), ["/bin/tini", "--", "client"]);
    // --entrypoint replaces the entrypoint and drops the image's Cmd.
    let o = SpecOverrides {
        entrypoint: Some("/bin/sh".into()),
        ..overrides()
    };
    assert_eq!(run(o), ["/bin/sh"]);
    let o = SpecOverrides {
        entrypoint: Some("/bin/sh".into()),
        args: vec!["-c".into(), "echo hi".into()],
        ..overrides()
    };
    assert_eq!(run(o), ["/bin/sh", "-c", "echo hi"]);
    // An empty --entrypoint clears it: the arguments are the whole command.
    let o = SpecOverrides {
        entrypoint: Some(String::new()),
        args: vec!["/bin/true".into()],
        ..overrides()
    };
    assert_eq!(run(o), ["/bin/true"]);

    let cmd_only = config_json(json!({"Cmd": ["/bin/sh"]}));
    assert_eq!(
        args_of(&spec_of(Some(&cmd_only), root.path(), &overrides()).unwrap()),
        ["/bin/sh"]
    );
    let nothing = config_json(json!({"Env": ["A=1"]}));
    let err = spec_of(Some(&nothing), root.path(), &overrides()).unwrap_err();
    assert!(matches!(err, SpecError::NoCommand { .. }), "{err}");
    let o = SpecOverrides {
        entrypoint: Some(String::new()),
        ..overrides()
    };
    assert!(matches!(
        spec_of(Some(&raw), root.path(), &o),
        Err(SpecError::NoCommand { .. })
    ));
}

#[test]
fn image_without_config_needs_a_command() {
    let root = root_with(None, None);
    let err = spec_of(None, root.path(), &overrides()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "image app:1 carries no container config (it was not made by hydrate convert); give the command after --"
    );
    let o = SpecOverrides {
        args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
        ..overrides()
    };
    let spec = spec_of(None, root.path(), &o).unwrap();
    assert_eq!(args_of(&spec), ["/bin/sh", "-c", "echo hi"]);
    let process = spec.process().as_ref().unwrap();
    assert_eq!((process.user().uid(), process.user().gid()), (0, 0));
    assert_eq!(process.cwd(), Path::new("/"));
    assert_eq!(
        env_of(&spec),
        [&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=c1", "HOME=/"]
    );
}

#[test]
fn env_keeps_image_values_adds_defaults_and_applies_overrides() {
    let root = root_with(Some(PASSWD_FILE), Some(GROUP_FILE));
    let raw = config_json(json!({
        "Cmd": ["run"],
        "Env": ["PATH=/opt/bin:/usr/bin", "LANG=C.UTF-8", "MODE=prod"],
    }));
    let o = SpecOverrides {
        env: vec!["MODE=dev".into(), "EXTRA=a=b".into()],
        tty: true,
        ..overrides()
    };
    let env = env_of(&spec_of(Some(&raw), root.path(), &o).unwrap());
    assert_eq!(
        env,
        [
            "PATH=/opt/bin:/usr/bin",
            "LANG=C.UTF-8",
            "MODE=dev",
            "EXTRA=a=b",
            "HOSTNAME=c1",
            "HOME=/root",
            "TERM=xterm"
        ]
    );
    // Without PATH in the image, the default one is added; --env may set HOME itself.
    let raw = config_json(json!({"Cmd": ["run"]}));
    let o = SpecOverrides {
        env: vec!["HOME=/data".into()],
        ..overrides()
    };
    let env = env_of(&spec_of(Some(&raw), root.path(), &o).unwrap());
    assert_eq!(
        env,
        [
            "HOME=/data".to_owned(),
            format!("PATH={DEFAULT_PATH}"),
            "HOSTNAME=c1".to_owned()
        ]
    );
    for bad in ["NOVALUE", "=x"] {
        let o = SpecOverrides {
            env: vec![bad.into()],
            ..overrides()
        };
        assert!(
            matches!(spec_of(Some(&raw), root.path(), &o), Err(SpecError::BadEnv(e)) if e == bad)
        );
    }
}

#[test]
fn user_forms_resolve_like_docker() {
    let root = root_with(Some(PASSWD_FILE), Some(GROUP_FILE));
    let user = |spec: &str| resolve_user(spec, root.path());
    let expect = |uid, gid, extra: &[u32], home: &str| ResolvedUser {
        uid,
        gid,
        additional_gids: extra.to_vec(),
        home: home.into(),
    };
    assert_eq!(user("").unwrap(), expect(0, 0, &[], "/root"));
    assert_eq!(
        user("app").unwrap(),
        expect(1000, 1000, &[10, 29], "/home/app")
    );
    // A number matching an entry gets the entry's group, home and supplementary groups.
    assert_eq!(
        user("1000").unwrap(),
        expect(1000, 1000, &[10, 29], "/home/app")
    );
    assert_eq!(
        user("app:").unwrap(),
        expect(1000, 1000, &[10, 29], "/home/app")
    );
    // An explicit group replaces the primary group and drops the supplementary ones.
    assert_eq!(
        user("app:staff").unwrap(),
        expect(1000, 50, &[], "/home/app")
    );
    assert_eq!(user("app:77").unwrap(), expect(1000, 77, &[], "/home/app"));
    assert_eq!(
        user("daemon:wheel").unwrap(),
        expect(1, 10, &[], "/usr/sbin")
    );
    // Unknown numbers need no entry.
    assert_eq!(user("4242").unwrap(), expect(4242, 0, &[], "/"));
    assert_eq!(user("4242:4343").unwrap(), expect(4242, 4343, &[], "/"));
    assert_eq!(user("nohome").unwrap(), expect(1001, 1001, &[], "/"));

    let err = user("ghost").unwrap_err();
    assert_eq!(
        err.to_string(),
        "user \"ghost\" not found in the image's /etc/passwd"
    );
    let err = user("app:ghosts").unwrap_err();
    assert_eq!(
        err.to_string(),
        "group \"ghosts\" not found in the image's /etc/group"
    );
    assert!(matches!(user("4294967295"), Err(SpecError::BadId { .. })));
    assert!(matches!(
        user("1:99999999999"),
        Err(SpecError::BadId { .. })
    ));
}

#[test]
fn numeric_users_need_no_account_files() {
    let bare = root_with(None, None);
    assert_eq!(
        resolve_user("1000:1000", bare.path()).unwrap(),
        ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![],
            home: "/".into()
        }
    );
    let err = resolve_user("app", bare.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the image has no /etc/passwd to look up user \"app\" in"
    );
    let only_passwd = root_with(Some(PASSWD_FILE), None);
    let err = resolve_user("app:staff", only_passwd.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the image has no /etc/group to look up group \"staff\" in"
    );
    assert_eq!(
        resolve_user("app", only_passwd.path())
            .unwrap()
            .additional_gids,
        Vec::<u32>::new()
    );
}

#[test]
fn account_files_are_read_inside_the_image_root() {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(root.path().join("usr/share/base")).unwrap();
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(
        root.path().join("usr/share/base/passwd"),
        "svc:x:500:500::/srv:/bin/sh\n",
    )
    .unwrap();
    // Absolute and climbing links resolve against the image root, never the host's /etc/passwd.
    std::os::unix::fs::symlink("/usr/share/base/passwd", etc.join("passwd")).unwrap();
    std::os::unix::fs::symlink("../../../../../../usr/share/base/passwd", etc.join("group"))
        .unwrap();
    assert_eq!(resolve_user("svc", root.path()).unwrap().home, "/srv");
    assert!(
        resolve_user("root", root.path()).is_err(),
        "the host's root entry must not be seen"
    );
    let group = read_in_root(root.path(), "/etc/group").unwrap().unwrap();
    assert!(group.starts_with(b"svc:"));
    // A link loop is an error, not a hang.
    std::os::unix::fs::symlink("/etc/loop", etc.join("loop")).unwrap();
    let err = read_in_root(root.path(), "/etc/loop").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    assert!(read_in_root(root.path(), "/etc/missing").unwrap().is_none());
}

#[test]
fn working_dir_user_and_capabilities() {
    let root = root_with(Some(PASSWD_FILE), Some(GROUP_FILE));
    let raw = config_json(json!({"Cmd": ["run"], "WorkingDir": "/srv/app", "User": "app"}));
    let spec = spec_of(Some(&raw), root.path(), &overrides()).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.cwd(), Path::new("/srv/app"));
    assert_eq!((process.user().uid(), process.user().gid()), (1000, 1000));
    assert_eq!(
        process.user().additional_gids().as_deref(),
        Some(&[10, 29][..])
    );
    let caps = process.capabilities().as_ref().unwrap();
    assert_eq!(
        caps.bounding().as_ref().unwrap().len(),
        DOCKER_CAPABILITIES.len()
    );
    assert!(
        caps.effective().as_ref().unwrap().is_empty(),
        "non-root starts without capabilities"
    );
    assert!(env_of(&spec).contains(&"HOME=/home/app".to_owned()));

    // --user and --workdir override; root keeps the effective set.
    let o = SpecOverrides {
        user: Some("0".into()),
        workdir: Some("/tmp".into()),
        ..overrides()
    };
    let spec = spec_of(Some(&raw), root.path(), &o).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.cwd(), Path::new("/tmp"));
    assert_eq!(process.user().uid(), 0);
    let effective = process
        .capabilities()
        .as_ref()
        .unwrap()
        .effective()
        .clone()
        .unwrap();
    assert!(
        effective.contains(&Capability::Chown) && effective.contains(&Capability::NetBindService)
    );
    let o = SpecOverrides {
        workdir: Some("relative".into()),
        ..overrides()
    };
    assert!(matches!(
        spec_of(Some(&raw), root.path(), &o),
        Err(SpecError::BadWorkdir(_))
    ));
    let o = SpecOverrides {
        user: Some("ghost".into()),
        ..overrides()
    };
    assert!(matches!(
        spec_of(Some(&raw), root.path(), &o),
        Err(SpecError::UnknownUser { .. })
    ));
}

#[test]
fn bundle_settings_follow_runc_spec() {
    let root = root_with(Some(PASSWD_FILE), Some(GROUP_FILE));
    let raw = config_json(json!({
        "Cmd": ["run"],
        "Labels": {"maintainer": "team", "org.opencontainers.image.version": "1.2"},
        "StopSignal": "SIGQUIT",
        "Volumes": {"/data": {}},
        "Healthcheck": {"Test": ["CMD", "true"]},
    }));
    let spec = spec_of(Some(&raw), root.path(), &overrides()).unwrap();
    let root_cfg = spec.root().as_ref().unwrap();
    assert_eq!(root_cfg.path(), Path::new("rootfs"));
    assert_eq!(root_cfg.readonly(), Some(false));
    assert_eq!(spec.hostname().as_deref(), Some("c1"));
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.terminal(), Some(false));
    assert_eq!(process.no_new_privileges(), Some(true));
    let rlimit = &process.rlimits().as_ref().unwrap()[0];
    assert_eq!(
        (rlimit.typ(), rlimit.soft(), rlimit.hard()),
        (PosixRlimitType::RlimitNofile, 1024, 1024)
    );
    let linux = spec.linux().as_ref().unwrap();
    let kinds: Vec<LinuxNamespaceType> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert!(
        kinds.contains(&LinuxNamespaceType::Network) && kinds.contains(&LinuxNamespaceType::Cgroup)
    );
    assert_eq!(kinds.len(), 6);
    assert!(linux
        .masked_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/kcore".to_owned()));
    assert!(linux
        .readonly_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/sys".to_owned()));
    let mounts: Vec<&Path> = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.destination().as_path())
        .collect();
    assert_eq!(
        mounts,
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup"
        ]
        .map(Path::new)
    );
    let notes = spec.annotations().as_ref().unwrap();
    assert_eq!(notes["maintainer"], "team");
    assert_eq!(notes["org.opencontainers.image.version"], "1.2");
    assert_eq!(
        notes["org.opencontainers.image.base.name"],
        "127.0.0.1:5000/library/app:1"
    );
    assert_eq!(notes["org.opencontainers.image.base.digest"], "sha256:0123");
    assert_eq!(notes["org.opencontainers.image.stopSignal"], "SIGQUIT");
    assert_eq!(notes["dev.hydrate.image"], "abc");

    // The host's network: no network namespace.
    let o = SpecOverrides {
        host_network: true,
        ..overrides()
    };
    let spec = spec_of(Some(&raw), root.path(), &o).unwrap();
    let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert!(namespaces
        .iter()
        .all(|n| n.typ() != LinuxNamespaceType::Network));
    assert_eq!(namespaces.len(), 5);

    // The spec serializes to the JSON runc reads.
    let text = serde_json::to_string(&spec).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["root"]["path"], "rootfs");
    assert_eq!(back["process"]["args"], json!(["run"]));
}

#[test]
fn invalid_config_is_reported_with_the_image_name() {
    let root = root_with(None, None);
    let err = spec_of(Some(b"{not json"), root.path(), &overrides()).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("container config of image app:1 is not a valid OCI image config"));
    let raw = config_json(json!({"Cmd": "not a list"}));
    assert!(matches!(
        spec_of(Some(&raw), root.path(), &overrides()),
        Err(SpecError::BadConfig { .. })
    ));
    // A config without the `config` object (nothing to run) still takes a command.
    let raw = serde_json::to_vec(&json!({"architecture": "amd64"})).unwrap();
    let o = SpecOverrides {
        args: vec!["/bin/sh".into()],
        ..overrides()
    };
    assert_eq!(
        args_of(&spec_of(Some(&raw), root.path(), &o).unwrap()),
        ["/bin/sh"]
    );
}
