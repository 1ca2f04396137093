//! INIT negotiation, and the negotiated state a later process needs to resume a live connection.
//!
//! The kernel sends INIT once per connection. A server that takes over an existing /dev/fuse fd never sees
//! it, yet must behave exactly as agreed: same minor version, a read buffer large enough for the agreed
//! `max_write`, the same idea of whether passthrough is on. [`Negotiated`] carries that, with a small
//! versioned little-endian encoding so a supervisor can hand it to the next server process.

use zerocopy::FromBytes;

use crate::abi;
use crate::error::TransportError;

/// What the server asks for at INIT. Only flags the kernel offers are ever requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Worker threads reading requests.
    pub threads: usize,
    /// Give each worker its own cloned /dev/fuse file (FUSE_DEV_IOC_CLONE) instead of sharing one.
    /// Off by default: when a clone is closed (a crashed server), the kernel fails the requests it was
    /// processing with ECONNABORTED, so FUSE_NOTIFY_RESEND cannot rescue them; requests read from the
    /// shared file survive as long as a holder keeps a dup of it.
    pub clone_fd: bool,
    /// Largest WRITE payload (only sizes the read buffer on a read-only filesystem; min 4096).
    pub max_write: u32,
    /// Upper bound for kernel readahead; the kernel's offer caps it.
    pub max_readahead: u32,
    /// Pages per request (FUSE_MAX_PAGES); the kernel caps it at its own limit (256 by default).
    pub max_pages: u16,
    /// Background request limit; 0 keeps the kernel default (12).
    pub max_background: u16,
    /// Congestion threshold; 0 keeps the kernel default (3/4 of max_background).
    pub congestion_threshold: u16,
    pub want_passthrough: bool,
    /// Filesystem stacking depth of passthrough backing files (1 = backing files on a plain filesystem).
    pub max_stack_depth: u32,
    /// FUSE_DO_READDIRPLUS.
    pub readdirplus: bool,
    /// FUSE_READDIRPLUS_AUTO: let the kernel choose readdirplus only when attributes will be used.
    pub readdirplus_auto: bool,
    pub parallel_dirops: bool,
    pub async_read: bool,
    /// FUSE_CACHE_SYMLINKS: cache READLINK results in the page cache.
    pub cache_symlinks: bool,
    /// FUSE_NO_OPENDIR_SUPPORT: the filesystem keeps no per-open directory state, so directories need no
    /// OPENDIR/RELEASEDIR round trips. When agreed, the transport answers OPENDIR with ENOSYS without calling
    /// the filesystem; the kernel then stops sending OPENDIR and RELEASEDIR for the connection's lifetime and
    /// opens directories with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR (fs/fuse/file.c, "default for no-open"), so
    /// listings stay cached across opens. READDIR then always carries fh 0.
    pub stateless_dirs: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            threads: 4,
            clone_fd: false,
            max_write: 1 << 20,
            max_readahead: 1 << 20,
            max_pages: 256,
            max_background: 0,
            congestion_threshold: 0,
            want_passthrough: false,
            max_stack_depth: 1,
            readdirplus: true,
            readdirplus_auto: true,
            parallel_dirops: true,
            async_read: true,
            cache_symlinks: true,
            stateless_dirs: false,
        }
    }
}

/// Everything agreed at INIT that a server needs to serve the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub major: u32,
    pub minor: u32,
    pub max_write: u32,
    pub max_readahead: u32,
    /// Flags both sides agreed on (kernel offer ∩ server request), flags2 in the high 32 bits.
    pub flags: u64,
    /// Pages per request; the kernel default (32) when FUSE_MAX_PAGES was not agreed.
    pub max_pages: u16,
    pub passthrough: bool,
    pub max_stack_depth: u32,
    /// Timestamp granularity in nanoseconds.
    pub time_gran: u32,
}

const STATE_MAGIC: [u8; 4] = *b"HYFN";
const STATE_VERSION: u16 = 1;
const STATE_LEN: usize = 44;

impl Negotiated {
    /// Largest READ (and READDIR) payload the kernel can ask for on this connection.
    pub fn max_read(&self) -> usize {
        usize::from(self.max_pages.max(1)) * 4096
    }

