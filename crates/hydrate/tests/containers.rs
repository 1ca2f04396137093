//! Containers end to end with real tools: images made as OCI layouts, moved with skopeo into a real registry
//! (Debian `docker-registry`), converted by `hydrate convert`, checked against `umoci unpack` of the same image,
//! and run with `runc` from a `hydrate rootfs` bundle (lazy FUSE lower + overlayfs upper).
//!
//! Needs root, /dev/fuse, overlayfs, and docker-registry, skopeo, umoci and runc (scripts/install-test-deps.sh).
//! Without them a test is skipped loudly, unless HYDRATE_REQUIRE_SERVERS is set (CI), which makes it a failure.

mod common;

use common::*;
use hydrate_testkit::oci_image::{
    host_program_rootfs, Compression, Layer, Meta, OciLayout, RunConfig,
};
use hydrate_testkit::registry::Registry;
use hydrate_testkit::require_binary;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tools of this file, or `None` (test skipped) when one is missing outside CI.
struct Tools {
    skopeo: PathBuf,
    umoci: PathBuf,
    runc: PathBuf,
}

fn tools(test: &str) -> Option<Tools> {
    Some(Tools {
        skopeo: require_binary("skopeo", test)?,
        umoci: require_binary("umoci", test)?,
        runc: require_binary("runc", test)?,
    })
}

fn start_registry(test: &str) -> Option<Registry> {
    let binary = Registry::binary(test)?;
    Some(Registry::start(&binary).unwrap_or_else(|e| panic!("starting docker-registry: {e}")))
}

/// The tools, a registry, a scratch directory (with a `home` for skopeo) and an empty OCI layout in it; `None`
/// when the test is skipped (a tool is missing outside CI).
fn setup(test: &str) -> Option<(Tools, Registry, Scratch, OciLayout)> {
    let tools = tools(test)?;
    let registry = start_registry(test)?;
    let s = Scratch::new("hydrate-containers");
    std::fs::create_dir_all(s.p("home")).unwrap();
    let layout = OciLayout::create(&s.p("layout")).unwrap();
    Some((tools, registry, s, layout))
}

fn skopeo_copy(tools: &Tools, home: &Path, from: &str, to: &str) {
    run(Command::new(&tools.skopeo)
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            from,
            to,
        ])
        .env("HOME", home));
}

/// `umoci unpack` of `layout:tag` into `bundle`; returns the root filesystem it made.
fn umoci_unpack(tools: &Tools, layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    run(Command::new(&tools.umoci).args([
        "unpack",
        "--image",
        &format!("{}:{tag}", layout.display()),
        bundle.to_str().unwrap(),
    ]));
    bundle.join("rootfs")
}

