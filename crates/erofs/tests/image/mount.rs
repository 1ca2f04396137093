//! The kernel reads what the writer wrote: the fixture mounted as erofs (raw mount(2) of the metadata file,
//! the two blobs as `device=` files), every path looked up by name and compared field by field.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use hydrate_erofs::Metadata;

use crate::fixture::{self, Data, Item, Mounted, Spec, HUGE_SIZE, MANY};

/// Writes the fixture's blobs and metadata image under a fresh /var/tmp directory and mounts it.
fn mount_fixture(items: &[Item]) -> (tempfile::TempDir, Mounted) {
    let (dir, image, blobs) = fixture::write(items, "hydrate-erofs-");
    let mounted = fixture::mount(dir.path(), &image, &blobs);
    (dir, mounted)
}

fn host_path(root: &Path, path: &[u8]) -> PathBuf {
    let relative = path.strip_prefix(b"/").unwrap_or(path);
    if relative.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(relative))
    }
}

#[test]
fn the_kernel_reads_back_every_entry() {
    if !hydrate_testkit::require_root(hydrate_testkit::test_name!(), "mount(2) of an erofs image") {
        return;
    }
    let items = fixture::items();
    let (_dir, mounted) = mount_fixture(&items);
    let root = mounted.0.clone();

    // Hard links resolve to their target item; the expected link counts follow.
    let by_path: HashMap<Vec<u8>, &Item> = items.iter().map(|i| (normalized(&i.path), i)).collect();
    let mut nlink: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut children: HashMap<Vec<u8>, BTreeSet<Vec<u8>>> = HashMap::new();
    for item in &items {
        let key = normalized(&item.path);
        if key.is_empty() {
            continue;
        }
        let (parent, name) = split(&key);
        children
            .entry(parent.to_vec())
            .or_default()
            .insert(name.to_vec());
        let target = match &item.spec {
            Spec::HardLink(target) => normalized(target),
            Spec::Dir => {
                *nlink.entry(parent.to_vec()).or_insert(2) += 1;
                nlink.entry(key.clone()).or_insert(2);
                continue;
            }
            _ => key.clone(),
        };
        *nlink.entry(target).or_insert(0) += 1;
    }
    nlink.entry(Vec::new()).or_insert(2);

    let mut inos: HashMap<Vec<u8>, u64> = HashMap::new();
    for item in &items {
        let key = normalized(&item.path);
        let path = host_path(&root, &key);
        let stat = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let (target_key, target) = match &item.spec {
            Spec::HardLink(target) => (normalized(target), by_path[&normalized(target)]),
            _ => (key.clone(), item),
        };
        let context = path.display().to_string();
        check_stat(&context, &stat, target, nlink[&target_key]);
        if let Some(&ino) = inos.get(&target_key) {
            assert_eq!(stat.ino(), ino, "{context}: hard links share the inode");
        }
        inos.insert(target_key, stat.ino());
        check_xattrs(&context, &path, &target.meta);
        match &target.spec {
            Spec::Symlink(expected) => {
                assert_eq!(
                    std::fs::read_link(&path).unwrap().as_os_str().as_bytes(),
                    expected,
                    "{context}"
                );
            }
            Spec::File(data, _, _) => check_content(&context, &path, data),
            Spec::Dir => {
                let listed: BTreeSet<Vec<u8>> = std::fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().as_bytes().to_vec())
                    .collect();
                let expected = children.get(&key).cloned().unwrap_or_default();
                assert_eq!(listed.len(), expected.len(), "{context}: readdir count");
                assert!(listed == expected, "{context}: readdir names differ");
            }
            _ => {}
        }
    }
    assert_eq!(children[b"many".as_slice()].len(), MANY);

    // Names that are not there: between, before and after existing ones, in the many-block directory.
    for missing in [
        "entry-00000",
        "entry-10000-y",
        "a",
        "zzz",
        "entry-19999-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ] {
        let err = std::fs::symlink_metadata(root.join("many").join(missing)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{missing}");
    }
    // `..` leads back up, also from the root.
    assert_eq!(
        std::fs::metadata(root.join("other/dir/..")).unwrap().ino(),
        inos[b"other".as_slice()]
    );

    check_mmap(
        &host_path(&root, b"bin/tool"),
        by_path[b"bin/tool".as_slice()],
    );
}

