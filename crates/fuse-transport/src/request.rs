//! Decoding of requests read from /dev/fuse into typed operations.
//!
//! Nothing from the kernel is trusted blindly: the header's length must match what was read, every
//! argument struct must fit in the body, and names must be NUL-terminated. A malformed request becomes a
//! [`TransportError::MalformedRequest`], which the dispatcher answers with EIO; decoding never panics.

use zerocopy::FromBytes;

use crate::abi;
use crate::error::TransportError;

/// A decoded request: the header's identity fields and the operation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    pub header: abi::fuse_in_header,
    pub op: Operation<'a>,
}

impl Request<'_> {
    /// `unique` without the resend bit, for the handler's context and logs.
    pub fn unique(&self) -> u64 {
        self.header.unique & !abi::FUSE_UNIQUE_RESEND
    }

    pub fn resent(&self) -> bool {
        self.header.unique & abi::FUSE_UNIQUE_RESEND != 0
    }
}

/// The operations this transport serves; everything else is classified for a fixed answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Operation<'a> {
    Init {
        body: &'a [u8],
    },
    Destroy,
    Lookup {
        name: &'a [u8],
    },
    Forget {
        nlookup: u64,
    },
    /// (inode, nlookup) pairs, native-endian fuse_forget_one records.
    BatchForget {
        items: Vec<(u64, u64)>,
    },
    Getattr {
        fh: Option<u64>,
    },
    Readlink,
    Open {
        flags: u32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Release {
        fh: u64,
        flags: u32,
    },
    Opendir {
        flags: u32,
    },
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Readdirplus {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Releasedir {
        fh: u64,
    },
    Statfs,
    Getxattr {
        size: u32,
        name: &'a [u8],
    },
    Listxattr {
        size: u32,
    },
    Access {
        mask: u32,
    },
    Flush,
    Interrupt,
    /// An operation that would modify the filesystem: answered with EROFS.
    Modify,
    /// Anything else: answered with ENOSYS (the kernel then stops sending most of them).
    Unsupported,
}

/// A request that could not be decoded: its header when that much was trustworthy (so the caller can
/// still answer with EIO), and why.
pub(crate) type DecodeFailure = (Option<abi::fuse_in_header>, TransportError);

/// Reads argument struct `T` from the front of `body`.
fn arg<T: FromBytes>(body: &[u8], opcode: u32, unique: u64) -> Result<(T, &[u8]), TransportError> {
    T::read_from_prefix(body).map_err(|_| {
        malformed(
            opcode,
            unique,
            format!("body of {} bytes, need {}", body.len(), size_of::<T>()),
        )
    })
}

/// A NUL-terminated name at the front of `body`, without its NUL.
fn name(body: &[u8], opcode: u32, unique: u64) -> Result<&[u8], TransportError> {
    match body.iter().position(|&b| b == 0) {
        Some(end) => Ok(&body[..end]),
        None => Err(malformed(
            opcode,
            unique,
            "name is not NUL-terminated".into(),
        )),
    }
}

fn malformed(opcode: u32, unique: u64, reason: String) -> TransportError {
    TransportError::MalformedRequest {
        opcode: abi::opcode_name(opcode),
        unique,
        reason,
    }
}

/// Splits a raw request into its header and body. Fails when even the header cannot be trusted; the
/// returned header (if any) lets the caller still answer with EIO.
pub(crate) fn split(buf: &[u8]) -> Result<(abi::fuse_in_header, &[u8]), DecodeFailure> {
    let Ok((header, _)) = abi::fuse_in_header::read_from_prefix(buf) else {
        return Err((
            None,
            malformed(
                0,
                0,
                format!("read of {} bytes is shorter than the header", buf.len()),
            ),
        ));
    };
    let (opcode, unique) = (header.opcode, header.unique);
    if header.len as usize != buf.len() {
        return Err((
            Some(header),
            malformed(
                opcode,
                unique,
                format!("header says {} bytes, read {}", header.len, buf.len()),
            ),
        ));
    }
    // Request extensions (7.38) follow the arguments; we negotiate none but must not parse them as args.
    let ext = usize::from(header.total_extlen) * 8;
    let body_len = buf.len() - size_of::<abi::fuse_in_header>();
    if ext > body_len {
        return Err((
            Some(header),
            malformed(
                opcode,
                unique,
                format!("extensions of {ext} bytes exceed the body"),
            ),
        ));
    }
    Ok((
        header,
        &buf[size_of::<abi::fuse_in_header>()..buf.len() - ext],
    ))
}

/// Decodes a whole request as read from /dev/fuse.
pub(crate) fn parse(buf: &[u8]) -> Result<Request<'_>, DecodeFailure> {
    let (header, body) = split(buf)?;
    parse_op(header.opcode, header.unique, body)
        .map(|op| Request { header, op })
        .map_err(|e| (Some(header), e))
}

