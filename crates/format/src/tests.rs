//! Cross-module tests of the manifest: golden bytes, writer → parse round trips against a model,
//! determinism under insertion order, targeted refusals, and random corruption.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use crate::records::{DirentRecord, Header, InodeRecord, HEADER_LEN};
use crate::*;

pub(crate) fn meta(mode: u32, t: i64) -> NodeMeta {
    NodeMeta {
        mode,
        uid: 1000,
        gid: 100,
        mtime_sec: t,
        mtime_nsec: 123,
        xattrs: vec![],
    }
}

/// A chunk table of `lens.len()` chunks packed into one blob (digests are synthetic).
fn chunk_table(w: &mut ManifestWriter, lens: &[u32]) {
    let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
    let blob = w.add_blob(BlobId(Digest::of(b"blob")), total);
    let mut off = 0;
    for (i, &l) in lens.iter().enumerate() {
        let id = ChunkId(Digest::of(&(i as u32).to_le_bytes()));
        w.add_chunk(ChunkRecord::new(id, blob, COMPRESSION_NONE, off, l, l));
        off += u64::from(l);
    }
}

/// Small fixed tree: root{ d/{ p (fifo) }, f (2 chunks, xattr), g = hard link to f, l -> "f" }, two
/// annotations (one replaced once, one binary) and one prefetch hint.
pub(crate) fn sample_manifest() -> Vec<u8> {
    let mut w = ManifestWriter::new(meta(0o755, 1_700_000_000));
    chunk_table(&mut w, &[100, 50]);
    let root = w.root();
    let mut fm = meta(0o644, 1_700_000_001);
    fm.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
    let f = w
        .add_file(root, b"f", fm, ContentId(Digest::of(b"f")), vec![0, 1])
        .unwrap();
    w.add_symlink(root, b"l", meta(0o777, 5), b"f").unwrap();
    let d = w.add_dir(root, b"d", meta(0o700, 6)).unwrap();
    w.add_special(d, b"p", meta(0o600, 7), FileKind::Fifo, 0)
        .unwrap();
    w.add_link(root, b"g", f).unwrap();
    w.add_prefetch(f, 0, 10);
    w.set_annotation(annotation::OCI_SOURCE, "replaced")
        .unwrap();
    w.set_annotation("x", vec![0, 0xff]).unwrap();
    w.set_annotation(
        annotation::OCI_SOURCE,
        "docker://127.0.0.1:5000/library/app:1",
    )
    .unwrap();
    w.finish().unwrap()
}

#[test]
fn sample_reads_back() {
    let m = Manifest::parse(sample_manifest()).unwrap();
    m.self_check().unwrap();
    assert_eq!(m.inode_count(), 5);
    // Breadth-first in name order: d=2, f=3 (g links to 3), l=4, d/p=5.
    let names: Vec<(&[u8], Ino)> = (0..m.dir_len(Ino::ROOT))
        .map(|i| m.dir_entry(Ino::ROOT, i).unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            (&b"d"[..], Ino(2)),
            (&b"f"[..], Ino(3)),
            (&b"g"[..], Ino(3)),
            (&b"l"[..], Ino(4))
        ]
    );
    let f = m.attr(Ino(3)).unwrap();
    assert_eq!(
        (f.kind, f.size, f.nlink, f.mode),
        (FileKind::Regular, 150, 2, 0o100644)
    );
    assert_eq!(f.content, ContentId(Digest::of(b"f")));
    assert_eq!(m.xattr(Ino(3), b"user.k"), Some(&b"v"[..]));
    assert_eq!(m.xattr(Ino(3), b"user.x"), None);
    assert_eq!(m.symlink_target(Ino(4)), Some(&b"f"[..]));
    assert_eq!(m.attr(Ino(4)).unwrap().size, 1);
    assert_eq!(m.attr(Ino(2)).unwrap().nlink, 2);
    assert_eq!(m.attr(Ino::ROOT).unwrap().nlink, 3);
    assert_eq!(m.parent(Ino(2)), Some(Ino::ROOT));
    assert_eq!(m.parent(Ino::ROOT), Some(Ino::ROOT));
    assert_eq!(m.parent(Ino(3)), None);
    assert_eq!(m.lookup(Ino(2), b"p"), Some(Ino(5)));
    assert_eq!(m.lookup(Ino::ROOT, b"zz"), None);
    assert_eq!(m.lookup(Ino(3), b"p"), None);
    assert_eq!(m.attr(Ino(5)).unwrap().kind, FileKind::Fifo);
    assert_eq!(m.attr(Ino(6)), None);
    assert_eq!(m.attr(Ino(0)), None);
    assert_eq!(m.chunk_range(Ino(3), 99, 2), 0..2);
    assert_eq!(m.chunk_range(Ino(3), 100, 500), 1..2);
    assert_eq!(m.chunk_range(Ino(3), 150, 1), 0..0);
    assert_eq!(m.prefetch().len(), 1);
    assert_eq!(m.prefetch()[0].ino(), Ino(3));
}

