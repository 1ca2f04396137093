//! The snapshot operations without containerd: overlay mounts as containerd's overlayfs snapshotter answers,
//! the state changes and their errors, and the state surviving a restart (a new `Snapshots` on the same root).

use super::*;
use crate::lazy::LazyOptions;
use std::time::Duration;

fn open(root: &Path) -> Snapshots {
    let layout = Layout {
        root: root.to_path_buf(),
    };
    let lazy = LazyMounts::new(
        layout.clone(),
        LazyOptions {
            program: PathBuf::from("/nonexistent/hydrate"),
            cache_root: root.join("cache"),
            cache_size: 1 << 30,
            keep_cache: false,
            fetch_timeout: Some(Duration::from_secs(1)),
            fill_budget: None,
            elf_prefetch: None,
            kernel: false,
        },
    );
    Snapshots::open(layout, lazy).unwrap()
}

fn no_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn option<'a>(mount: &'a Mount, name: &str) -> Option<&'a str> {
    mount
        .options
        .iter()
        .find_map(|o| o.strip_prefix(&format!("{name}=")))
}

#[test]
fn mounts_follow_the_overlay_snapshotter() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // No parent: a writable bind mount of the snapshot's own directory.
    let m = s.prepare("a", "", no_labels()).unwrap();
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].options, ["rw", "rbind"]);
    std::fs::write(format!("{}/f", m[0].source), b"1").unwrap();
    s.commit("A", "a", no_labels()).unwrap();
    assert_eq!(s.stat("A").unwrap().kind, Kind::Committed);
    assert!(matches!(s.stat("a"), Err(SnapshotError::NotFound(_))));
    assert!(s.usage("A").unwrap().inodes >= 2);

    // One parent: a view is a read-only bind of the parent, an active snapshot an overlay over it.
    let v = s.view("v", "A", no_labels()).unwrap();
    assert_eq!(v[0].r#type, "bind");
    assert_eq!(v[0].options, ["ro", "rbind"]);
    assert!(std::path::Path::new(&v[0].source).join("f").exists());
    let b = s.prepare("b", "A", no_labels()).unwrap();
    assert_eq!(b[0].r#type, "overlay");
    assert_eq!(option(&b[0], "lowerdir"), Some(v[0].source.as_str()));
    assert!(option(&b[0], "upperdir").is_some() && option(&b[0], "workdir").is_some());
    s.commit("B", "b", no_labels()).unwrap();

    // Two parents: nearest first; a view of them is an overlay without upper.
    let c = s.view("c", "B", no_labels()).unwrap();
    assert_eq!(c[0].r#type, "overlay");
    let lowers: Vec<&str> = option(&c[0], "lowerdir").unwrap().split(':').collect();
    assert_eq!(lowers.len(), 2);
    assert_eq!(lowers[1], v[0].source);
    assert!(option(&c[0], "upperdir").is_none());
    assert_eq!(s.mounts("c").unwrap(), c);
}

#[test]
fn state_changes_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.prepare("a", "", no_labels()).unwrap();
    assert!(matches!(
        s.prepare("a", "", no_labels()),
        Err(SnapshotError::AlreadyExists(_))
    ));
    assert!(matches!(
        s.prepare("x", "missing", no_labels()),
        Err(SnapshotError::NotFound(_))
    ));
    assert!(matches!(
        s.prepare("x", "a", no_labels()),
        Err(SnapshotError::InvalidArgument(_))
    ));
    assert!(matches!(s.mounts("nope"), Err(SnapshotError::NotFound(_))));
    s.commit("A", "a", no_labels()).unwrap();
    assert!(matches!(
        s.mounts("A"),
        Err(SnapshotError::FailedPrecondition { .. })
    ));
    s.view("v", "A", no_labels()).unwrap();
    assert!(matches!(
        s.commit("V", "v", no_labels()),
        Err(SnapshotError::FailedPrecondition { .. })
    ));
    s.prepare("b", "", no_labels()).unwrap();
    assert!(matches!(
        s.commit("A", "b", no_labels()),
        Err(SnapshotError::AlreadyExists(_))
    ));
    // A parent goes only after its children.
    assert!(matches!(
        s.remove("A"),
        Err(SnapshotError::FailedPrecondition { .. })
    ));
    s.remove("v").unwrap();
    s.remove("A").unwrap();
    assert!(matches!(s.remove("A"), Err(SnapshotError::NotFound(_))));
    let names: Vec<String> = s.list().into_iter().map(|i| i.key).collect();
    assert_eq!(names, ["b"]);
    // Only the one snapshot directory is left, nothing in the trash.
    assert_eq!(
        std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("trash")).unwrap().count(),
        0
    );
}