    /// Size of a /dev/fuse read buffer: the kernel refuses reads into buffers smaller than
    /// max(8192, header + fuse_write_in + max_write); a page of headroom also covers names and xattrs.
    pub fn read_buffer_size(&self) -> usize {
        let write_need = size_of::<abi::fuse_in_header>()
            + size_of::<abi::fuse_write_in>()
            + self.max_write as usize;
        abi::FUSE_MIN_READ_BUFFER
            .max(write_need + 4096)
            .max(self.max_read() + 4096)
    }

    /// Whether directories are opened without OPENDIR (see [`SessionConfig::stateless_dirs`]). Part of the
    /// agreed flags, so a server resuming the connection keeps answering as its predecessor did.
    pub fn stateless_dirs(&self) -> bool {
        self.flags & abi::FUSE_NO_OPENDIR_SUPPORT != 0
    }

    /// Whether the kernel understands FUSE_NOTIFY_RESEND (protocol 7.40).
    pub fn supports_resend(&self) -> bool {
        self.minor >= 40
    }

    /// Versioned little-endian encoding: magic "HYFN", u16 version, u16 reserved, then the fields.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_LEN);
        out.extend_from_slice(&STATE_MAGIC);
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
        out.extend_from_slice(&self.max_write.to_le_bytes());
        out.extend_from_slice(&self.max_readahead.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.max_pages.to_le_bytes());
        out.push(u8::from(self.passthrough));
        out.push(0);
        out.extend_from_slice(&self.max_stack_depth.to_le_bytes());
        out.extend_from_slice(&self.time_gran.to_le_bytes());
        debug_assert_eq!(out.len(), STATE_LEN);
        out
    }

    /// Decodes [`Negotiated::to_bytes`] output, refusing unknown versions and inconsistent values.
    pub fn from_bytes(bytes: &[u8]) -> Result<Negotiated, TransportError> {
        let bad = |reason: String| TransportError::BadNegotiatedState { reason };
        if bytes.len() < 8 || bytes[0..4] != STATE_MAGIC {
            return Err(bad("missing HYFN magic".into()));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != STATE_VERSION {
            return Err(TransportError::UnsupportedStateVersion {
                found: version,
                supported: STATE_VERSION,
            });
        }
        if bytes.len() != STATE_LEN {
            return Err(bad(format!(
                "length {} instead of {STATE_LEN}",
                bytes.len()
            )));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4-byte slice"));
        let state = Negotiated {
            major: u32_at(8),
            minor: u32_at(12),
            max_write: u32_at(16),
            max_readahead: u32_at(20),
            flags: u64::from_le_bytes(bytes[24..32].try_into().expect("8-byte slice")),
            max_pages: u16::from_le_bytes([bytes[32], bytes[33]]),
            passthrough: match bytes[34] {
                0 => false,
                1 => true,
                other => return Err(bad(format!("passthrough byte {other}"))),
            },
            max_stack_depth: u32_at(36),
            time_gran: u32_at(40),
        };
        if state.major != abi::FUSE_KERNEL_VERSION || state.minor > abi::FUSE_KERNEL_MINOR_VERSION {
            return Err(bad(format!(
                "protocol {}.{} not spoken by this transport",
                state.major, state.minor
            )));
        }
        if state.passthrough != (state.flags & abi::FUSE_PASSTHROUGH != 0) {
            return Err(bad("passthrough disagrees with the agreed flags".into()));
        }
        if state.max_write < 4096 || state.max_pages == 0 {
            return Err(bad(format!(
                "max_write {} / max_pages {} too small",
                state.max_write, state.max_pages
            )));
        }
        Ok(state)
    }
}

/// Outcome of one INIT request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InitOutcome {
    /// Protocol agreed: send `reply` (already truncated to what the kernel's minor understands).
    Agreed {
        reply: Vec<u8>,
        negotiated: Negotiated,
    },
    /// The kernel speaks a newer major: answer with ours and expect another INIT.
    RetryWithMajor { reply: Vec<u8> },
}

