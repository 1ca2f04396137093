//! The state one worker hands to the next: what the kernel agreed at INIT, a few named facts the first worker
//! settled (the resolved image, the cache directory), and the open file handles and passthrough backing ids
//! the kernel still holds.
//!
//! Workers never send the whole state: they report each change as an [`Event`] the moment it happens (before
//! the kernel can observe it), and the supervisor folds the events into a [`HandoverState`] with
//! [`HandoverState::apply`]. A new worker receives the folded state encoded with [`HandoverState::encode`]:
//! magic `HYSV`, a version, then length-prefixed little-endian sections. A worker refuses a version it does
//! not know, cleanly, so an upgrade to an incompatible binary leaves the old worker serving.

use crate::error::SupervisorError;
use std::collections::BTreeMap;

const MAGIC: [u8; 4] = *b"HYSV";
/// Version of the encoded state and of the event encoding.
pub const STATE_VERSION: u16 = 1;

/// An open file the kernel holds: any worker can serve and release it from this record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRecord {
    pub fh: u64,
    pub ino: u64,
    pub passthrough: bool,
    /// The OPEN request's id, so a re-sent OPEN gets the same handle.
    pub open_unique: u64,
}

/// One change reported by a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The negotiated protocol parameters (`Negotiated::to_bytes`), reported once after INIT.
    Negotiated(Vec<u8>),
    /// A fact later workers must reuse rather than recompute (e.g. `image` = the digest a tag resolved to).
    Note {
        key: String,
        value: String,
    },
    /// An open about to be answered; `backing` is set when this open registered the inode's backing id.
    Opened {
        record: OpenRecord,
        backing: Option<i32>,
    },
    Released {
        fh: u64,
    },
    /// The inode's backing id is about to be closed.
    BackingClosed {
        ino: u64,
    },
}

/// Everything a worker needs to take over a live connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandoverState {
    pub negotiated: Option<Vec<u8>>,
    pub notes: BTreeMap<String, String>,
    pub opens: BTreeMap<u64, OpenRecord>,
    /// Backing ids registered with the kernel, by inode.
    pub backings: BTreeMap<u64, i32>,
}

impl HandoverState {
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Negotiated(bytes) => self.negotiated = Some(bytes.clone()),
            Event::Note { key, value } => {
                self.notes.insert(key.clone(), value.clone());
            }
            Event::Opened { record, backing } => {
                if let Some(id) = backing {
                    self.backings.insert(record.ino, *id);
                }
                self.opens.insert(record.fh, *record);
            }
            Event::Released { fh } => {
                self.opens.remove(fh);
            }
            Event::BackingClosed { ino } => {
                self.backings.remove(ino);
            }
        }
    }

    pub fn note(&self, key: &str) -> Option<&str> {
        self.notes.get(key).map(String::as_str)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(&MAGIC);
        w.u16(STATE_VERSION);
        w.u16(0);
        match &self.negotiated {
            Some(n) => {
                w.u8(1);
                w.blob(n);
            }
            None => w.u8(0),
        }
        w.u32(self.notes.len() as u32);
        for (k, v) in &self.notes {
            w.blob(k.as_bytes());
            w.blob(v.as_bytes());
        }
        w.u32(self.opens.len() as u32);
        for r in self.opens.values() {
            write_record(&mut w, r);
        }
        w.u32(self.backings.len() as u32);
        for (ino, id) in &self.backings {
            w.u64(*ino);
            w.u32(*id as u32);
        }
        w.0
    }

    /// Decodes [`HandoverState::encode`] output; refuses other versions and anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<HandoverState, SupervisorError> {
        let mut r = Reader::new(bytes);
        if r.take(4)? != MAGIC {
            return Err(bad("missing HYSV magic"));
        }
        let version = r.u16()?;
        if version != STATE_VERSION {
            return Err(SupervisorError::UnsupportedStateVersion {
                found: version,
                supported: STATE_VERSION,
            });
        }
        r.u16()?;
        let negotiated = match r.u8()? {
            0 => None,
            1 => Some(r.blob()?.to_vec()),
            other => return Err(bad(format!("negotiated flag {other}"))),
        };
        let mut state = HandoverState {
            negotiated,
            ..HandoverState::default()
        };
        for _ in 0..r.count()? {
            let k = r.string()?;
            let v = r.string()?;
            state.notes.insert(k, v);
        }
        for _ in 0..r.count()? {
            let rec = read_record(&mut r)?;
            if state.opens.insert(rec.fh, rec).is_some() {
                return Err(bad(format!("file handle {:#x} listed twice", rec.fh)));
            }
        }
        for _ in 0..r.count()? {
            let ino = r.u64()?;
            let id = r.u32()? as i32;
            state.backings.insert(ino, id);
        }
        r.finish()?;
        Ok(state)
    }
}