#[test]
fn writer_refuses_bad_input() {
    let mut w = ManifestWriter::new(meta(0o755, 0));
    let root = w.root();
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
        assert!(w.add_dir(root, bad, meta(0o755, 0)).is_err(), "{bad:?}");
    }
    let d = w.add_dir(root, b"d", meta(0o755, 0)).unwrap();
    assert!(w.add_dir(root, b"d", meta(0o755, 0)).is_err());
    assert!(
        w.add_link(root, b"e", d).is_err(),
        "hard link to a directory"
    );
    assert!(w.add_symlink(root, b"s", meta(0o777, 0), b"").is_err());
    let f = w
        .add_file(root, b"f", meta(0o644, 0), ContentId::default(), vec![7])
        .unwrap();
    assert!(
        w.add_dir(f, b"x", meta(0o755, 0)).is_err(),
        "parent is a file"
    );
    assert!(w.finish().is_err(), "chunk index out of range");
}

/// Rewrites one record in a valid manifest and returns the parse error.
fn corrupt<
    T: zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::Immutable + zerocopy::KnownLayout,
>(
    bytes: &[u8],
    section: Section,
    index: usize,
    f: impl FnOnce(&mut T),
) -> FormatError {
    let (h, _) = <Header as zerocopy::FromBytes>::read_from_prefix(bytes).unwrap();
    let off = h.sections[section as usize].offset.get() as usize + index * size_of::<T>();
    let mut b = bytes.to_vec();
    let (rec, _) = T::mut_from_prefix(&mut b[off..]).unwrap();
    f(rec);
    Manifest::parse(b).unwrap_err()
}

