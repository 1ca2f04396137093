//! Golden bytes, round trips and refusals of the HSM formats. A golden test failing means the bytes hydrate
//! writes changed: if intended, bump the version (file maps: keep a reader for the old one, archives are
//! immutable; journal: extend the HSM crate's migration) and update the golden bytes.

use proptest::prelude::*;

use super::filemap::{self, ChunkLocation, FileMap, FileMapEntry, FileMapId};
use super::journal::{
    decode_chunk_location, encode_chunk_location, ArchiveRecord, FileRecord, FileState,
    Fingerprint, LogRecord,
};
use super::stub::StubMark;
use crate::ids::{BlobId, ChunkId, Digest};
use crate::{FormatError, CHUNK_MAX};

fn location(i: u8, len: u32) -> ChunkLocation {
    ChunkLocation {
        id: ChunkId::from_bytes([i; 32]),
        blob: BlobId::from_bytes([0xb0; 32]),
        blob_offset: u64::from(i) * 1000,
        stored_len: len / 2 + 1,
        plain_len: len,
        compression: crate::COMPRESSION_ZSTD,
    }
}

fn sample_map(lens: &[u32]) -> FileMap {
    let mut entries = Vec::new();
    let mut offset = 0u64;
    for (i, &len) in lens.iter().enumerate() {
        entries.push(FileMapEntry {
            offset,
            chunk: location(i as u8, len),
        });
        offset += u64::from(len);
    }
    FileMap {
        size: offset,
        digest: Digest([7; 32]),
        entries,
    }
}

/// A stub with every optional field set.
fn sample_stub() -> FileRecord {
    FileRecord {
        ino: 12,
        path: b"dir/\xffname".to_vec(),
        state: FileState::Stub,
        pinned: true,
        archive: Some(ArchiveRecord {
            map: FileMapId(Digest([0xaa; 32])),
            digest: Digest([0xdd; 32]),
            size: 10_000,
            mtime_ns: -5,
            archived_at: 1_700_000_000,
        }),
        fingerprint: Fingerprint {
            ino: 12,
            size: 10_000,
            mtime_ns: 1_000_000_007,
            ctime_ns: 2_000_000_009,
        },
        present: vec![0..4096, 8192..10_000],
        horizon: 10_000,
        last_recall: 1_700_000_100,
        handle: Some(vec![8, 0, 0, 0, 1, 0, 0, 0, 0xab, 0xcd]),
    }
}

/// A file never archived: no archive, no handle, nothing present.
fn sample_local() -> FileRecord {
    FileRecord {
        ino: 3,
        path: b"a".to_vec(),
        state: FileState::Local,
        pinned: false,
        archive: None,
        fingerprint: Fingerprint {
            ino: 3,
            size: 1,
            mtime_ns: 0,
            ctime_ns: 0,
        },
        present: Vec::new(),
        horizon: 0,
        last_recall: 0,
        handle: None,
    }
}

fn sample_log() -> LogRecord {
    LogRecord {
        seq: 9,
        time: 1_700_000_200,
        op: "recall".into(),
        path: b"dir/\xffname".to_vec(),
        ino: 12,
        detail: "0..4096".into(),
    }
}

fn check_golden(what: &str, bytes: &[u8], golden: &str) {
    let hex = hex::encode(bytes);
    assert!(
        hex == golden,
        "{what} encoding changed: if intended, bump its version and update the golden bytes to:\n{hex}"
    );
}

/// File map version 1. These bytes were produced by the first writer (in the HSM crate) and file maps
/// written by it are in stores: they must stay readable.
const GOLDEN_MAP_V1: &str = concat!(
    // magic, version 1, flags 0, size 5, digest
    "48594448534d4631",
    "01000000",
    "00000000",
    "0500000000000000",
    "0707070707070707070707070707070707070707070707070707070707070707",
    // one chunk
    "0100000000000000",
    // offset 0, chunk id, blob id, blob offset 0, stored 3, plain 5, zstd, padding
    "0000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0",
    "0000000000000000",
    "03000000",
    "05000000",
    "01",
    "00000000000000"
);

