//! File handles any worker process can interpret, and the per-inode I/O-mode bookkeeping that must outlive a
//! worker.
//!
//! A worker can be killed or replaced while the kernel holds open files. The next worker then receives
//! requests naming file handles it never issued, and opens of inodes whose kernel-side I/O mode (cached or
//! passthrough, with one backing file) was set by its predecessor. Two rules make this safe:
//!
//! 1. A handle encodes what is needed to rebuild it: the inode number and the open mode ([`FileHandle`]). A
//!    worker that meets an unknown handle reopens the inode lazily on first use.
//! 2. Every change of the passthrough bookkeeping (an open with its mode and, if newly registered, its backing
//!    id; a release; a backing id about to be closed) is written to an [`IoJournal`] *before* the kernel can
//!    observe it (before the open reply, before BACKING_CLOSE). The supervisor folds the journal into a state
//!    the next worker starts from ([`RestoredIo`]). A worker dying after journaling but before replying can
//!    only make the state over-count (a leaked backing id, an inode kept in one mode), never under-count,
//!    which is what the kernel would punish with EIO/EBUSY; and a re-sent OPEN is recognised by its request
//!    id and answered with the handle already journaled for it.

use hydrate_fuse_transport::BackingId;
use std::collections::HashMap;
use std::io;

/// Bits of a [`FileHandle`] holding the open's serial number (unique among live handles of one inode+mode).
const SERIAL_BITS: u32 = 23;
const MODE_BIT: u64 = 1 << SERIAL_BITS;
const INO_SHIFT: u32 = SERIAL_BITS + 1;
/// Largest inode number a handle can carry (2^40 - 1, far above any image's inode count).
pub const MAX_HANDLE_INO: u64 = (1 << (64 - INO_SHIFT)) - 1;

/// A FUSE file handle: `ino << 24 | passthrough << 23 | serial`. Never 0 (inode numbers start at 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileHandle(pub u64);

impl FileHandle {
    /// None when `ino` does not fit (see [`MAX_HANDLE_INO`]).
    pub fn new(ino: u64, passthrough: bool, serial: u32) -> Option<FileHandle> {
        if ino == 0 || ino > MAX_HANDLE_INO {
            return None;
        }
        let mode = if passthrough { MODE_BIT } else { 0 };
        Some(FileHandle(
            ino << INO_SHIFT | mode | u64::from(serial) & (MODE_BIT - 1),
        ))
    }

    pub fn ino(self) -> u64 {
        self.0 >> INO_SHIFT
    }

    pub fn passthrough(self) -> bool {
        self.0 & MODE_BIT != 0
    }

    pub fn serial(self) -> u32 {
        (self.0 & (MODE_BIT - 1)) as u32
    }
}

/// One open file as journaled: enough for any worker to serve and release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleRecord {
    pub fh: FileHandle,
    pub ino: u64,
    pub passthrough: bool,
    /// The OPEN request's id (resend bit stripped), to recognise the same OPEN when the kernel re-sends it.
    pub open_unique: u64,
}

/// A change to the bookkeeping, journaled before the kernel can observe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEvent {
    /// An open about to be answered; `new_backing` is set when this open registered the inode's backing id.
    Opened {
        record: HandleRecord,
        new_backing: Option<BackingId>,
    },
    Released {
        fh: FileHandle,
    },
    /// The inode's backing id is about to be closed (its last passthrough open was released).
    BackingClosed {
        ino: u64,
    },
}

/// Where bookkeeping changes go (the supervisor link). An error fails the operation that caused it: without
/// a journal a successor could not serve the connection correctly.
pub trait IoJournal: Send + Sync {
    fn record(&self, event: &IoEvent) -> io::Result<()>;
}

/// The bookkeeping a worker starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoredIo {
    pub handles: Vec<HandleRecord>,
    /// Backing ids still registered with the kernel, by inode.
    pub backings: Vec<(u64, BackingId)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    Cached,
    Passthrough,
}

