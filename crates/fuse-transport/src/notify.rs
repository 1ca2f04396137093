//! Unsolicited messages from the server to the kernel: cache invalidation, pushing data into the page
//! cache (STORE), and RESEND, which makes the kernel queue again every request a previous server read but
//! never answered.
//!
//! A notification is a reply with `unique` 0 and the notification code in the error field. It may be
//! written to any file of the connection, from any thread.

use std::io::{self, IoSlice};
use std::sync::{Arc, OnceLock};

use zerocopy::IntoBytes;

use crate::abi;
use crate::dev::FuseDev;
use crate::error::TransportError;
use crate::negotiate::Negotiated;

/// Sends notifications on a connection. Cheap to clone; usable from any thread. Invalidations issued from
/// inside a handler for the same directory can deadlock the kernel: send them from another thread.
#[derive(Debug, Clone)]
pub struct Notifier {
    dev: Arc<FuseDev>,
    negotiated: Arc<OnceLock<Negotiated>>,
}

/// Builds the complete notification message: header + parts.
pub(crate) fn notify_message(code: i32, parts: &[&[u8]]) -> Vec<u8> {
    let len = size_of::<abi::fuse_out_header>() + parts.iter().map(|p| p.len()).sum::<usize>();
    let header = abi::fuse_out_header {
        len: len as u32,
        error: code,
        unique: 0,
    };
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(header.as_bytes());
    for part in parts {
        msg.extend_from_slice(part);
    }
    msg
}

impl Notifier {
    pub(crate) fn new(dev: Arc<FuseDev>, negotiated: Arc<OnceLock<Negotiated>>) -> Self {
        Notifier { dev, negotiated }
    }

    fn require(&self, what: &'static str, minor_needed: u32) -> io::Result<()> {
        let Some(n) = self.negotiated.get() else {
            return Err(TransportError::NotNegotiated { what }.into());
        };
        if n.minor < minor_needed {
            return Err(TransportError::NotSupportedByKernel {
                what,
                needed: minor_needed,
                minor: n.minor,
            }
            .into());
        }
        Ok(())
    }

    /// Notifications are rare and small next to requests; one contiguous copy keeps the framing in one
    /// tested function.
    fn send(&self, code: i32, parts: &[&[u8]]) -> io::Result<()> {
        let msg = notify_message(code, parts);
        self.dev.write_message(&[IoSlice::new(&msg)])
    }

    /// Drops cached data of `ino` in [off, off+len) (len 0 or negative: to the end; off negative: attributes
    /// only). ENOENT means the kernel has no such inode cached.
    pub fn inval_inode(&self, ino: u64, off: i64, len: i64) -> io::Result<()> {
        self.require("FUSE_NOTIFY_INVAL_INODE", 12)?;
        let out = abi::fuse_notify_inval_inode_out { ino, off, len };
        self.send(abi::FUSE_NOTIFY_INVAL_INODE, &[out.as_bytes()])
    }

    /// Drops the cached name `name` in directory `parent`.
    pub fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
        self.require("FUSE_NOTIFY_INVAL_ENTRY", 12)?;
        let namelen = u32::try_from(name.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let out = abi::fuse_notify_inval_entry_out {
            parent,
            namelen,
            flags: 0,
        };
        self.send(abi::FUSE_NOTIFY_INVAL_ENTRY, &[out.as_bytes(), name, b"\0"])
    }

    /// Puts `data` into the page cache of `ino` at `offset` (extending the cached size if needed).
    pub fn store(&self, ino: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.require("FUSE_NOTIFY_STORE", 15)?;
        let size =
            u32::try_from(data.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        let out = abi::fuse_notify_store_out {
            nodeid: ino,
            offset,
            size,
            padding: 0,
        };
        self.send(abi::FUSE_NOTIFY_STORE, &[out.as_bytes(), data])
    }

    /// Asks the kernel to queue again every request that was read but not answered (FUSE_NOTIFY_RESEND);
    /// they come back with bit 63 set in `unique`.
    pub fn resend(&self) -> io::Result<()> {
        self.require("FUSE_NOTIFY_RESEND", 40)?;
        self.send(abi::FUSE_NOTIFY_RESEND, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_message_is_a_bare_header() {
        let msg = notify_message(abi::FUSE_NOTIFY_RESEND, &[]);
        #[rustfmt::skip]
        let expected: [u8; 16] = [16, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(msg, expected);
    }

    #[test]
    fn inval_entry_message_carries_name_and_nul() {
        let out = abi::fuse_notify_inval_entry_out {
            parent: 1,
            namelen: 2,
            flags: 0,
        };
        let msg = notify_message(
            abi::FUSE_NOTIFY_INVAL_ENTRY,
            &[out.as_bytes(), b"ab", b"\0"],
        );
        assert_eq!(msg.len(), 16 + 16 + 3);
        assert_eq!(u32::from_ne_bytes(msg[0..4].try_into().unwrap()), 35);
        assert_eq!(
            i32::from_ne_bytes(msg[4..8].try_into().unwrap()),
            abi::FUSE_NOTIFY_INVAL_ENTRY
        );
        assert_eq!(&msg[32..], b"ab\0");
    }
}