/// Layer 1 of the layered images: the base that several images share.
fn base_layer() -> Layer {
    let d = Meta::new(0o755);
    let f = Meta::new(0o644);
    let mut shared = vec![0u8; 300 << 10];
    Rng::new(7).fill(&mut shared);
    let long = "l".repeat(120);
    let mut l1 = Layer::new();
    l1.dir("etc", d)
        .file("etc/passwd", f, b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/old", f, b"to be whited out\n")
        .dir("usr", d)
        .dir("usr/bin", d)
        .file_with_xattrs(
            "usr/bin/tool",
            Meta::new(0o755),
            b"#!/bin/sh\necho tool\n",
            &[
                ("user.origin", b"layer1"),
                // VFS_CAP_REVISION_2, CAP_NET_BIND_SERVICE permitted (the kernel checks the format).
                (
                    "security.capability",
                    &[0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
            ],
        )
        .hardlink("usr/bin/tool-link", "usr/bin/tool")
        .symlink("usr/bin/sh", "tool")
        .file("usr/bin/su", Meta::new(0o4755), b"setuid\n")
        .dir("gone", d)
        .dir("gone/sub", Meta::new(0o700))
        .file("gone/sub/f", f, b"hidden later\n")
        .dir("opq", Meta::new(0o750).owner(1000, 1000))
        .file("opq/a", f, b"a1\n")
        .file("opq/b", f, b"b1\n")
        .dir("opq/keepdir", d)
        .file("opq/keepdir/x", f, b"x1\n")
        .dir("replace", d)
        .file("replace/file-to-dir", f, b"a file first\n")
        .dir("replace/dir-to-file", d)
        .file("replace/dir-to-file/child", f, b"child\n")
        .dir("dev", d)
        .char_device("dev/zero", Meta::new(0o666), 1, 5)
        .dir("run", d)
        .fifo("run/fifo", Meta::new(0o600))
        .dir("long", d)
        .file(&format!("long/{long}"), f, b"long name\n")
        .symlink("long/link", &format!("../{}/{long}", "long"))
        .dir("shared", d)
        .file("shared/data", f, &shared);
    l1
}

/// Three layers with every case layer application must get right. Layer 2 whites out a file and a directory
/// tree of layer 1, makes a directory opaque while adding to it, links to a layer-1 file, turns a file into a
/// directory and a directory into a file; layer 3 makes a directory of layer 2 opaque again.
fn layered_image(layout: &mut OciLayout, tag: &str, compressions: [Compression; 3]) -> String {
    let d = Meta::new(0o755);
    let f = Meta::new(0o644);
    let l1 = base_layer();

    let mut l2 = Layer::new();
    l2.whiteout("etc/old")
        .whiteout("gone")
        .dir("opq", Meta::new(0o755))
        .opaque("opq")
        .file("opq/c", f, b"c2\n")
        .hardlink("etc/tool-again", "usr/bin/tool")
        .dir("replace/file-to-dir", d)
        .file("replace/file-to-dir/inside", f, b"now a dir\n")
        .file("replace/dir-to-file", f, b"now a file\n")
        .file(
            "etc/passwd",
            Meta::new(0o600).owner(0, 42),
            b"root:x:0:0::/:/bin/sh\n",
        )
        .dir("usr/bin", Meta::new(0o750));

    let mut l3 = Layer::new();
    l3.dir("opq", d)
        .opaque("opq")
        .file("opq/d", f, b"d3\n")
        .dir("newdir", d)
        .file("newdir/z", f, b"z3\n");

    let [c1, c2, c3] = compressions;
    layout
        .add_image(
            tag,
            vec![(l1, c1), (l2, c2), (l3, c3)],
            &RunConfig {
                cmd: vec!["/usr/bin/tool".into()],
                ..RunConfig::default()
            },
        )
        .unwrap()
}

/// Mounts `image` of `store` under `s`, checks it equals `rootfs` path by path, unmounts.
fn assert_mounted_equals(s: &Scratch, store: &str, image: &str, name: &str, rootfs: &Path) {
    let mount = Mount::new(
        Path::new(store),
        image,
        &s.p(&format!("mnt-{name}")),
        &s.p(&format!("cache-{name}")),
        &[],
    );
    compare_trees(rootfs, &mount.mountpoint);
    mount.unmount();
}

/// `hydrate convert oci-layout:<s>/layout:REF --store STORE --tag TAG`; its output.
fn convert_layout(s: &Scratch, reference: &str, store: &str, tag: &str) -> String {
    hydrate_ok(&[
        "convert",
        &format!("oci-layout:{}:{reference}", s.s("layout")),
        "--store",
        store,
        "--tag",
        tag,
    ])
}

/// The hydrate image id `hydrate convert` printed (second word of its first line).
fn image_id(convert_output: &str) -> String {
    convert_output
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no image id in {convert_output:?}"))
        .to_owned()
}

#[test]
fn converted_layers_match_umoci_unpack() {
    let Some((tools, registry, s, mut layout)) = setup("converted_layers_match_umoci_unpack")
    else {
        return;
    };
    let source_digest = layered_image(
        &mut layout,
        "1",
        [Compression::Gzip, Compression::None, Compression::Gzip],
    );
    layered_image(
        &mut layout,
        "zstd",
        [Compression::Zstd, Compression::Zstd, Compression::Zstd],
    );

    // From the layout directory into a local store.
    let store = s.s("store");
    let out = convert_layout(&s, "1", &store, "layers:1");
    assert!(
        out.contains("2 whiteouts") && out.contains("2 opaque dirs"),
        "{out}"
    );
    let local_id = image_id(&out);
    let rootfs = umoci_unpack(&tools, &s.p("layout"), "1", &s.p("umoci"));
    let mount = Mount::new(
        Path::new(&store),
        "layers:1",
        &s.p("mnt"),
        &s.p("cache"),
        &[],
    );
    let compared = compare_trees(&rootfs, &mount.mountpoint);
    assert!(compared >= 25, "only {compared} paths compared");
    // Spot checks of the semantics, beyond agreeing with umoci.
    let m = |rel: &str| mount.path(rel);
    assert!(!m("etc/old").exists() && !m("gone").exists());
    let opq: Vec<_> = std::fs::read_dir(m("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(opq, ["d"], "layer 3 made opq opaque over layer 2's c");
    use std::os::unix::fs::MetadataExt;
    let tool = std::fs::metadata(m("usr/bin/tool")).unwrap();
    assert_eq!(tool.nlink(), 3, "tool, tool-link and etc/tool-again");
    assert_eq!(
        std::fs::metadata(m("etc/tool-again")).unwrap().ino(),
        tool.ino()
    );
    assert!(std::fs::read_dir(m("opq")).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".wh.")));
    let inspect = hydrate_ok(&["inspect", "--store", &store, "layers:1"]);
    assert!(
        inspect.contains(&source_digest),
        "source digest recorded: {inspect}"
    );
    mount.unmount();

    // Another image on the same base layer stores only what its own layer adds: the base's chunks are
    // found in the store (flattened images still share base layers, chunk by chunk).
    let mut top = Layer::new();
    let mut extra = vec![0u8; 1 << 20];
    Rng::new(8).fill(&mut extra);
    top.file("app.bin", Meta::new(0o644), &extra);
    layout
        .add_image(
            "sibling",
            vec![(base_layer(), Compression::Gzip), (top, Compression::Gzip)],
            &RunConfig::default(),
        )
        .unwrap();
    let out = convert_layout(&s, "sibling", &store, "layers:sibling");
    let reused: u64 = out
        .split(" chunks reused")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reuse count in {out}"));
    assert!(reused >= 5, "the base's chunks are reused: {out}");
    let stored_blobs: u64 = std::fs::read_dir(s.p("store/blobs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        stored_blobs < (300 << 10) + (1 << 20) + (200 << 10),
        "the base's 300 KiB file is stored once: {stored_blobs} bytes of blobs"
    );

    // zstd layers give the same tree (umoci 0.4 cannot unpack zstd, so compare with the gzip conversion).
    let out = convert_layout(&s, "zstd", &store, "layers:zstd");
    assert!(
        out.contains("new stored in 0 blobs"),
        "identical content dedups (only the manifest is new): {out}"
    );
    assert_mounted_equals(&s, &store, "layers:zstd", "zstd", &rootfs);

    // Through the registry: skopeo pushes the image, convert reads it from there and stores the hydrate image
    // next to it in the same repository, which mounts lazily and matches too.
    let host = registry.host();
    skopeo_copy(
        &tools,
        &s.p("home"),
        &format!("oci:{}:1", s.s("layout")),
        &format!("docker://{host}/library/layers:1"),
    );
    // skopeo re-encodes the manifest for the registry: the digest there is the source's identity now.
    let registry_digest = |reference: &str| -> String {
        let out = run(Command::new(&tools.skopeo)
            .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
            .arg(format!("docker://{host}/{reference}"))
            .env("HOME", s.p("home")));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let source_digest = registry_digest("library/layers:1");
    let dest = format!("oci://{host}/library/layers:1-hydrate");
    let out = hydrate_ok(&[
        "convert",
        &format!("docker://{host}/library/layers:1"),
        &dest,
    ]);
    assert_ne!(image_id(&out), local_id);
    let inspect = hydrate_ok(&["inspect", "--store", &dest, "-"]);
    assert!(
        inspect.contains(&format!(
            "source     docker://{host}/library/layers:1 ({source_digest})"
        )),
        "{inspect}"
    );
    assert_mounted_equals(&s, &dest, "-", "reg", &rootfs);
    // The source image is still there, unchanged, next to the hydrate image.
    assert_eq!(registry_digest("library/layers:1"), source_digest);

    // The same image as Docker pushes it (schema 2 manifest and media types) converts to the same tree.
    run(Command::new(&tools.skopeo)
        .args(["--insecure-policy", "copy", "--format", "v2s2"])
        .args(["--src-tls-verify=false", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", s.s("layout")))
        .arg(format!("docker://{host}/library/layers-docker:1"))
        .env("HOME", s.p("home")));
    let raw = run(Command::new(&tools.skopeo)
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/library/layers-docker:1"))
        .env("HOME", s.p("home")));
    let raw = String::from_utf8_lossy(&raw.stdout);
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{raw}"
    );
    let docker_dest = format!("oci://{host}/library/layers-docker:1-hydrate");
    hydrate_ok(&[
        "convert",
        &format!("docker://{host}/library/layers-docker:1"),
        &docker_dest,
    ]);
    assert_mounted_equals(&s, &docker_dest, "-", "docker", &rootfs);

    // A registry that misbehaves: every answer a 500 or every byte stream corrupted fails the conversion with
    // the cause named and nothing tagged; occasional 500s, resets and flipped bits are retried away.
    let proxy =
        hydrate_testkit::proxy::FaultProxy::start(registry.host().parse().unwrap()).unwrap();
    let far = proxy.addr();
    // `convert docker://PROXY/library/REPO --store STORE --tag TAG`, through the fault proxy.
    let via_proxy = |repo: &str, tag: &str| {
        hydrate(&[
            "convert".as_ref(),
            format!("docker://{far}/library/{repo}").as_ref(),
            "--store".as_ref(),
            store.as_ref(),
            "--tag".as_ref(),
            tag.as_ref(),
        ])
    };
    let faults = proxy.faults();
    faults.set_http_500_probability(1.0);
    let out = via_proxy("layers:1", "faulty:500");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("500"), "{err}");
    faults.clear();
    faults.set_flip_probability(1.0);
    let out = via_proxy("layers:1", "faulty:flips");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("digest"), "{err}");
    for tag in ["faulty:500", "faulty:flips"] {
        let err = hydrate_err(&["inspect", "--store", &store, tag]);
        assert!(err.contains(tag), "{err}");
    }
    faults.clear();
    // The rates are per request and per 64 KiB piece: high enough that faults surely strike, and at most four in
    // all, which stays below convert's five attempts for any one read wherever they fall (CI once saw five
    // faults in a row on one layer at unbounded lower rates).
    faults.set_http_500_probability(0.3);
    faults.set_reset_probability(0.3);
    faults.set_flip_probability(0.3);
    faults.set_fault_budget(Some(4));
    let injected = |s: hydrate_testkit::proxy::ProxyStats| s.http_500s + s.resets + s.flips;
    let before = injected(faults.stats());
    let out = via_proxy("layers:1", "faulty:ok");
    assert!(
        out.status.success(),
        "occasional faults are retried: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = faults.stats();
    assert!(injected(stats) > before, "no fault was injected: {stats:?}");
    faults.clear();
    let inspect = hydrate_ok(&["inspect", "--store", &store, "faulty:ok"]);
    assert!(inspect.contains(&source_digest), "{inspect}");
    assert_mounted_equals(&s, &store, "faulty:ok", "faulty", &rootfs);

    // A layer download cut by a reset continues where it stopped (a ranged GET, 206) instead of starting over.
    // 8 MiB: 128 pieces of the proxy, so at 0.1 per piece a reset strikes inside the layer all but surely.
    let mut big = vec![0u8; 8 << 20];
    Rng::new(9).fill(&mut big);
    let mut layer = Layer::new();
    layer.file("big.bin", Meta::new(0o644), &big);
    layout
        .add_image(
            "big",
            vec![(layer, Compression::None)],
            &RunConfig::default(),
        )
        .unwrap();
    skopeo_copy(
        &tools,
        &s.p("home"),
        &format!("oci:{}:big", s.s("layout")),
        &format!("docker://{host}/library/big:1"),
    );
    let logged = registry.requests().len();
    faults.set_reset_probability(0.1);
    faults.set_fault_budget(Some(3));
    let out = via_proxy("big:1", "big:1");
    let stats = faults.stats();
    faults.clear();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stats.resets > 0, "{stats:?}");
    let resumed = registry.requests()[logged..]
        .iter()
        .filter(|r| r.is_blob_get() && r.status == 206)
        .count();
    assert!(
        resumed > 0,
        "no resumed (ranged) layer download after {stats:?}"
    );
    let mount = Mount::new(
        Path::new(&store),
        "big:1",
        &s.p("mnt-big"),
        &s.p("cache-big"),
        &[],
    );
    assert!(std::fs::read(mount.path("big.bin")).unwrap() == big);
    mount.unmount();
}

#[test]
fn convert_refuses_bad_sources() {
    let s = Scratch::new("hydrate-containers-bad");
    let store = s.s("store");
    let err = hydrate_err(&["convert", "oci-layout:/nonexistent/x:1", "--store", &store]);
    assert!(err.contains("/nonexistent/x"), "{err}");
    let err = hydrate_err(&["convert", "docker://app:1", "--store", &store]);
    assert!(err.contains("names no registry host"), "{err}");
    let err = hydrate_err(&["convert", "docker://127.0.0.1:5000/a:1"]);
    assert!(err.contains("destination"), "{err}");

    // A layer whose bytes do not match its digest is refused, naming the layer, and nothing is tagged.
    let mut layout = OciLayout::create(&s.p("layout")).unwrap();
    let mut l = Layer::new();
    l.file("a", Meta::new(0o644), b"data");
    layout
        .add_image("1", vec![(l, Compression::Gzip)], &RunConfig::default())
        .unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.p("layout/index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.p(&format!(
            "layout/blobs/sha256/{}",
            manifest_digest.trim_start_matches("sha256:")
        )))
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let layer_path = s.p(&format!(
        "layout/blobs/sha256/{}",
        layer.trim_start_matches("sha256:")
    ));
    let mut bytes = std::fs::read(&layer_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer_path, bytes).unwrap();
    let err = hydrate_err(&[
        "convert",
        &format!("oci-layout:{}:1", s.s("layout")),
        "--store",
        &store,
        "--tag",
        "bad:1",
    ]);
    assert!(err.contains(&layer), "{err}");
    let err = hydrate_err(&["inspect", "--store", &store, "bad:1"]);
    assert!(err.contains("bad:1"), "{err}");
}

/// A bundle made by `hydrate rootfs`; dropping it deletes the container (if any) and removes the bundle, also
/// when the test fails.
struct Bundle {
    path: PathBuf,
    runc: PathBuf,
    container: Option<String>,
}

impl Bundle {
    /// `hydrate rootfs IMAGE_ADDR BUNDLE --cache-dir CACHE [-- ARGS]`, then `runc run` of it (which deletes the
    /// container when it exits); the container's standard output.
    fn prepare_and_run(&mut self, image: &str, cache: &str, args: &[&str]) -> String {
        let mut rootfs = vec![
            "rootfs",
            image,
            self.path.to_str().unwrap(),
            "--cache-dir",
            cache,
        ];
        if !args.is_empty() {
            rootfs.push("--");
            rootfs.extend(args);
        }
        hydrate_ok(&rootfs);
        let id = format!("hydrate-test-{}", std::process::id());
        self.container = Some(id.clone());
        let out = run(Command::new(&self.runc).args([
            "run",
            "--bundle",
            self.path.to_str().unwrap(),
            &id,
        ]));
        self.container = None;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        if let Some(id) = &self.container {
            let _ = Command::new(&self.runc).args(["delete", "-f", id]).output();
        }
        if self.path.join(".hydrate").exists() {
            let out = hydrate(&[
                "rootfs".as_ref(),
                "--remove".as_ref(),
                self.path.as_os_str(),
            ]);
            if !out.status.success() {
                eprintln!(
                    "cleanup: hydrate rootfs --remove failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let _ = nix::mount::umount2(
                    &self.path.join("rootfs"),
                    nix::mount::MntFlags::MNT_DETACH,
                );
                let lower = self.path.join(".hydrate/lower");
                let _ = hydrate(&["umount".as_ref(), "--lazy".as_ref(), lower.as_os_str()]);
            }
        }
    }
}

/// A root filesystem with this machine's python3, its libraries and its whole standard library, plus an app
/// layer whose config runs it as `nobody` in /app with an environment variable set.
fn python_image(layout: &mut OciLayout, s: &Scratch) -> String {
    let root = s.p("pyroot");
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let stdlib = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .unwrap();
    let stdlib = PathBuf::from(String::from_utf8(stdlib.stdout).unwrap().trim());
    host_program_rootfs(&root, &[Path::new("/usr/bin/python3"), &python], &[&stdlib]).unwrap();
    let base = Layer::from_dir(&root).unwrap();
    let mut app = Layer::new();
    app.dir("app", Meta::new(0o755)).file(
        "app/main.py",
        Meta::new(0o644),
        br#"import json, os, sys
print(json.dumps({"uid": os.getuid(), "cwd": os.getcwd(), "greeting": os.environ.get("GREETING"),
                  "args": sys.argv[1:]}))
with open("/tmp/written-by-container", "w") as f:
    f.write("hello from inside\n")
"#,
    );
    layout
        .add_image(
            "1",
            vec![(base, Compression::Gzip), (app, Compression::Gzip)],
            &RunConfig {
                entrypoint: vec!["/usr/bin/python3".into(), "/app/main.py".into()],
                cmd: vec!["default-arg".into()],
                env: vec!["GREETING=hi".into()],
                working_dir: Some("/app".into()),
                user: Some("nobody".into()),
                ..RunConfig::default()
            },
        )
        .unwrap()
}

/// The python image pushed to the registry as `library/py:1` and converted next to it as `py:1-hydrate`;
/// returns that address and the converted image's id.
fn python_image_in_registry(
    tools: &Tools,
    registry: &Registry,
    s: &Scratch,
    layout: &mut OciLayout,
) -> (String, String) {
    python_image(layout, s);
    let host = registry.host();
    skopeo_copy(
        tools,
        &s.p("home"),
        &format!("oci:{}:1", s.s("layout")),
        &format!("docker://{host}/library/py:1"),
    );
    let dest = format!("oci://{host}/library/py:1-hydrate");
    let out = hydrate_ok(&["convert", &format!("docker://{host}/library/py:1"), &dest]);
    (dest, image_id(&out))
}

#[test]
fn python_image_runs_with_runc_from_a_lazy_rootfs() {
    let Some((tools, registry, s, mut layout)) =
        setup("python_image_runs_with_runc_from_a_lazy_rootfs")
    else {
        return;
    };
    let (dest, image) = python_image_in_registry(&tools, &registry, &s, &mut layout);

    let mut bundle = Bundle {
        path: s.p("bundle"),
        runc: tools.runc.clone(),
        container: None,
    };
    // Whole-blob downloads (status 200): of a lazily mounted hydrate image only its manifest is ever read whole.
    let whole_blob_gets = |since: usize| {
        registry.requests()[since..]
            .iter()
            .filter(|r| r.is_blob_get() && r.status == 200)
            .count()
    };
    let logged = registry.requests().len();
    let stdout = bundle.prepare_and_run(&dest, &s.s("cache"), &[]);
    assert_eq!(
        whole_blob_gets(logged),
        1,
        "rootfs and its mount read the manifest once"
    );
    let line = stdout.lines().next().unwrap_or_default();
    let seen: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("container printed {stdout:?}: {e}"));
    assert_eq!(seen["uid"], 65534, "runs as nobody: {line}");
    assert_eq!(seen["cwd"], "/app", "{line}");
    assert_eq!(seen["greeting"], "hi", "{line}");
    assert_eq!(seen["args"], serde_json::json!(["default-arg"]), "{line}");

    let lower_of = |bundle: &Bundle| -> PathBuf {
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(bundle.path.join(".hydrate/state.json")).unwrap(),
        )
        .unwrap();
        PathBuf::from(state["lower"].as_str().unwrap())
    };
    // The write went to the upper directory; the image (lower) is unchanged.
    let upper = bundle.path.join(".hydrate/upper/tmp/written-by-container");
    assert_eq!(
        std::fs::read_to_string(&upper).unwrap(),
        "hello from inside\n"
    );
    let lower = lower_of(&bundle);
    assert!(lower.join("app/main.py").exists(), "{}", lower.display());
    assert!(!lower.join("tmp/written-by-container").exists());
    let again = hydrate_ok(&["inspect", "--store", &dest, "-"]);
    assert!(again.contains(&image), "{again}");

    // podman runs the same root filesystem too (`podman run --rootfs`, which takes the command, not the bundle's
    // config.json), writing into the same upper directory.
    if let Some(podman) = require_binary("podman", "python_image_runs_with_runc_from_a_lazy_rootfs")
    {
        let out = run(Command::new(podman)
            // Its own storage in the scratch directory; nothing is pulled (vfs: no overlay of podman's own).
            .arg("--root")
            .arg(s.p("podman/root"))
            .arg("--runroot")
            .arg(s.p("podman/run"))
            .args(["--storage-driver", "vfs", "--events-backend", "file"])
            // crun refuses these machines' hybrid cgroup layout; without systemd, cgroupfs.
            .args(["--runtime", tools.runc.to_str().unwrap(), "--cgroup-manager", "cgroupfs"])
            .args(["run", "--rm", "--network", "none", "--ipc", "host"])
            // podman's default rlimits exceed what these machines let a container raise to.
            .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
            .arg("--rootfs")
            .arg(bundle.path.join("rootfs"))
            .args([
                "/usr/bin/python3",
                "-c",
                "import os; open('/tmp/from-podman', 'w').write('p'); print('podman', os.getuid(), len(os.listdir('/usr/lib')) > 0)",
            ]));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.trim(), "podman 0 True", "{stdout}");
        assert!(bundle.path.join(".hydrate/upper/tmp/from-podman").exists());
        assert!(!lower.join("tmp/from-podman").exists());
    }

    // A second bundle of the same image shares the first one's image mount (one daemon, one cache), and
    // keeps it when the first is removed; arguments after -- replace the image's Cmd (the entrypoint stays).
    let mut second = Bundle {
        path: s.p("bundle2"),
        runc: tools.runc.clone(),
        container: None,
    };
    let logged = registry.requests().len();
    let stdout = second.prepare_and_run(&dest, &s.s("cache"), &["x", "y"]);
    assert!(stdout.contains(r#""args": ["x", "y"]"#), "{stdout}");
    assert_eq!(
        whole_blob_gets(logged),
        0,
        "the second bundle reads the manifest from the cache's verified copy"
    );
    let shared = lower_of(&bundle);
    assert_eq!(
        lower_of(&second),
        shared,
        "both bundles use one image mount"
    );
    let fuse_mounts = || mounts_at(&shared);
    assert_eq!(fuse_mounts(), 1);
    hydrate_ok(&["rootfs", "--remove", bundle.path.to_str().unwrap()]);
    assert!(!bundle.path.exists(), "the bundle is gone after --remove");
    assert_eq!(fuse_mounts(), 1, "the second bundle still uses the mount");
    let id = format!("hydrate-test-2-{}", std::process::id());
    second.container = Some(id.clone());
    run(Command::new(&tools.runc).args(["run", "--bundle", second.path.to_str().unwrap(), &id]));
    second.container = None;
    hydrate_ok(&["rootfs", "--remove", second.path.to_str().unwrap()]);
    assert_eq!(fuse_mounts(), 0, "the last bundle out unmounts the image");
    assert!(!shared.exists(), "and removes the shared directory");

    // The first bundle again, now with arguments after --.
    let stdout = bundle.prepare_and_run(&dest, &s.s("cache"), &["x", "y"]);
    assert!(stdout.contains(r#""args": ["x", "y"]"#), "{stdout}");
}

#[test]
fn learn_records_the_image_command_and_stores_its_plan_under_the_tag() {
    let Some((tools, registry, s, mut layout)) =
        setup("learn_records_the_image_command_and_stores_its_plan_under_the_tag")
    else {
        return;
    };
    let (dest, converted) = python_image_in_registry(&tools, &registry, &s, &mut layout);
    let host = registry.host();
    // Bad input first: an image named by digest needs --tag; a runtime that is not there is named.
    let err = hydrate_err(&[
        "learn",
        "--store",
        &format!("oci://{host}/library/py"),
        &converted,
    ]);
    assert!(err.contains("--tag"), "{err}");
    let err = hydrate_err(&["learn", &dest, "--runtime", "/nonexistent/runc"]);
    assert!(err.contains("/nonexistent/runc"), "{err}");

    // One command: run the image's command (python imports json, prints, writes), record, attach.
    let out = hydrate_ok(&[
        "learn",
        &dest,
        "--runtime",
        tools.runc.to_str().unwrap(),
        "--timeout",
        "120s",
    ]);
    let planned = out
        .lines()
        .find_map(|l| l.strip_prefix("1-hydrate "))
        .unwrap_or_else(|| panic!("learn printed {out:?}"))
        .trim()
        .to_owned();
    assert_ne!(
        planned, converted,
        "the tag names a new image (the same data with a plan)"
    );
    let entries: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("prefetch plan: "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("learn printed {out:?}"));
    assert!(entries > 10, "python's start reads many files: {out}");
    // The tag now resolves to the planned image, and a mount of it replays the plan.
    let inspected = hydrate_ok(&["inspect", "--store", &dest, "-"]);
    assert!(inspected.contains(&planned), "{inspected}");
    let mount = Mount::new(
        Path::new(&dest),
        "-",
        &s.p("mnt"),
        &s.p("cache-planned"),
        &["--fill-budget", "0"],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while mount.metric("volume_plan_done") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the plan replay did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(mount.metric("volume_plan_entries_fetched") > 10);
    assert_eq!(mount.metric("volume_prefetch_errors"), 0);
    mount.unmount();
    // Nothing of the recording run is left: no container, no mount, no bundle.
    let state = Command::new(&tools.runc).arg("list").output().unwrap();
    assert!(
        !String::from_utf8_lossy(&state.stdout).contains("hydrate-learn-"),
        "a recording container is left"
    );
}