#[test]
fn parse_refuses_invalid_manifests_with_clear_errors() {
    let good = sample_manifest();
    let msg = |e: FormatError| e.to_string();

    assert!(matches!(
        Manifest::parse(&good[..10]),
        Err(FormatError::TooShort { .. })
    ));
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(
        Manifest::parse(b),
        Err(FormatError::BadMagic { .. })
    ));
    let mut b = good.clone();
    b[8] = 3;
    assert!(matches!(
        Manifest::parse(b),
        Err(FormatError::UnsupportedVersion { found: 3, .. })
    ));
    // An older version is named as such even when it is shorter than this version's header.
    let mut b = good[..12].to_vec();
    b[8] = 1;
    assert!(matches!(
        Manifest::parse(b),
        Err(FormatError::RetiredVersion { found: 1, .. })
    ));
    assert!(matches!(
        Manifest::parse(&good[..good.len() - 8]),
        Err(FormatError::LengthMismatch { .. })
    ));

    // Section offset misaligned.
    let mut b = good.clone();
    let (h, _) = <Header as zerocopy::FromBytes>::mut_from_prefix(&mut b).unwrap();
    h.sections[2].offset = (h.sections[2].offset.get() + 1).into();
    assert!(msg(Manifest::parse(b).unwrap_err()).contains("file-chunks"));

    // Entry names.
    let e = corrupt::<DirentRecord>(&good, Section::Dirents, 1, |d| {
        d.name_off = d.name_off.get().wrapping_sub(1).into()
    });
    assert!(matches!(e, FormatError::Dirent { dir: 1, .. }), "{e}");
    let e = corrupt::<DirentRecord>(&good, Section::Dirents, 0, |d| d.ino = 99.into());
    assert!(msg(e).contains("out of range"));
    let e = corrupt::<DirentRecord>(&good, Section::Dirents, 0, |d| d.ino = 1.into());
    assert!(msg(e).contains("reachable twice"));
    // A directory entered from the wrong parent / a cycle.
    let e = corrupt::<InodeRecord>(&good, Section::Inodes, 1, |r| r.parent = 2.into());
    assert!(msg(e).contains("records parent"));
    // nlink.
    let e = corrupt::<InodeRecord>(&good, Section::Inodes, 2, |r| r.nlink = 1.into());
    assert!(msg(e).contains("nlink"), "hard-linked file");
    let e = corrupt::<InodeRecord>(&good, Section::Inodes, 0, |r| r.nlink = 2.into());
    assert!(msg(e).contains("nlink"), "root");
    // Size versus chunks.
    let e = corrupt::<InodeRecord>(&good, Section::Inodes, 2, |r| r.size = 149.into());
    assert!(msg(e).contains("sum of its chunks"));
    // Mode versus kind.
    let e = corrupt::<InodeRecord>(&good, Section::Inodes, 2, |r| r.mode = 0o040644.into());
    assert!(msg(e).contains("does not match kind"));
    // Chunks.
    let e = corrupt::<ChunkRecord>(&good, Section::Chunks, 1, |c| c.blob_offset = 101.into());
    assert!(msg(e).contains("past the end of blob"));
    let e = corrupt::<ChunkRecord>(&good, Section::Chunks, 0, |c| c.blob = 3.into());
    assert!(msg(e).contains("blob index 3"));
    let e = corrupt::<ChunkRecord>(&good, Section::Chunks, 0, |c| {
        c.plain_len = (CHUNK_MAX + 1).into();
        c.stored_len = (CHUNK_MAX + 1).into();
    });
    assert!(msg(e).contains("plain length"));
    let e = corrupt::<FileChunk>(&good, Section::FileChunks, 1, |fc| {
        fc.file_offset = 99.into()
    });
    assert!(msg(e).contains("contiguous"));
    let e = corrupt::<FileChunk>(&good, Section::FileChunks, 1, |fc| fc.chunk = 9.into());
    assert!(msg(e).contains("chunk index 9"));
    let e = corrupt::<PrefetchEntry>(&good, Section::Prefetch, 0, |p| p.len = 1000.into());
    assert!(matches!(e, FormatError::Prefetch { index: 0, .. }));
    assert_eq!(HEADER_LEN % 8, 0);
}

/// A random tree model: nodes with shared identities (hard links), built from a list of operations.
#[derive(Debug, Clone)]
enum MKind {
    Dir(BTreeMap<Vec<u8>, usize>),
    File(Vec<u32>),
    Symlink(Vec<u8>),
    Special(FileKind, u64),
}

#[derive(Debug, Clone)]
struct Model {
    nodes: Vec<(NodeMeta, MKind)>,
    chunk_lens: Vec<u32>,
    annotations: BTreeMap<String, Vec<u8>>,
}

type Op = (
    u8,
    usize,
    usize,
    Vec<u8>,
    Vec<u32>,
    u32,
    Vec<(Vec<u8>, Vec<u8>)>,
);

fn op_strategy() -> impl Strategy<Value = Op> {
    (
        0u8..5,
        any::<usize>(),
        any::<usize>(),
        proptest::collection::vec(
            prop_oneof![Just(b'a'), Just(b'b'), Just(b'.'), Just(0xffu8)],
            1..4,
        ),
        proptest::collection::vec(0u32..8, 0..5),
        any::<u32>(),
        proptest::collection::vec(
            (
                proptest::collection::vec(b'a'..b'd', 1..3),
                proptest::collection::vec(any::<u8>(), 0..4),
            ),
            0..3,
        ),
    )
}

