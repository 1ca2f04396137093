//! Dispatcher tests: request bytes in, reply bytes out, against a small fake filesystem.

use std::cell::RefCell;
use std::sync::Mutex;
use std::time::Duration;

use zerocopy::FromBytes;

use super::*;
use crate::request::tests::request_bytes;
use crate::types::{Attr, AttrOut, BackingId, EntryOut, OpenOut};

/// Records every message written, as one contiguous buffer each.
#[derive(Default)]
struct Recorder {
    sent: RefCell<Vec<Vec<u8>>>,
}

impl ReplySink for Recorder {
    fn send(&self, iov: &[IoSlice<'_>]) -> io::Result<()> {
        self.sent
            .borrow_mut()
            .push(iov.iter().flat_map(|s| s.iter().copied()).collect());
        Ok(())
    }
}

#[derive(Default)]
struct FakeFs {
    forgotten: Mutex<Vec<(u64, u64)>>,
}

fn attr(ino: u64) -> Attr {
    Attr {
        ino,
        size: 5,
        mode: libc::S_IFREG | 0o644,
        nlink: 1,
        ..Attr::default()
    }
}

impl Filesystem for FakeFs {
    fn lookup(&self, _ctx: &RequestCtx, parent: u64, name: &[u8]) -> Result<EntryOut, Errno> {
        if parent == 1 && name == b"f" {
            Ok(EntryOut {
                ino: 2,
                generation: 0,
                attr: attr(2),
                entry_valid: Duration::from_secs(1),
                attr_valid: Duration::from_secs(1),
            })
        } else {
            Err(Errno::ENOENT)
        }
    }
    fn forget(&self, ino: u64, nlookup: u64) {
        self.forgotten.lock().unwrap().push((ino, nlookup));
    }
    fn getattr(&self, _ctx: &RequestCtx, ino: u64, _fh: Option<u64>) -> Result<AttrOut, Errno> {
        Ok(AttrOut {
            attr: attr(ino),
            valid: Duration::from_secs(1),
        })
    }
    fn opendir(&self, _ctx: &RequestCtx, _ino: u64, _flags: u32) -> Result<OpenOut, Errno> {
        Ok(OpenOut {
            fh: 5,
            keep_cache: true,
            direct_io: false,
            passthrough: Some(BackingId(4)),
        })
    }
    fn open(&self, _ctx: &RequestCtx, _ino: u64, _flags: u32) -> Result<OpenOut, Errno> {
        Ok(OpenOut {
            fh: 77,
            keep_cache: true,
            direct_io: false,
            passthrough: Some(BackingId(4)),
        })
    }
    fn read(
        &self,
        _ctx: &RequestCtx,
        _ino: u64,
        _fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        let content = b"hello";
        let start = (offset as usize).min(content.len());
        let n = (content.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&content[start..start + n]);
        Ok(n)
    }
    fn readdir(
        &self,
        _ctx: &RequestCtx,
        _ino: u64,
        _fh: u64,
        offset: u64,
        out: &mut DirFiller,
    ) -> Result<(), Errno> {
        if offset == 0 {
            out.push(2, 1, libc::DT_REG as u32, b"f");
        }
        Ok(())
    }
    fn getxattr(&self, _ctx: &RequestCtx, _ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        if name == b"user.k" {
            Ok(b"value".to_vec())
        } else {
            Err(Errno::ENODATA)
        }
    }
}

fn negotiated(passthrough: bool) -> Negotiated {
    Negotiated {
        major: 7,
        minor: 44,
        max_write: 1 << 20,
        max_readahead: 1 << 17,
        flags: if passthrough {
            abi::FUSE_PASSTHROUGH
        } else {
            0
        },
        max_pages: 4,
        passthrough,
        max_stack_depth: u32::from(passthrough),
        time_gran: 1,
    }
}

/// Runs one request and returns (out header, payload) of each reply.
fn run(fs: &FakeFs, state: &ConnState, raw: &[u8]) -> Vec<(abi::fuse_out_header, Vec<u8>)> {
    let sink = Recorder::default();
    Dispatcher::new(fs, state).handle(raw, &sink);
    sink.sent
        .into_inner()
        .into_iter()
        .map(|msg| {
            let (h, rest) = abi::fuse_out_header::read_from_prefix(&msg).unwrap();
            assert_eq!(
                h.len as usize,
                msg.len(),
                "header length matches message length"
            );
            (h, rest.to_vec())
        })
        .collect()
}

fn one(fs: &FakeFs, state: &ConnState, raw: &[u8]) -> (abi::fuse_out_header, Vec<u8>) {
    let mut replies = run(fs, state, raw);
    assert_eq!(replies.len(), 1, "exactly one reply");
    replies.remove(0)
}

fn state(passthrough: bool) -> ConnState {
    ConnState::new(negotiated(passthrough), Arc::default())
}

#[test]
fn lookup_reply_bytes() {
    let (fs, st) = (FakeFs::default(), state(false));
    let (h, body) = one(&fs, &st, &request_bytes(abi::FUSE_LOOKUP, 5, 1, b"f\0"));
    assert_eq!((h.error, h.unique), (0, 5));
    let entry = abi::fuse_entry_out::read_from_bytes(&body).unwrap();
    assert_eq!(
        (
            entry.nodeid,
            entry.entry_valid,
            entry.attr.size,
            entry.attr.mode
        ),
        (2, 1, 5, libc::S_IFREG | 0o644)
    );

    let (h, body) = one(
        &fs,
        &st,
        &request_bytes(abi::FUSE_LOOKUP, 6, 1, b"missing\0"),
    );
    assert_eq!(h.error, -libc::ENOENT);
    assert!(body.is_empty());
    assert_eq!(st.stats.get(abi::FUSE_LOOKUP), 2);
}

#[test]
fn read_replies_with_the_valid_prefix_and_keeps_resend_bit() {
    let (fs, st) = (FakeFs::default(), state(false));
    let read = abi::fuse_read_in {
        fh: 77,
        offset: 1,
        size: 4096,
        ..Default::default()
    };
    let unique = abi::FUSE_UNIQUE_RESEND | 8;
    let (h, body) = one(
        &fs,
        &st,
        &request_bytes(
            abi::FUSE_READ,
            unique,
            2,
            zerocopy::IntoBytes::as_bytes(&read),
        ),
    );
    assert_eq!(h.unique, unique, "reply keeps the resend bit");
    assert_eq!(body, b"ello");
}

#[test]
fn open_sets_passthrough_only_when_negotiated() {
    let fs = FakeFs::default();
    let open = request_bytes(
        abi::FUSE_OPEN,
        3,
        2,
        zerocopy::IntoBytes::as_bytes(&abi::fuse_open_in::default()),
    );
    let (_, body) = one(&fs, &state(true), &open);
    let out = abi::fuse_open_out::read_from_bytes(&body).unwrap();
    assert_eq!(
        (out.fh, out.open_flags, out.backing_id),
        (77, abi::FOPEN_KEEP_CACHE | abi::FOPEN_PASSTHROUGH, 4)
    );
    let (_, body) = one(&fs, &state(false), &open);
    let out = abi::fuse_open_out::read_from_bytes(&body).unwrap();
    assert_eq!((out.open_flags, out.backing_id), (abi::FOPEN_KEEP_CACHE, 0));
    // Directories never get passthrough; keep_cache also caches listings.
    let opendir = request_bytes(
        abi::FUSE_OPENDIR,
        3,
        1,
        zerocopy::IntoBytes::as_bytes(&abi::fuse_open_in::default()),
    );
    let (_, body) = one(&fs, &state(true), &opendir);
    let out = abi::fuse_open_out::read_from_bytes(&body).unwrap();
    assert_eq!(
        (out.fh, out.open_flags, out.backing_id),
        (5, abi::FOPEN_KEEP_CACHE | abi::FOPEN_CACHE_DIR, 0)
    );
}

#[test]
fn opendir_is_declined_when_directories_are_stateless() {
    let fs = FakeFs::default();
    let mut agreed = negotiated(false);
    agreed.flags |= abi::FUSE_NO_OPENDIR_SUPPORT;
    let st = ConnState::new(agreed, Arc::default());
    let opendir = request_bytes(
        abi::FUSE_OPENDIR,
        4,
        1,
        zerocopy::IntoBytes::as_bytes(&abi::fuse_open_in::default()),
    );
    // ENOSYS tells the kernel to open directories itself from now on (the fake's opendir would answer fh 5).
    let (h, body) = one(&fs, &st, &opendir);
    assert_eq!((h.error, body.len()), (-libc::ENOSYS, 0));
    // Listings are still served, with the handle the kernel then uses (0).
    let read = abi::fuse_read_in {
        fh: 0,
        size: 4096,
        ..Default::default()
    };
    let (h, body) = one(
        &fs,
        &st,
        &request_bytes(
            abi::FUSE_READDIR,
            5,
            1,
            zerocopy::IntoBytes::as_bytes(&read),
        ),
    );
    assert_eq!(h.error, 0);
    assert!(body.ends_with(b"f\0\0\0\0\0\0\0"), "one entry named f");
}

#[test]
fn getxattr_probe_erange_and_value() {
    let (fs, st) = (FakeFs::default(), state(false));
    let req = |size: u32, name: &[u8]| {
        let body = [
            zerocopy::IntoBytes::as_bytes(&abi::fuse_getxattr_in { size, padding: 0 }),
            name,
        ]
        .concat();
        request_bytes(abi::FUSE_GETXATTR, 9, 2, &body)
    };
    let (h, body) = one(&fs, &st, &req(0, b"user.k\0"));
    assert_eq!(h.error, 0);
    assert_eq!(
        abi::fuse_getxattr_out::read_from_bytes(&body).unwrap().size,
        5
    );
    assert_eq!(one(&fs, &st, &req(3, b"user.k\0")).0.error, -libc::ERANGE);
    assert_eq!(one(&fs, &st, &req(64, b"user.k\0")).1, b"value");
    assert_eq!(one(&fs, &st, &req(64, b"user.x\0")).0.error, -libc::ENODATA);
    // Default listxattr: ENOSYS, so the kernel stops asking.
    let list = request_bytes(abi::FUSE_LISTXATTR, 9, 2, &[0; 8]);
    assert_eq!(one(&fs, &st, &list).0.error, -libc::ENOSYS);
}

#[test]
fn readdir_fills_up_to_requested_size() {
    let (fs, st) = (FakeFs::default(), state(false));
    let read = abi::fuse_read_in {
        fh: 0,
        offset: 0,
        size: 4096,
        ..Default::default()
    };
    let (h, body) = one(
        &fs,
        &st,
        &request_bytes(
            abi::FUSE_READDIR,
            4,
            1,
            zerocopy::IntoBytes::as_bytes(&read),
        ),
    );
    assert_eq!(h.error, 0);
    assert_eq!(body.len(), 32);
    let dirent = abi::fuse_dirent::read_from_prefix(&body).unwrap().0;
    assert_eq!((dirent.ino, dirent.off, dirent.namelen), (2, 1, 1));
    // Readdirplus is not implemented by FakeFs: ENOSYS.
    let plus = request_bytes(
        abi::FUSE_READDIRPLUS,
        4,
        1,
        zerocopy::IntoBytes::as_bytes(&read),
    );
    assert_eq!(one(&fs, &st, &plus).0.error, -libc::ENOSYS);
}

#[test]
fn fixed_answers_for_writes_unknown_flush_and_malformed() {
    let (fs, st) = (FakeFs::default(), state(false));
    assert_eq!(
        one(&fs, &st, &request_bytes(abi::FUSE_MKDIR, 1, 1, &[0; 8]))
            .0
            .error,
        -libc::EROFS
    );
    assert_eq!(
        one(&fs, &st, &request_bytes(abi::FUSE_WRITE, 1, 1, &[0; 40]))
            .0
            .error,
        -libc::EROFS
    );
    assert_eq!(
        one(&fs, &st, &request_bytes(abi::FUSE_LSEEK, 1, 1, &[0; 24]))
            .0
            .error,
        -libc::ENOSYS
    );
    assert_eq!(
        one(&fs, &st, &request_bytes(abi::FUSE_FLUSH, 1, 1, &[0; 24]))
            .0
            .error,
        0
    );
    assert_eq!(
        one(&fs, &st, &request_bytes(abi::FUSE_INIT, 1, 1, &[0; 64]))
            .0
            .error,
        -libc::EIO
    );
    // Malformed: truncated READ arguments get EIO, never a panic.
    let (h, _) = one(&fs, &st, &request_bytes(abi::FUSE_READ, 12, 2, &[0; 8]));
    assert_eq!((h.error, h.unique), (-libc::EIO, 12));
    // A read shorter than a header cannot be answered at all.
    assert!(run(&fs, &st, &[0; 10]).is_empty());
}

#[test]
fn forget_interrupt_and_batch_forget_get_no_reply() {
    let (fs, st) = (FakeFs::default(), state(false));
    assert!(run(
        &fs,
        &st,
        &request_bytes(abi::FUSE_FORGET, 1, 2, &3u64.to_ne_bytes())
    )
    .is_empty());
    assert!(run(
        &fs,
        &st,
        &request_bytes(abi::FUSE_INTERRUPT, 1, 0, &9u64.to_ne_bytes())
    )
    .is_empty());
    let body = [
        zerocopy::IntoBytes::as_bytes(&abi::fuse_batch_forget_in { count: 1, dummy: 0 }),
        zerocopy::IntoBytes::as_bytes(&abi::fuse_forget_one {
            nodeid: 6,
            nlookup: 2,
        }),
    ]
    .concat();
    assert!(run(
        &fs,
        &st,
        &request_bytes(abi::FUSE_BATCH_FORGET, 0, 0, &body)
    )
    .is_empty());
    // Malformed batch forget: still no reply.
    assert!(run(
        &fs,
        &st,
        &request_bytes(abi::FUSE_BATCH_FORGET, 0, 0, &[1, 0, 0, 0, 0, 0, 0, 0])
    )
    .is_empty());
    assert_eq!(*fs.forgotten.lock().unwrap(), vec![(2, 3), (6, 2)]);
}

#[test]
fn statfs_default_and_getattr_encode() {
    let (fs, st) = (FakeFs::default(), state(false));
    let (h, body) = one(&fs, &st, &request_bytes(abi::FUSE_STATFS, 1, 1, &[]));
    assert_eq!(h.error, 0);
    let out = abi::fuse_statfs_out::read_from_bytes(&body).unwrap();
    assert_eq!((out.st.bsize, out.st.namelen), (4096, 255));
    let (_, body) = one(&fs, &st, &request_bytes(abi::FUSE_GETATTR, 1, 2, &[0; 16]));
    let out = abi::fuse_attr_out::read_from_bytes(&body).unwrap();
    assert_eq!((out.attr_valid, out.attr.ino), (1, 2));
}