impl Event {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Event::Negotiated(bytes) => {
                w.u8(1);
                w.blob(bytes);
            }
            Event::Note { key, value } => {
                w.u8(2);
                w.blob(key.as_bytes());
                w.blob(value.as_bytes());
            }
            Event::Opened { record, backing } => {
                w.u8(3);
                write_record(&mut w, record);
                match backing {
                    Some(id) => {
                        w.u8(1);
                        w.u32(*id as u32);
                    }
                    None => w.u8(0),
                }
            }
            Event::Released { fh } => {
                w.u8(4);
                w.u64(*fh);
            }
            Event::BackingClosed { ino } => {
                w.u8(5);
                w.u64(*ino);
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, SupervisorError> {
        let mut r = Reader::new(bytes);
        let event = match r.u8()? {
            1 => Event::Negotiated(r.blob()?.to_vec()),
            2 => Event::Note {
                key: r.string()?,
                value: r.string()?,
            },
            3 => {
                let record = read_record(&mut r)?;
                let backing = match r.u8()? {
                    0 => None,
                    1 => Some(r.u32()? as i32),
                    other => return Err(bad(format!("backing flag {other}"))),
                };
                Event::Opened { record, backing }
            }
            4 => Event::Released { fh: r.u64()? },
            5 => Event::BackingClosed { ino: r.u64()? },
            other => return Err(bad(format!("unknown event kind {other}"))),
        };
        r.finish()?;
        Ok(event)
    }
}

fn write_record(w: &mut Writer, r: &OpenRecord) {
    w.u64(r.fh);
    w.u64(r.ino);
    w.u8(u8::from(r.passthrough));
    w.u64(r.open_unique);
}

fn read_record(r: &mut Reader<'_>) -> Result<OpenRecord, SupervisorError> {
    Ok(OpenRecord {
        fh: r.u64()?,
        ino: r.u64()?,
        passthrough: match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(bad(format!("passthrough flag {other}"))),
        },
        open_unique: r.u64()?,
    })
}

fn bad(reason: impl Into<String>) -> SupervisorError {
    SupervisorError::BadState {
        reason: reason.into(),
    }
}

/// Little-endian writer.
#[derive(Default)]
pub(crate) struct Writer(pub Vec<u8>);

impl Writer {
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    pub fn blob(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.bytes(b);
    }
}

/// Bounds-checked little-endian reader.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], SupervisorError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| bad(format!("truncated at byte {} (need {n} more)", self.at)))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8, SupervisorError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, SupervisorError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    pub fn u32(&mut self) -> Result<u32, SupervisorError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u64(&mut self) -> Result<u64, SupervisorError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn blob(&mut self) -> Result<&'a [u8], SupervisorError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, SupervisorError> {
        String::from_utf8(self.blob()?.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }
    /// A element count, bounded by the bytes left (every element takes at least one byte).
    pub fn count(&mut self) -> Result<usize, SupervisorError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() - self.at {
            return Err(bad(format!("count {n} exceeds the remaining bytes")));
        }
        Ok(n)
    }
    pub fn finish(&self) -> Result<(), SupervisorError> {
        if self.at != self.buf.len() {
            return Err(bad(format!("{} trailing bytes", self.buf.len() - self.at)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..50).prop_map(Event::Negotiated),
            ("[a-z]{1,8}", ".{0,20}").prop_map(|(key, value)| Event::Note { key, value }),
            (
                1u64..20,
                1u64..5,
                any::<bool>(),
                any::<u64>(),
                proptest::option::of(0i32..100)
            )
                .prop_map(|(fh, ino, passthrough, open_unique, backing)| {
                    Event::Opened {
                        record: OpenRecord {
                            fh,
                            ino,
                            passthrough,
                            open_unique,
                        },
                        backing,
                    }
                }),
            (1u64..20).prop_map(|fh| Event::Released { fh }),
            (1u64..5).prop_map(|ino| Event::BackingClosed { ino }),
        ]
    }

    proptest! {
        #[test]
        fn events_and_folded_state_round_trip(events in proptest::collection::vec(event(), 0..80)) {
            let mut state = HandoverState::default();
            for e in &events {
                prop_assert_eq!(&Event::decode(&e.encode()).unwrap(), e);
                state.apply(e);
            }
            prop_assert_eq!(HandoverState::decode(&state.encode()).unwrap(), state);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = HandoverState::decode(&bytes);
            let _ = Event::decode(&bytes);
        }

        #[test]
        fn truncated_state_is_refused(events in proptest::collection::vec(event(), 1..20), cut in 1usize..1000) {
            let mut state = HandoverState::default();
            for e in &events { state.apply(e); }
            let bytes = state.encode();
            let cut = cut % bytes.len();
            prop_assert!(HandoverState::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn a_newer_version_is_refused_cleanly() {
        let mut bytes = HandoverState::default().encode();
        bytes[4..6].copy_from_slice(&(STATE_VERSION + 1).to_le_bytes());
        assert!(matches!(
            HandoverState::decode(&bytes),
            Err(SupervisorError::UnsupportedStateVersion { found, supported: STATE_VERSION })
                if found == STATE_VERSION + 1
        ));
    }

    /// Golden bytes of version 1: if this fails, the encoding changed and STATE_VERSION must be bumped.
    #[test]
    fn version_1_golden_bytes() {
        let mut state = HandoverState::default();
        state.apply(&Event::Negotiated(vec![9, 8]));
        state.apply(&Event::Note {
            key: "k".into(),
            value: "v".into(),
        });
        state.apply(&Event::Opened {
            record: OpenRecord {
                fh: 0x102,
                ino: 1,
                passthrough: true,
                open_unique: 7,
            },
            backing: Some(3),
        });
        let expected: Vec<u8> = [
            &b"HYSV"[..],
            &[1, 0, 0, 0],
            &[1],
            &[2, 0, 0, 0, 9, 8],
            &[1, 0, 0, 0],
            &[1, 0, 0, 0, b'k'],
            &[1, 0, 0, 0, b'v'],
            &[1, 0, 0, 0],
            &[2, 1, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0, 0],
            &[1],
            &[7, 0, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0, 0],
            &[3, 0, 0, 0],
        ]
        .concat();
        assert_eq!(state.encode(), expected);
    }
}