fn normalized(path: &[u8]) -> Vec<u8> {
    path.strip_prefix(b"/").unwrap_or(path).to_vec()
}

fn split(key: &[u8]) -> (&[u8], &[u8]) {
    match key.iter().rposition(|&b| b == b'/') {
        Some(i) => (&key[..i], &key[i + 1..]),
        None => (b"", key),
    }
}

fn check_stat(context: &str, stat: &std::fs::Metadata, item: &Item, nlink: u64) {
    let (type_bits, size, rdev) = match &item.spec {
        Spec::Dir => (libc::S_IFDIR, None, 0),
        Spec::File(data, _, _) => (libc::S_IFREG, Some(data.size()), 0),
        Spec::Symlink(target) => (libc::S_IFLNK, Some(target.len() as u64), 0),
        Spec::Char(rdev) => (libc::S_IFCHR, Some(0), *rdev),
        Spec::Block(rdev) => (libc::S_IFBLK, Some(0), *rdev),
        Spec::Fifo => (libc::S_IFIFO, Some(0), 0),
        Spec::Socket => (libc::S_IFSOCK, Some(0), 0),
        Spec::HardLink(_) => unreachable!("resolved by the caller"),
    };
    let meta = &item.meta;
    assert_eq!(
        stat.mode(),
        type_bits | u32::from(meta.mode),
        "{context}: mode"
    );
    assert_eq!(
        (stat.uid(), stat.gid()),
        (meta.uid, meta.gid),
        "{context}: owner"
    );
    assert_eq!(
        (stat.mtime(), stat.mtime_nsec()),
        (meta.mtime.secs, i64::from(meta.mtime.nanos)),
        "{context}: mtime"
    );
    assert_eq!(stat.nlink(), nlink, "{context}: nlink");
    assert_eq!(stat.rdev(), rdev, "{context}: rdev");
    if let Some(size) = size {
        assert_eq!(stat.size(), size, "{context}: size");
    }
}

fn check_xattrs(context: &str, path: &Path, meta: &Metadata) {
    let listed: BTreeSet<Vec<u8>> = xattr::list(path)
        .unwrap()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    let expected: BTreeSet<Vec<u8>> = meta.xattrs.iter().map(|(n, _)| n.clone()).collect();
    assert!(
        listed == expected,
        "{context}: xattr names {listed:?} != {expected:?}"
    );
    for (name, value) in &meta.xattrs {
        let got = xattr::get(path, OsStr::from_bytes(name)).unwrap();
        assert_eq!(
            got.as_deref(),
            Some(value.as_slice()),
            "{context}: xattr {}",
            name.escape_ascii()
        );
    }
}

fn check_content(context: &str, path: &Path, data: &Data) {
    match data {
        Data::Bytes(expected) => {
            let mut got = Vec::new();
            File::open(path).unwrap().read_to_end(&mut got).unwrap();
            assert!(
                got == *expected,
                "{context}: content differs ({} bytes read, {} expected)",
                got.len(),
                expected.len()
            );
        }
        Data::Sparse { size, pieces } => {
            assert_eq!(*size, HUGE_SIZE);
            let file = File::open(path).unwrap();
            for (at, expected) in pieces {
                let mut got = vec![0u8; expected.len()];
                file.read_exact_at(&mut got, *at).unwrap();
                assert!(got == *expected, "{context}: bytes at {at}");
            }
            // A hole in the middle reads as zeros, and reads stop at the size.
            let mut zeros = vec![1u8; 8192];
            file.read_exact_at(&mut zeros, 3 << 30).unwrap();
            assert!(zeros.iter().all(|&b| b == 0), "{context}: hole");
            let mut past = [0u8; 16];
            assert_eq!(
                file.read_at(&mut past, *size).unwrap(),
                0,
                "{context}: read at EOF"
            );
            assert_eq!(
                file.read_at(&mut past, size - 3).unwrap(),
                3,
                "{context}: read across EOF"
            );
        }
    }
}

fn check_mmap(path: &Path, item: &Item) {
    let Spec::File(Data::Bytes(expected), _, _) = &item.spec else {
        unreachable!("bin/tool has bytes");
    };
    let file = File::open(path).unwrap();
    // SAFETY: the file is on a read-only erofs mount nothing else changes while the map lives.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    assert_eq!(map.len(), expected.len());
    assert!(
        map[..] == expected[..],
        "mmap of {} differs",
        path.display()
    );
}