/// Answers an INIT request body (everything after fuse_in_header).
pub(crate) fn negotiate(
    body: &[u8],
    config: &SessionConfig,
) -> Result<InitOutcome, TransportError> {
    // Kernels before 7.36 send the 16-byte compat body; the rest then reads as zero.
    if body.len() < abi::FUSE_COMPAT_INIT_IN_SIZE {
        return Err(TransportError::MalformedRequest {
            opcode: "INIT",
            unique: 0,
            reason: format!(
                "body of {} bytes, need at least {}",
                body.len(),
                abi::FUSE_COMPAT_INIT_IN_SIZE
            ),
        });
    }
    let mut padded = [0u8; size_of::<abi::fuse_init_in>()];
    let take = body.len().min(padded.len());
    padded[..take].copy_from_slice(&body[..take]);
    let init = abi::fuse_init_in::read_from_bytes(&padded).expect("exact size");

    if init.major > abi::FUSE_KERNEL_VERSION {
        let out = abi::fuse_init_out {
            major: abi::FUSE_KERNEL_VERSION,
            minor: abi::FUSE_KERNEL_MINOR_VERSION,
            ..Default::default()
        };
        return Ok(InitOutcome::RetryWithMajor {
            reply: zerocopy::IntoBytes::as_bytes(&out).to_vec(),
        });
    }
    if init.major < abi::FUSE_KERNEL_VERSION || init.minor < 13 {
        return Err(TransportError::UnsupportedProtocol {
            major: init.major,
            minor: init.minor,
        });
    }
    let minor = init.minor.min(abi::FUSE_KERNEL_MINOR_VERSION);
    let mut offered = u64::from(init.flags);
    if offered & abi::FUSE_INIT_EXT != 0 {
        offered |= u64::from(init.flags2) << 32;
    }

    // FUSE_ABORT_ERROR: an abort through fusectl is then recorded as such, and reads of the device fail with
    // ECONNABORTED instead of the ENODEV of an unmount; that is how a supervisor tells a dead mount it must
    // detach from a mount point already reused by a new mount (the kernel recycles connection numbers).
    // Requests of an aborted connection fail with ECONNABORTED.
    let mut wanted = abi::FUSE_BIG_WRITES
        | abi::FUSE_MAX_PAGES
        | abi::FUSE_INIT_EXT
        | abi::FUSE_HAS_RESEND
        | abi::FUSE_ABORT_ERROR;
    let optional = [
        (config.async_read, abi::FUSE_ASYNC_READ),
        (config.parallel_dirops, abi::FUSE_PARALLEL_DIROPS),
        (config.cache_symlinks, abi::FUSE_CACHE_SYMLINKS),
        (config.stateless_dirs, abi::FUSE_NO_OPENDIR_SUPPORT),
        (config.readdirplus, abi::FUSE_DO_READDIRPLUS),
        (
            config.readdirplus && config.readdirplus_auto,
            abi::FUSE_READDIRPLUS_AUTO,
        ),
        (config.want_passthrough, abi::FUSE_PASSTHROUGH),
    ];
    for (on, flag) in optional {
        if on {
            wanted |= flag;
        }
    }
    let mut agreed = offered & wanted;
    // The kernel enables passthrough only for a stack depth of 1..=FILESYSTEM_MAX_STACK_DEPTH.
    let max_stack_depth = config
        .max_stack_depth
        .clamp(1, abi::FILESYSTEM_MAX_STACK_DEPTH);
    let passthrough = agreed & abi::FUSE_PASSTHROUGH != 0;
    let max_pages = if agreed & abi::FUSE_MAX_PAGES != 0 {
        config.max_pages.max(1)
    } else {
        abi::FUSE_DEFAULT_MAX_PAGES_PER_REQ
    };
    if agreed & abi::FUSE_INIT_EXT == 0 {
        agreed &= u64::from(u32::MAX);
    }
    let negotiated = Negotiated {
        major: abi::FUSE_KERNEL_VERSION,
        minor,
        max_write: config.max_write.max(4096),
        max_readahead: config.max_readahead.min(init.max_readahead),
        flags: agreed,
        max_pages,
        passthrough,
        max_stack_depth: if passthrough { max_stack_depth } else { 0 },
        time_gran: 1,
    };
    let out = abi::fuse_init_out {
        major: negotiated.major,
        minor: negotiated.minor,
        max_readahead: negotiated.max_readahead,
        flags: agreed as u32,
        max_background: config.max_background,
        congestion_threshold: config.congestion_threshold,
        max_write: negotiated.max_write,
        time_gran: negotiated.time_gran,
        max_pages: negotiated.max_pages,
        map_alignment: 0,
        flags2: (agreed >> 32) as u32,
        max_stack_depth: negotiated.max_stack_depth,
        request_timeout: 0,
        unused: [0; 11],
    };
    let full = zerocopy::IntoBytes::as_bytes(&out);
    // Older minors expect the shorter reply layouts they were defined with.
    let len = match minor {
        0..=4 => abi::FUSE_COMPAT_INIT_OUT_SIZE,
        5..=22 => abi::FUSE_COMPAT_22_INIT_OUT_SIZE,
        _ => full.len(),
    };
    Ok(InitOutcome::Agreed {
        reply: full[..len].to_vec(),
        negotiated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn sample() -> Negotiated {
        Negotiated {
            major: 7,
            minor: 44,
            max_write: 1 << 20,
            max_readahead: 131_072,
            flags: abi::FUSE_ASYNC_READ | abi::FUSE_PASSTHROUGH | abi::FUSE_INIT_EXT,
            max_pages: 256,
            passthrough: true,
            max_stack_depth: 1,
            time_gran: 1,
        }
    }

    #[test]
    fn negotiated_round_trips() {
        let state = sample();
        assert_eq!(Negotiated::from_bytes(&state.to_bytes()).unwrap(), state);
    }

    /// Golden bytes of version 1: if this fails, the encoding changed and STATE_VERSION must be bumped.
    #[test]
    fn negotiated_golden_bytes_v1() {
        let expected: Vec<u8> = [
            &b"HYFN"[..],
            &[1, 0, 0, 0],
            &[7, 0, 0, 0],
            &[44, 0, 0, 0],
            &[0, 0, 0x10, 0],
            &[0, 0, 2, 0],
            &[0x01, 0, 0, 0x40, 0x20, 0, 0, 0],
            &[0, 1, 1, 0],
            &[1, 0, 0, 0],
            &[1, 0, 0, 0],
        ]
        .concat();
        assert_eq!(sample().to_bytes(), expected);
    }

    #[test]
    fn negotiated_refuses_bad_input() {
        let good = sample().to_bytes();
        let mut wrong_version = good.clone();
        wrong_version[4] = 2;
        assert!(matches!(
            Negotiated::from_bytes(&wrong_version),
            Err(TransportError::UnsupportedStateVersion {
                found: 2,
                supported: 1
            })
        ));
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(Negotiated::from_bytes(&bad_magic).is_err());
        assert!(Negotiated::from_bytes(&good[..good.len() - 1]).is_err());
        let mut inconsistent = good.clone();
        inconsistent[34] = 0;
        assert!(Negotiated::from_bytes(&inconsistent).is_err());
        let mut bad_bool = good;
        bad_bool[34] = 7;
        assert!(Negotiated::from_bytes(&bad_bool).is_err());
    }

    #[test]
    fn read_buffer_covers_the_kernel_minimum() {
        let mut state = sample();
        assert!(state.read_buffer_size() >= 40 + 40 + (1 << 20));
        state.max_write = 4096;
        state.max_pages = 1;
        assert!(state.read_buffer_size() >= abi::FUSE_MIN_READ_BUFFER);
    }

    fn init_body(minor: u32, flags: u64) -> Vec<u8> {
        abi::fuse_init_in {
            major: 7,
            minor,
            max_readahead: 131_072,
            flags: flags as u32,
            flags2: (flags >> 32) as u32,
            unused: [0; 11],
        }
        .as_bytes()
        .to_vec()
    }

    #[test]
    fn init_requests_only_offered_flags() {
        let offered = abi::FUSE_ASYNC_READ
            | abi::FUSE_INIT_EXT
            | abi::FUSE_PASSTHROUGH
            | abi::FUSE_WRITEBACK_CACHE;
        let config = SessionConfig {
            want_passthrough: true,
            ..SessionConfig::default()
        };
        let InitOutcome::Agreed { reply, negotiated } =
            negotiate(&init_body(45, offered), &config).unwrap()
        else {
            panic!("expected agreement");
        };
        assert_eq!(negotiated.minor, 44);
        assert_eq!(
            negotiated.flags,
            abi::FUSE_ASYNC_READ | abi::FUSE_INIT_EXT | abi::FUSE_PASSTHROUGH
        );
        assert!(negotiated.passthrough);
        assert_eq!(
            negotiated.max_pages,
            abi::FUSE_DEFAULT_MAX_PAGES_PER_REQ,
            "MAX_PAGES was not offered"
        );
        let out = abi::fuse_init_out::read_from_bytes(&reply).unwrap();
        assert_eq!(
            out.flags,
            (abi::FUSE_ASYNC_READ | abi::FUSE_INIT_EXT) as u32
        );
        assert_eq!(out.flags2, (abi::FUSE_PASSTHROUGH >> 32) as u32);
        assert_eq!(out.max_stack_depth, 1);
        assert_eq!(out.max_readahead, 131_072);
    }

    #[test]
    fn stateless_dirs_are_agreed_only_when_offered_and_asked() {
        let agreed = |offered: u64, stateless_dirs: bool| {
            let config = SessionConfig {
                stateless_dirs,
                ..SessionConfig::default()
            };
            match negotiate(&init_body(44, offered | abi::FUSE_INIT_EXT), &config).unwrap() {
                InitOutcome::Agreed { negotiated, .. } => negotiated.stateless_dirs(),
                InitOutcome::RetryWithMajor { .. } => panic!("expected agreement"),
            }
        };
        assert!(agreed(abi::FUSE_NO_OPENDIR_SUPPORT, true));
        assert!(!agreed(abi::FUSE_NO_OPENDIR_SUPPORT, false));
        assert!(
            !agreed(0, true),
            "a kernel that does not offer it fails an OPENDIR answered with ENOSYS"
        );
    }

    #[test]
    fn init_without_ext_drops_high_flags() {
        // A compat body: 16 bytes, no FUSE_INIT_EXT.
        let body = &init_body(31, abi::FUSE_ASYNC_READ | abi::FUSE_MAX_PAGES)[..16];
        let config = SessionConfig {
            want_passthrough: true,
            ..SessionConfig::default()
        };
        let InitOutcome::Agreed { reply, negotiated } = negotiate(body, &config).unwrap() else {
            panic!("expected agreement");
        };
        assert_eq!(negotiated.minor, 31);
        assert!(!negotiated.passthrough);
        assert_eq!(negotiated.max_stack_depth, 0);
        assert_eq!(negotiated.max_pages, 256);
        assert_eq!(reply.len(), 64);
        assert!(!negotiated.supports_resend());
    }

    #[test]
    fn init_with_newer_major_asks_for_retry_and_old_major_fails() {
        let mut body = init_body(0, 0);
        body[0] = 8;
        assert!(matches!(
            negotiate(&body, &SessionConfig::default()),
            Ok(InitOutcome::RetryWithMajor { .. })
        ));
        body[0] = 6;
        assert!(matches!(
            negotiate(&body, &SessionConfig::default()),
            Err(TransportError::UnsupportedProtocol { major: 6, .. })
        ));
        assert!(negotiate(&body[..8], &SessionConfig::default()).is_err());
    }

    #[test]
    fn init_reply_is_truncated_for_old_minors() {
        let InitOutcome::Agreed { reply, .. } =
            negotiate(&init_body(22, 0), &SessionConfig::default()).unwrap()
        else {
            panic!("expected agreement");
        };
        assert_eq!(reply.len(), abi::FUSE_COMPAT_22_INIT_OUT_SIZE);
    }
}