#[test]
fn golden_file_map_v1() {
    let map = sample_map(&[5]);
    check_golden("file map", &map.encode(), GOLDEN_MAP_V1);
    let bytes = hex::decode(GOLDEN_MAP_V1).unwrap();
    assert_eq!(FileMap::decode(&bytes).unwrap(), map);
    assert_eq!(map.id(), FileMapId(Digest::of(&bytes)));
    assert_eq!(
        map.id().key(),
        format!("{}{}", filemap::FILE_MAPS_PREFIX, map.id().hex())
    );
    assert_eq!(FileMapId::from_hex(&map.id().hex()), Some(map.id()));
}

/// Journal version 2: the stub record (every optional field set).
const GOLDEN_FILE_STUB_V2: &str = concat!(
    // magic, version 2, ino 12, state stub, flags pinned|archive|handle, padding
    "484a4652",
    "02000000",
    "0c00000000000000",
    "03",
    "07",
    "000000000000",
    // fingerprint: ino, size, mtime ns, ctime ns
    "0c00000000000000",
    "1027000000000000",
    "07ca9a3b00000000",
    "0994357700000000",
    // horizon, last recall
    "1027000000000000",
    "64f1536500000000",
    // archive: map id, digest, size, mtime ns (-5), archived at
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd",
    "1027000000000000",
    "fbffffffffffffff",
    "00f1536500000000",
    // path length 9, handle length 10, 2 ranges, padding
    "09000000",
    "0a000000",
    "02000000",
    "00000000",
    // path (not UTF-8), handle, ranges 0..4096 and 8192..10000
    "6469722fff6e616d65",
    "0800000001000000abcd",
    "0000000000000000",
    "0010000000000000",
    "0020000000000000",
    "1027000000000000",
);
/// Journal version 2: a local file with no archive, handle or ranges (the archive field is all zero).
const GOLDEN_FILE_LOCAL_V2: &str = concat!(
    "484a4652",
    "02000000",
    "0300000000000000",
    "00",
    "00",
    "000000000000",
    "0300000000000000",
    "0100000000000000",
    "0000000000000000",
    "0000000000000000",
    "0000000000000000",
    "0000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000",
    "0000000000000000",
    "0000000000000000",
    "01000000",
    "00000000",
    "00000000",
    "00000000",
    "61",
);
/// Journal version 2: a chunk location (the chunk id is the table's key).
const GOLDEN_CHUNK_V2: &str = concat!(
    // magic, version, blob id, blob offset 1000, stored 3, plain 5, zstd, padding
    "484a434c",
    "02000000",
    "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0",
    "e803000000000000",
    "03000000",
    "05000000",
    "01",
    "00000000000000",
);
/// Journal version 2: a log entry.
const GOLDEN_LOG_V2: &str = concat!(
    // magic, version, seq 9, time, ino 12, op length 6, path length 9, detail length 7, padding
    "484a4c47",
    "02000000",
    "0900000000000000",
    "c8f1536500000000",
    "0c00000000000000",
    "06000000",
    "09000000",
    "07000000",
    "00000000",
    // "recall", path, "0..4096"
    "726563616c6c",
    "6469722fff6e616d65",
    "302e2e34303936",
);

