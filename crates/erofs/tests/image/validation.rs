//! Input the writer refuses, each with its own error: nothing malformed reaches the kernel.

use hydrate_erofs::{
    DataLocation, Entry, EntryKind, ErofsError, ErofsOptions, ErofsWriter, Metadata,
};

fn writer() -> ErofsWriter {
    ErofsWriter::new(ErofsOptions::default()).unwrap()
}

fn entry(kind: EntryKind) -> Entry {
    Entry {
        kind,
        meta: Metadata {
            mode: 0o644,
            ..Metadata::default()
        },
    }
}

fn dir() -> Entry {
    entry(EntryKind::Directory)
}

fn write(writer: &ErofsWriter) -> Result<(), ErofsError> {
    writer.write(&mut Vec::new()).map(|_| ())
}

#[test]
fn paths_are_checked_when_added() {
    let mut w = writer();
    w.add("/a", dir()).unwrap();
    assert!(matches!(
        w.add("a/", dir()),
        Err(ErofsError::DuplicatePath { .. })
    ));
    assert!(matches!(
        w.add("/", dir()).and_then(|_| w.add("/", dir())),
        Err(ErofsError::DuplicatePath { .. })
    ));
    assert!(matches!(
        w.add("/", entry(EntryKind::Fifo)),
        Err(ErofsError::InvalidPath { .. })
    ));
    let long = format!("/a/{}", "n".repeat(256));
    assert!(matches!(
        w.add(&long, dir()),
        Err(ErofsError::NameTooLong { len: 256, .. })
    ));
    assert!(matches!(
        w.add("/a/../b", dir()),
        Err(ErofsError::InvalidPath { .. })
    ));
    w.add(format!("/a/{}", "n".repeat(255)), dir()).unwrap();
}

#[test]
fn parents_must_exist_and_be_directories_when_written() {
    let mut w = writer();
    w.add("/a/b", dir()).unwrap();
    let err = write(&w).unwrap_err();
    assert!(
        matches!(err, ErofsError::MissingParent { ref parent, .. } if parent == "/a"),
        "{err}"
    );
    w.add("/a", entry(EntryKind::Fifo)).unwrap();
    assert!(matches!(
        write(&w),
        Err(ErofsError::ParentNotDirectory { .. })
    ));
}

#[test]
fn hard_links_need_a_non_directory_entry() {
    let mut w = writer();
    w.add("/d", dir()).unwrap();
    w.add_hard_link("/l", "/d").unwrap();
    assert!(matches!(write(&w), Err(ErofsError::HardLink { .. })));
    let mut w = writer();
    w.add_hard_link("/l", "/nothing").unwrap();
    assert!(matches!(write(&w), Err(ErofsError::HardLink { .. })));
    let mut w = writer();
    assert!(matches!(
        w.add_hard_link("/l", "/l"),
        Err(ErofsError::HardLink { .. })
    ));
}

#[test]
fn data_must_lie_within_a_known_device() {
    let mut w = writer();
    let device = w.add_device(10, b"blob").unwrap();
    let file = |size, block| {
        entry(EntryKind::Regular {
            size,
            data: Some(DataLocation { device, block }),
        })
    };
    w.add("/fits", file(4096 * 2 + 1, 7)).unwrap();
    let err = w.add("/beyond", file(4096 * 2 + 1, 8)).unwrap_err();
    assert!(
        matches!(
            err,
            ErofsError::ExtentBeyondDevice {
                start: 8,
                end: 11,
                device_blocks: 10,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        w.add("/huge", file(u64::MAX, 1)),
        Err(ErofsError::ExtentBeyondDevice { .. })
    ));
    let mut other = writer();
    assert!(matches!(
        other.add("/f", file(1, 0)),
        Err(ErofsError::UnknownDevice { device: 1, .. })
    ));
    assert!(matches!(
        w.add(
            "/nodata",
            entry(EntryKind::Regular {
                size: 1,
                data: None
            })
        ),
        Err(ErofsError::FileData { .. })
    ));
    assert!(matches!(
        w.add("/emptydata", file(0, 0)),
        Err(ErofsError::FileData { .. })
    ));
    assert!(matches!(
        w.add_device(1 << 32, b""),
        Err(ErofsError::Device { .. })
    ));
    assert!(matches!(
        w.add_device(1, &[b't'; 65]),
        Err(ErofsError::Device { .. })
    ));
}

#[test]
fn metadata_fields_are_range_checked() {
    let mut w = writer();
    let mut bad_mode = dir();
    bad_mode.meta.mode = 0o40755;
    assert!(matches!(
        w.add("/m", bad_mode),
        Err(ErofsError::InvalidMode { .. })
    ));
    let mut bad_nanos = dir();
    bad_nanos.meta.mtime.nanos = 1_000_000_000;
    assert!(matches!(
        w.add("/n", bad_nanos),
        Err(ErofsError::InvalidNanos { .. })
    ));
    let mut bad_xattr = dir();
    bad_xattr.meta.xattrs = vec![(b"system.foo".to_vec(), b"v".to_vec())];
    assert!(matches!(
        w.add("/x", bad_xattr),
        Err(ErofsError::Xattr { .. })
    ));
    let mut twice = dir();
    twice.meta.xattrs = vec![
        (b"user.a".to_vec(), b"1".to_vec()),
        (b"user.a".to_vec(), b"2".to_vec()),
    ];
    assert!(matches!(w.add("/t", twice), Err(ErofsError::Xattr { .. })));
    let long_target = entry(EntryKind::Symlink {
        target: vec![b'x'; 4096],
    });
    assert!(matches!(
        w.add("/s", long_target),
        Err(ErofsError::SymlinkTarget { .. })
    ));
    let empty_target = entry(EntryKind::Symlink { target: Vec::new() });
    assert!(matches!(
        w.add("/s", empty_target),
        Err(ErofsError::SymlinkTarget { .. })
    ));
    let big_major = entry(EntryKind::CharDevice {
        rdev: libc::makedev(4096, 0),
    });
    assert!(matches!(
        w.add("/c", big_major),
        Err(ErofsError::RdevOutOfRange { major: 4096, .. })
    ));
    let big_minor = entry(EntryKind::BlockDevice {
        rdev: libc::makedev(1, 1 << 20),
    });
    assert!(matches!(
        w.add("/b", big_minor),
        Err(ErofsError::RdevOutOfRange { .. })
    ));
    let options = ErofsOptions {
        volume_name: b"sixteen-bytes-xx".to_vec(),
        ..ErofsOptions::default()
    };
    assert!(matches!(
        ErofsWriter::new(options),
        Err(ErofsError::VolumeName { .. })
    ));
}
