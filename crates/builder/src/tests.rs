//! End-to-end builder tests against a real LocalStore in a tempdir: attribute fidelity and content
//! reconstruction, determinism across creation orders and rebuilds, and cross-image dedup.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use filetime::FileTime;
use hydrate_format::{Digest, FileKind, Ino, Manifest};
use hydrate_store::{keys, resolve, BlobStore, LocalStore};

use super::*;
use crate::readback::read_file;
use hydrate_testkit::rng::{random_bytes, text_bytes};

/// Entries of the test tree as (relative path, kind); created in the given order.
#[derive(Clone)]
enum Spec {
    Dir(&'static str),
    File(&'static str, Vec<u8>),
    Symlink(&'static str, &'static str),
    HardLink(&'static str, &'static str),
    Fifo(&'static str),
    CharDev(&'static str),
}

fn specs() -> Vec<Spec> {
    let big = random_bytes(1, 1_500_000);
    vec![
        Spec::Dir("a"),
        Spec::Dir("a/b"),
        Spec::Dir("empty"),
        Spec::File("empty.txt", vec![]),
        Spec::File("one", b"x".to_vec()),
        Spec::File("a/text", text_bytes(0, 300_000)),
        Spec::File("a/b/big", big.clone()),
        Spec::File("big-copy", big),
        Spec::File("a/random", random_bytes(2, 70_000)),
        Spec::Symlink("a/link", "../one"),
        Spec::HardLink("a/b/hard", "a/text"),
        Spec::Fifo("a/fifo"),
        Spec::CharDev("null"),
    ]
}

fn create(root: &Path, specs: &[Spec]) {
    for s in specs {
        match s {
            Spec::Dir(p) => fs::create_dir(root.join(p)).unwrap(),
            Spec::File(p, data) => {
                fs::write(root.join(p), data).unwrap();
                fs::set_permissions(root.join(p), fs::Permissions::from_mode(0o640)).unwrap();
            }
            Spec::Symlink(p, t) => std::os::unix::fs::symlink(t, root.join(p)).unwrap(),
            Spec::HardLink(p, t) => fs::hard_link(root.join(t), root.join(p)).unwrap(),
            Spec::Fifo(p) => nix::unistd::mkfifo(
                &root.join(p),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .unwrap(),
            Spec::CharDev(p) => nix::sys::stat::mknod(
                &root.join(p),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap(),
        }
    }
    xattr::set(root.join("one"), "user.color", b"blue").unwrap();
    xattr::set(root.join("a"), "user.dir", b"").unwrap();
    xattr::set(root.join("a/text"), "user.z", b"last").unwrap();
    xattr::set(root.join("a/text"), "user.a", &[0, 1, 2]).unwrap();
    // Fixed times (with nanoseconds), children before parents since creating entries touches the parent.
    let mut paths: Vec<std::path::PathBuf> = specs
        .iter()
        .map(|s| match s {
            Spec::Dir(p)
            | Spec::File(p, _)
            | Spec::Symlink(p, _)
            | Spec::HardLink(p, _)
            | Spec::Fifo(p)
            | Spec::CharDev(p) => root.join(p),
        })
        .collect();
    // Sorted fully so each path gets the same time whatever the creation order.
    paths.sort_by_key(|p| (std::cmp::Reverse(p.components().count()), p.clone()));
    paths.push(root.to_path_buf());
    for (i, p) in paths.iter().enumerate() {
        let t = FileTime::from_unix_time(1_600_000_000 + i as i64, 123_456_789);
        filetime::set_symlink_file_times(p, t, t).unwrap();
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
}

fn opts() -> BuildOptions {
    BuildOptions {
        blob_target_size: 512 * 1024,
        threads: 2,
        ..BuildOptions::default()
    }
}

#[derive(Default)]
struct CountingProgress {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress for CountingProgress {
    fn total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
    fn message(&self, _: &str) {}
}

async fn load_manifest(store: &dyn BlobStore, id: &ImageId) -> Manifest<Bytes> {
    let bytes = store.get(&keys::manifest(id)).await.unwrap();
    let m = Manifest::parse(bytes).unwrap();
    assert_eq!(m.image_id(), *id);
    m
}

/// Compares every inode reachable in the manifest with the source tree.
async fn verify_tree(store: &dyn BlobStore, m: &Manifest<Bytes>, src: &Path) {
    let mut stack = vec![(src.to_path_buf(), Ino::ROOT)];
    let mut seen_files = std::collections::HashMap::new();
    while let Some((path, ino)) = stack.pop() {
        let md = fs::symlink_metadata(&path).unwrap();
        let a = m.attr(ino).unwrap();
        assert_eq!(a.mode, md.mode(), "{path:?}");
        assert_eq!((a.uid, a.gid), (md.uid(), md.gid()));
        assert_eq!(
            (a.mtime_sec, a.mtime_nsec as i64),
            (md.mtime(), md.mtime_nsec()),
            "{path:?}"
        );
        let mut want_x: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&path)
            .unwrap()
            .map(|n| {
                (
                    n.as_bytes().to_vec(),
                    xattr::get(&path, &n).unwrap().unwrap(),
                )
            })
            .collect();
        want_x.sort();
        let got_x: Vec<(Vec<u8>, Vec<u8>)> = m
            .xattrs(ino)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(got_x, want_x, "{path:?}");
        match a.kind {
            FileKind::Directory => {
                let mut names: Vec<Vec<u8>> = fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().as_bytes().to_vec())
                    .collect();
                names.sort();
                assert_eq!(m.dir_len(ino), names.len());
                for (i, name) in names.iter().enumerate() {
                    let (n, child) = m.dir_entry(ino, i).unwrap();
                    assert_eq!(n, &name[..]);
                    stack.push((path.join(std::ffi::OsStr::from_bytes(name)), child));
                }
            }
            FileKind::Regular => {
                let data = fs::read(&path).unwrap();
                assert_eq!(a.size, data.len() as u64);
                assert_eq!(a.content.0, Digest::of(&data), "{path:?}");
                assert_eq!(read_file(store, m, ino).await.unwrap(), data, "{path:?}");
                *seen_files.entry(md.ino()).or_insert(0u32) += 1;
                assert_eq!(
                    a.nlink,
                    md.nlink() as u32,
                    "all links of {path:?} are inside the tree"
                );
            }
            FileKind::Symlink => {
                assert_eq!(
                    m.symlink_target(ino).unwrap(),
                    fs::read_link(&path).unwrap().as_os_str().as_bytes()
                );
            }
            FileKind::CharDevice | FileKind::BlockDevice => assert_eq!(a.rdev, md.rdev()),
            FileKind::Fifo | FileKind::Socket => assert_eq!(a.rdev, 0),
        }
    }
}

#[tokio::test]
async fn build_records_every_attribute_and_reproduces_content() {
    let src = tempfile::tempdir().unwrap();
    create(src.path(), &specs());
    let _sock = std::os::unix::net::UnixListener::bind(src.path().join("a/sock")).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(store_dir.path()).unwrap();
    let progress = CountingProgress::default();
    let mut o = opts();
    o.tag = Some("test-image".into());
    let r = build_dir(src.path(), &store, &o, &progress).await.unwrap();

    assert_eq!((r.files, r.dirs, r.symlinks, r.other), (6, 4, 1, 3));
    let logical = 1 + 300_000 + 1_500_000 * 2 + 70_000;
    assert_eq!(r.logical_bytes, logical);
    assert_eq!(progress.total.load(Ordering::Relaxed), logical);
    assert_eq!(progress.done.load(Ordering::Relaxed), logical);
    assert!(
        r.unique_chunks < r.chunks,
        "the duplicate file shares its chunks"
    );
    assert_eq!(r.reused_chunks, 0);
    assert!(
        r.new_blobs >= 2,
        "small blob target gives several blobs: {r:?}"
    );
    assert!(
        r.stored_bytes < logical,
        "text compresses and duplicates are stored once"
    );
    assert_eq!(resolve(&store, "test-image").await.unwrap(), r.image);

    let m = load_manifest(&store, &r.image).await;
    assert_eq!(r.manifest_bytes, m.as_bytes().len() as u64);
    m.self_check().unwrap();
    verify_tree(&store, &m, src.path()).await;
    let a = m.lookup(Ino::ROOT, b"a").unwrap();
    let text = m.lookup(a, b"text").unwrap();
    let b = m.lookup(a, b"b").unwrap();
    assert_eq!(m.lookup(b, b"hard"), Some(text));
    assert_eq!(m.attr(text).unwrap().nlink, 2);
    assert_eq!(
        m.attr(m.lookup(a, b"sock").unwrap()).unwrap().kind,
        FileKind::Socket
    );
    let blobs: Vec<String> = store.list(keys::BLOBS_PREFIX).await.unwrap();
    assert_eq!(blobs.len() as u64, r.new_blobs);
}

#[tokio::test]
async fn same_tree_in_any_creation_order_gives_the_same_image() {
    let (src1, src2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let specs = specs();
    create(src1.path(), &specs);
    // Reverse order where dependencies allow: all directories first, then the rest reversed.
    let (dirs, rest): (Vec<Spec>, Vec<Spec>) =
        specs.into_iter().partition(|s| matches!(s, Spec::Dir(_)));
    let mut rest: Vec<Spec> = rest.into_iter().rev().collect();
    // The hard link's target must exist first.
    let target = rest
        .iter()
        .position(|s| matches!(s, Spec::File("a/text", _)))
        .unwrap();
    let t = rest.remove(target);
    rest.insert(0, t);
    create(
        src2.path(),
        &dirs.into_iter().chain(rest).collect::<Vec<_>>(),
    );

    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store1, store2) = (
        LocalStore::open(s1.path()).unwrap(),
        LocalStore::open(s2.path()).unwrap(),
    );
    let mut o1 = opts();
    o1.threads = 1;
    let r1 = build_dir(src1.path(), &store1, &o1, &NoProgress)
        .await
        .unwrap();
    let r2 = build_dir(src2.path(), &store2, &opts(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        r1.image, r2.image,
        "thread count and creation order must not matter"
    );

    // Again into the same store: everything is reused, nothing new is written, same identity.
    let r3 = build_dir(src2.path(), &store1, &opts(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(r3.image, r1.image);
    assert_eq!((r3.new_blobs, r3.stored_bytes), (0, 0));
    assert_eq!(r3.reused_chunks, r3.unique_chunks);
}

/// A large file mixing incompressible bytes, text and repeats close together (identical chunks in flight
/// at once), beside many small files: every thread count must give the same image, byte for byte.
#[tokio::test]
async fn thread_count_never_changes_the_image_of_a_large_file() {
    let src = tempfile::tempdir().unwrap();
    let random = random_bytes(3, 3 << 20);
    let mut large = Vec::new();
    for i in 0..4u8 {
        large.extend_from_slice(&random);
        large.extend_from_slice(&text_bytes(0, 1 << 20));
        large.extend_from_slice(&random[(i as usize) << 19..]);
        large.extend(std::iter::repeat_n(i, 300_000));
    }
    fs::write(src.path().join("large"), &large).unwrap();
    fs::create_dir(src.path().join("small")).unwrap();
    for i in 0..200 {
        let data = match i % 3 {
            0 => random_bytes(100 + i as u64, 100 + i * 97),
            1 => text_bytes(0, 5000 + i * 31),
            _ => random_bytes(4, 20_000),
        };
        fs::write(src.path().join(format!("small/{i:03}")), data).unwrap();
    }

    let mut images = Vec::new();
    for threads in [1, 2, 8] {
        let store_dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(store_dir.path()).unwrap();
        let o = BuildOptions {
            threads,
            blob_target_size: 1 << 20,
            ..opts()
        };
        let r = build_dir(src.path(), &store, &o, &NoProgress)
            .await
            .unwrap();
        assert!(r.new_blobs >= 4, "several blobs sealed: {r:?}");
        assert!(
            r.unique_chunks < r.chunks,
            "repeats are deduplicated: {r:?}"
        );
        let m = load_manifest(&store, &r.image).await;
        verify_tree(&store, &m, src.path()).await;
        let codes: std::collections::HashSet<u8> =
            m.chunks().iter().map(|c| c.compression()).collect();
        assert_eq!(
            codes,
            [
                hydrate_format::COMPRESSION_NONE,
                hydrate_format::COMPRESSION_ZSTD
            ]
            .into(),
            "random bytes are stored raw, text compressed"
        );
        images.push((threads, r.image));
    }
    for (threads, image) in &images[1..] {
        // The image id is the digest of the manifest, which names every blob by its digest.
        assert_eq!(*image, images[0].1, "{threads} threads vs 1");
    }
}

#[tokio::test]
async fn overlapping_images_share_chunks_in_one_store() {
    let base = random_bytes(5, 2_000_000);
    let (t1, t2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::write(t1.path().join("data"), &base).unwrap();
    fs::write(t1.path().join("v1"), random_bytes(6, 300_000)).unwrap();
    let mut edited = base.clone();
    edited[1_000_000..1_000_100].copy_from_slice(&[0u8; 100]);
    fs::write(t2.path().join("data"), &edited).unwrap();
    fs::write(t2.path().join("v2"), random_bytes(7, 300_000)).unwrap();

    let sdir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(sdir.path()).unwrap();
    let r1 = build_dir(t1.path(), &store, &opts(), &NoProgress)
        .await
        .unwrap();
    let r2 = build_dir(t2.path(), &store, &opts(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(r1.reused_chunks, 0);
    assert!(r2.reused_chunks > 0, "{r2:?}");
    assert!(r2.stored_bytes < r1.stored_bytes / 2, "{r1:?} {r2:?}");

    // The second image reads back correctly although it points into the first image's blobs.
    let m2 = load_manifest(&store, &r2.image).await;
    verify_tree(&store, &m2, t2.path()).await;

    // Built alone, the same tree stores everything itself (and has another identity).
    let alone_dir = tempfile::tempdir().unwrap();
    let alone = LocalStore::open(alone_dir.path()).unwrap();
    let r2_alone = build_dir(t2.path(), &alone, &opts(), &NoProgress)
        .await
        .unwrap();
    assert!(r2.stored_bytes < r2_alone.stored_bytes);
}

#[tokio::test]
async fn errors_name_the_path_and_refuse_bad_tags_early() {
    let sdir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(sdir.path()).unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f");
    fs::write(&file, b"x").unwrap();

    let err = build_dir(&file, &store, &opts(), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    let missing = src.path().join("missing");
    let err = build_dir(&missing, &store, &opts(), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");

    let mut o = opts();
    o.tag = Some("../escape".into());
    assert!(matches!(
        build_dir(src.path(), &store, &o, &NoProgress).await,
        Err(BuildError::BadTag { .. })
    ));
    assert!(
        store.list("").await.unwrap().is_empty(),
        "nothing uploaded for a refused build"
    );
}

#[tokio::test]
async fn invalid_manifest_in_store_only_disables_its_dedup() {
    let sdir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(sdir.path()).unwrap();
    store
        .put(
            &keys::manifest(&ImageId(Digest::of(b"junk"))),
            Bytes::from_static(b"junk"),
        )
        .await
        .unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), text_bytes(0, 100_000)).unwrap();
    let r = build_dir(src.path(), &store, &opts(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(r.reused_chunks, 0);
    let m = load_manifest(&store, &r.image).await;
    verify_tree(&store, &m, src.path()).await;
}

#[test]
fn walk_visits_files_in_name_order_not_readdir_order() {
    let src = tempfile::tempdir().unwrap();
    create(src.path(), &specs());
    let walked = walk::walk(src.path()).unwrap();
    let got: Vec<String> = walked
        .files
        .iter()
        .map(|f| {
            f.path
                .strip_prefix(src.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // A directory's entries in byte order, then its subdirectories depth-first in byte order; the hard link
    // a/b/hard is the file a/text, seen first.
    assert_eq!(
        got,
        [
            "big-copy",
            "empty.txt",
            "one",
            "a/random",
            "a/text",
            "a/b/big"
        ]
    );
}

#[tokio::test]
async fn a_trace_becomes_a_plan_at_build_time_or_attached_later() {
    use hydrate_format::{PrefetchEntry, Trace, TraceEvent, TraceKind};
    let src = tempfile::tempdir().unwrap();
    let sdir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(sdir.path()).unwrap();
    fs::create_dir(src.path().join("lib")).unwrap();
    fs::write(src.path().join("lib/a.py"), text_bytes(0, 5000)).unwrap();
    fs::write(src.path().join("big"), random_bytes(1, 1 << 20)).unwrap();
    let trace = Trace {
        events: vec![
            TraceEvent {
                path: b"big".to_vec(),
                kind: TraceKind::Read {
                    offset: 70_000,
                    len: 10,
                },
            },
            TraceEvent {
                path: b"lib/a.py".to_vec(),
                kind: TraceKind::Open,
            },
            TraceEvent {
                path: b"lib/missing.py".to_vec(),
                kind: TraceKind::Open,
            },
        ],
    };
    let plain = build_dir(src.path(), &store, &opts(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(plain.prefetch_entries, 0);
    let planned = build_dir_with_trace(src.path(), &store, &opts(), Some(&trace), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        (planned.prefetch_entries, planned.prefetch_unresolved),
        (2, 1)
    );
    assert_ne!(planned.image, plain.image);
    assert_eq!(planned.new_blobs, 0, "a plan adds no data");
    let m = load_manifest(&store, &planned.image).await;
    let big = m.resolve(b"big").unwrap();
    let a = m.resolve(b"lib/a.py").unwrap();
    assert_eq!(
        m.prefetch(),
        &[
            PrefetchEntry::new(big, 65_536, 65_536),
            PrefetchEntry::new(a, 0, 5000)
        ]
    );

    // Attaching the same trace to the plain image yields the same manifest, under a tag.
    let attached = attach_trace(
        &store,
        &plain.image,
        &trace,
        PlanOptions::default(),
        Some("app:2"),
    )
    .await
    .unwrap();
    assert_eq!(attached.image, planned.image);
    assert_eq!((attached.entries, attached.unresolved), (2, 1));
    assert_eq!(attached.bytes, 65_536 + 5000);
    assert_eq!(resolve(&store, "app:2").await.unwrap(), planned.image);
    let plain_m = load_manifest(&store, &plain.image).await;
    assert_eq!(plain_m.blobs(), m.blobs());
    assert_eq!(plain_m.chunks(), m.chunks());

    // A missing image is an error naming the manifest.
    let err = attach_trace(
        &store,
        &ImageId(Digest::of(b"x")),
        &trace,
        PlanOptions::default(),
        None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("manifests/"), "{err}");
}

fn meta(mode: u32) -> hydrate_format::NodeMeta {
    hydrate_format::NodeMeta {
        mode,
        ..Default::default()
    }
}

#[tokio::test]
async fn build_tree_fed_from_the_walk_equals_build_dir() {
    let src = tempfile::tempdir().unwrap();
    create(src.path(), &specs());
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store1, store2) = (
        LocalStore::open(s1.path()).unwrap(),
        LocalStore::open(s2.path()).unwrap(),
    );
    let by_dir = build_dir(src.path(), &store1, &opts(), &NoProgress)
        .await
        .unwrap();
    let walked = walk::walk(src.path()).unwrap();
    let files: Vec<(hydrate_format::NodeId, std::path::PathBuf, u64)> = walked
        .files
        .iter()
        .map(|f| (f.node, f.path.clone(), f.size))
        .collect();
    let progress = CountingProgress::default();
    let by_tree = build_tree(
        walked.tree,
        move |sink: &mut dyn FileSink| -> Result<(), BuildError> {
            for (node, path, size) in files {
                let mut f = fs::File::open(&path).unwrap();
                sink.add(node, &mut f, size, &path.display().to_string())?;
            }
            Ok(())
        },
        &store2,
        &opts(),
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(by_tree, by_dir, "one packer, one result");
    assert_eq!(progress.done.load(Ordering::Relaxed), by_dir.logical_bytes);
}

/// A feed's own error type, to check that `build_tree` passes it through untouched.
#[derive(Debug)]
enum FeedError {
    Build(Box<BuildError>),
    Source(&'static str),
}

impl From<BuildError> for FeedError {
    fn from(e: BuildError) -> Self {
        FeedError::Build(Box::new(e))
    }
}

#[tokio::test]
async fn build_tree_enforces_the_feed_contract() {
    let sdir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(sdir.path()).unwrap();
    type Feed = Box<dyn FnOnce(&mut dyn FileSink) -> Result<(), FeedError> + Send>;
    type TestFeed = Box<
        dyn FnOnce(&mut dyn FileSink, [hydrate_format::NodeId; 3]) -> Result<(), FeedError> + Send,
    >;
    // Tree: /d/a (3 bytes), /b (2 bytes); `feed` gets (d, a, b).
    let run = |feed: TestFeed| {
        let mut tree = TreeBuild::new(meta(0o755));
        let d = tree.add_dir(tree.root(), b"d", meta(0o755)).unwrap();
        let a = tree.add_file(d, b"a", meta(0o644), 3).unwrap();
        let b = tree.add_file(tree.root(), b"b", meta(0o644), 2).unwrap();
        tree.add_link(d, b"a2", a).unwrap();
        assert_eq!(
            tree.counts(),
            BuildCounts {
                files: 2,
                dirs: 2,
                symlinks: 0,
                other: 0,
                logical_bytes: 5
            }
        );
        let f: Feed = Box::new(move |sink| feed(sink, [d, a, b]));
        let store = &store;
        async move { build_tree(tree, f, store, &opts(), &NoProgress).await }
    };
    let msg = |r: Result<BuildReport, FeedError>| match r {
        Err(FeedError::Build(e)) => e.to_string(),
        other => panic!("expected a build error, got {other:?}"),
    };

    let ok = run(Box::new(|s, [_, a, b]| {
        s.add(b, &mut &b"bb"[..], 2, "b")?;
        s.add(a, &mut &b"aaa"[..], 3, "a")?;
        Ok(())
    }))
    .await
    .unwrap();
    assert_eq!((ok.files, ok.logical_bytes), (2, 5));
    let m = load_manifest(&store, &ok.image).await;
    let a = m.resolve(b"d/a").unwrap();
    assert_eq!(m.resolve(b"d/a2"), Some(a));
    assert_eq!(m.attr(a).unwrap().nlink, 2);
    assert_eq!(read_file(&store, &m, a).await.unwrap(), b"aaa");
    assert_eq!(
        read_file(&store, &m, m.resolve(b"b").unwrap())
            .await
            .unwrap(),
        b"bb"
    );

    let e = msg(run(Box::new(|s, [_, a, _]| {
        Ok(s.add(a, &mut &b"aaa"[..], 3, "a")?)
    }))
    .await);
    assert!(e.contains("/b") && e.contains("never fed"), "{e}");
    let e = msg(run(Box::new(|s, [_, a, _]| {
        s.add(a, &mut &b"aaa"[..], 3, "a")?;
        Ok(s.add(a, &mut &b"aaa"[..], 3, "again")?)
    }))
    .await);
    assert!(e.contains("again") && e.contains("fed twice"), "{e}");
    let e = msg(run(Box::new(|s, [_, a, _]| {
        Ok(s.add(a, &mut &b"aa"[..], 2, "short")?)
    }))
    .await);
    assert!(e.contains("short") && e.contains("declared with 3"), "{e}");
    let e = msg(run(Box::new(|s, [_, a, _]| {
        Ok(s.add(a, &mut &b"aaaa"[..], 3, "long")?)
    }))
    .await);
    assert!(e.contains("long") && e.contains("4 bytes were read"), "{e}");
    let e = msg(run(Box::new(|s, [d, _, _]| {
        Ok(s.add(d, &mut &b""[..], 0, "dir")?)
    }))
    .await);
    assert!(e.contains("dir") && e.contains("not a regular file"), "{e}");
    let e = msg(run(Box::new(|s, [_, a, b]| {
        let _ignored = s.add(a, &mut &b"x"[..], 3, "a");
        let _ignored = s.add(b, &mut &b"bb"[..], 2, "b");
        Ok(())
    }))
    .await);
    assert!(e.contains("continued after an error"), "{e}");
    assert!(matches!(
        run(Box::new(|_, _| Err(FeedError::Source("layer truncated")))).await,
        Err(FeedError::Source("layer truncated"))
    ));
    assert_eq!(
        store.list(keys::MANIFESTS_PREFIX).await.unwrap().len(),
        1,
        "only the good build stored a manifest"
    );
}