#[test]
fn golden_journal_v2() {
    let stub = sample_stub();
    check_golden("file record", &stub.encode().unwrap(), GOLDEN_FILE_STUB_V2);
    assert_eq!(
        FileRecord::decode(&hex::decode(GOLDEN_FILE_STUB_V2).unwrap()).unwrap(),
        stub
    );
    let local = sample_local();
    check_golden(
        "file record",
        &local.encode().unwrap(),
        GOLDEN_FILE_LOCAL_V2,
    );
    assert_eq!(
        FileRecord::decode(&hex::decode(GOLDEN_FILE_LOCAL_V2).unwrap()).unwrap(),
        local
    );
    let loc = location(1, 5);
    check_golden(
        "chunk location",
        &encode_chunk_location(&loc),
        GOLDEN_CHUNK_V2,
    );
    assert_eq!(
        decode_chunk_location(loc.id, &hex::decode(GOLDEN_CHUNK_V2).unwrap()).unwrap(),
        loc
    );
    let log = sample_log();
    check_golden("log entry", &log.encode().unwrap(), GOLDEN_LOG_V2);
    assert_eq!(
        LogRecord::decode(&hex::decode(GOLDEN_LOG_V2).unwrap()).unwrap(),
        log
    );
}

/// Stub mark version 1 (`HSM1`): map id 0xaa…, size 10 000. Stubs carrying it exist on users' disks.
const GOLDEN_STUB_MARK_V1: &str = concat!(
    "48534d31",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "1027000000000000",
);

#[test]
fn golden_stub_mark_v1() {
    let mark = StubMark {
        map: FileMapId(Digest([0xaa; 32])),
        size: 10_000,
    };
    check_golden("stub mark", &mark.encode(), GOLDEN_STUB_MARK_V1);
    let bytes = hex::decode(GOLDEN_STUB_MARK_V1).unwrap();
    assert_eq!(StubMark::decode(&bytes).unwrap(), mark);
    let e = StubMark::decode(&bytes[..40]).unwrap_err().to_string();
    assert!(e.contains("ends inside size"), "{e}");
    let mut newer = bytes.clone();
    newer[3] = b'2';
    let e = StubMark::decode(&newer).unwrap_err().to_string();
    assert!(e.contains("bad magic \"HSM2\""), "{e}");
}

fn map_err(bytes: &[u8]) -> String {
    match FileMap::decode(bytes) {
        Err(FormatError::FileMap { detail }) => detail,
        other => panic!("expected a file map error, got {other:?}"),
    }
}

#[test]
fn file_map_refusals_name_the_problem() {
    let mut m = sample_map(&[10, 20]);
    m.entries[1].offset = 11;
    assert!(map_err(&m.encode()).contains("chunk 1 starts at 11, expected 10"));
    let mut m = sample_map(&[10]);
    m.size = 9;
    assert!(map_err(&m.encode()).contains("cover 10 bytes, file size is 9"));
    let mut m = sample_map(&[10]);
    m.entries[0].chunk.compression = 9;
    assert!(map_err(&m.encode()).contains("unknown compression code 9"));
    let mut m = sample_map(&[10]);
    m.entries[0].chunk.compression = crate::COMPRESSION_NONE;
    assert!(map_err(&m.encode()).contains("uncompressed chunk stores 6 bytes"));
    assert!(map_err(b"short").contains("ends inside header"));
    let mut bytes = sample_map(&[5]).encode();
    bytes[8] = 2;
    assert!(map_err(&bytes).contains("version 2, this build reads version 1"));
    let mut bytes = sample_map(&[5]).encode();
    bytes[0] = b'X';
    assert!(map_err(&bytes).contains("not a hydrate HSM file map"));
    let mut bytes = sample_map(&[5]).encode();
    *bytes.last_mut().unwrap() = 1;
    assert!(map_err(&bytes).contains("chunk 0: chunk padding is not zero"));
    let mut bytes = sample_map(&[5]).encode();
    bytes.push(0);
    assert!(map_err(&bytes).contains("1 chunks need 160 bytes, have 161"));
}

fn record_err(r: Result<impl std::fmt::Debug, FormatError>) -> String {
    match r {
        Err(e @ FormatError::JournalRecord { .. }) => e.to_string(),
        other => panic!("expected a journal record error, got {other:?}"),
    }
}

