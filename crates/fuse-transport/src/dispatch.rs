//! Turning one decoded request into a handler call and exactly one reply (or none, for FORGET and
//! INTERRUPT).
//!
//! This is the single place where handler results become wire replies: `Err(Errno)` becomes the reply
//! header's negative errno, the xattr size probe and ERANGE rules are applied, READ data is written
//! straight from the worker's buffer, and write errors on /dev/fuse are classified (ENOENT means the kernel
//! already gave up on an interrupted request). The dispatcher writes through [`ReplySink`], so tests run it
//! against byte fixtures without a kernel.

use std::borrow::Cow;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::Once;

use zerocopy::IntoBytes;

use crate::abi;
use crate::dev::FuseDev;
use crate::filesystem::{DirFiller, DirPlusFiller, Filesystem};
use crate::negotiate::Negotiated;
use crate::request::{self, Operation, Request};
use crate::stats::OpStats;
use crate::types::{Errno, RequestCtx};

/// Where replies go: the /dev/fuse file the request came from, or a recorder in tests.
pub(crate) trait ReplySink {
    fn send(&self, iov: &[IoSlice<'_>]) -> io::Result<()>;
}

impl ReplySink for FuseDev {
    fn send(&self, iov: &[IoSlice<'_>]) -> io::Result<()> {
        self.write_message(iov)
    }
}

/// Connection-wide state shared by all workers of a session.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub negotiated: Negotiated,
    pub stats: Arc<OpStats>,
    pub destroyed: Once,
}

impl ConnState {
    pub fn new(negotiated: Negotiated, stats: Arc<OpStats>) -> Self {
        ConnState {
            negotiated,
            stats,
            destroyed: Once::new(),
        }
    }

    /// Calls `fs.destroy()` at most once per connection (DESTROY request or end of connection).
    pub fn destroy<F: Filesystem>(&self, fs: &F) {
        self.destroyed.call_once(|| fs.destroy());
    }
}

/// Writes one reply. `unique` is the raw value from the request (resend bit included: the kernel matches
/// the reply against it).
pub(crate) fn send_reply(sink: &impl ReplySink, unique: u64, result: Result<&[u8], Errno>) {
    let (error, payload) = match result {
        Ok(payload) => (0, payload),
        Err(errno) => (errno.to_reply_error(), &[][..]),
    };
    let header = abi::fuse_out_header {
        len: (size_of::<abi::fuse_out_header>() + payload.len()) as u32,
        error,
        unique,
    };
    let iov = [IoSlice::new(header.as_bytes()), IoSlice::new(payload)];
    let parts = if payload.is_empty() { 1 } else { 2 };
    match sink.send(&iov[..parts]) {
        Ok(()) => {}
        // The request was interrupted and already completed by the kernel, or the connection is gone; the
        // read loop notices the latter on its next read.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV)) => {
            tracing::debug!(unique, error = %e, "reply not delivered; request no longer pending");
        }
        Err(e) => {
            tracing::warn!(unique, error = %e, "writing FUSE reply failed; the request stays pending")
        }
    }
}

/// A reply body: borrowed from the worker's read buffer (READ) or owned.
type Payload<'b> = Option<Cow<'b, [u8]>>;

fn owned<T: IntoBytes + zerocopy::Immutable>(value: &T) -> Result<Payload<'static>, Errno> {
    Ok(Some(Cow::Owned(value.as_bytes().to_vec())))
}

fn empty() -> Result<Payload<'static>, Errno> {
    Ok(Some(Cow::Borrowed(&[])))
}

/// The getxattr/listxattr convention: size 0 asks for the length, a too-small size is ERANGE.
fn xattr_reply(requested: u32, value: Vec<u8>) -> Result<Payload<'static>, Errno> {
    let len = u32::try_from(value.len()).map_err(|_| Errno::E2BIG)?;
    if requested == 0 {
        owned(&abi::fuse_getxattr_out {
            size: len,
            padding: 0,
        })
    } else if len > requested {
        Err(Errno::ERANGE)
    } else {
        Ok(Some(Cow::Owned(value)))
    }
}

/// Serves requests for one worker; owns that worker's READ data buffer.
pub(crate) struct Dispatcher<'s, F> {
    fs: &'s F,
    state: &'s ConnState,
    data: Vec<u8>,
}

impl<'s, F: Filesystem> Dispatcher<'s, F> {
    pub fn new(fs: &'s F, state: &'s ConnState) -> Self {
        Dispatcher {
            fs,
            state,
            data: vec![0; state.negotiated.max_read()],
        }
    }

    /// Size of the /dev/fuse read buffer this connection needs.
    pub fn read_buffer_size(&self) -> usize {
        self.state.negotiated.read_buffer_size()
    }

