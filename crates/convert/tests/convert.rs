//! End-to-end conversions of crafted OCI layouts into a LocalStore in a tempdir, checked through the
//! resulting manifest: tree shape after whiteouts/opaque dirs/replacements, attributes, xattrs, hard links,
//! file contents read back from the store, annotations, refusals and determinism.

use std::path::Path;

use bytes::Bytes;
use hydrate_builder::readback::read_file;
use hydrate_builder::{BuildOptions, NoProgress};
use hydrate_convert::{
    convert, open_layout, parse_manifest, select_platform, ConvertError, ParsedManifest, Platform,
    SourceImage,
};
use hydrate_format::{annotation, oci, FileKind, Ino, Manifest};
use hydrate_store::{keys, BlobStore, LocalStore};
use hydrate_testkit::oci_image::{Compression, ImageKind, Layer, Meta, OciLayout, RunConfig};
use hydrate_testkit::rng::random_bytes;
use serde_json::json;

fn opts() -> BuildOptions {
    BuildOptions {
        blob_target_size: 256 * 1024,
        threads: 2,
        ..BuildOptions::default()
    }
}

fn amd64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

async fn manifest(store: &dyn BlobStore, r: &hydrate_convert::ConvertReport) -> Manifest<Bytes> {
    let m = Manifest::parse(store.get(&keys::manifest(&r.build.image)).await.unwrap()).unwrap();
    m.self_check().unwrap();
    m
}

async fn content(store: &dyn BlobStore, m: &Manifest<Bytes>, path: &str) -> Vec<u8> {
    let ino = m
        .resolve(path.as_bytes())
        .unwrap_or_else(|| panic!("{path} missing"));
    let out = read_file(store, m, ino).await.unwrap();
    assert_eq!(m.attr(ino).unwrap().size, out.len() as u64);
    out
}

fn names(m: &Manifest<Bytes>, dir: &str) -> Vec<String> {
    let ino = if dir.is_empty() {
        Ino::ROOT
    } else {
        m.resolve(dir.as_bytes()).unwrap()
    };
    (0..m.dir_len(ino))
        .map(|i| String::from_utf8_lossy(m.dir_entry(ino, i).unwrap().0).into_owned())
        .collect()
}

/// A one-image OCI layout in `dir` whose manifest is named `tag` (amd64, whatever this machine is).
fn layout(dir: &Path, layers: Vec<(Vec<u8>, Compression)>, tag: &str) {
    let mut layout = OciLayout::create(dir).unwrap();
    layout.add_image(tag, layers, &run_config("amd64")).unwrap();
}

fn run_config(architecture: &str) -> RunConfig {
    RunConfig {
        entrypoint: vec!["/bin/app".into()],
        architecture: Some(architecture.into()),
        ..RunConfig::default()
    }
}

/// A layer with one regular file.
fn one_file(path: &str, data: &[u8]) -> Vec<u8> {
    let mut layer = Layer::new();
    layer.file(path, Meta::new(0o644), data);
    layer.into_bytes()
}

