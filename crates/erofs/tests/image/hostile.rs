//! Shapes a hostile or merely unusual manifest can have, beyond the fixture's: one directory of a million
//! entries, a tree 2,000 directories deep, names of the maximum length along a path, and a sparse file of
//! 1 TiB. The writer must build them, fsck.erofs must accept them, and the kernel must serve them.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::Command;
use std::time::Instant;

use crate::fixture::{self, bytes, meta, Data, Item, Spec};

const WIDE: usize = 1_000_000;
const DEPTH: usize = 2_000;
const TIB: u64 = 1 << 40;

fn items() -> Vec<Item> {
    let t = 1_700_000_000;
    let dir = |path: Vec<u8>| Item {
        path,
        spec: Spec::Dir,
        meta: meta(0o755, 0, 0, t, 0),
    };
    let file = |path: Vec<u8>, data: Data| Item {
        path,
        spec: Spec::File(data, 0, None),
        meta: meta(0o644, 0, 0, t, 0),
    };
    let mut items = vec![dir(b"/".to_vec()), dir(b"wide".to_vec())];
    for i in 0..WIDE {
        // Every thousandth entry has data, so that the chunk indexes of many inodes are checked too.
        let data = if i % 1000 == 7 {
            Data::Bytes(bytes(i as u64, 100))
        } else {
            Data::Bytes(Vec::new())
        };
        items.push(file(format!("wide/{i:07}").into_bytes(), data));
    }
    let mut deep = b"deep".to_vec();
    items.push(dir(deep.clone()));
    for _ in 1..DEPTH {
        deep.extend_from_slice(b"/d");
        items.push(dir(deep.clone()));
    }
    items.push(file(
        [deep.as_slice(), b"/bottom"].concat(),
        Data::Bytes(b"the bottom".to_vec()),
    ));
    // Three levels of 255-byte names: a path of 770 bytes made of maximal components.
    let mut long = Vec::new();
    for c in [b'a', b'b', b'c'] {
        if !long.is_empty() {
            long.push(b'/');
        }
        long.extend(std::iter::repeat_n(c, 255));
        items.push(dir(long.clone()));
    }
    items.push(file(
        [long.as_slice(), b"/", &[b'z'; 255]].concat(),
        Data::Bytes(b"long".to_vec()),
    ));
    items.push(file(
        b"tebibyte".to_vec(),
        Data::Sparse {
            size: TIB,
            pieces: vec![(0, bytes(1, 4096)), (TIB - 777, bytes(2, 777))],
        },
    ));
    items
}

#[test]
fn hostile_shapes_are_written_checked_and_mounted() {
    if !hydrate_testkit::require_root(hydrate_testkit::test_name!(), "mount(2) of an erofs image") {
        return;
    }
    let fsck = hydrate_testkit::require_binary("fsck.erofs", hydrate_testkit::test_name!());
    let items = items();
    let started = Instant::now();
    let (dir, image, blobs) = fixture::write(&items, "hydrate-erofs-hostile-");
    eprintln!(
        "{} entries written in {:.1} s, metadata image {} MiB",
        items.len(),
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&image).unwrap().len() >> 20
    );

    if let Some(fsck) = fsck {
        let started = Instant::now();
        // fsck.erofs 1.5 recurses once per directory level with several KiB of stack each: at 2,000 levels it
        // overflows the default 8 MiB stack (SIGSEGV, measured; the kernel walks paths iteratively and does
        // not care). A 64 MiB stack lets it check the image (in ~4 s).
        let out = Command::new("sh")
            .args(["-c", "ulimit -s 65536 && exec \"$0\" \"$@\""])
            .arg(&fsck)
            .args(blobs.iter().map(|b| format!("--device={}", b.display())))
            .arg(&image)
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !report.contains("<E>"),
            "fsck.erofs: {:?}: {report}",
            out.status
        );
        eprintln!("fsck.erofs: {:.1} s", started.elapsed().as_secs_f64());
    }

    let mounted = fixture::mount(dir.path(), &image, &blobs);
    let target = mounted.0.clone();

    // The wide directory lists every name once, in order, and each looks up to its own inode.
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(target.join("wide"))
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(names.len(), WIDE);
    names.sort();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(name, format!("{i:07}").as_bytes());
    }
    for i in [0, 7, 499_999, 500_007, WIDE - 1] {
        let path = target.join(format!("wide/{i:07}"));
        let got = std::fs::read(&path).unwrap();
        let want = if i % 1000 == 7 {
            bytes(i as u64, 100)
        } else {
            Vec::new()
        };
        assert!(got == want, "{}", path.display());
    }
    assert_eq!(
        std::fs::metadata(target.join("wide")).unwrap().nlink(),
        2,
        "a directory of files only"
    );

    // The bottom of the deep tree, reached one component at a time (the path is longer than PATH_MAX
    // allows in one call only with the mount point in front; openat walks it either way).
    let mut at = std::fs::File::open(target.join("deep")).unwrap();
    for _ in 1..DEPTH {
        at = openat(&at, "d");
    }
    let bottom = openat(&at, "bottom");
    let mut buf = vec![0u8; 64];
    let n = bottom.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"the bottom");

    let long: Vec<u8> = [
        &[b'a'; 255][..],
        b"/",
        &[b'b'; 255],
        b"/",
        &[b'c'; 255],
        b"/",
        &[b'z'; 255],
    ]
    .concat();
    assert_eq!(
        std::fs::read(target.join(OsStr::from_bytes(&long))).unwrap(),
        b"long"
    );

    let huge = std::fs::File::open(target.join("tebibyte")).unwrap();
    assert_eq!(huge.metadata().unwrap().len(), TIB);
    let mut tail = vec![0u8; 777];
    huge.read_exact_at(&mut tail, TIB - 777).unwrap();
    assert!(tail == bytes(2, 777), "the last bytes of the 1 TiB file");
    let mut middle = vec![1u8; 4096];
    huge.read_exact_at(&mut middle, TIB / 2).unwrap();
    assert!(middle.iter().all(|&b| b == 0), "a hole reads as zeros");
}

fn openat(dir: &std::fs::File, name: &str) -> std::fs::File {
    nix::fcntl::openat(
        dir,
        name,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(std::fs::File::from)
    .unwrap()
}
