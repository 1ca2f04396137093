//! `hydrate snapshotter` with a real containerd (Debian's 1.6), a real registry (docker-registry) and runc.
//!
//! Each test starts its own containerd (own root, state and sockets in a scratch directory, a config naming the
//! `hydrate` proxy plugin, the CRI plugin off) and its own snapshotter, and stops both by PID; a guard kills
//! the tests' shims and unmounts everything under the scratch directory, also when a test fails.
//!
//! Needs root, /dev/fuse, overlayfs, containerd + ctr, runc, skopeo and docker-registry
//! (scripts/install-test-deps.sh). Without them a test is skipped loudly, unless HYDRATE_REQUIRE_SERVERS is set.

#[path = "../common/mod.rs"]
mod common;
mod cri;
mod node;

use common::*;
use hydrate_testkit::oci_image::{
    host_program_rootfs, Compression, Layer, Meta, OciLayout, RunConfig,
};
use hydrate_testkit::registry::Registry;
use node::{tools, Node, Tools};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the test image's command prints: who and where it runs, every path of the root file system with type,
/// mode and owner, every file's size and link count, and some file contents.
const LIST_SCRIPT: &str = r#"id -u; pwd; echo "greeting=$GREETING"
find / -xdev -printf '%p %y %m %U:%G\n' | sort
find / -xdev -type f -printf '%p %s %n\n' | sort
cat /data/keep /data/opq/c /data/new /data/mine
head -c 16 /data/big | od -An -tx1"#;

/// A two-layer image: programs of this machine and data (a large random file, hard links, a directory to be
/// made opaque, files to be whited out), then a layer with a whiteout of a file and of a directory, an opaque
/// directory, a new file with a hard link; runs as `nobody` in /data with an environment variable.
fn test_image(layout: &mut OciLayout, s: &Scratch, tag: &str) {
    let root = s.p("progs");
    if !root.exists() {
        let programs: Vec<PathBuf> = [
            "/bin/sh",
            "/usr/bin/find",
            "/usr/bin/sort",
            "/usr/bin/cat",
            "/usr/bin/id",
            "/usr/bin/head",
            "/usr/bin/od",
            "/usr/bin/sleep",
        ]
        .iter()
        .flat_map(|p| {
            let real = std::fs::canonicalize(p).unwrap();
            [PathBuf::from(p), real]
        })
        .collect();
        let refs: Vec<&Path> = programs.iter().map(|p| p.as_path()).collect();
        host_program_rootfs(&root, &refs, &[]).unwrap();
    }
    let mut base = Layer::from_dir(&root).unwrap();
    let d = Meta::new(0o755);
    let f = Meta::new(0o644);
    let mut big = vec![0u8; 24 << 20];
    Rng::new(11).fill(&mut big);
    base.dir("data", d)
        .file("data/keep", f, b"kept\n")
        .hardlink("data/link1", "data/keep")
        .hardlink("data/link2", "data/keep")
        .file("data/gone", f, b"whited out later\n")
        .dir("data/gonedir", d)
        .file("data/gonedir/x", f, b"x\n")
        .dir("data/opq", Meta::new(0o750).owner(65534, 65534))
        .file("data/opq/a", f, b"a1\n")
        .file("data/big", f, &big)
        .dir("data/many", d);
    for i in 0..200 {
        base.file(
            &format!("data/many/f{i}"),
            f,
            format!("file {i}\n").repeat(50).as_bytes(),
        );
    }
    let mut top = Layer::new();
    top.whiteout("data/gone")
        .whiteout("data/gonedir")
        .dir("data/opq", Meta::new(0o755))
        .opaque("data/opq")
        .file("data/opq/c", f, b"c2\n")
        // containerd's applier links only inside the layer being unpacked (not into lower layers), and gives
        // the inode the link entry's mode and owner (as docker does), which hydrate convert does not: real tar
        // writers give both entries the same, as here.
        .file("data/new", f, b"new\n")
        .hardlink("data/newlink", "data/new")
        .file("data/mine", Meta::new(0o600).owner(65534, 65534), b"mine\n");
    layout
        .add_image(
            tag,
            vec![(base, Compression::Gzip), (top, Compression::Gzip)],
            &RunConfig {
                entrypoint: vec!["/bin/sh".into(), "-c".into()],
                cmd: vec![LIST_SCRIPT.into()],
                env: vec!["GREETING=hi".into()],
                working_dir: Some("/data".into()),
                user: Some("nobody".into()),
                ..RunConfig::default()
            },
        )
        .unwrap();
}

