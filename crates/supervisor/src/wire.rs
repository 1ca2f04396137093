//! The supervisor ↔ worker link: one `SOCK_SEQPACKET` socketpair per worker, one message per packet (so no
//! framing), descriptors passed with SCM_RIGHTS.
//!
//! Conversation: the supervisor sends `Offer` (with the current state in a memfd); the worker prepares and
//! answers `Accept` or `Refuse` (a state or link version it does not understand) or `Fatal` (it cannot serve
//! at all, e.g. the image is missing). Then `Start` (the /dev/fuse descriptor and a fresh state memfd); the
//! worker resumes or initializes the connection and says `Serving`, then reports `Event`s as they happen. A
//! `Stop` asks it to finish the requests it has read and exit, for an upgrade.
//!
//! The supervisor runs the binary that started the mount while workers may be newer, so the link is versioned:
//! `Offer` carries [`LINK_VERSION`] and a worker refuses a version it does not speak.

#![allow(unsafe_code)]

use crate::error::SupervisorError;
use crate::state::{Event, Reader, Writer};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Version of the message set below.
pub const LINK_VERSION: u16 = 1;
/// Largest packet: events are tens of bytes, error texts are cut to fit.
const MAX_PACKET: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Supervisor → worker, with one fd: a memfd holding the encoded state.
    Offer {
        link_version: u16,
        generation: u64,
    },
    /// Supervisor → worker, with two fds: /dev/fuse, then the state memfd.
    Start,
    /// Supervisor → worker: finish what you read, exit.
    Stop,
    Accept,
    Refuse {
        reason: String,
    },
    Fatal {
        message: String,
    },
    Serving,
    Event(Event),
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Message::Offer {
                link_version,
                generation,
            } => {
                w.u8(1);
                w.u16(*link_version);
                w.u64(*generation);
            }
            Message::Start => w.u8(2),
            Message::Stop => w.u8(3),
            Message::Accept => w.u8(10),
            Message::Refuse { reason } => {
                w.u8(11);
                w.blob(truncate(reason).as_bytes());
            }
            Message::Fatal { message } => {
                w.u8(12);
                w.blob(truncate(message).as_bytes());
            }
            Message::Serving => w.u8(13),
            Message::Event(e) => {
                w.u8(14);
                w.bytes(&e.encode());
            }
        }
        w.0
    }

    fn decode(bytes: &[u8]) -> Result<Message, SupervisorError> {
        let mut r = Reader::new(bytes);
        let bad = |reason: String| SupervisorError::BadMessage { reason };
        let kind = r.u8().map_err(|_| bad("empty packet".into()))?;
        let msg = match kind {
            1 => Message::Offer {
                link_version: r.u16()?,
                generation: r.u64()?,
            },
            2 => Message::Start,
            3 => Message::Stop,
            10 => Message::Accept,
            11 => Message::Refuse {
                reason: r.string()?,
            },
            12 => Message::Fatal {
                message: r.string()?,
            },
            13 => Message::Serving,
            14 => return Ok(Message::Event(Event::decode(&bytes[1..])?)),
            other => return Err(bad(format!("unknown message kind {other}"))),
        };
        r.finish()?;
        Ok(msg)
    }
}

fn truncate(s: &str) -> &str {
    let max = MAX_PACKET - 64;
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A connected pair: (supervisor end, worker end). Both close on exec; the spawner clears that flag on the
/// worker end for the one child that must inherit it.
pub fn pair() -> Result<(OwnedFd, OwnedFd), SupervisorError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SupervisorError::link("creating the socketpair", e))
}

/// Sends one message with descriptors.
pub fn send(
    sock: BorrowedFd<'_>,
    msg: &Message,
    fds: &[BorrowedFd<'_>],
) -> Result<(), SupervisorError> {
    let bytes = msg.encode();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EPIPE) | Err(nix::errno::Errno::ECONNRESET) => {
                return Err(SupervisorError::LinkClosed)
            }
            Err(e) => return Err(SupervisorError::link("sending a message", e)),
        }
    }
}

/// Receives one message and the descriptors that came with it. `Ok(None)`: the peer closed the link. With
/// `nonblocking`, `Err(Link{EAGAIN})` means nothing is waiting.
pub fn recv(
    sock: BorrowedFd<'_>,
    nonblocking: bool,
) -> Result<Option<(Message, Vec<OwnedFd>)>, SupervisorError> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg
                    .cmsgs()
                    .map_err(|e| SupervisorError::link("control data", e))?
                {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: the kernel just installed `fd` in our table for this message (SCM_RIGHTS);
                            // nothing else in the process knows the number, so we are its only owner.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                if msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
                {
                    return Err(SupervisorError::BadMessage {
                        reason: "packet or descriptors truncated".into(),
                    });
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECONNRESET) => return Ok(None),
            Err(e) => return Err(SupervisorError::link("receiving a message", e)),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    Ok(Some((Message::decode(&buf[..len])?, fds)))
}

/// Whether a [`recv`] error only means "nothing waiting" on a non-blocking receive.
pub fn would_block(err: &SupervisorError) -> bool {
    matches!(err, SupervisorError::Link { source, .. } if source.raw_os_error() == Some(libc::EAGAIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::OpenRecord;
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_descriptors_cross_the_link() {
        let (a, b) = pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let msgs = [
            Message::Offer {
                link_version: LINK_VERSION,
                generation: 3,
            },
            Message::Refuse {
                reason: "nope".into(),
            },
            Message::Event(Event::Opened {
                record: OpenRecord {
                    fh: 1,
                    ino: 2,
                    passthrough: true,
                    open_unique: 3,
                },
                backing: Some(4),
            }),
            Message::Serving,
        ];
        for m in &msgs {
            send(a.as_fd(), m, &[file.as_fd()]).unwrap();
            let (got, fds) = recv(b.as_fd(), false).unwrap().unwrap();
            assert_eq!(&got, m);
            assert_eq!(fds.len(), 1);
            let flags = nix::fcntl::fcntl(&fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(
                flags & libc::FD_CLOEXEC,
                0,
                "received descriptors close on exec"
            );
        }
        assert!(would_block(&recv(b.as_fd(), true).unwrap_err()));
        drop(a);
        assert!(
            recv(b.as_fd(), false).unwrap().is_none(),
            "EOF when the peer is gone"
        );
    }

    #[test]
    fn long_texts_are_cut_to_one_packet() {
        let (a, b) = pair().unwrap();
        let reason = "é".repeat(MAX_PACKET);
        send(a.as_fd(), &Message::Fatal { message: reason }, &[]).unwrap();
        let (Message::Fatal { message }, _) = recv(b.as_fd(), false).unwrap().unwrap() else {
            panic!("expected Fatal");
        };
        assert!(message.len() < MAX_PACKET && message.starts_with('é'));
    }
}
