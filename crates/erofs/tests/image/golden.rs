//! The bytes of a fixed tree are pinned: a change of the on-disk output fails here. If it is intended (a
//! format change), check the image still mounts (the mount test), then update the digest.

use hydrate_erofs::{
    DataLocation, Entry, EntryKind, ErofsOptions, ErofsWriter, Metadata, Timestamp,
};

use crate::fixture::meta;

/// BLAKE3 of the image [`tree`] writes.
const GOLDEN: &str = "f7906d27e35557bfe4cdde7b280a234819789fd2004b30e3baa6c1c252957265";

/// A small tree with every kind, xattrs, a hard link and a three-block directory, added in `order`.
fn tree(reverse: bool) -> Vec<u8> {
    let options = ErofsOptions {
        build_time: Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        },
        uuid: [7; 16],
        volume_name: b"golden".to_vec(),
        checksum: true,
    };
    let mut writer = ErofsWriter::new(options).unwrap();
    let blob = writer.add_device(1000, b"sha256:golden").unwrap();
    let mut entries: Vec<(Vec<u8>, Option<Entry>)> = Vec::new();
    let mut add = |path: &str, kind: EntryKind, meta: Metadata| {
        entries.push((path.as_bytes().to_vec(), Some(Entry { kind, meta })));
    };
    let mut etc = meta(0o755, 0, 0, 1_600_000_000, 1);
    etc.xattrs = vec![
        (b"user.b".to_vec(), b"2".to_vec()),
        (b"trusted.overlay.opaque".to_vec(), b"y".to_vec()),
    ];
    add("/etc", EntryKind::Directory, etc);
    add(
        "/etc/passwd",
        EntryKind::Regular {
            size: 5000,
            data: Some(DataLocation {
                device: blob,
                block: 10,
            }),
        },
        meta(0o644, 0, 0, 1_600_000_000, 2),
    );
    add(
        "/etc/empty",
        EntryKind::Regular {
            size: 0,
            data: None,
        },
        meta(0o600, 1, 2, 3, 4),
    );
    add(
        "/etc/link",
        EntryKind::Symlink {
            target: b"passwd".to_vec(),
        },
        meta(0o777, 0, 0, 0, 0),
    );
    add("/dev", EntryKind::Directory, meta(0o755, 0, 0, 0, 0));
    add(
        "/dev/null",
        EntryKind::CharDevice { rdev: 0x103 },
        meta(0o666, 0, 0, 0, 0),
    );
    add("/dev/fifo", EntryKind::Fifo, meta(0o644, 0, 0, 0, 0));
    add("/many", EntryKind::Directory, meta(0o755, 0, 0, 0, 0));
    for i in 0..300 {
        add(
            &format!("/many/name-{i:04}-padding"),
            EntryKind::Socket,
            meta(0o755, i, i, 0, 0),
        );
    }
    entries.push((b"/dev/passwd-again".to_vec(), None));
    if reverse {
        entries.reverse();
    }
    for (path, entry) in entries {
        match entry {
            Some(entry) => writer.add(&path, entry).unwrap(),
            None => writer.add_hard_link(&path, "/etc/passwd").unwrap(),
        }
    }
    let mut image = Vec::new();
    writer.write(&mut image).unwrap();
    image
}

#[test]
fn the_image_does_not_depend_on_the_order_entries_are_added_in() {
    assert!(tree(false) == tree(true));
}

#[test]
fn the_image_bytes_are_pinned() {
    let image = tree(false);
    assert_eq!(image.len() % 4096, 0);
    let field = |at: usize, len: usize| {
        let mut b = [0u8; 8];
        b[..len].copy_from_slice(&image[1024 + at..1024 + at + len]);
        u64::from_le_bytes(b)
    };
    assert_eq!(field(0, 4), 0xE0F5_E1E2, "magic");
    assert_eq!(field(36, 4), image.len() as u64 / 4096, "blocks");
    assert_eq!(
        field(16, 8),
        309,
        "inodes: root, 3 dirs, 5 others, 300 sockets (the hard link adds none)"
    );
    assert_eq!(
        (field(86, 2), field(88, 2)),
        (1, 9),
        "one device slot at 1152"
    );
    assert_eq!(&image[1152..1165], b"sha256:golden");
    assert_eq!(
        blake3::hash(&image).to_hex().as_str(),
        GOLDEN,
        "the on-disk output changed"
    );
}
