//! End-to-end tests of OCI registry stores against a real registry (Debian `docker-registry` on loopback): push,
//! lazy mounts from `oci://…:tag`, Basic auth from an auth.json, `skopeo copy` of an image between repositories,
//! and the registry's own request log proving that mounts read blobs with ranged GETs.
//!
//! Needs root and /dev/fuse like tests/mount.rs. Skipped with a loud message when `docker-registry` is not
//! installed, unless HYDRATE_REQUIRE_SERVERS is set (CI), which makes that a failure.

mod common;

use common::*;
use hydrate_testkit::registry::{LoggedRequest, Registry};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory with an isolated credential environment: HOME and XDG_RUNTIME_DIR point inside it, so
/// the machine's own docker/podman logins never leak into a test.
struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("hydrate-oci-test")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir_all(root.join("home")).unwrap();
        std::fs::create_dir_all(root.join("run")).unwrap();
        Env { _tmp: tmp, root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.p(rel).to_str().unwrap().to_owned()
    }

    /// hydrate with the isolated environment, plus REGISTRY_AUTH_FILE if given.
    fn hydrate(&self, args: &[&str], auth_file: Option<&Path>) -> Output {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env("HOME", self.p("home"))
            .env("XDG_RUNTIME_DIR", self.p("run"))
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE");
        if let Some(file) = auth_file {
            cmd.env("REGISTRY_AUTH_FILE", file);
        }
        cmd.output().expect("running hydrate")
    }

    fn hydrate_ok(&self, args: &[&str], auth_file: Option<&Path>) -> String {
        let out = self.hydrate(args, auth_file);
        assert!(
            out.status.success(),
            "hydrate {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn hydrate_err(&self, args: &[&str], auth_file: Option<&Path>) -> String {
        let out = self.hydrate(args, auth_file);
        assert!(
            !out.status.success(),
            "hydrate {args:?} succeeded but should have failed"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `hydrate mount --store ADDR [IMAGE] MP`; IMAGE `None` leaves it out (the address's tag names it).
    fn mount(
        &self,
        addr: &str,
        image: Option<&str>,
        name: &str,
        auth_file: Option<&Path>,
    ) -> Mount {
        let mp = self.p(&format!("mnt-{name}"));
        let cache = self.p(&format!("cache-{name}"));
        std::fs::create_dir_all(&mp).unwrap();
        let mut args = vec!["mount", "--store", addr];
        args.extend(image);
        let (mp_s, cache_s) = (mp.to_str().unwrap(), cache.to_str().unwrap());
        // The background fill is off: these tests count what reads fetch from the registry.
        args.extend([mp_s, "--cache-dir", cache_s, "--fill-budget", "0"]);
        self.hydrate_ok(&args, auth_file);
        let mountpoint = std::fs::canonicalize(&mp).unwrap();
        let pid = Some(mount_info(&mountpoint).supervisor.pid as i32);
        Mount {
            mountpoint,
            cache_dir: cache,
            pid,
        }
    }
}

fn start_registry(test: &str, auth: Option<(&str, &str)>) -> Option<Registry> {
    let binary = Registry::binary(test)?;
    let registry = match auth {
        Some((user, password)) => Registry::start_with_auth(&binary, user, password),
        None => Registry::start(&binary),
    };
    Some(registry.unwrap_or_else(|e| panic!("starting docker-registry: {e}")))
}

fn source_tree(env: &Env) -> PathBuf {
    let src = env.p("src");
    make_tree(
        &src,
        &TreeSpec {
            small_files: 60,
            big_file: Some(6 << 20),
            depth: 4,
        },
    );
    src
}

/// A smaller tree (20 files and a 2 MiB one) for tests about auth and addressing rather than data.
fn small_tree(env: &Env) -> PathBuf {
    let src = env.p("src");
    make_tree(
        &src,
        &TreeSpec {
            small_files: 20,
            big_file: Some(2 << 20),
            depth: 2,
        },
    );
    src
}

fn build(env: &Env, src: &Path, tag: &str) {
    hydrate_ok(&[
        "build",
        src.to_str().unwrap(),
        "--store",
        &env.s("store"),
        "--tag",
        tag,
        "--blob-size",
        "1M",
    ]);
}

/// An open registry, and a local store (in a fresh Env) holding the source tree built as `app:1`.
fn registry_and_built_image(test: &str) -> Option<(Registry, Env, PathBuf)> {
    let registry = start_registry(test, None)?;
    let env = Env::new();
    let src = source_tree(&env);
    build(&env, &src, "app:1");
    Some((registry, env, src))
}

fn blob_gets(requests: &[LoggedRequest]) -> Vec<&LoggedRequest> {
    requests.iter().filter(|r| r.is_blob_get()).collect()
}

#[test]
fn push_mount_ranged_reads_and_skopeo_copy() {
    let test = "push_mount_ranged_reads_and_skopeo_copy";
    let Some((registry, env, src)) = registry_and_built_image(test) else {
        return;
    };
    let dest = registry.store_address("team/app:1");

    let out = env.hydrate_ok(&["push", "--store", &env.s("store"), "app:1", &dest], None);
    assert!(
        out.contains(" as 1: ") && out.contains("blobs copied"),
        "{out}"
    );
    // Everything is there now: a second push copies nothing.
    let out = env.hydrate_ok(&["push", "--store", &env.s("store"), "app:1", &dest], None);
    assert!(
        out.contains(": 0 blobs copied (0 B)") && out.contains("manifest already there"),
        "{out}"
    );

    // Mount with the image taken from the address, compare every byte, and show the wire traffic was ranged.
    let before = registry.requests().len();
    let mount = env.mount(&dest, None, "a", None);
    let compared = compare_trees(&src, &mount.mountpoint);
    assert!(compared > 60, "{compared}");
    let requests = registry.requests();
    let gets = blob_gets(&requests[before..]);
    let manifest_len = std::fs::read_dir(env.p("store/manifests"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    let ranged = gets.iter().filter(|r| r.status == 206).count();
    let whole: Vec<_> = gets.iter().filter(|r| r.status == 200).collect();
    assert!(ranged > 0, "no ranged blob GETs: {gets:?}");
    // The only whole-object download is the hydrate manifest (the artifact's config); no data blob is fetched whole.
    assert!(
        whole.iter().all(|r| r.written == manifest_len) && whole.len() <= 1,
        "whole blob downloads besides the manifest ({manifest_len} bytes): {whole:?}"
    );
    mount.unmount();

    // A cold 4 KiB read in the middle of the big file fetches a chunk, not a blob.
    let before = registry.requests().len();
    let mount = env.mount(&dest, Some("1"), "b", None);
    let big = find_big_file(&src);
    let rel = big.strip_prefix(&src).unwrap();
    let got = pread(&mount.mountpoint.join(rel), 3 << 20, 4096).unwrap();
    assert_eq!(got, pread(&big, 3 << 20, 4096).unwrap());
    let requests = registry.requests();
    let data_bytes: u64 = blob_gets(&requests[before..])
        .iter()
        .filter(|r| r.status == 206)
        .map(|r| r.written)
        .sum();
    assert!(
        data_bytes > 0 && data_bytes < 1 << 20,
        "a 4 KiB read fetched {data_bytes} bytes"
    );
    mount.unmount();

    // skopeo moves it like any artifact; the copy mounts and matches.
    let Some(skopeo) = hydrate_testkit::require_binary("skopeo", test) else {
        return;
    };
    let host = registry.host();
    let out = Command::new(skopeo)
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{host}/team/app:1"),
            &format!("docker://{host}/other/b:1"),
        ])
        .env("HOME", env.p("home"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mount = env.mount(&registry.store_address("other/b:1"), None, "c", None);
    compare_trees(&src, &mount.mountpoint);
    mount.unmount();
}

#[test]
fn build_into_registry_and_mount_by_digest() {
    let Some(registry) = start_registry("build_into_registry_and_mount_by_digest", None) else {
        return;
    };
    let env = Env::new();
    let src = small_tree(&env);
    let addr = registry.store_address("direct");
    let out = env.hydrate_ok(
        &[
            "build",
            src.to_str().unwrap(),
            "--store",
            &addr,
            "--tag",
            "v1",
        ],
        None,
    );
    let digest = out.split_whitespace().nth(1).unwrap().to_owned();
    // Rebuilding reuses every chunk already in the registry.
    let again = env.hydrate_ok(
        &[
            "build",
            src.to_str().unwrap(),
            "--store",
            &addr,
            "--tag",
            "v2",
        ],
        None,
    );
    assert!(again.contains("0 B new stored in 0 blobs"), "{again}");
    // By digest: the store finds the image by reading the repository's tags.
    let mount = env.mount(&addr, Some(&digest), "d", None);
    compare_trees(&src, &mount.mountpoint);
    mount.unmount();
    let err = env.hydrate_err(&["mount", "--store", &addr, &env.s("mnt-x")], None);
    assert!(err.contains("names none"), "{err}");
}

#[test]
fn htpasswd_auth_from_auth_json() {
    let Some(registry) =
        start_registry("htpasswd_auth_from_auth_json", Some(("hydrate", "s3cret")))
    else {
        return;
    };
    auth_from_auth_json(&registry);
}

/// Docker's token protocol (hosted registries): distribution answers 401 with a Bearer challenge, hydrate gets
/// a token from the realm with the auth.json credentials, and the registry verifies the token's signature and
/// the scope it grants (pull for a mount, pull+push for a push).
#[test]
fn bearer_token_auth_from_auth_json() {
    let test = "bearer_token_auth_from_auth_json";
    let Some(binary) = Registry::binary(test) else {
        return;
    };
    let registry = Registry::start_with_token_auth(&binary, "hydrate", "s3cret")
        .unwrap_or_else(|e| panic!("starting docker-registry: {e}"));
    auth_from_auth_json(&registry);
    let tokens = registry.token_server().unwrap().requests();
    let granted = |scope: &str| {
        tokens.iter().any(|t| {
            t.granted && t.user.as_deref() == Some("hydrate") && t.scopes.iter().any(|s| s == scope)
        })
    };
    assert!(granted("repository:secure/app:pull,push"), "{tokens:?}");
    // The push's parallel uploads are refused together (their pull token lacks push): one renewal serves all.
    let push_tokens = tokens
        .iter()
        .filter(|t| t.scopes.iter().any(|s| s.ends_with(":pull,push")))
        .count();
    assert_eq!(push_tokens, 1, "{tokens:?}");
    assert!(granted("repository:secure/app:pull"), "{tokens:?}");
    assert!(
        tokens
            .iter()
            .any(|t| !t.granted && t.user.as_deref() == Some("hydrate")),
        "the wrong password was refused by the token service: {tokens:?}"
    );
    assert!(
        tokens
            .iter()
            .all(|t| t.service.as_deref() == Some(hydrate_testkit::token_server::SERVICE)),
        "{tokens:?}"
    );
}

/// Push and mount with credentials from an auth.json against `registry` (which requires user `hydrate`), and
/// the refusals without credentials and with a wrong password.
fn auth_from_auth_json(registry: &Registry) {
    let env = Env::new();
    let src = small_tree(&env);
    build(&env, &src, "app:1");
    let auth = env.p("auth.json");
    registry.write_auth_file(&auth, None).unwrap();
    let dest = registry.store_address("secure/app:1");
    let host = registry.host();

    // Without credentials: a clear refusal naming the registry, for push and mount alike.
    let err = env.hydrate_err(&["push", "--store", &env.s("store"), "app:1", &dest], None);
    assert!(
        err.contains("authentication failed") && err.contains(&host),
        "{err}"
    );
    assert!(err.contains("none were found"), "{err}");

    env.hydrate_ok(
        &["push", "--store", &env.s("store"), "app:1", &dest],
        Some(&auth),
    );
    let mount = env.mount(&dest, None, "a", Some(&auth));
    compare_trees(&src, &mount.mountpoint);
    mount.unmount();

    std::fs::create_dir_all(env.p("mnt-x")).unwrap();
    let err = env.hydrate_err(
        &[
            "mount",
            "--store",
            &dest,
            &env.s("mnt-x"),
            "--cache-dir",
            &env.s("c-x"),
        ],
        None,
    );
    assert!(
        err.contains("authentication failed") && err.contains(&host),
        "{err}"
    );

    // A wrong password is named as such, with the file it came from.
    let wrong = env.p("wrong.json");
    registry.write_auth_file(&wrong, Some("nope")).unwrap();
    let err = env.hydrate_err(
        &[
            "mount",
            "--store",
            &dest,
            &env.s("mnt-x"),
            "--cache-dir",
            &env.s("c-x"),
        ],
        Some(&wrong),
    );
    assert!(
        err.contains("authentication failed") && err.contains("refused user \"hydrate\""),
        "{err}"
    );
    assert!(err.contains("wrong.json"), "{err}");
    assert!(!is_mounted(&env.p("mnt-x")));
}

/// The largest file of the tree (make_tree's big file).
fn find_big_file(root: &Path) -> PathBuf {
    let mut best = (0, PathBuf::new());
    walk(root, &mut |p, m| {
        if m.is_file() && m.len() > best.0 {
            best = (m.len(), p.to_path_buf());
        }
    });
    best.1
}

#[test]
fn push_through_a_faulty_link_retries_and_never_tags_a_partial_image() {
    let test = "push_through_a_faulty_link_retries_and_never_tags_a_partial_image";
    let Some((registry, env, src)) = registry_and_built_image(test) else {
        return;
    };
    let proxy =
        hydrate_testkit::proxy::FaultProxy::start(registry.host().parse().unwrap()).unwrap();
    let store = env.s("store");
    let far = format!("oci://{}/team/app:1", proxy.addr());
    let push = ["push", "--store", &store, "app:1", &far];
    let faults = proxy.faults();

    // A registry that answers every request with a 500: the push fails naming it, and no tag appears.
    faults.set_http_500_probability(1.0);
    let err = env.hydrate_err(&push, None);
    assert!(err.contains("500"), "{err}");
    faults.clear();
    let err = env.hydrate_err(
        &[
            "inspect",
            "--store",
            &registry.store_address("team/app"),
            "1",
        ],
        None,
    );
    assert!(err.contains("no image or tag"), "{err}");

    // Occasional 500s and resets (at most four, below the five attempts of any one request) are retried away.
    faults.set_http_500_probability(0.3);
    faults.set_reset_probability(0.3);
    faults.set_fault_budget(Some(4));
    let out = env.hydrate_ok(&push, None);
    let stats = faults.stats();
    faults.clear();
    assert!(
        stats.http_500s + stats.resets > 0,
        "no fault injected: {stats:?}"
    );
    assert!(out.contains("blobs copied"), "{out}");
    let mount = env.mount(&registry.store_address("team/app:1"), None, "a", None);
    compare_trees(&src, &mount.mountpoint);
    mount.unmount();
}