#[test]
fn journal_refusals_name_the_problem() {
    let good = sample_stub().encode().unwrap();
    let mut bad = good.clone();
    bad[16] = 7;
    assert!(record_err(FileRecord::decode(&bad)).contains("inode 12: unknown state code 7"));
    let mut bad = good.clone();
    bad[4] = 1;
    assert!(record_err(FileRecord::decode(&bad)).contains("version 1, this build reads version 2"));
    assert!(
        record_err(FileRecord::decode(&good[..good.len() - 1])).contains("ends inside range end")
    );
    let mut with_trailer = good.clone();
    with_trailer.push(0);
    assert!(record_err(FileRecord::decode(&with_trailer)).contains("1 trailing bytes"));
    // A value of one table read as another's.
    let log = sample_log().encode().unwrap();
    assert!(record_err(FileRecord::decode(&log)).contains("bad magic \"HJLG\", expected \"HJFR\""));
    // Nothing unreadable is written.
    let mut overlapping = sample_stub();
    overlapping.present = vec![0..10, 10..20];
    assert!(record_err(overlapping.encode()).contains("not after range 0"));
    let mut nameless = sample_local();
    nameless.path.clear();
    assert!(record_err(nameless.encode()).contains("empty or holds a NUL"));
    let mut bad_op = sample_log();
    bad_op.op = "Recall now".into();
    assert!(record_err(bad_op.encode()).contains("operation \"Recall now\""));
    let mut chunk = encode_chunk_location(&location(1, 5));
    chunk[56] = 3;
    assert!(
        record_err(decode_chunk_location(ChunkId::from_bytes([1; 32]), &chunk))
            .contains("unknown compression code 3")
    );
}

fn arb_ranges() -> impl Strategy<Value = Vec<std::ops::Range<u64>>> {
    proptest::collection::vec((1u64..1000, 1u64..1000), 0..8).prop_map(|steps| {
        let mut at = 0;
        steps
            .into_iter()
            .map(|(gap, len)| {
                let r = at + gap..at + gap + len;
                at = r.end;
                r
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn file_maps_round_trip(lens in proptest::collection::vec(1u32..=CHUNK_MAX, 0..12)) {
        let m = sample_map(&lens);
        prop_assert_eq!(FileMap::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn file_records_round_trip(
        ino: u64,
        path in proptest::collection::vec(1u8..=255, 1..40),
        state in 0u8..4,
        pinned: bool,
        archived: bool,
        fp: (u64, u64, i64, i64),
        present in arb_ranges(),
        horizon: u64,
        last_recall: u64,
        handle in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=136)),
    ) {
        let rec = FileRecord {
            ino,
            path,
            state: FileState::from_code(state).unwrap(),
            pinned,
            archive: archived.then(|| ArchiveRecord {
                map: FileMapId(Digest::of(&ino.to_le_bytes())),
                digest: Digest::of(&horizon.to_le_bytes()),
                size: fp.1,
                mtime_ns: fp.2,
                archived_at: last_recall,
            }),
            fingerprint: Fingerprint { ino: fp.0, size: fp.1, mtime_ns: fp.2, ctime_ns: fp.3 },
            present,
            horizon,
            last_recall,
            handle,
        };
        let bytes = rec.encode().unwrap();
        prop_assert_eq!(FileRecord::decode(&bytes).unwrap(), rec);
        // Every strict prefix is refused, never misread.
        for cut in [0, bytes.len() / 2, bytes.len() - 1] {
            prop_assert!(FileRecord::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn log_records_round_trip(
        seq: u64,
        time: u64,
        ino: u64,
        op in "[a-z-]{1,32}",
        path in proptest::collection::vec(any::<u8>(), 0..40),
        detail in "\\PC{0,40}",
    ) {
        let rec = LogRecord { seq, time, op, path, ino, detail };
        prop_assert_eq!(LogRecord::decode(&rec.encode().unwrap()).unwrap(), rec);
    }
}