/// Annotations with keys from a small alphabet (so that prefixes and near-collisions are common) that spans
/// the whole allowed byte range, and short binary values.
fn annotations_strategy() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    proptest::collection::btree_map(
        proptest::collection::vec(
            prop_oneof![Just('!'), Just('a'), Just('b'), Just('.'), Just('~')],
            1..4,
        )
        .prop_map(|cs| cs.into_iter().collect::<String>()),
        proptest::collection::vec(any::<u8>(), 0..24),
        0..6,
    )
}

fn model_strategy() -> impl Strategy<Value = Model> {
    (
        proptest::collection::vec(op_strategy(), 0..40),
        proptest::collection::vec(1u32..=CHUNK_MAX, 8),
        annotations_strategy(),
    )
        .prop_map(|(ops, chunk_lens, annotations)| {
            let mut nodes = vec![(meta(0o755, 0), MKind::Dir(BTreeMap::new()))];
            for (op, a, b, name, chunks, m, xattrs) in ops {
                if name == b"." || name == b".." {
                    continue;
                }
                let dirs: Vec<usize> = (0..nodes.len())
                    .filter(|&i| matches!(nodes[i].1, MKind::Dir(_)))
                    .collect();
                let parent = dirs[b % dirs.len()];
                if let MKind::Dir(e) = &nodes[parent].1 {
                    if e.contains_key(&name) {
                        continue;
                    }
                }
                let mut xs: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
                xs.extend(xattrs);
                let nm = NodeMeta {
                    mode: m & 0o7777,
                    uid: m >> 8,
                    gid: m >> 16,
                    mtime_sec: i64::from(m) - 7,
                    mtime_nsec: m % 1_000_000_000,
                    xattrs: xs.into_iter().collect(),
                };
                let target = match op {
                    0 => Some((nm, MKind::Dir(BTreeMap::new()))),
                    1 => Some((nm, MKind::File(chunks))),
                    2 => Some((nm, MKind::Symlink(name.iter().rev().copied().collect()))),
                    3 => {
                        let kinds = [
                            FileKind::CharDevice,
                            FileKind::BlockDevice,
                            FileKind::Fifo,
                            FileKind::Socket,
                        ];
                        let k = kinds[a % 4];
                        let rdev = if matches!(k, FileKind::CharDevice | FileKind::BlockDevice) {
                            u64::from(m)
                        } else {
                            0
                        };
                        Some((nm, MKind::Special(k, rdev)))
                    }
                    _ => None,
                };
                let child = match target {
                    Some(n) => {
                        nodes.push(n);
                        nodes.len() - 1
                    }
                    None => {
                        let files: Vec<usize> = (0..nodes.len())
                            .filter(|&i| !matches!(nodes[i].1, MKind::Dir(_)))
                            .collect();
                        if files.is_empty() {
                            continue;
                        }
                        files[a % files.len()]
                    }
                };
                if let MKind::Dir(e) = &mut nodes[parent].1 {
                    e.insert(name, child);
                }
            }
            Model {
                nodes,
                chunk_lens,
                annotations,
            }
        })
}