fn layers() -> Vec<(Vec<u8>, Compression)> {
    let long_dir = "d".repeat(120);
    let long_target = format!("/{}/{}", "t".repeat(150), "u".repeat(100));
    let cap: &[u8] = &[
        1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let (dir, file, dev) = (Meta::new(0o755), Meta::new(0o644), Meta::new(0o600));
    let mut l1 = Layer::new();
    l1.dir("./", dir)
        .dir("usr/", dir)
        .dir("usr/lib/", dir)
        .symlink("lib", "usr/lib")
        .file("usr/lib/libc.so", file, &random_bytes(1, 600_000))
        .file_with_pax(
            "bin/ping",
            Meta::new(0o4755),
            b"ping",
            &[
                ("SCHILY.xattr.security.capability", cap),
                ("SCHILY.xattr.user.note", b"hi"),
                ("mtime", b"1600000001.25"),
                ("uid", b"5000000"),
            ],
        )
        .file("etc/passwd", file, b"root:x:0:0\n")
        .file("etc/shadow", file, b"secret")
        .dir("var/cache/", Meta::new(0o700))
        .file("var/cache/a", file, b"a")
        .file("var/cache/sub/b", file, b"b")
        .dir("opq/", dir)
        .file("opq/lower", file, b"lower")
        .dir("opq/keep/", dir)
        .file("opq/keep/old", file, b"old")
        .file("to-dir", file, b"file")
        .dir("to-file/", dir)
        .file("to-file/child", file, b"child")
        .file("shared", file, b"shared data")
        .hardlink("shared-link", "shared")
        .char_device("dev/null", dev, 1, 3)
        .block_device("dev/sda", dev, 8, 0)
        .fifo("dev/fifo", dev)
        .file(
            &format!("{long_dir}/{}", "f".repeat(120)),
            file,
            b"long name",
        )
        .symlink("longlink", &long_target);
    let mut l2 = Layer::new();
    l2.whiteout("etc/shadow")
        .whiteout("var/cache")
        // A same-layer whiteout before and after its entry: never hides it.
        .whiteout("new")
        .file("new", file, b"new in layer 2")
        .file("also-new", file, b"also")
        .whiteout("also-new")
        .file("opq/keep/fresh", file, b"fresh")
        .opaque("opq")
        .file("opq/top", file, b"top")
        .dir("to-dir/", Meta::new(0o750))
        .file("to-dir/inside", file, b"inside")
        .file("to-file", file, b"now a file")
        .hardlink("usr/shared-again", "shared-link")
        .file("lib/x", file, b"through the symlink");
    let l3 = one_file("etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n");
    vec![
        (l1.into_bytes(), Compression::None),
        (l2.into_bytes(), Compression::Gzip),
        (l3, Compression::Zstd),
    ]
}

#[tokio::test]
async fn layers_flatten_with_oci_semantics() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), layers(), "v1");
    let src = open_layout(dir.path(), Some("v1"), &amd64()).unwrap();
    assert!(src.reference.starts_with("oci-layout:/") && src.reference.ends_with(":v1"));
    let sdir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(sdir.path()).unwrap();
    let r = convert(&src, &store, &opts(), &NoProgress).await.unwrap();
    assert_eq!(
        (r.layers, r.whiteouts, r.opaque_dirs, r.hardlinks),
        (3, 4, 1, 2)
    );
    let m = manifest(&store, &r).await;

    assert!(m.resolve(b"etc/shadow").is_none(), "lower file whited out");
    assert!(m.resolve(b"var/cache").is_none(), "lower dir whited out");
    assert_eq!(names(&m, "var"), Vec::<String>::new());
    assert_eq!(content(&store, &m, "new").await, b"new in layer 2");
    assert_eq!(content(&store, &m, "also-new").await, b"also");
    assert_eq!(
        names(&m, "opq"),
        ["keep", "top"],
        "opaque keeps only layer-2 entries"
    );
    assert_eq!(names(&m, "opq/keep"), ["fresh"]);
    let to_dir = m.attr(m.resolve(b"to-dir").unwrap()).unwrap();
    assert_eq!(
        (to_dir.kind, to_dir.mode & 0o7777),
        (FileKind::Directory, 0o750)
    );
    assert_eq!(content(&store, &m, "to-dir/inside").await, b"inside");
    assert_eq!(content(&store, &m, "to-file").await, b"now a file");
    assert!(m.resolve(b"to-file/child").is_none());
    assert_eq!(
        content(&store, &m, "usr/lib/x").await,
        b"through the symlink"
    );
    assert_eq!(
        m.symlink_target(m.resolve(b"lib").unwrap()).unwrap(),
        b"usr/lib"
    );
    assert_eq!(
        content(&store, &m, "usr/lib/libc.so").await,
        random_bytes(1, 600_000)
    );
    assert_eq!(
        content(&store, &m, "etc/passwd").await,
        b"root:x:0:0\nuser:x:1000:1000\n"
    );

    let shared = m.resolve(b"shared").unwrap();
    assert_eq!(m.resolve(b"shared-link"), Some(shared));
    assert_eq!(m.resolve(b"usr/shared-again"), Some(shared));
    assert_eq!(m.attr(shared).unwrap().nlink, 3);
    assert_eq!(
        content(&store, &m, "usr/shared-again").await,
        b"shared data"
    );

    let ping = m.resolve(b"bin/ping").unwrap();
    let a = m.attr(ping).unwrap();
    assert_eq!(
        (a.mode & 0o7777, a.uid, a.mtime_sec, a.mtime_nsec),
        (0o4755, 5_000_000, 1_600_000_001, 250_000_000)
    );
    let x: Vec<(Vec<u8>, Vec<u8>)> = m
        .xattrs(ping)
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(x.len(), 2);
    assert_eq!(x[0].0, b"security.capability");
    assert_eq!(
        x[0].1,
        [1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let bin = m.attr(m.resolve(b"bin").unwrap()).unwrap();
    assert_eq!(
        (bin.mode & 0o7777, bin.uid, bin.mtime_sec),
        (0o755, 0, 0),
        "implicit parent"
    );

    let null = m.attr(m.resolve(b"dev/null").unwrap()).unwrap();
    assert_eq!(
        (null.kind, null.rdev),
        (FileKind::CharDevice, libc::makedev(1, 3))
    );
    let sda = m.attr(m.resolve(b"dev/sda").unwrap()).unwrap();
    assert_eq!(
        (sda.kind, sda.rdev),
        (FileKind::BlockDevice, libc::makedev(8, 0))
    );
    assert_eq!(
        m.attr(m.resolve(b"dev/fifo").unwrap()).unwrap().kind,
        FileKind::Fifo
    );

    let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    assert_eq!(content(&store, &m, &long).await, b"long name");
    let target = format!("/{}/{}", "t".repeat(150), "u".repeat(100));
    assert_eq!(
        m.symlink_target(m.resolve(b"longlink").unwrap()).unwrap(),
        target.as_bytes()
    );

    assert_eq!(m.annotation(annotation::OCI_CONFIG), Some(&src.config[..]));
    assert_eq!(
        m.annotation(annotation::OCI_CONFIG_DIGEST),
        Some(src.config_digest.as_bytes())
    );
    assert_eq!(
        m.annotation(annotation::OCI_SOURCE),
        Some(src.reference.as_bytes())
    );
    assert_eq!(
        m.annotation(annotation::OCI_SOURCE_DIGEST),
        Some(src.manifest_digest.as_bytes())
    );
    assert!(
        r.build.logical_bytes < 700_000,
        "replaced files are not stored: {:?}",
        r.build
    );
}

#[tokio::test]
async fn conversion_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), layers(), "v1");
    let src = open_layout(dir.path(), None, &amd64()).unwrap();
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (st1, st2) = (
        LocalStore::open(s1.path()).unwrap(),
        LocalStore::open(s2.path()).unwrap(),
    );
    let mut one_thread = opts();
    one_thread.threads = 1;
    let a = convert(&src, &st1, &one_thread, &NoProgress).await.unwrap();
    let b = convert(&src, &st2, &opts(), &NoProgress).await.unwrap();
    assert_eq!(a.build.image, b.build.image);
    let again = convert(&src, &st1, &opts(), &NoProgress).await.unwrap();
    assert_eq!(again.build.image, a.build.image);
    assert_eq!(
        again.build.new_blobs, 0,
        "everything dedups against the first conversion"
    );
}

