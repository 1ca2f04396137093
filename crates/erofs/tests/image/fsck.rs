//! Debian's fsck.erofs (erofs-utils 1.5) checks the fixture's image, with both blobs as extra devices.
//!
//! What 1.5 checks: the superblock (magic, block size, crc32c checksum, feature bits it knows), the device
//! table (it opens each `--device=` file), then every inode reachable from the root: the inode itself, its
//! inline xattrs (entry sizes within the xattr body), directories (nameoffs, name lengths, that `.` and `..`
//! exist and `..` points to the parent, file types matching the inodes), and every regular file's data
//! mapping (chunk indexes, device ids). It reads file data from the device files only with `--extract`,
//! which the second test uses to compare every file's bytes through a reader other than the kernel.
//! What it does not check: the dirent sort order (it reads directories linearly), link counts against the
//! directory tree, xattr name prefixes against the kernel's list, data extents against device sizes (without
//! `--extract`): the mount test covers those. And it **exits 0 after reporting a superblock checksum
//! mismatch** (measured): the tests treat any `<E>` line as a failure.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixture::{self, Data, Item, Spec};

/// The fixture with its 5 GiB file swapped for a 200 MiB one: fsck.erofs `--extract` writes files out in
/// full, and four 64 MiB chunks still exercise the chunk index.
fn items() -> Vec<Item> {
    const SIZE: u64 = 200 * (1 << 20) + 123;
    let mut items = fixture::items();
    for item in &mut items {
        if item.path == b"huge" {
            let pieces = vec![
                (0, fixture::bytes(10, 4096)),
                ((64 << 20) - 100, fixture::bytes(11, 200)),
                (SIZE - 5000, fixture::bytes(12, 5000)),
            ];
            item.spec = Spec::File(Data::Sparse { size: SIZE, pieces }, 1, None);
        }
    }
    items
}

/// Runs fsck.erofs with both devices; its exit status and everything it printed.
fn fsck(binary: &Path, blobs: &[PathBuf; 2], image: &Path, extra: &[String]) -> (bool, String) {
    let output = Command::new(binary)
        .args(blobs.iter().map(|b| format!("--device={}", b.display())))
        .args(extra)
        .arg(image)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}

#[test]
fn fsck_erofs_accepts_the_image_and_its_devices() {
    let Some(binary) = hydrate_testkit::require_binary("fsck.erofs", hydrate_testkit::test_name!())
    else {
        return;
    };
    let items = items();
    let (_dir, image, blobs) = fixture::write(&items, "hydrate-erofs-fsck-");
    let (ok, report) = fsck(&binary, &blobs, &image, &[]);
    assert!(ok && !report.contains("<E>"), "fsck.erofs: {report}");

    // A changed superblock byte is reported (though fsck.erofs 1.5 still exits 0).
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[1024 + 106] ^= 0x55;
    let corrupt = image.with_extension("corrupt");
    std::fs::write(&corrupt, &bytes).unwrap();
    let (_, report) = fsck(&binary, &blobs, &corrupt, &[]);
    assert!(
        report.contains("checksum"),
        "fsck.erofs missed a corrupt superblock: {report}"
    );
}

#[test]
fn fsck_erofs_extracts_every_file_byte_for_byte() {
    let Some(binary) = hydrate_testkit::require_binary("fsck.erofs", hydrate_testkit::test_name!())
    else {
        return;
    };
    if !hydrate_testkit::require_root(
        hydrate_testkit::test_name!(),
        "fsck.erofs --extract makes device nodes",
    ) {
        return;
    }
    let items = items();
    let (dir, image, blobs) = fixture::write(&items, "hydrate-erofs-fsck-");
    let out = dir.path().join("extracted");
    let (ok, report) = fsck(
        &binary,
        &blobs,
        &image,
        &[format!("--extract={}", out.display())],
    );
    assert!(
        ok && !report.contains("<E>"),
        "fsck.erofs --extract: {report}"
    );

    let by_path: HashMap<&[u8], &Item> = items.iter().map(|i| (i.path.as_slice(), i)).collect();
    for item in &items {
        let path = out.join(std::ffi::OsStr::from_bytes(
            item.path.strip_prefix(b"/").unwrap_or(&item.path),
        ));
        let spec = match &item.spec {
            Spec::HardLink(target) => &by_path[target.strip_prefix(b"/").unwrap_or(target)].spec,
            spec => spec,
        };
        match spec {
            Spec::File(Data::Bytes(expected), _, _) => {
                let got =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(got == *expected, "{}: content differs", path.display());
            }
            Spec::File(Data::Sparse { size, pieces }, _, _) => {
                let got = std::fs::read(&path).unwrap();
                assert_eq!(got.len() as u64, *size);
                let mut expected = vec![0u8; *size as usize];
                for (at, piece) in pieces {
                    expected[*at as usize..*at as usize + piece.len()].copy_from_slice(piece);
                }
                assert!(got == expected, "{}: content differs", path.display());
            }
            Spec::Symlink(target) => {
                assert_eq!(
                    std::fs::read_link(&path).unwrap().as_os_str().as_bytes(),
                    target.as_slice()
                );
            }
            _ => assert!(
                std::fs::symlink_metadata(&path).is_ok(),
                "{} missing",
                path.display()
            ),
        }
    }
}