/// Writes the model, visiting directories depth-first (`reverse`) or breadth-first and entries in reverse or
/// forward order, so the writer sees different insertion orders and different "first" names of hard links.
fn write_model(model: &Model, reverse: bool) -> Vec<u8> {
    let mut w = ManifestWriter::new(model.nodes[0].0.clone());
    chunk_table(&mut w, &model.chunk_lens);
    let mut created: HashMap<usize, NodeId> = HashMap::from([(0, w.root())]);
    let mut work = std::collections::VecDeque::from([0usize]);
    while let Some(d) = if reverse {
        work.pop_back()
    } else {
        work.pop_front()
    } {
        let MKind::Dir(entries) = &model.nodes[d].1 else {
            unreachable!()
        };
        let parent = created[&d];
        let mut list: Vec<(&Vec<u8>, &usize)> = entries.iter().collect();
        if reverse {
            list.reverse();
        }
        for (name, &child) in list {
            if let Some(&existing) = created.get(&child) {
                w.add_link(parent, name, existing).unwrap();
                continue;
            }
            let (m, kind) = &model.nodes[child];
            let id = match kind {
                MKind::Dir(_) => {
                    work.push_back(child);
                    w.add_dir(parent, name, m.clone()).unwrap()
                }
                MKind::File(chunks) => w
                    .add_file(
                        parent,
                        name,
                        m.clone(),
                        ContentId(Digest::of(&child.to_le_bytes())),
                        chunks.clone(),
                    )
                    .unwrap(),
                MKind::Symlink(t) => w.add_symlink(parent, name, m.clone(), t).unwrap(),
                MKind::Special(k, rdev) => {
                    w.add_special(parent, name, m.clone(), *k, *rdev).unwrap()
                }
            };
            created.insert(child, id);
        }
    }
    // Each key is first set to a decoy, then replaced, in an order that depends on `reverse`.
    let mut annotations: Vec<(&String, &Vec<u8>)> = model.annotations.iter().collect();
    if reverse {
        annotations.reverse();
    }
    for (key, value) in annotations {
        w.set_annotation(key, b"decoy".to_vec()).unwrap();
        w.set_annotation(key, value.clone()).unwrap();
    }
    w.finish().unwrap()
}

/// Checks every attribute of the parsed manifest against the model.
fn check_against_model(m: &Manifest<Vec<u8>>, model: &Model) {
    let mut links: HashMap<usize, u32> = HashMap::new();
    for (_, k) in &model.nodes {
        if let MKind::Dir(e) = k {
            for &c in e.values() {
                *links.entry(c).or_default() += 1;
            }
        }
    }
    let mut ino_of: HashMap<usize, Ino> = HashMap::from([(0, Ino::ROOT)]);
    let mut stack = vec![0usize];
    while let Some(d) = stack.pop() {
        let dir = ino_of[&d];
        let MKind::Dir(entries) = &model.nodes[d].1 else {
            unreachable!()
        };
        assert_eq!(m.dir_len(dir), entries.len());
        for (i, (name, &child)) in entries.iter().enumerate() {
            let (n, ino) = m.dir_entry(dir, i).unwrap();
            assert_eq!((n, Some(ino)), (&name[..], m.lookup(dir, name)));
            if let Some(prev) = ino_of.insert(child, ino) {
                assert_eq!(prev, ino, "hard links share one inode");
                continue;
            }
            let (meta, kind) = &model.nodes[child];
            let a = m.attr(ino).unwrap();
            assert_eq!(a.mode & 0o7777, meta.mode & 0o7777);
            assert_eq!(
                (a.uid, a.gid, a.mtime_sec, a.mtime_nsec),
                (meta.uid, meta.gid, meta.mtime_sec, meta.mtime_nsec)
            );
            let xs: Vec<(Vec<u8>, Vec<u8>)> = m
                .xattrs(ino)
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(&xs, &meta.xattrs);
            match kind {
                MKind::Dir(e) => {
                    assert_eq!(a.kind, FileKind::Directory);
                    assert_eq!(m.parent(ino), Some(dir));
                    let subdirs = e
                        .values()
                        .filter(|&&c| matches!(model.nodes[c].1, MKind::Dir(_)))
                        .count();
                    assert_eq!(a.nlink as usize, 2 + subdirs);
                    stack.push(child);
                }
                MKind::File(chunks) => {
                    assert_eq!(a.kind, FileKind::Regular);
                    assert_eq!(a.nlink, links[&child]);
                    let got: Vec<u32> = m
                        .file_chunks(ino)
                        .iter()
                        .map(|fc| fc.chunk_index())
                        .collect();
                    assert_eq!(&got, chunks);
                    let size: u64 = chunks
                        .iter()
                        .map(|&c| u64::from(model.chunk_lens[c as usize]))
                        .sum();
                    assert_eq!(a.size, size);
                }
                MKind::Symlink(t) => {
                    assert_eq!(
                        (a.kind, m.symlink_target(ino)),
                        (FileKind::Symlink, Some(&t[..]))
                    );
                }
                MKind::Special(k, rdev) => {
                    assert_eq!((a.kind, a.rdev, a.nlink), (*k, *rdev, links[&child]));
                }
            }
        }
    }
    assert_eq!(m.inode_count() as usize, ino_of.len());
    let got: Vec<(&str, &[u8])> = m.annotations().collect();
    let want: Vec<(&str, &[u8])> = model
        .annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(got, want);
    for (k, v) in &model.annotations {
        assert_eq!(m.annotation(k), Some(v.as_slice()));
        let absent = format!("{k}a");
        assert_eq!(
            m.annotation(&absent),
            model.annotations.get(&absent).map(|v| v.as_slice())
        );
    }
    assert_eq!(m.annotation("zzzz"), None);
}