#[derive(Debug, Default)]
pub(crate) struct InodeIo {
    pub cached_opens: u32,
    pub passthrough_opens: u32,
    pub backing: Option<BackingId>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Handle {
    pub ino: u64,
    pub mode: OpenMode,
    pub open_unique: u64,
    /// The core volume's handle, opened lazily for handles inherited from another worker.
    pub vol_fh: Option<u64>,
}

/// All open handles and per-inode modes of this worker.
#[derive(Debug, Default)]
pub(crate) struct IoTable {
    pub handles: HashMap<FileHandle, Handle>,
    pub inodes: HashMap<u64, InodeIo>,
    next_serial: u32,
}

impl IoTable {
    pub fn restore(restored: &RestoredIo) -> IoTable {
        let mut table = IoTable::default();
        for &(ino, id) in &restored.backings {
            table.inodes.entry(ino).or_default().backing = Some(id);
        }
        for rec in &restored.handles {
            let mode = if rec.passthrough {
                OpenMode::Passthrough
            } else {
                OpenMode::Cached
            };
            table.insert(
                rec.fh,
                Handle {
                    ino: rec.ino,
                    mode,
                    open_unique: rec.open_unique,
                    vol_fh: None,
                },
            );
            table.next_serial = table.next_serial.max(rec.fh.serial().wrapping_add(1));
        }
        table
    }

    /// Adds a handle and counts it against its inode's mode.
    pub fn insert(&mut self, fh: FileHandle, handle: Handle) {
        let io = self.inodes.entry(handle.ino).or_default();
        match handle.mode {
            OpenMode::Cached => io.cached_opens += 1,
            OpenMode::Passthrough => io.passthrough_opens += 1,
        }
        self.handles.insert(fh, handle);
    }

    /// A handle number not in use for this inode and mode.
    pub fn allocate(&mut self, ino: u64, passthrough: bool) -> Option<FileHandle> {
        // 2^23 serials per inode and mode: a free one is found long before the loop could wrap.
        for _ in 0..(1u32 << SERIAL_BITS) {
            let serial = self.next_serial & ((1 << SERIAL_BITS) - 1);
            self.next_serial = self.next_serial.wrapping_add(1);
            let fh = FileHandle::new(ino, passthrough, serial)?;
            if !self.handles.contains_key(&fh) {
                return Some(fh);
            }
        }
        None
    }

    /// The handle journaled for the OPEN request `unique`, if any (a re-sent OPEN).
    pub fn by_open_unique(&self, unique: u64) -> Option<(FileHandle, Handle)> {
        self.handles
            .iter()
            .find(|(_, h)| h.open_unique == unique && unique != 0)
            .map(|(fh, h)| (*fh, *h))
    }