async fn convert_err(layers: Vec<(Vec<u8>, Compression)>) -> ConvertError {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), layers, "x");
    let src = open_layout(dir.path(), Some("x"), &amd64()).unwrap();
    let sdir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(sdir.path()).unwrap();
    let e = convert(&src, &store, &opts(), &NoProgress)
        .await
        .unwrap_err();
    assert!(store.list(keys::MANIFESTS_PREFIX).await.unwrap().is_empty());
    e
}

#[tokio::test]
async fn hostile_entries_are_refused_naming_layer_and_entry() {
    let mut hostile = Layer::new();
    hostile.raw_file(b"a/../../etc/x", Meta::new(0o644), b"x");
    let e = convert_err(vec![(hostile.into_bytes(), Compression::None)]).await;
    let s = e.to_string();
    assert!(
        s.contains("layer 1 (sha256:") && s.contains("a/../../etc/x") && s.contains("escapes"),
        "{s}"
    );

    let mut dangling = Layer::new();
    dangling.hardlink("l", "missing");
    let e = convert_err(vec![(dangling.into_bytes(), Compression::Gzip)]).await;
    assert!(e.to_string().contains("does not exist"), "{e}");
    let mut to_dir = Layer::new();
    to_dir.dir("d/", Meta::new(0o755)).hardlink("l", "d");
    let e = convert_err(vec![(to_dir.into_bytes(), Compression::None)]).await;
    assert!(e.to_string().contains("is a directory"), "{e}");
    let mut escaping = Layer::new();
    escaping.hardlink("l", "../../x");
    let e = convert_err(vec![(escaping.into_bytes(), Compression::None)]).await;
    assert!(e.to_string().contains("escapes"), "{e}");
}

