//! Golden bytes: a fixed manifest's erofs metadata and blob layout. When either changes, metadata files
//! written by older code must not be reused with the new layout: bump `LAYOUT_VERSION`, then update the
//! digests here.

use hydrate_format::{
    BlobId, ChunkId, ChunkRecord, ContentId, Digest, FileKind, Manifest, ManifestWriter, NodeMeta,
    COMPRESSION_NONE,
};
use hydrate_kernel::{KernelImage, LAYOUT_VERSION};

const GOLDEN_VERSION: u32 = 1;
const METADATA_DIGEST: &str = "a5378efe457e5a24d5df4e8c744eb87b564a12c55723f3fc0c2740e95aa10213";
const LAYOUT_DIGEST: &str = "1494f7965661a7ee8383f7c1fdc4e717e716f6607e23803965f5985ef6ba88f1";

fn meta(mode: u32, secs: i64, xattrs: &[(&str, &[u8])]) -> NodeMeta {
    NodeMeta {
        mode,
        uid: 70_000,
        gid: 80_000,
        mtime_sec: secs,
        mtime_nsec: 999_999_999,
        xattrs: xattrs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect(),
    }
}

/// Every entry kind, a duplicate content, a hard link, xattrs, sizes around a block.
fn manifest() -> Manifest<Vec<u8>> {
    let mut w = ManifestWriter::new(meta(0o755, 1_600_000_000, &[]));
    let blob = w.add_blob(BlobId(Digest::of(b"blob")), 20_000);
    let mut chunk = |len: u32, at: u64, seed: &[u8]| {
        w.add_chunk(ChunkRecord::new(
            ChunkId(Digest::of(seed)),
            blob,
            COMPRESSION_NONE,
            at,
            len,
            len,
        ))
    };
    let (c1, c2, c3) = (
        chunk(4096, 0, b"1"),
        chunk(5000, 4096, b"2"),
        chunk(1, 9096, b"3"),
    );
    let root = w.root();
    let dir = w
        .add_dir(
            root,
            b"dir",
            meta(0o750, 1_600_000_001, &[("user.d", b"x")]),
        )
        .unwrap();
    let content = |s: &[u8]| ContentId(Digest::of(s));
    let a = w
        .add_file(
            root,
            b"a",
            meta(0o644, 1_600_000_002, &[("trusted.t", b"1")]),
            content(b"a"),
            vec![c1, c2],
        )
        .unwrap();
    w.add_file(
        dir,
        b"a-copy",
        meta(0o600, 1_600_000_003, &[]),
        content(b"a"),
        vec![c1, c2],
    )
    .unwrap();
    w.add_file(
        dir,
        b"one",
        meta(0o4755, 1_600_000_004, &[]),
        content(b"one"),
        vec![c3],
    )
    .unwrap();
    w.add_file(
        root,
        b"empty",
        meta(0o644, 1_600_000_005, &[]),
        content(b""),
        vec![],
    )
    .unwrap();
    w.add_link(dir, b"a-link", a).unwrap();
    w.add_symlink(root, b"s", meta(0o777, 1_600_000_006, &[]), b"dir/one")
        .unwrap();
    w.add_special(
        dir,
        b"p",
        meta(0o600, 1_600_000_007, &[]),
        FileKind::Fifo,
        0,
    )
    .unwrap();
    w.add_special(
        dir,
        b"c",
        meta(0o666, 1_600_000_008, &[]),
        FileKind::CharDevice,
        libc::makedev(1, 3),
    )
    .unwrap();
    Manifest::parse(w.finish().unwrap()).unwrap()
}

#[test]
fn golden_metadata_and_layout() {
    let built = KernelImage::build(&manifest()).unwrap();
    let mut bytes = Vec::new();
    built.write(&mut bytes).unwrap();
    let metadata = Digest::of(&bytes).to_string();
    let layout: Vec<String> = built
        .blob()
        .extents()
        .iter()
        .map(|e| format!("{}+{}:{:?}", e.block, e.size, e.files))
        .collect();
    let layout_text = layout.join(",");
    let layout_digest = Digest::of(layout_text.as_bytes()).to_string();
    eprintln!("layout {layout_text}\nmetadata {metadata}\nlayout digest {layout_digest}");
    assert_eq!(
        (metadata.as_str(), layout_digest.as_str(), LAYOUT_VERSION),
        (METADATA_DIGEST, LAYOUT_DIGEST, GOLDEN_VERSION),
        "the kernel image changed: bump LAYOUT_VERSION and update the golden digests"
    );
}