/// The byte range of `section` in a manifest whose header is intact.
pub(crate) fn section_range(bytes: &[u8], section: Section) -> std::ops::Range<usize> {
    let (h, _) = <Header as zerocopy::FromBytes>::read_from_prefix(bytes).unwrap();
    let e = h.sections[section as usize];
    e.offset.get() as usize..(e.offset.get() + e.len.get()) as usize
}

/// Naive chunk_range: every chunk whose byte span intersects the clamped request (none for an empty request:
/// the span `[offset, offset)` intersects nothing, though a chunk may contain its position).
fn naive_range(m: &Manifest<Vec<u8>>, ino: Ino, offset: u64, len: u64) -> Vec<usize> {
    let size = m.attr(ino).unwrap().size;
    let end = offset.saturating_add(len).min(size);
    if offset >= end {
        return Vec::new();
    }
    m.file_chunks(ino)
        .iter()
        .enumerate()
        .filter(|(_, fc)| {
            let s = fc.file_offset();
            let e = s + u64::from(m.chunk(fc.chunk_index()).plain_len());
            s < end && offset < e
        })
        .map(|(i, _)| i)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn writer_parse_round_trip_and_order_independence(model in model_strategy()) {
        let a = write_model(&model, false);
        let b = write_model(&model, true);
        prop_assert_eq!(&a, &b, "bytes depend on insertion order");
        let m = Manifest::parse(a).unwrap();
        m.self_check().unwrap();
        check_against_model(&m, &model);
    }

    #[test]
    fn chunk_range_matches_naive_model(chunks in proptest::collection::vec(0u32..8, 0..12), lens in proptest::collection::vec(1u32..500, 8), offset in 0u64..5000, len in 0u64..5000) {
        let mut w = ManifestWriter::new(meta(0o755, 0));
        chunk_table(&mut w, &lens);
        let root = w.root();
        w.add_file(root, b"f", meta(0o644, 0), ContentId::default(), chunks).unwrap();
        let m = Manifest::parse(w.finish().unwrap()).unwrap();
        let got: Vec<usize> = m.chunk_range(Ino(2), offset, len).collect();
        prop_assert_eq!(got, naive_range(&m, Ino(2), offset, len));
        let whole: Vec<usize> = m.chunk_range(Ino(2), offset, u64::MAX).collect();
        prop_assert_eq!(whole, naive_range(&m, Ino(2), offset, u64::MAX));
    }

    #[test]
    fn corruption_never_panics(model in model_strategy(), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>(), truncate in any::<bool>(), focus in any::<bool>()) {
        let mut bytes = write_model(&model, false);
        // Half of the cases aim the edits at the annotations section and its padding, which a uniform
        // position rarely hits.
        let ann = section_range(&bytes, Section::Annotations);
        let target = if focus { ann.start..(ann.end + 8).min(bytes.len()) } else { 0..bytes.len() };
        for (pos, val) in edits {
            let i = target.start + pos % target.len().max(1);
            let last = bytes.len() - 1;
            bytes[i.min(last)] = val;
        }
        if truncate {
            bytes.truncate(cut % bytes.len());
        }
        if let Ok(m) = Manifest::parse(bytes) {
            m.self_check().unwrap();
        }
    }
}