fn skopeo_copy(tools: &Tools, s: &Scratch, from: &str, to: &str) {
    std::fs::create_dir_all(s.p("home")).unwrap();
    run(Command::new(&tools.skopeo)
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            from,
            to,
        ])
        .env("HOME", s.p("home")));
}

/// Registry response bytes of blob downloads from request `since` on.
fn blob_bytes(registry: &Registry, since: usize) -> u64 {
    registry.requests()[since..]
        .iter()
        .filter(|r| r.is_blob_get())
        .map(|r| r.written)
        .sum()
}

struct Setup {
    tools: Tools,
    registry: Registry,
    s: Scratch,
}

fn setup(test: &str) -> Option<Setup> {
    let tools = tools(test)?;
    let binary = Registry::binary(test)?;
    let registry =
        Registry::start(&binary).unwrap_or_else(|e| panic!("starting docker-registry: {e}"));
    Some(Setup {
        tools,
        registry,
        s: Scratch::new("hydrate-ctd"),
    })
}

/// Copies tag `tag` of the OCI layout at `layout` to the registry as `library/NAME:TAG`; its reference.
fn push_layout(t: &Setup, layout: &Path, name: &str, tag: &str) -> String {
    let reference = format!("{}/library/{name}:{tag}", t.registry.host());
    skopeo_copy(
        &t.tools,
        &t.s,
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{reference}"),
    );
    reference
}

/// The test image in the registry as `library/app:1`; its reference for containerd.
fn push_test_image(t: &Setup) -> String {
    let mut layout = OciLayout::create(&t.s.p("layout")).unwrap();
    test_image(&mut layout, &t.s, "1");
    push_layout(t, &t.s.p("layout"), "app", "1")
}

/// `hydrate convert` of `reference` into the same repository (`:1-hydrate`) with a containerd image
/// (`:1-ctd`); the containerd image's reference.
fn convert_for_containerd(t: &Setup, reference: &str) -> String {
    let host = t.registry.host();
    let out = hydrate_ok(&[
        "convert",
        &format!("docker://{reference}"),
        &format!("oci://{host}/library/app:1-hydrate"),
        "--containerd-tag",
        "1-ctd",
    ]);
    let ctd = format!("{host}/library/app:1-ctd");
    assert!(out.contains(&format!("containerd {ctd}")), "{out}");
    ctd
}