#[tokio::test]
async fn digest_and_diff_id_mismatches_are_refused() {
    let tar = one_file("f", &random_bytes(7, 100_000));
    // A damaged blob: its digest no longer matches.
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), vec![(tar.clone(), Compression::None)], "x");
    let src = open_layout(dir.path(), Some("x"), &amd64()).unwrap();
    let mut bytes = std::fs::read(&src.layers[0].path).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&src.layers[0].path, &bytes).unwrap();
    let sdir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(sdir.path()).unwrap();
    let e = convert(&src, &store, &opts(), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, ConvertError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&src.layers[0].digest), "{e}");

    // A config whose diff_id is wrong: the blob matches its digest but not the config.
    let mut src2 = src.clone();
    std::fs::write(&src.layers[0].path, &tar).unwrap();
    let cfg = serde_json::to_vec(
        &json!({"rootfs": {"type": "layers", "diff_ids": [oci::sha256_digest(b"other")]}}),
    )
    .unwrap();
    src2.config_digest = oci::sha256_digest(&cfg);
    src2.config = cfg;
    let e = convert(&src2, &store, &opts(), &NoProgress)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("diff_id"), "{e}");
    // Fewer diff_ids than layers.
    let cfg = serde_json::to_vec(&json!({"rootfs": {"type": "layers", "diff_ids": []}})).unwrap();
    src2.config_digest = oci::sha256_digest(&cfg);
    src2.config = cfg;
    let e = convert(&src2, &store, &opts(), &NoProgress)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("0 diff_ids for 1 layers"), "{e}");
}

#[tokio::test]
async fn truncated_gzip_layer_is_reported_as_truncated() {
    let tar = one_file("f", &random_bytes(3, 300_000));
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), vec![(tar, Compression::Gzip)], "x");
    let mut src = open_layout(dir.path(), Some("x"), &amd64()).unwrap();
    let bytes = std::fs::read(&src.layers[0].path).unwrap();
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    src.layers[0].path = cut;
    let sdir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(sdir.path()).unwrap();
    let e = convert(&src, &store, &opts(), &NoProgress)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[tokio::test]