fn parse_op(opcode: u32, unique: u64, body: &[u8]) -> Result<Operation<'_>, TransportError> {
    use abi::*;
    let op = match opcode {
        FUSE_INIT => Operation::Init { body },
        FUSE_DESTROY => Operation::Destroy,
        FUSE_LOOKUP => Operation::Lookup {
            name: name(body, opcode, unique)?,
        },
        FUSE_FORGET => Operation::Forget {
            nlookup: arg::<fuse_forget_in>(body, opcode, unique)?.0.nlookup,
        },
        FUSE_BATCH_FORGET => {
            let (head, rest) = arg::<fuse_batch_forget_in>(body, opcode, unique)?;
            let want = head.count as usize;
            let record = size_of::<fuse_forget_one>();
            if want
                .checked_mul(record)
                .is_none_or(|need| need > rest.len())
            {
                return Err(malformed(
                    opcode,
                    unique,
                    format!("{want} forget records do not fit in {} bytes", rest.len()),
                ));
            }
            // Copying reads: the request buffer gives no alignment guarantee for in-place references.
            let items = rest
                .chunks_exact(record)
                .take(want)
                .filter_map(|chunk| fuse_forget_one::read_from_bytes(chunk).ok())
                .map(|f| (f.nodeid, f.nlookup))
                .collect();
            Operation::BatchForget { items }
        }
        FUSE_GETATTR => {
            // Protocol minors before 7.9 send no body; treat that as "no handle".
            if body.is_empty() {
                Operation::Getattr { fh: None }
            } else {
                let (a, _) = arg::<fuse_getattr_in>(body, opcode, unique)?;
                Operation::Getattr {
                    fh: (a.getattr_flags & FUSE_GETATTR_FH != 0).then_some(a.fh),
                }
            }
        }
        FUSE_READLINK => Operation::Readlink,
        FUSE_OPEN => Operation::Open {
            flags: arg::<fuse_open_in>(body, opcode, unique)?.0.flags,
        },
        FUSE_OPENDIR => Operation::Opendir {
            flags: arg::<fuse_open_in>(body, opcode, unique)?.0.flags,
        },
        FUSE_READ | FUSE_READDIR | FUSE_READDIRPLUS => {
            let (a, _) = arg::<fuse_read_in>(body, opcode, unique)?;
            let (fh, offset, size) = (a.fh, a.offset, a.size);
            match opcode {
                FUSE_READ => Operation::Read { fh, offset, size },
                FUSE_READDIR => Operation::Readdir { fh, offset, size },
                _ => Operation::Readdirplus { fh, offset, size },
            }
        }
        FUSE_RELEASE => {
            let (a, _) = arg::<fuse_release_in>(body, opcode, unique)?;
            Operation::Release {
                fh: a.fh,
                flags: a.flags,
            }
        }
        FUSE_RELEASEDIR => Operation::Releasedir {
            fh: arg::<fuse_release_in>(body, opcode, unique)?.0.fh,
        },
        FUSE_STATFS => Operation::Statfs,
        FUSE_GETXATTR => {
            let (a, rest) = arg::<fuse_getxattr_in>(body, opcode, unique)?;
            Operation::Getxattr {
                size: a.size,
                name: name(rest, opcode, unique)?,
            }
        }
        FUSE_LISTXATTR => Operation::Listxattr {
            size: arg::<fuse_getxattr_in>(body, opcode, unique)?.0.size,
        },
        FUSE_ACCESS => Operation::Access {
            mask: arg::<fuse_access_in>(body, opcode, unique)?.0.mask,
        },
        FUSE_FLUSH => Operation::Flush,
        FUSE_INTERRUPT => Operation::Interrupt,
        FUSE_SETATTR | FUSE_SYMLINK | FUSE_MKNOD | FUSE_MKDIR | FUSE_UNLINK | FUSE_RMDIR
        | FUSE_RENAME | FUSE_LINK | FUSE_WRITE | FUSE_SETXATTR | FUSE_REMOVEXATTR | FUSE_CREATE
        | FUSE_FALLOCATE | FUSE_RENAME2 | FUSE_COPY_FILE_RANGE | FUSE_TMPFILE => Operation::Modify,
        _ => Operation::Unsupported,
    };
    Ok(op)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    /// Builds a request: header (with the right length) + body bytes.
    pub(crate) fn request_bytes(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let header = abi::fuse_in_header {
            len: (40 + body.len()) as u32,
            opcode,
            unique,
            nodeid,
            uid: 1000,
            gid: 100,
            pid: 4242,
            total_extlen: 0,
            padding: 0,
        };
        [header.as_bytes(), body].concat()
    }

    #[test]
    fn header_fixture_decodes_field_by_field() {
        // A LOOKUP of "a" in the root, written out byte by byte (little-endian host).
        #[rustfmt::skip]
        let bytes: [u8; 42] = [
            42, 0, 0, 0,             // len
            1, 0, 0, 0,              // opcode LOOKUP
            7, 0, 0, 0, 0, 0, 0, 0,  // unique
            1, 0, 0, 0, 0, 0, 0, 0,  // nodeid
            0xe8, 3, 0, 0,           // uid 1000
            100, 0, 0, 0,            // gid
            0x92, 0x10, 0, 0,        // pid 4242
            0, 0, 0, 0,              // total_extlen, padding
            b'a', 0,
        ];
        let req = parse(&bytes).unwrap();
        assert_eq!(req.header.opcode, abi::FUSE_LOOKUP);
        assert_eq!(
            (
                req.header.uid,
                req.header.gid,
                req.header.pid,
                req.header.nodeid
            ),
            (1000, 100, 4242, 1)
        );
        assert_eq!(req.unique(), 7);
        assert_eq!(req.op, Operation::Lookup { name: b"a" });
    }

    #[test]
    fn resend_bit_is_stripped_for_dispatch() {
        let bytes = request_bytes(abi::FUSE_STATFS, abi::FUSE_UNIQUE_RESEND | 9, 1, &[]);
        let req = parse(&bytes).unwrap();
        assert!(req.resent());
        assert_eq!(req.unique(), 9);
        assert_eq!(req.header.unique, abi::FUSE_UNIQUE_RESEND | 9);
    }

    #[test]
    fn read_and_getattr_arguments_decode() {
        let read = abi::fuse_read_in {
            fh: 3,
            offset: 4096,
            size: 8192,
            ..Default::default()
        };
        let bytes = request_bytes(abi::FUSE_READ, 1, 5, read.as_bytes());
        assert_eq!(
            parse(&bytes).unwrap().op,
            Operation::Read {
                fh: 3,
                offset: 4096,
                size: 8192
            }
        );

        let with_fh = abi::fuse_getattr_in {
            getattr_flags: abi::FUSE_GETATTR_FH,
            dummy: 0,
            fh: 11,
        };
        let bytes = request_bytes(abi::FUSE_GETATTR, 1, 5, with_fh.as_bytes());
        assert_eq!(
            parse(&bytes).unwrap().op,
            Operation::Getattr { fh: Some(11) }
        );
        let without = abi::fuse_getattr_in {
            getattr_flags: 0,
            dummy: 0,
            fh: 11,
        };
        let bytes = request_bytes(abi::FUSE_GETATTR, 1, 5, without.as_bytes());
        assert_eq!(parse(&bytes).unwrap().op, Operation::Getattr { fh: None });
    }

    #[test]
    fn getxattr_and_batch_forget_decode() {
        let body = [
            abi::fuse_getxattr_in {
                size: 0,
                padding: 0,
            }
            .as_bytes(),
            b"user.k\0",
        ]
        .concat();
        let bytes = request_bytes(abi::FUSE_GETXATTR, 1, 5, &body);
        assert_eq!(
            parse(&bytes).unwrap().op,
            Operation::Getxattr {
                size: 0,
                name: b"user.k"
            }
        );

        let body = [
            abi::fuse_batch_forget_in { count: 2, dummy: 0 }.as_bytes(),
            abi::fuse_forget_one {
                nodeid: 5,
                nlookup: 1,
            }
            .as_bytes(),
            abi::fuse_forget_one {
                nodeid: 6,
                nlookup: 3,
            }
            .as_bytes(),
        ]
        .concat();
        let bytes = request_bytes(abi::FUSE_BATCH_FORGET, 0, 0, &body);
        let req = parse(&bytes).unwrap();
        assert_eq!(
            req.op,
            Operation::BatchForget {
                items: vec![(5, 1), (6, 3)]
            }
        );
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        // Shorter than a header.
        assert!(matches!(parse(&[1, 2, 3]), Err((None, _))));
        // Length field disagrees with the read size.
        let mut bytes = request_bytes(abi::FUSE_STATFS, 3, 1, &[]);
        bytes[0] = 99;
        assert!(matches!(
            parse(&bytes),
            Err((Some(_), TransportError::MalformedRequest { .. }))
        ));
        // Name without NUL.
        let bytes = request_bytes(abi::FUSE_LOOKUP, 3, 1, b"abc");
        assert!(matches!(parse(&bytes), Err((Some(h), _)) if h.unique == 3));
        // Truncated read_in.
        let bytes = request_bytes(abi::FUSE_READ, 3, 1, &[0; 12]);
        assert!(parse(&bytes).is_err());
        // Batch forget claiming more records than present.
        let body = [
            abi::fuse_batch_forget_in { count: 9, dummy: 0 }.as_bytes(),
            &[0; 16],
        ]
        .concat();
        assert!(parse(&request_bytes(abi::FUSE_BATCH_FORGET, 0, 0, &body)).is_err());
        // Extensions longer than the body.
        let mut bytes = request_bytes(abi::FUSE_STATFS, 3, 1, &[]);
        bytes[36] = 1;
        assert!(parse(&bytes).is_err());
    }

    #[test]
    fn writes_are_modify_and_unknown_is_unsupported() {
        assert_eq!(
            parse(&request_bytes(abi::FUSE_MKDIR, 1, 1, &[0; 8]))
                .unwrap()
                .op,
            Operation::Modify
        );
        assert_eq!(
            parse(&request_bytes(abi::FUSE_LSEEK, 1, 1, &[]))
                .unwrap()
                .op,
            Operation::Unsupported
        );
        assert_eq!(
            parse(&request_bytes(999, 1, 1, &[])).unwrap().op,
            Operation::Unsupported
        );
    }

    proptest::proptest! {
        /// Whatever the bytes, decoding returns a result instead of panicking, and a decoded request's
        /// header always agrees with the read length.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            opcode in 0u32..60,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            corrupt_len in proptest::option::of(0u32..400),
        ) {
            let mut bytes = request_bytes(opcode, 1, 1, &body);
            if let Some(len) = corrupt_len {
                bytes[0..4].copy_from_slice(&len.to_ne_bytes());
            }
            if let Ok(req) = parse(&bytes) {
                proptest::prop_assert_eq!(req.header.len as usize, bytes.len());
            }
            let _ = parse(&bytes[..bytes.len().min(41)]);
        }
    }
}
