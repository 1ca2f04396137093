//! Fuzz target: arbitrary bytes as a manifest. Parsing must never panic, and a manifest that parses must be
//! consistent through every accessor (self_check plus lookups of present and absent names, ranged chunk
//! queries at arbitrary offsets, and out-of-range inode numbers).

#![no_main]

use hydrate_format::{Ino, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data) else {
        return;
    };
    m.self_check()
        .expect("a parsed manifest must be self-consistent");
    let _ = m.image_id();
    let count = m.inode_count();
    for n in [0, count + 1, u64::MAX] {
        let ino = Ino(n);
        assert!(m.attr(ino).is_none());
        assert_eq!(m.dir_len(ino), 0);
        assert!(m.file_chunks(ino).is_empty());
        assert!(m.chunk_range(ino, 0, u64::MAX).is_empty());
        assert_eq!(m.xattrs(ino).count(), 0);
    }
    for n in 1..=count {
        let ino = Ino(n);
        let attr = m.attr(ino).unwrap();
        let _ = (m.parent(ino), m.symlink_target(ino), m.content(ino));
        assert!(m.lookup(ino, b"").is_none());
        for (name, value) in m.xattrs(ino) {
            assert_eq!(m.xattr(ino, name), Some(value));
        }
        let fcs = m.file_chunks(ino);
        for off in [
            0,
            1,
            attr.size / 2,
            attr.size.saturating_sub(1),
            attr.size,
            u64::MAX,
        ] {
            let r = m.chunk_range(ino, off, 4096);
            assert!(r.end <= fcs.len());
            for fc in &fcs[r] {
                let c = m.chunk(fc.chunk_index());
                let _ = m.blob(c.blob_index());
            }
        }
    }
    for p in m.prefetch() {
        assert!(m.attr(p.ino()).is_some());
    }
});