async fn unsupported_layer_media_types_are_named() {
    let dir = tempfile::tempdir().unwrap();
    layout(
        dir.path(),
        vec![(one_file("f", b"x"), Compression::None)],
        "x",
    );
    let mut src: SourceImage = open_layout(dir.path(), Some("x"), &amd64()).unwrap();
    for (mt, word) in [
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "non-distributable",
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "non-distributable",
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "encrypted",
        ),
        ("application/x-tar", "not supported yet"),
    ] {
        src.layers[0].media_type = mt.into();
        let sdir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(sdir.path()).unwrap();
        let e = convert(&src, &store, &opts(), &NoProgress)
            .await
            .unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, ConvertError::Unsupported { .. }), "{s}");
        assert!(
            s.contains(word) && s.contains(mt) && s.contains(&src.layers[0].digest),
            "{s}"
        );
    }
}

#[test]
fn docker_manifest_list_selects_the_platform() {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(dir.path()).unwrap();
    let docker_image = |data: &[u8], arch: &str| {
        let layers = vec![(one_file("f", data), Compression::Gzip)];
        layout
            .write_image(layers, &run_config(arch), ImageKind::Docker)
            .unwrap()
    };
    let amd = docker_image(b"amd", "amd64");
    let arm = docker_image(b"arm", "arm64");
    let mut list_entries = Vec::new();
    for (d, arch, variant) in [(&amd, "amd64", None), (&arm, "arm64", Some("v8"))] {
        let mut d = d.clone();
        d["platform"] = json!({"os": "linux", "architecture": arch, "variant": variant});
        list_entries.push(d);
    }
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::DOCKER_MANIFEST_LIST,
        "manifests": list_entries,
    }))
    .unwrap();
    layout
        .add_manifest(json!({
            "mediaType": oci::DOCKER_MANIFEST_LIST,
            "digest": layout.put_blob(&list).unwrap(),
            "size": list.len(),
            "annotations": { oci::REF_NAME: "multi" },
        }))
        .unwrap();

    let ParsedManifest::Index(entries) = parse_manifest(&list, None).unwrap() else {
        panic!()
    };
    let arm64 = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: None,
    };
    assert_eq!(
        select_platform(&entries, &arm64).unwrap().digest,
        arm["digest"]
    );
    let s390 = Platform {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: None,
    };
    let e = select_platform(&entries, &s390).unwrap_err().to_string();
    assert!(
        e.contains("linux/s390x") && e.contains("linux/amd64, linux/arm64/v8"),
        "{e}"
    );

    let src = open_layout(dir.path(), Some("multi"), &arm64).unwrap();
    assert_eq!(src.manifest_digest, arm["digest"]);
    let src = open_layout(dir.path(), Some("multi"), &amd64()).unwrap();
    assert_eq!(src.manifest_digest, amd["digest"]);
    assert_eq!(src.layers[0].media_type, oci::DOCKER_LAYER_GZIP);
    let e = open_layout(dir.path(), Some("nope"), &amd64())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("multi"), "{e}");

    let m = parse_manifest(
        &std::fs::read(
            dir.path()
                .join("blobs/sha256")
                .join(&amd["digest"].as_str().unwrap()[7..]),
        )
        .unwrap(),
        None,
    )
    .unwrap();
    assert!(matches!(m, ParsedManifest::Image { ref layers, .. } if layers.len() == 1));
    let e = parse_manifest(br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#, None).unwrap_err();
    assert!(e.to_string().contains("schema1"), "{e}");
    let e = parse_manifest(
        b"{}",
        Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("schema1"), "{e}");
}

#[test]
fn layout_blobs_are_digest_checked() {
    let dir = tempfile::tempdir().unwrap();
    layout(
        dir.path(),
        vec![(one_file("f", b"x"), Compression::None)],
        "x",
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let path = dir.path().join("blobs/sha256").join(&digest[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] = b' ';
    std::fs::write(&path, &bytes).unwrap();
    let e = open_layout(dir.path(), Some("x"), &amd64()).unwrap_err();
    assert!(matches!(e, ConvertError::DigestMismatch { .. }), "{e}");
}