#[test]
fn converted_images_run_lazily_and_ordinary_images_as_with_overlayfs() {
    let Some(t) = setup("converted_images_run_lazily_and_ordinary_images_as_with_overlayfs") else {
        return;
    };
    let source = push_test_image(&t);
    // Purely lazy mounts (no background fill, no ELF prefetch: by default a mount starts fetching the image's
    // command and its libraries as soon as the pull mounts it), so the bytes the registry serves are what the
    // container read.
    let node = Node::start(
        &t.tools,
        &t.s,
        &["--fill-budget", "0", "--elf-prefetch", "0"],
    );

    // The reference: the source image through containerd's own overlayfs snapshotter.
    node.pull(&source, "overlayfs");
    let expected = node.run(&source, "overlayfs", "ref", &[]);
    assert!(
        expected.starts_with("65534\n/data\ngreeting=hi\n"),
        "{expected}"
    );
    for line in ["/data/gone ", "/data/gonedir ", "/data/opq/a "] {
        assert!(!expected.contains(line), "{line} is whited out: {expected}");
    }
    assert!(
        expected.contains("/data/link2 5 3\n"),
        "three links to /data/keep: {expected}"
    );
    assert!(expected.contains("/data/newlink 4 2\n"), "{expected}");
    assert!(
        expected.contains("/data/mine f 600 65534:65534\n"),
        "{expected}"
    );
    assert!(expected.contains("kept\nc2\nnew\nmine\n"), "{expected}");

    // The same ordinary image through the hydrate snapshotter: plain overlay snapshots.
    node.pull(&source, "hydrate");
    assert_eq!(node.run(&source, "hydrate", "ordinary", &[]), expected);
    assert!(
        node.mounts_under_root().is_empty(),
        "no lazy image for an ordinary one"
    );

    // The converted image: pulled as one tiny layer, run from the lazy mount.
    let ctd = convert_for_containerd(&t, &source);
    // The source image as stored: its layers (gzip), config and manifest.
    let image_bytes: u64 = std::fs::read_dir(t.s.p("layout/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(image_bytes > 24 << 20, "{image_bytes}");
    let since = t.registry.requests().len();
    node.pull(&ctd, "hydrate");
    let pulled = blob_bytes(&t.registry, since);
    // The pull downloads the config and the metadata layer (< 2 KiB), and the snapshotter's mount reads the
    // hydrate manifest (the tree's metadata) when the layer is committed: no file data.
    assert!(
        pulled < 256 << 10,
        "pulling the metadata image cost {pulled} bytes"
    );
    let lazy = node.run(&ctd, "hydrate", "lazy", &[]);
    assert_eq!(
        lazy, expected,
        "the converted image prints what the source prints"
    );
    let served = blob_bytes(&t.registry, since);
    assert!(
        served < image_bytes / 3,
        "the registry served {served} bytes for an image of more than {image_bytes}"
    );
    let mounts = node.mounts_under_root();
    assert_eq!(mounts.len(), 1, "one lazy image mount: {mounts:?}");
    let status = hydrate_ok(&["status"]);
    assert!(
        status.contains(&mounts[0].display().to_string()),
        "hydrate status lists the snapshotter's mount: {status}"
    );
    // A second container shares the mount.
    assert_eq!(node.run(&ctd, "hydrate", "lazy2", &[]), expected);
    assert_eq!(node.mounts_under_root(), mounts);

    // A plan learned from the image's command reaches containerd: `learn --containerd-tag` publishes the planned
    // image's containerd form, whose mount replays the plan.
    let host = t.registry.host();
    let out = hydrate_ok(&[
        "learn",
        &format!("oci://{host}/library/app:1-hydrate"),
        "--tag",
        "1-plan",
        "--containerd-tag",
        "1-ctd-plan",
        "--timeout",
        "60s",
    ]);
    let planned = format!("{host}/library/app:1-ctd-plan");
    assert!(out.contains(&format!("containerd {planned}")), "{out}");
    node.pull(&planned, "hydrate");
    assert_eq!(node.run(&planned, "hydrate", "planned", &[]), expected);
    let with_plan: Vec<PathBuf> = node
        .mounts_under_root()
        .into_iter()
        .filter(|m| !mounts.contains(m))
        .collect();
    assert_eq!(
        with_plan.len(),
        1,
        "the planned image is a mount of its own"
    );
    let metrics: std::collections::HashMap<String, u64> =
        hydrate_control::MountClient::for_mountpoint(&with_plan[0])
            .and_then(|c| c.metrics().map_err(std::io::Error::other))
            .unwrap()
            .metrics
            .into_iter()
            .map(|m| (m.name, m.value))
            .collect();
    assert!(
        metrics["volume_plan_entries_fetched"] + metrics["volume_plan_entries_cached"] > 0,
        "the plan was replayed: {metrics:?}"
    );

    // Removing the images and collecting garbage leaves no mount and no snapshot directory.
    node.remove_images();
    assert!(
        node.mounts_under_root().is_empty(),
        "{:?}",
        node.mounts_under_root()
    );
    assert!(
        node.snapshot_dirs().is_empty(),
        "{:?}",
        node.snapshot_dirs()
    );
    let images = node.snapshotter_root().join("images");
    assert_eq!(
        std::fs::read_dir(&images).unwrap().count(),
        0,
        "image directories remain"
    );
    let cache = node.snapshotter_root().join("cache");
    assert!(
        !cache.exists() || std::fs::read_dir(&cache).unwrap().count() == 0,
        "the image's cache is freed"
    );
}

#[test]
fn a_kernel_mode_snapshotter_runs_converted_images_from_erofs() {
    let Some(t) = setup("a_kernel_mode_snapshotter_runs_converted_images_from_erofs") else {
        return;
    };
    let source = push_test_image(&t);
    let node = Node::start(
        &t.tools,
        &t.s,
        &["--kernel", "--fill-budget", "0", "--elf-prefetch", "0"],
    );
    node.pull(&source, "overlayfs");
    let expected = node.run(&source, "overlayfs", "ref", &[]);
    let ctd = convert_for_containerd(&t, &source);
    node.pull(&ctd, "hydrate");
    assert_eq!(
        node.run(&ctd, "hydrate", "kernel", &[]),
        expected,
        "the converted image on an erofs lower prints what the source prints"
    );
    let mounts = node.mounts_under_root();
    assert_eq!(mounts.len(), 1, "one lazy image mount: {mounts:?}");
    let info = hydrate_mountinfo::MountInfo::read_self().unwrap();
    assert_eq!(
        info.top_at(&mounts[0]).map(|m| m.fs_type.as_str()),
        Some("erofs"),
        "the lazy image is mounted in kernel mode"
    );
    let pid = hydrate_control::MountClient::for_mountpoint(&mounts[0])
        .and_then(|c| c.info().map_err(std::io::Error::other))
        .unwrap()
        .supervisor
        .pid;
    let blob = hydrate_control::mount::kernel_blob_dir(&mounts[0], pid);
    assert!(
        info.is_mount_point(&blob),
        "no blob mount at {}",
        blob.display()
    );

    node.remove_images();
    assert!(
        node.mounts_under_root().is_empty(),
        "{:?}",
        node.mounts_under_root()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while hydrate_mountinfo::MountInfo::read_self()
        .unwrap()
        .is_mount_point(&blob)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the blob mount outlived its image"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_killed_snapshotter_breaks_no_container_and_finds_its_mounts_again() {
    let Some(t) = setup("a_killed_snapshotter_breaks_no_container_and_finds_its_mounts_again")
    else {
        return;
    };
    let source = push_test_image(&t);
    let ctd = convert_for_containerd(&t, &source);
    let mut node = Node::start(&t.tools, &t.s, &["--fill-budget", "0"]);
    node.pull(&ctd, "hydrate");

    // A container reads files (most of them not yet fetched) for a few seconds; the snapshotter is killed and
    // restarted meanwhile.
    let reader = r#"i=0; f=0
while [ $i -lt 400 ]; do cat /data/many/f$((i % 200)) /data/keep > /dev/null || f=$((f+1)); i=$((i+1)); sleep 0.01; done
echo "reads=$i failed=$f""#;
    let container = node
        .ctr_command(&[
            "run",
            "--rm",
            "--snapshotter",
            "hydrate",
            &ctd,
            "reader",
            "/bin/sh",
            "-c",
            reader,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mounts = node.mounts_under_root();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let supervisor = hydrate_control::MountClient::for_mountpoint(&mounts[0])
        .unwrap()
        .info()
        .unwrap()
        .supervisor
        .pid;
    node.kill_snapshotter();
    std::thread::sleep(Duration::from_millis(1000));
    node.start_snapshotter();
    let out = container.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "reads=400 failed=0");
    let again = hydrate_control::MountClient::for_mountpoint(&mounts[0])
        .unwrap()
        .info()
        .unwrap();
    assert_eq!(
        again.supervisor.pid, supervisor,
        "the restarted snapshotter kept the live mount"
    );

    // A second container of the image starts through the restarted snapshotter.
    let out = node.run_after_restart(&ctd, "second", &["/usr/bin/cat", "/data/keep"]);
    assert_eq!(out, "kept\n");

    // The mount's daemon dies too (supervisor and worker): a restarted snapshotter mounts the image again.
    node.kill_snapshotter();
    for pid in [Some(again.supervisor.pid), again.supervisor.worker_pid]
        .into_iter()
        .flatten()
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    node.start_snapshotter();
    // The snapshotter listens first and then recovers its state (mounting the image again): wait for that.
    let started = Instant::now();
    let remounted = loop {
        match hydrate_control::MountClient::for_mountpoint(&mounts[0])
            .map_err(|e| e.to_string())
            .and_then(|c| c.info().map_err(|e| e.to_string()))
        {
            Ok(info) => break info,
            Err(e) if started.elapsed() > Duration::from_secs(30) => panic!(
                "the image is not mounted again: {e}\n{}",
                node.log("snapshotter.log")
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert_ne!(remounted.supervisor.pid, again.supervisor.pid);
    let out = node.run_after_restart(&ctd, "third", &["/usr/bin/cat", "/data/opq/c"]);
    assert_eq!(out, "c2\n");

    node.remove_images();
    assert!(
        node.mounts_under_root().is_empty(),
        "{:?}",
        node.mounts_under_root()
    );
    assert!(
        node.snapshot_dirs().is_empty(),
        "{:?}",
        node.snapshot_dirs()
    );
}

/// An image whose one layer holds `.hydrate/image.json` with `marker`, pushed as `library/bad:TAG`.
fn push_marker_image(t: &Setup, tag: &str, marker: &[u8]) -> String {
    let dir = t.s.p(&format!("bad-{tag}"));
    let mut layout = OciLayout::create(&dir).unwrap();
    let mut layer = Layer::new();
    layer
        .dir(".hydrate", Meta::new(0o755))
        .file(".hydrate/image.json", Meta::new(0o644), marker);
    layout
        .add_image(
            tag,
            vec![(layer, Compression::Gzip)],
            &RunConfig {
                cmd: vec!["/bin/true".into()],
                ..RunConfig::default()
            },
        )
        .unwrap();
    push_layout(t, &dir, "bad", tag)
}

#[test]
fn bad_images_fail_naming_the_image_and_the_cause_and_leave_nothing_mounted() {
    let Some(t) = setup("bad_images_fail_naming_the_image_and_the_cause_and_leave_nothing_mounted")
    else {
        return;
    };
    let node = Node::start(&t.tools, &t.s, &["--fetch-timeout", "2s"]);

    let corrupt = push_marker_image(&t, "corrupt", b"{\"version\": 1, \"store\": ");
    let err = node.ctr_err(&[
        "image",
        "pull",
        "--plain-http",
        "--snapshotter",
        "hydrate",
        &corrupt,
    ]);
    assert!(err.contains("hydrate metadata layer is invalid"), "{err}");
    assert!(err.contains(".hydrate/image.json"), "{err}");

    // A well-formed marker whose registry does not answer (a closed port).
    let port = hydrate_testkit::free_port();
    let marker = format!(
        r#"{{"version":1,"store":"oci://127.0.0.1:{port}/gone/app","image":"{}","tag":"1","source":"docker://example/app:1","source_manifest":"sha256:00"}}"#,
        "ab".repeat(32)
    );
    let unreachable = push_marker_image(&t, "unreachable", marker.as_bytes());
    let err = node.ctr_err(&[
        "image",
        "pull",
        "--plain-http",
        "--snapshotter",
        "hydrate",
        &unreachable,
    ]);
    assert!(
        err.contains(&format!("oci://127.0.0.1:{port}/gone/app")),
        "names the store: {err}"
    );
    assert!(err.contains(&"ab".repeat(32)), "names the image: {err}");
    assert!(
        err.contains("docker://example/app:1"),
        "names the source: {err}"
    );

    // A marker naming a local directory is refused.
    let local = format!(
        r#"{{"version":1,"store":"/etc","image":"{}","source":"docker://example/app:1","source_manifest":"sha256:00"}}"#,
        "cd".repeat(32)
    );
    let local = push_marker_image(&t, "local", local.as_bytes());
    let err = node.ctr_err(&[
        "image",
        "pull",
        "--plain-http",
        "--snapshotter",
        "hydrate",
        &local,
    ]);
    assert!(err.contains("only oci://"), "{err}");

    assert!(
        node.mounts_under_root().is_empty(),
        "{:?}",
        node.mounts_under_root()
    );
    // containerd removes a failed unpack's snapshot from its metadata at once, from the snapshotter at its
    // next garbage collection.
    node.collect_garbage();
    let left: Vec<String> = node
        .snapshot_dirs()
        .iter()
        .map(|d| {
            std::fs::read_to_string(
                node.snapshotter_root()
                    .join("snapshots")
                    .join(d)
                    .join("meta.json"),
            )
            .unwrap_or_default()
        })
        .collect();
    assert!(
        left.is_empty(),
        "half-made snapshots remain: {left:?}\n{}",
        node.log("snapshotter.log")
    );
    let images = node.snapshotter_root().join("images");
    assert_eq!(std::fs::read_dir(&images).unwrap().count(), 0);
    // The snapshotter still serves: an ordinary image runs.
    let source = push_test_image(&t);
    node.pull(&source, "hydrate");
    let out = node.run(&source, "hydrate", "ok", &["/usr/bin/cat", "/data/keep"]);
    assert_eq!(out, "kept\n");
}

/// A pod sandbox ("pause") image of this machine's `sleep`, pushed as `library/pause:1`; its reference.
fn push_pause_image(t: &Setup) -> String {
    let root = t.s.p("pause-root");
    let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
    host_program_rootfs(&root, &[Path::new("/usr/bin/sleep"), sleep.as_path()], &[]).unwrap();
    let dir = t.s.p("pause-layout");
    let mut layout = OciLayout::create(&dir).unwrap();
    layout
        .add_image(
            "1",
            vec![(Layer::from_dir(&root).unwrap(), Compression::Gzip)],
            &RunConfig {
                entrypoint: vec!["/usr/bin/sleep".into(), "infinity".into()],
                ..RunConfig::default()
            },
        )
        .unwrap();
    push_layout(t, &dir, "pause", "1")
}

#[test]
fn the_cri_plugin_runs_converted_images_lazily_through_the_snapshotter() {
    let Some(t) = setup("the_cri_plugin_runs_converted_images_lazily_through_the_snapshotter")
    else {
        return;
    };
    let source = push_test_image(&t);
    let pause = push_pause_image(&t);
    let ctd = convert_for_containerd(&t, &source);
    let bad = push_marker_image(&t, "cri", b"{ not json");
    let host = t.registry.host();
    // As a Kubernetes node runs it: the CRI plugin on, hydrate its snapshotter (contrib/containerd/config-hydrate.toml).
    let node = Node::start_with(
        &t.tools,
        &t.s,
        &["--fill-budget", "0", "--elf-prefetch", "0"],
        |root| {
            hydrate_testkit::containerd::config_with_cri(
                root,
                &hydrate_testkit::containerd::Cri {
                    registry: &host,
                    sandbox_image: &pause,
                },
            )
        },
    );
    let mut cri = cri::Cri::connect(&node.socket(), &t.s.p("pods"));

    // An ordinary image through the CRI and the hydrate snapshotter (plain overlay snapshots).
    cri.pull(&source)
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log("containerd.log")));
    let run_pod = |cri: &mut cri::Cri, name: &str, image: &str| {
        cri.run_pod(name, image).unwrap_or_else(|e| {
            panic!(
                "{e}\ncontainerd: {}\nsnapshotter: {}",
                node.log("containerd.log"),
                node.log("snapshotter.log")
            )
        })
    };
    let expected = run_pod(&mut cri, "ordinary", &source);
    assert!(
        expected.starts_with("65534\n/data\ngreeting=hi\n"),
        "{expected}"
    );
    assert!(expected.contains("kept\nc2\nnew\nmine\n"), "{expected}");
    assert!(node
        .mounts_under_root()
        .iter()
        .all(|m| !m.starts_with(node.snapshotter_root().join("images"))));

    // The converted image: the kubelet's PullImage mounts it lazily, its pod prints what the source's prints.
    let image_bytes: u64 = std::fs::read_dir(t.s.p("layout/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let since = t.registry.requests().len();
    cri.pull(&ctd)
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log("snapshotter.log")));
    let images = node.snapshotter_root().join("images");
    let lazy_mounts = || -> Vec<PathBuf> {
        node.mounts_under_root()
            .into_iter()
            .filter(|m| m.starts_with(&images))
            .collect()
    };
    assert_eq!(lazy_mounts().len(), 1, "{:?}", node.mounts_under_root());
    assert_eq!(run_pod(&mut cri, "lazy", &ctd), expected);
    let served = blob_bytes(&t.registry, since);
    assert!(
        served < image_bytes / 3,
        "the registry served {served} bytes for an image of more than {image_bytes}"
    );

    // The CRI's labels reach the snapshotter: a bad image is named by the reference the kubelet pulled.
    let err = cri.pull(&bad).expect_err("a corrupt marker fails the pull");
    assert!(err.contains(&format!("image {bad}")), "{err}");
    assert!(err.contains("metadata layer is invalid"), "{err}");
    assert_eq!(lazy_mounts().len(), 1, "nothing half-mounted is left");

    // RemoveImage + containerd's garbage collection take the lazy mount and its snapshots away.
    cri.remove_image(&ctd);
    node.collect_garbage();
    let started = Instant::now();
    while !lazy_mounts().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the lazy image stays mounted after RemoveImage: {:?}",
            lazy_mounts()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn convert_refuses_containerd_tags_it_cannot_publish() {
    let s = Scratch::new("hydrate-ctd-args");
    let source = format!("oci-layout:{}:1", s.s("layout"));
    let store = s.s("store");
    std::fs::create_dir_all(&store).unwrap();
    let err = hydrate_err(&[
        "convert",
        &source,
        "--store",
        &store,
        "--tag",
        "a:1",
        "--containerd-tag",
        "c",
    ]);
    assert!(err.contains("must be an oci:// registry store"), "{err}");
    let dest = "oci://127.0.0.1:1/app:1";
    let err = hydrate_err(&["convert", &source, dest, "--containerd-tag", "1"]);
    assert!(err.contains("also the hydrate image's tag"), "{err}");
    let err = hydrate_err(&[
        "convert",
        &source,
        "oci://127.0.0.1:1/app",
        "--containerd-tag",
        "c",
    ]);
    assert!(err.contains("needs a tag for the hydrate image"), "{err}");
    let err = hydrate_err(&["convert", &source, dest, "--containerd-tag", "bad tag"]);
    assert!(err.contains("--containerd-tag"), "{err}");
    // attach-trace checks the same before it stores anything.
    let trace = s.p("trace");
    std::fs::write(&trace, b"").unwrap();
    let err = hydrate_err(&[
        "attach-trace",
        "--store",
        &store,
        "a:1",
        trace.to_str().unwrap(),
        "--tag",
        "a:2",
        "--containerd-tag",
        "c",
    ]);
    assert!(err.contains("must be an oci:// registry store"), "{err}");
}

#[test]
fn the_snapshot_api_answers_as_overlayfs_does() {
    let Some(t) = setup("the_snapshot_api_answers_as_overlayfs_does") else {
        return;
    };
    let source = push_test_image(&t);
    let node = Node::start(&t.tools, &t.s, &[]);
    node.pull(&source, "overlayfs");
    node.pull(&source, "hydrate");
    let both = |args: &[&str]| -> [String; 2] {
        ["overlayfs", "hydrate"].map(|sn| {
            let mut all = vec!["snapshots", "--snapshotter", sn];
            all.extend(args);
            node.ctr(&all)
        })
    };
    // Walk: the same committed chain (keys are chain ids, so they match exactly). Some answers (labels, a
    // parent's removal) come from containerd's own metadata before the snapshotter is asked: checked as users see them.
    let [overlay, hydrate] = both(&["ls"]);
    assert_eq!(hydrate, overlay);
    // The bottom layer: the one whose line has no parent column.
    let bottom = overlay
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().count() == 2)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no layer without a parent in {overlay}"))
        .to_owned();
    // Usage is measured the same way (allocated blocks and inodes, hard links once).
    let [overlay, hydrate] = both(&["usage"]);
    assert_eq!(hydrate, overlay);
    for sn in ["overlayfs", "hydrate"] {
        // A parent goes only after its children.
        let err = node.ctr_err(&["snapshots", "--snapshotter", sn, "rm", &bottom]);
        assert!(err.contains("failed precondition"), "{sn}: {err}");
        node.ctr(&["snapshots", "--snapshotter", sn, "label", &bottom, "test=1"]);
        let info = node.ctr(&["snapshots", "--snapshotter", sn, "info", &bottom]);
        assert!(info.contains("\"Kind\": \"Committed\""), "{sn}: {info}");
        assert!(info.contains("\"test\": \"1\""), "{sn}: {info}");
    }
    let [overlay, hydrate] = both(&["ls"]);
    assert_eq!(hydrate, overlay);
    node.remove_images();
    assert!(
        node.snapshot_dirs().is_empty(),
        "{:?}",
        node.snapshot_dirs()
    );
}