#[test]
fn with_prefetch_replaces_only_the_prefetch_section() {
    let bytes = sample_manifest();
    let m = Manifest::parse(bytes.as_slice()).unwrap();
    let f = m.resolve(b"f").unwrap();
    assert_eq!(m.resolve(b"d/p"), m.lookup(m.resolve(b"d").unwrap(), b"p"));
    assert_eq!(m.resolve(b"/d//p"), m.resolve(b"d/p"));
    assert_eq!(m.resolve(b"nope/p"), None);
    let entries = [PrefetchEntry::new(f, 100, 50), PrefetchEntry::new(f, 0, 1)];
    let out = m.with_prefetch(&entries).unwrap();
    let n = Manifest::parse(out.as_slice()).unwrap();
    assert_eq!(n.prefetch(), &entries);
    assert_ne!(n.image_id(), m.image_id());
    // Everything before the prefetch section is unchanged apart from the header fields that describe it.
    let start = HEADER_LEN;
    let prefetch_at = usize::try_from(
        zerocopy::FromBytes::ref_from_prefix(bytes.as_slice())
            .map(|(h, _): (&Header, _)| h.sections[Section::Prefetch as usize].offset.get())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bytes[start..prefetch_at], out[start..prefetch_at]);
    // Removing the plan gives back a manifest without one, and a bad entry is refused.
    let none = n.with_prefetch(&[]).unwrap();
    assert!(Manifest::parse(none.as_slice())
        .unwrap()
        .prefetch()
        .is_empty());
    let err = m
        .with_prefetch(&[PrefetchEntry::new(f, 140, 20)])
        .unwrap_err();
    assert!(
        matches!(err, FormatError::Prefetch { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn plan_from_trace_orders_and_takes_small_files_whole() {
    let mut w = ManifestWriter::new(meta(0o755, 1));
    // Chunks: 0,1 = small file (300 bytes), 2..=5 = 4 × 100 bytes of the big file.
    chunk_table(&mut w, &[200, 100, 100, 100, 100, 100]);
    let root = w.root();
    let d = w.add_dir(root, b"lib", meta(0o755, 1)).unwrap();
    w.add_file(
        d,
        b"small.py",
        meta(0o644, 1),
        ContentId(Digest::of(b"s")),
        vec![0, 1],
    )
    .unwrap();
    w.add_file(
        root,
        b"big",
        meta(0o644, 1),
        ContentId(Digest::of(b"b")),
        vec![2, 3, 4, 5],
    )
    .unwrap();
    let bytes = w.finish().unwrap();
    let m = Manifest::parse(bytes.as_slice()).unwrap();
    let big = m.resolve(b"big").unwrap();
    let small = m.resolve(b"lib/small.py").unwrap();
    let ev = |path: &[u8], kind| TraceEvent {
        path: path.to_vec(),
        kind,
    };
    let read = |offset, len| TraceKind::Read { offset, len };
    let trace = Trace {
        events: vec![
            ev(b"big", TraceKind::Open),
            ev(b"big", read(250, 10)),
            ev(b"lib/small.py", TraceKind::Open),
            ev(b"lib/small.py", read(0, 10)),
            ev(b"big", read(255, 50)),
            ev(b"gone.py", TraceKind::Open),
            ev(b"lib", TraceKind::Open),
            ev(b"big", read(0, 10)),
        ],
    };
    let opts = PlanOptions {
        small_file_max: 300,
        align: 100,
    };
    let plan = plan_from_trace(&m, &trace, opts);
    assert_eq!(
        plan.entries,
        vec![
            PrefetchEntry::new(big, 200, 100),
            PrefetchEntry::new(small, 0, 300),
            PrefetchEntry::new(big, 300, 100),
            PrefetchEntry::new(big, 0, 100),
        ]
    );
    assert_eq!(plan.unresolved, 2);
    assert_eq!(plan.bytes, 600);
    // The plan is valid prefetch content for this manifest.
    let out = m.with_prefetch(&plan.entries).unwrap();
    assert_eq!(
        Manifest::parse(out.as_slice()).unwrap().prefetch(),
        plan.entries.as_slice()
    );
}