    /// Removes a handle; returns it and, when it was the inode's last passthrough open, the backing id to close.
    pub fn remove(&mut self, fh: FileHandle) -> Option<(Handle, Option<BackingId>)> {
        let handle = self.handles.remove(&fh)?;
        let mut close = None;
        if let Some(io) = self.inodes.get_mut(&handle.ino) {
            match handle.mode {
                OpenMode::Cached => io.cached_opens = io.cached_opens.saturating_sub(1),
                OpenMode::Passthrough => {
                    io.passthrough_opens = io.passthrough_opens.saturating_sub(1)
                }
            }
            if io.passthrough_opens == 0 {
                close = io.backing.take();
            }
            if io.cached_opens == 0 && io.passthrough_opens == 0 && io.backing.is_none() {
                self.inodes.remove(&handle.ino);
            }
        }
        Some((handle, close))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn handle_round_trips(ino in 1..=MAX_HANDLE_INO, pt: bool, serial in 0u32..(1 << SERIAL_BITS)) {
            let fh = FileHandle::new(ino, pt, serial).unwrap();
            prop_assert_ne!(fh.0, 0);
            prop_assert_eq!(fh.ino(), ino);
            prop_assert_eq!(fh.passthrough(), pt);
            prop_assert_eq!(fh.serial(), serial);
        }

        /// Any sequence of opens and releases, restored from the journal at any point, gives the same counts
        /// as the table that never stopped.
        #[test]
        fn restore_matches_live_table(ops in proptest::collection::vec((1u64..4, any::<bool>(), any::<bool>()), 1..60),
                                      cut in 0usize..60) {
            let mut live = IoTable::default();
            let mut journal: Vec<IoEvent> = Vec::new();
            let mut unique = 0;
            for (i, (ino, pt, open)) in ops.iter().copied().enumerate() {
                if i == cut {
                    let restored = fold(&journal);
                    live = IoTable::restore(&restored);
                }
                if open {
                    unique += 1;
                    let fh = live.allocate(ino, pt).unwrap();
                    let mode = if pt { OpenMode::Passthrough } else { OpenMode::Cached };
                    let io = live.inodes.entry(ino).or_default();
                    let new_backing = if pt && io.backing.is_none() {
                        io.backing = Some(BackingId(ino as i32));
                        io.backing
                    } else { None };
                    journal.push(IoEvent::Opened {
                        record: HandleRecord { fh, ino, passthrough: pt, open_unique: unique },
                        new_backing,
                    });
                    live.insert(fh, Handle { ino, mode, open_unique: unique, vol_fh: None });
                } else if let Some(fh) = live.handles.keys().copied().min() {
                    journal.push(IoEvent::Released { fh });
                    if let Some((handle, Some(_))) = live.remove(fh) {
                        journal.push(IoEvent::BackingClosed { ino: handle.ino });
                    }
                }
            }
            let restored = IoTable::restore(&fold(&journal));
            for (ino, io) in &live.inodes {
                let r = restored.inodes.get(ino).expect("inode restored");
                prop_assert_eq!(r.cached_opens, io.cached_opens);
                prop_assert_eq!(r.passthrough_opens, io.passthrough_opens);
                prop_assert_eq!(r.backing, io.backing);
            }
            prop_assert_eq!(restored.handles.len(), live.handles.len());
        }
    }

    /// The supervisor's fold of the journal, modelled here.
    fn fold(journal: &[IoEvent]) -> RestoredIo {
        let mut handles: HashMap<FileHandle, HandleRecord> = HashMap::new();
        let mut backings: HashMap<u64, BackingId> = HashMap::new();
        for e in journal {
            match *e {
                IoEvent::Opened {
                    record,
                    new_backing,
                } => {
                    if let Some(id) = new_backing {
                        backings.insert(record.ino, id);
                    }
                    handles.insert(record.fh, record);
                }
                IoEvent::Released { fh } => {
                    handles.remove(&fh);
                }
                IoEvent::BackingClosed { ino } => {
                    backings.remove(&ino);
                }
            }
        }
        RestoredIo {
            handles: handles.into_values().collect(),
            backings: backings.into_iter().collect(),
        }
    }

    #[test]
    fn resent_open_is_found_by_request_id() {
        let mut t = IoTable::default();
        let fh = t.allocate(7, false).unwrap();
        t.insert(
            fh,
            Handle {
                ino: 7,
                mode: OpenMode::Cached,
                open_unique: 42,
                vol_fh: None,
            },
        );
        assert_eq!(t.by_open_unique(42).map(|(f, _)| f), Some(fh));
        assert!(t.by_open_unique(43).is_none());
        assert!(t.by_open_unique(0).is_none());
    }

    #[test]
    fn last_passthrough_release_closes_the_backing_id() {
        let mut t = IoTable::restore(&RestoredIo {
            handles: vec![],
            backings: vec![(5, BackingId(3))],
        });
        let a = t.allocate(5, true).unwrap();
        let b = t.allocate(5, true).unwrap();
        assert_ne!(a, b);
        for fh in [a, b] {
            t.insert(
                fh,
                Handle {
                    ino: 5,
                    mode: OpenMode::Passthrough,
                    open_unique: fh.0,
                    vol_fh: None,
                },
            );
        }
        assert_eq!(t.remove(a).unwrap().1, None);
        assert_eq!(t.remove(b).unwrap().1, Some(BackingId(3)));
        assert!(
            t.remove(b).is_none(),
            "a second release of the same handle is a no-op"
        );
        assert!(t.inodes.is_empty());
    }
}