#[test]
fn labels_update_whole_or_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let labels: BTreeMap<String, String> =
        [("a".into(), "1".into()), ("b".into(), "2".into())].into();
    s.prepare("k", "", labels).unwrap();
    let one: BTreeMap<String, String> = [("a".into(), "9".into())].into();
    let info = s
        .update("k", one.clone(), &["labels.a".into(), "labels.b".into()])
        .unwrap();
    assert_eq!(info.labels, one, "a set, b deleted");
    let info = s.update("k", BTreeMap::new(), &[]).unwrap();
    assert!(info.labels.is_empty());
    assert!(matches!(
        s.update("k", BTreeMap::new(), &["parent".into()]),
        Err(SnapshotError::InvalidArgument(_))
    ));
}

#[test]
fn a_restarted_snapshotter_finds_its_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = open(dir.path());
        s.prepare("a", "", [("l".into(), "v".into())].into())
            .unwrap();
        s.commit("A", "a", [("l".into(), "w".into())].into())
            .unwrap();
        let m = s.prepare("b", "A", no_labels()).unwrap();
        s.view("v", "A", no_labels()).unwrap();
        // Leftovers of a crash in the middle of a creation and of a removal.
        std::fs::create_dir_all(dir.path().join("tmp/99/fs")).unwrap();
        std::fs::create_dir_all(dir.path().join("trash/98/fs")).unwrap();
        (s.list(), m)
    };
    let s = open(dir.path());
    assert_eq!(s.list(), before.0);
    assert_eq!(s.stat("A").unwrap().labels["l"], "w");
    assert_eq!(s.mounts("b").unwrap(), before.1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("trash")).unwrap().count(),
        0
    );
    // New ids never reuse a live snapshot's directory.
    let c = s.prepare("c", "", no_labels()).unwrap();
    assert!(!before.1[0].options.iter().any(|o| o.contains(&c[0].source)));
    assert_eq!(s.list().len(), 4);
}

#[test]
fn marker_layers_are_checked_before_anything_is_mounted() {
    use hydrate_convert::containerd::{LazyImageMarker, MARKER_PATH, MARKER_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let marker = |store: &str| LazyImageMarker {
        version: MARKER_VERSION,
        store: store.into(),
        image: "ab".repeat(32),
        tag: None,
        source: "docker://example/app:1".into(),
        source_manifest: "sha256:00".into(),
    };
    let unpack = |key: &str, parent: &str, body: &[u8], labels: BTreeMap<String, String>| {
        let m = s.prepare(key, parent, labels).unwrap();
        let root = if m[0].r#type == "bind" {
            PathBuf::from(&m[0].source)
        } else {
            PathBuf::from(option(&m[0], "upperdir").unwrap())
        };
        std::fs::create_dir_all(root.join(".hydrate")).unwrap();
        std::fs::write(root.join(MARKER_PATH), body).unwrap();
    };
    // Corrupt: refused, named by the CRI image reference when containerd passed one.
    let cri: BTreeMap<String, String> = [(CRI_IMAGE_REF.into(), "registry/app:bad".into())].into();
    unpack("corrupt", "", b"{", cri);
    let err = s
        .commit("C", "corrupt", no_labels())
        .unwrap_err()
        .to_string();
    assert!(err.contains("image registry/app:bad"), "{err}");
    assert!(err.contains("metadata layer is invalid"), "{err}");
    assert_eq!(
        s.stat("corrupt").unwrap().kind,
        Kind::Active,
        "nothing committed"
    );
    // A local directory as the store: refused before any mount is tried.
    unpack("local", "", &marker("/srv/store").to_json(), no_labels());
    let err = s.commit("L", "local", no_labels()).unwrap_err().to_string();
    assert!(err.contains("only oci://"), "{err}");
    assert!(err.contains("docker://example/app:1"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .count(),
        0
    );
    // Above a parent a marker is ordinary content (only a bottom layer stands for a hydrate image).
    s.prepare("base", "", no_labels()).unwrap();
    s.commit("BASE", "base", no_labels()).unwrap();
    unpack(
        "upper",
        "BASE",
        &marker("oci://127.0.0.1:1/x").to_json(),
        no_labels(),
    );
    s.commit("UPPER", "upper", no_labels()).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .count(),
        0
    );
}
