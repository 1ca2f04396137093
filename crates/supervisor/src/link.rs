//! The worker's side of the supervisor link.
//!
//! A worker is started with the link's descriptor number and the supervisor's pid on its command line. It
//! must call [`WorkerLink::connect`] first: that arms the parent-death signal, so a worker never outlives its
//! supervisor holding the /dev/fuse descriptor (the kernel then aborts the connection and readers get ENOTCONN
//! instead of hanging). Sends are single packets, atomic and ordered; they may come from any thread.

#![allow(unsafe_code)]

use crate::error::SupervisorError;
use crate::state::{Event, HandoverState};
use crate::sys;
use crate::wire::{self, Message, LINK_VERSION};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

/// What the supervisor offers a new worker.
#[derive(Debug)]
pub struct Offer {
    pub generation: u64,
    pub state: HandoverState,
}

/// What a worker serves from: the connection and the state as of now.
#[derive(Debug)]
pub struct Start {
    pub dev: OwnedFd,
    pub state: HandoverState,
}

/// Why [`WorkerLink::recv_offer`] did not return an offer the worker can take.
#[derive(Debug)]
pub enum OfferError {
    /// Answer with [`WorkerLink::refuse`]: the supervisor keeps the current worker.
    Unsupported(SupervisorError),
    Link(SupervisorError),
}

#[derive(Debug)]
pub struct WorkerLink {
    sock: OwnedFd,
}

impl WorkerLink {
    /// Takes ownership of the inherited link descriptor `fd` and ties this process's life to the supervisor.
    pub fn connect(fd: RawFd, supervisor_pid: i32) -> Result<WorkerLink, SupervisorError> {
        sys::die_with_parent(supervisor_pid)?;
        // SAFETY: the supervisor created this descriptor for us, left it open across exec and passed its
        // number on our command line; nothing else in this process owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        sys::set_inheritable(&sock, false)?;
        Ok(WorkerLink { sock })
    }

    pub fn recv_offer(&self) -> Result<Offer, OfferError> {
        let (msg, fds) = self.recv().map_err(OfferError::Link)?;
        let Message::Offer {
            link_version,
            generation,
        } = msg
        else {
            return Err(OfferError::Link(unexpected("Offer", &msg)));
        };
        if link_version != LINK_VERSION {
            return Err(OfferError::Unsupported(
                SupervisorError::UnsupportedLinkVersion {
                    found: link_version,
                    supported: LINK_VERSION,
                },
            ));
        }
        let state = decode_state(fds.into_iter().next()).map_err(OfferError::Unsupported)?;
        Ok(Offer { generation, state })
    }

    pub fn accept(&self) -> Result<(), SupervisorError> {
        self.send(&Message::Accept)
    }

    pub fn refuse(&self, reason: &str) -> Result<(), SupervisorError> {
        self.send(&Message::Refuse {
            reason: reason.to_owned(),
        })
    }

    /// This worker cannot serve at all (bad image, store unreachable); the message reaches `hydrate mount`.
    pub fn fatal(&self, message: &str) -> Result<(), SupervisorError> {
        self.send(&Message::Fatal {
            message: message.to_owned(),
        })
    }

    pub fn recv_start(&self) -> Result<Start, SupervisorError> {
        let (msg, fds) = self.recv()?;
        if msg != Message::Start {
            return Err(unexpected("Start", &msg));
        }
        let mut fds = fds.into_iter();
        let dev = fds.next().ok_or_else(|| SupervisorError::BadMessage {
            reason: "Start without the /dev/fuse descriptor".into(),
        })?;
        let state = decode_state(fds.next())?;
        Ok(Start { dev, state })
    }

    pub fn serving(&self) -> Result<(), SupervisorError> {
        self.send(&Message::Serving)
    }

    pub fn event(&self, event: &Event) -> Result<(), SupervisorError> {
        self.send(&Message::Event(event.clone()))
    }

    /// Blocks until the supervisor asks this worker to stop (`Ok`) or goes away (`Err(LinkClosed)`).
    pub fn wait_for_stop(&self) -> Result<(), SupervisorError> {
        loop {
            match self.recv()? {
                (Message::Stop, _) => return Ok(()),
                (other, _) => {
                    tracing::warn!(?other, "unexpected message from the supervisor; ignored")
                }
            }
        }
    }

    fn send(&self, msg: &Message) -> Result<(), SupervisorError> {
        wire::send(self.sock.as_fd(), msg, &[])
    }

    fn recv(&self) -> Result<(Message, Vec<OwnedFd>), SupervisorError> {
        wire::recv(self.sock.as_fd(), false)?.ok_or(SupervisorError::LinkClosed)
    }
}

fn decode_state(fd: Option<OwnedFd>) -> Result<HandoverState, SupervisorError> {
    let fd = fd.ok_or_else(|| SupervisorError::BadMessage {
        reason: "no state descriptor".into(),
    })?;
    HandoverState::decode(&sys::read_all(fd)?)
}

fn unexpected(wanted: &str, got: &Message) -> SupervisorError {
    SupervisorError::BadMessage {
        reason: format!("expected {wanted}, got {got:?}"),
    }
}
