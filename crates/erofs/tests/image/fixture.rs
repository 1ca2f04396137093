//! The tree the kernel tests mount and fsck.erofs checks: every entry kind, two blob devices, a 20,000-entry
//! directory, odd names, big ids, nanosecond and pre-1970 mtimes, xattrs in every namespace erofs indexes.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hydrate_erofs::{
    BlobLayout, DataLocation, DeviceId, Entry, EntryKind, ErofsOptions, ErofsWriter, Metadata,
    Timestamp,
};

/// A regular file's bytes: given in full, or sparse (zeros except `pieces`), for files too big to hold.
#[derive(Debug, Clone)]
pub enum Data {
    Bytes(Vec<u8>),
    Sparse {
        size: u64,
        pieces: Vec<(u64, Vec<u8>)>,
    },
}

impl Data {
    pub fn size(&self) -> u64 {
        match self {
            Data::Bytes(bytes) => bytes.len() as u64,
            Data::Sparse { size, .. } => *size,
        }
    }

    /// Writes the data into a blob at `offset` (a sparse file's zeros are the blob's holes).
    fn write_into(&self, blob: &File, offset: u64) {
        match self {
            Data::Bytes(bytes) => blob.write_all_at(bytes, offset).unwrap(),
            Data::Sparse { pieces, .. } => {
                for (at, bytes) in pieces {
                    blob.write_all_at(bytes, offset + at).unwrap();
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum Spec {
    Dir,
    /// Data, blob device index (0-based), dedup key.
    File(Data, usize, Option<&'static [u8]>),
    Symlink(Vec<u8>),
    Char(u64),
    Block(u64),
    Fifo,
    Socket,
    HardLink(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Item {
    pub path: Vec<u8>,
    pub spec: Spec,
    pub meta: Metadata,
}

/// Deterministic, incompressible-looking bytes (xorshift), different per seed.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub fn meta(mode: u16, uid: u32, gid: u32, secs: i64, nanos: u32) -> Metadata {
    Metadata {
        mode,
        uid,
        gid,
        mtime: Timestamp { secs, nanos },
        xattrs: Vec::new(),
    }
}

fn with_xattrs(mut meta: Metadata, xattrs: &[(&str, &[u8])]) -> Metadata {
    meta.xattrs = xattrs
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
        .collect();
    meta
}

/// A v2 file capability granting cap_net_bind_service (bit 10), effective.
pub const CAPABILITY: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// The big directory's entry count.
pub const MANY: usize = 20_000;
/// The huge file: above 4 GiB, with a tail that is not a block multiple.
pub const HUGE_SIZE: u64 = 5 * (1 << 30) + 4321;

pub fn items() -> Vec<Item> {
    let t = 1_700_000_000;
    let dir = |path: &[u8], meta: Metadata| Item {
        path: path.to_vec(),
        spec: Spec::Dir,
        meta,
    };
    let item = |path: &[u8], spec: Spec, meta: Metadata| Item {
        path: path.to_vec(),
        spec,
        meta,
    };
    let file = |path: &[u8], data: Data, device: usize, meta: Metadata| Item {
        path: path.to_vec(),
        spec: Spec::File(data, device, None),
        meta,
    };
    let link = |path: &[u8], target: &[u8]| Item {
        path: path.to_vec(),
        spec: Spec::HardLink(target.to_vec()),
        meta: Metadata::default(),
    };
    let mut items = vec![
        dir(
            b"/",
            with_xattrs(meta(0o755, 0, 0, t, 1), &[("user.root", b"yes")]),
        ),
        dir(b"bin", meta(0o2755, 100_000, 200_000, t, 999_999_999)),
        file(
            b"bin/tool",
            Data::Bytes(bytes(1, (1 << 20) + 777)),
            0,
            with_xattrs(
                meta(0o4755, 0, 0, t + 1, 123_456_789),
                &[
                    ("security.capability", &CAPABILITY),
                    ("user.comment", b"setuid tool"),
                ],
            ),
        ),
        link(b"bin/tool-link", b"bin/tool"),
        dir(b"other", meta(0o700, 70_000, 80_000, t, 0)),
        dir(b"other/dir", meta(0o755, 0, 0, t, 0)),
        link(b"other/dir/tool2", b"/bin/tool"),
        file(
            b"small.txt",
            Data::Bytes(b"hello".to_vec()),
            0,
            meta(0o644, 1000, 1000, -86_400 * 365, 5),
        ),
        file(
            b"exact",
            Data::Bytes(bytes(2, 8192)),
            1,
            meta(0o600, 0, 0, t, 0),
        ),
        file(
            b"empty",
            Data::Bytes(Vec::new()),
            0,
            meta(0o644, 0, 0, t, 42),
        ),
        file(
            b"data-big",
            Data::Bytes(bytes(3, 300 * 4096 + 1000)),
            1,
            meta(0o644, 0, 0, t, 0),
        ),
        file(
            b"huge",
            Data::Sparse {
                size: HUGE_SIZE,
                pieces: vec![
                    (0, bytes(4, 4096)),
                    ((1 << 32) - 100, bytes(5, 200)),
                    (HUGE_SIZE - 4321, bytes(6, 4321)),
                ],
            },
            1,
            meta(0o644, 0, 0, t, 0),
        ),
        Item {
            path: b"dup-a".to_vec(),
            spec: Spec::File(Data::Bytes(bytes(7, 10_000)), 0, Some(b"same")),
            meta: meta(0o644, 0, 0, t, 0),
        },
        Item {
            path: b"dup-b".to_vec(),
            spec: Spec::File(Data::Bytes(bytes(7, 10_000)), 0, Some(b"same")),
            meta: meta(0o640, 5, 6, t, 7),
        },
        item(
            b"link-rel",
            Spec::Symlink(b"bin/tool".to_vec()),
            meta(0o777, 0, 0, t, 0),
        ),
        item(
            b"link-long",
            Spec::Symlink([b"/".as_slice(), &[b'a'; 3000]].concat()),
            with_xattrs(meta(0o777, 0, 0, t, 0), &[("trusted.note", b"long")]),
        ),
        // Too long to sit beside its inode: takes a data block.
        item(
            b"link-4095",
            Spec::Symlink(vec![b'z'; 4095]),
            meta(0o777, 0, 0, t, 0),
        ),
        item(b"fifo", Spec::Fifo, meta(0o600, 0, 0, t, 0)),
        item(b"sock", Spec::Socket, meta(0o755, 0, 0, t, 0)),
        item(
            b"null",
            Spec::Char(libc::makedev(1, 3)),
            meta(0o666, 0, 0, t, 0),
        ),
        item(
            b"sda1",
            Spec::Block(libc::makedev(8, 1)),
            meta(0o660, 0, 6, t, 0),
        ),
        item(
            b"bigdev",
            Spec::Char(libc::makedev(300, 70_000)),
            meta(0o600, 0, 0, t, 0),
        ),
        dir(
            b"tmp",
            with_xattrs(
                meta(0o1777, 0, 0, t, 0),
                &[("trusted.overlay.opaque", b"y")],
            ),
        ),
        // A 3000-byte xattr leaves no room for the directory's tail beside the inode.
        dir(
            b"fat-xattr-dir",
            with_xattrs(meta(0o755, 0, 0, t, 0), &[("user.big", &bytes(8, 3000))]),
        ),
        file(
            b"fat-xattr-dir/f",
            Data::Bytes(b"x".to_vec()),
            1,
            with_xattrs(
                meta(0o644, 0, 0, t, 0),
                &[("user.huge", &bytes(9, 6000)), ("user.a", b"")],
            ),
        ),
        dir(b"names", meta(0o755, 0, 0, t, 0)),
        dir(b"many", meta(0o755, 0, 0, t, 0)),
    ];
    let odd_names: [&[u8]; 9] = [
        b"with space",
        "ünïcödé-名前".as_bytes(),
        b"\x01\x7f\xfe\xff",
        b"-dash",
        b".hidden",
        b"...",
        b"a\\b:c*?\"<>|",
        b"\n\t",
        &[b'L'; 255],
    ];
    for (i, name) in odd_names.iter().enumerate() {
        let path = [b"names/".as_slice(), name].concat();
        items.push(file(
            &path,
            Data::Bytes(bytes(100 + i as u64, i * 100)),
            i % 2,
            meta(0o644, 0, 0, t, 0),
        ));
    }
    for i in 0..MANY {
        let name = format!("entry-{i:05}-{}", "x".repeat(i % 37));
        let path = format!("many/{name}").into_bytes();
        let m = meta(0o644, i as u32, 0, t + i as i64, i as u32);
        items.push(match i % 1000 {
            0 => dir(&path, meta(0o755, 0, 0, t, 0)),
            1 => item(&path, Spec::Symlink(name.clone().into_bytes()), m),
            2 => file(&path, Data::Bytes(bytes(i as u64, 5000)), i % 2, m),
            _ => file(&path, Data::Bytes(Vec::new()), 0, m),
        });
    }
    items
}

/// The image's builder, with the files placed in two blob layouts.
pub struct Built {
    pub writer: ErofsWriter,
    pub layouts: Vec<BlobLayout<Vec<u8>>>,
    pub locations: HashMap<Vec<u8>, DataLocation>,
}

pub fn build(items: &[Item]) -> Built {
    let mut layouts: Vec<BlobLayout<Vec<u8>>> = vec![BlobLayout::new(), BlobLayout::new()];
    let mut placements = HashMap::new();
    for item in items {
        if let Spec::File(data, device, key) = &item.spec {
            if let Some(placement) = layouts[*device]
                .place(item.path.clone(), data.size(), *key)
                .unwrap()
            {
                placements.insert(item.path.clone(), (*device, placement.block));
            }
        }
    }
    let options = ErofsOptions {
        build_time: Timestamp {
            secs: 1_700_000_000,
            nanos: 0,
        },
        uuid: *b"hydrate-erofs-t1",
        volume_name: b"fixture".to_vec(),
        checksum: true,
    };
    let mut writer = ErofsWriter::new(options).unwrap();
    let devices: Vec<DeviceId> = layouts
        .iter()
        .enumerate()
        .map(|(i, layout)| {
            writer
                .add_device(layout.blocks(), format!("blob{i}").as_bytes())
                .unwrap()
        })
        .collect();
    let locations: HashMap<Vec<u8>, DataLocation> = placements
        .into_iter()
        .map(|(path, (device, block))| {
            (
                path,
                DataLocation {
                    device: devices[device],
                    block,
                },
            )
        })
        .collect();
    for item in items {
        let kind = match &item.spec {
            Spec::HardLink(target) => {
                writer.add_hard_link(&item.path, target).unwrap();
                continue;
            }
            Spec::Dir => EntryKind::Directory,
            Spec::File(data, _, _) => EntryKind::Regular {
                size: data.size(),
                data: locations.get(&item.path).copied(),
            },
            Spec::Symlink(target) => EntryKind::Symlink {
                target: target.clone(),
            },
            Spec::Char(rdev) => EntryKind::CharDevice { rdev: *rdev },
            Spec::Block(rdev) => EntryKind::BlockDevice { rdev: *rdev },
            Spec::Fifo => EntryKind::Fifo,
            Spec::Socket => EntryKind::Socket,
        };
        writer
            .add(
                &item.path,
                Entry {
                    kind,
                    meta: item.meta.clone(),
                },
            )
            .unwrap();
    }
    Built {
        writer,
        layouts,
        locations,
    }
}

/// Writes the blob files: sparse, sized to their layouts, each file's data at its extent.
pub fn write_blobs(built: &Built, items: &[Item], paths: &[&Path]) {
    let blobs: Vec<File> = paths.iter().map(|p| File::create(p).unwrap()).collect();
    for (blob, layout) in blobs.iter().zip(&built.layouts) {
        blob.set_len(layout.blocks() * 4096).unwrap();
    }
    for item in items {
        if let (Spec::File(data, _, _), Some(location)) =
            (&item.spec, built.locations.get(&item.path))
        {
            data.write_into(&blobs[location.device.slot()], location.block * 4096);
        }
    }
    for blob in &blobs {
        blob.sync_all().unwrap();
    }
}

/// The fixture's blobs and metadata image written under a fresh /var/tmp directory named `prefix…`: the
/// directory (removed when dropped), the image and the two blobs.
pub fn write(items: &[Item], prefix: &str) -> (tempfile::TempDir, PathBuf, [PathBuf; 2]) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap();
    let built = build(items);
    let blobs = [dir.path().join("blob0"), dir.path().join("blob1")];
    write_blobs(&built, items, &[&blobs[0], &blobs[1]]);
    let image = dir.path().join("meta.erofs");
    let info = built.writer.write_to_path(&image).unwrap();
    eprintln!(
        "metadata image: {info:?}, blobs of {:?} blocks",
        built.layouts.iter().map(|l| l.blocks()).collect::<Vec<_>>()
    );
    (dir, image, blobs)
}

/// An erofs mount; unmounted when dropped, also when the test panics.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(err) = nix::mount::umount2(&self.0, nix::mount::MntFlags::empty()) {
            eprintln!("umount {}: {err}; detaching", self.0.display());
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Mounts `image` with its two blobs at `dir`/mnt (raw mount(2), as hydrate does).
pub fn mount(dir: &Path, image: &Path, blobs: &[PathBuf; 2]) -> Mounted {
    let target = dir.join("mnt");
    std::fs::create_dir(&target).unwrap();
    let options = format!(
        "device={},device={}",
        blobs[0].display(),
        blobs[1].display()
    );
    nix::mount::mount(
        Some(image),
        &target,
        Some("erofs"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(options.as_str()),
    )
    .unwrap_or_else(|err| panic!("mount erofs {}: {err} (see dmesg)", image.display()));
    Mounted(target)
}