    /// Handles one raw request as read from /dev/fuse.
    pub fn handle(&mut self, raw: &[u8], sink: &impl ReplySink) {
        let req = match request::parse(raw) {
            Ok(req) => req,
            Err((header, err)) => {
                tracing::warn!(error = %err, "answering malformed FUSE request with EIO");
                if let Some(h) = header {
                    self.state.stats.record(h.opcode);
                    let noreply = matches!(
                        h.opcode,
                        abi::FUSE_FORGET | abi::FUSE_BATCH_FORGET | abi::FUSE_INTERRUPT
                    );
                    if !noreply {
                        send_reply(sink, h.unique, Err(Errno::EIO));
                    }
                }
                return;
            }
        };
        self.state.stats.record(req.header.opcode);
        let _span = tracing::debug_span!(
            "fuse_request",
            unique = req.unique(),
            op = abi::opcode_name(req.header.opcode),
            ino = req.header.nodeid
        )
        .entered();
        let ctx = RequestCtx {
            unique: req.unique(),
            uid: req.header.uid,
            gid: req.header.gid,
            pid: req.header.pid,
            opcode: req.header.opcode,
            resent: req.resent(),
        };
        let result = serve(self.fs, self.state, &mut self.data, &ctx, &req);
        match result {
            Ok(None) => {}
            Ok(Some(payload)) => send_reply(sink, req.header.unique, Ok(&payload)),
            Err(errno) => {
                tracing::debug!(errno = errno.0, "request failed");
                send_reply(sink, req.header.unique, Err(errno));
            }
        }
    }
}

/// Runs the handler for `req`; `Ok(None)` means the kernel expects no reply.
fn serve<'b, F: Filesystem>(
    fs: &F,
    state: &ConnState,
    data: &'b mut [u8],
    ctx: &RequestCtx,
    req: &Request<'_>,
) -> Result<Payload<'b>, Errno> {
    let ino = req.header.nodeid;
    match &req.op {
        Operation::Lookup { name } => owned(&fs.lookup(ctx, ino, name)?.to_abi()),
        Operation::Forget { nlookup } => {
            fs.forget(ino, *nlookup);
            Ok(None)
        }
        Operation::BatchForget { items } => {
            for &(node, nlookup) in items {
                fs.forget(node, nlookup);
            }
            Ok(None)
        }
        Operation::Getattr { fh } => owned(&fs.getattr(ctx, ino, *fh)?.to_abi()),
        Operation::Readlink => Ok(Some(Cow::Owned(fs.readlink(ctx, ino)?))),
        Operation::Open { flags } => {
            let out = fs.open(ctx, ino, *flags)?;
            if out.passthrough.is_some() && !state.negotiated.passthrough {
                tracing::warn!(
                    ino,
                    "passthrough requested but not negotiated; serving READ upcalls instead"
                );
            }
            owned(&out.to_abi(state.negotiated.passthrough))
        }
        // The kernel takes ENOSYS as "opening directories needs no server": it opens them itself from now on
        // (no OPENDIR, no RELEASEDIR) with listings cached. Only sent when the kernel offered that at INIT;
        // older kernels would fail the open.
        Operation::Opendir { .. } if state.negotiated.stateless_dirs() => Err(Errno::ENOSYS),
        Operation::Opendir { flags } => {
            let out = fs.opendir(ctx, ino, *flags)?;
            let mut reply = out.to_abi(false);
            // For a directory, keeping the cache only means something if listings are cached at all.
            if out.keep_cache {
                reply.open_flags |= abi::FOPEN_CACHE_DIR;
            }
            owned(&reply)
        }
        Operation::Read { fh, offset, size } => {
            let want = (*size as usize).min(data.len());
            if want < *size as usize {
                tracing::warn!(
                    size,
                    max = data.len(),
                    "READ larger than the negotiated maximum; clamping"
                );
            }
            let buf = &mut data[..want];
            let n = fs.read(ctx, ino, *fh, *offset, buf)?;
            if n > want {
                tracing::error!(
                    n,
                    want,
                    "read handler claims more bytes than the buffer holds"
                );
                return Err(Errno::EIO);
            }
            Ok(Some(Cow::Borrowed(&data[..n])))
        }
        Operation::Release { fh, flags } => {
            fs.release(ctx, ino, *fh, *flags);
            empty()
        }
        Operation::Readdir { fh, offset, size } => {
            let mut filler = DirFiller::new(*size as usize);
            fs.readdir(ctx, ino, *fh, *offset, &mut filler)?;
            Ok(Some(Cow::Owned(filler.into_bytes())))
        }
        Operation::Readdirplus { fh, offset, size } => {
            let mut filler = DirPlusFiller::new(*size as usize);
            fs.readdirplus(ctx, ino, *fh, *offset, &mut filler)?;
            Ok(Some(Cow::Owned(filler.into_bytes())))
        }
        Operation::Releasedir { fh } => {
            fs.releasedir(ctx, ino, *fh);
            empty()
        }
        Operation::Statfs => owned(&fs.statfs(ctx, ino)?.to_abi()),
        Operation::Getxattr { size, name } => xattr_reply(*size, fs.getxattr(ctx, ino, name)?),
        Operation::Listxattr { size } => xattr_reply(*size, fs.listxattr(ctx, ino)?),
        Operation::Access { mask } => fs.access(ctx, ino, *mask).and_then(|()| empty()),
        Operation::Flush => empty(),
        Operation::Interrupt => Ok(None),
        Operation::Destroy => {
            state.destroy(fs);
            empty()
        }
        Operation::Init { .. } => {
            tracing::warn!("INIT on a connection that is already initialized");
            Err(Errno::EIO)
        }
        Operation::Modify => Err(Errno::EROFS),
        Operation::Unsupported => Err(Errno::ENOSYS),
    }
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
