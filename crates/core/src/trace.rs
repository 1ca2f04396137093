//! Recording which files a workload touches, in order: the input of learned prefetch.
//!
//! The core records every open (the kernel serves passthrough reads itself, so an open may be all it ever sees
//! of a file) and the first read of every byte range, by inode number while the mount runs; paths are resolved
//! only when the trace is written, by one walk of the manifest tree. Memory is proportional to what the
//! workload touched, not to the image. A trace is written atomically (temp file + rename), so a reader of the
//! file never sees half of one.

use crate::error::{CoreError, Result};
use crate::image::MappedManifest;
use hydrate_format::{FileKind, Ino, RangeSet, Trace, TraceEvent, TraceKind};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Touch {
    Open(Ino),
    Read(Ino, Range<u64>),
}

#[derive(Debug, Default)]
struct State {
    touches: Vec<Touch>,
    opened: HashSet<Ino>,
    read: HashMap<Ino, RangeSet>,
}

/// First touches of a running mount, in order.
#[derive(Debug, Default)]
pub struct TraceRecorder {
    state: Mutex<State>,
    /// Set by every new touch, cleared by [`TraceRecorder::take_dirty`]: the periodic writer skips idle periods.
    dirty: AtomicBool,
}

impl TraceRecorder {
    pub fn new() -> Self {
        TraceRecorder::default()
    }

    /// A recorder that continues `trace` (e.g. written by the previous worker of the same mount); events whose
    /// path is not a regular file of `manifest` are dropped.
    pub fn continuing(trace: &Trace, manifest: &MappedManifest) -> Self {
        let rec = TraceRecorder::new();
        for event in &trace.events {
            let Some(ino) = manifest.resolve(&event.path) else {
                continue;
            };
            if manifest.attr(ino).map(|a| a.kind) != Some(FileKind::Regular) {
                continue;
            }
            match event.kind {
                TraceKind::Open => rec.open(ino),
                TraceKind::Read { offset, len } => {
                    rec.read(ino, offset..offset.saturating_add(len))
                }
            }
        }
        rec.dirty.store(false, Ordering::Relaxed);
        rec
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("trace recorder poisoned")
    }

    /// Records the first open of `ino`.
    pub(crate) fn open(&self, ino: Ino) {
        let mut st = self.lock();
        if st.opened.insert(ino) {
            st.touches.push(Touch::Open(ino));
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Records the parts of `range` of `ino` not read before. A read continuing the previous touch of the same
    /// file extends it, so a streamed file is one event, not thousands.
    pub(crate) fn read(&self, ino: Ino, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let mut st = self.lock();
        let State { touches, read, .. } = &mut *st;
        let done = read.entry(ino).or_default();
        let new_parts = done.missing(range.clone());
        done.insert(range);
        for part in new_parts {
            match touches.last_mut() {
                Some(Touch::Read(last, r)) if *last == ino && r.end == part.start => {
                    r.end = part.end
                }
                _ => touches.push(Touch::Read(ino, part)),
            }
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Number of recorded events.
    pub fn len(&self) -> usize {
        self.lock().touches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether anything was recorded since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }

    /// The recorded events with paths: one walk of `manifest`'s tree, ending as soon as every touched inode
    /// has a path (a hard-linked file gets the first path in breadth-first name order).
    pub fn to_trace(&self, manifest: &MappedManifest) -> Trace {
        let touches = self.lock().touches.clone();
        let mut paths: HashMap<Ino, Vec<u8>> = HashMap::new();
        for t in &touches {
            let (Touch::Open(ino) | Touch::Read(ino, _)) = t;
            paths.insert(*ino, Vec::new());
        }
        let mut unresolved = paths.len();
        let mut dirs: std::collections::VecDeque<(Ino, Vec<u8>)> =
            std::collections::VecDeque::from([(Ino(1), Vec::new())]);
        while let Some((dir, prefix)) = dirs.pop_front() {
            if unresolved == 0 {
                break;
            }
            for index in 0..manifest.dir_len(dir) {
                let Some((name, ino)) = manifest.dir_entry(dir, index) else {
                    break;
                };
                let mut path = prefix.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                if let Some(slot) = paths.get_mut(&ino) {
                    if slot.is_empty() {
                        *slot = path.clone();
                        unresolved -= 1;
                    }
                }
                if manifest.parent(ino) == Some(dir) {
                    dirs.push_back((ino, path));
                }
            }
        }
        let events = touches
            .into_iter()
            .filter_map(|t| {
                let (ino, kind) = match t {
                    Touch::Open(ino) => (ino, TraceKind::Open),
                    Touch::Read(ino, r) => (
                        ino,
                        TraceKind::Read {
                            offset: r.start,
                            len: r.end - r.start,
                        },
                    ),
                };
                let path = paths.get(&ino).filter(|p| !p.is_empty())?.clone();
                Some(TraceEvent { path, kind })
            })
            .collect();
        Trace { events }
    }

    /// Writes the trace to `path` atomically (temp file in the same directory, then rename).
    pub fn save(&self, manifest: &MappedManifest, path: &Path) -> Result<()> {
        let text = self.to_trace(manifest).to_text();
        let err = |what: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| CoreError::LocalIo {
                what,
                path: p,
                source,
            }
        };
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(err("creating trace", &tmp))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(err("writing trace", &tmp))?;
        std::fs::rename(&tmp, path).map_err(err("renaming trace into place", path))?;
        Ok(())
    }
}

impl crate::Volume {
    /// Writes the recorded trace to `path` now (nothing happens without a recorder).
    pub fn save_trace(&self, path: &Path) -> Result<()> {
        match &self.trace {
            Some(rec) => rec.save(self.manifest(), path),
            None => Ok(()),
        }
    }

    /// Rewrites the trace file every `interval` when something new was recorded, so a worker that dies still
    /// leaves a trace (at most `interval` old). The task ends with the runtime.
    pub fn spawn_trace_writer(self: &std::sync::Arc<Self>, path: PathBuf, interval: Duration) {
        let Some(rec) = self.trace.clone() else {
            return;
        };
        let vol = std::sync::Arc::clone(self);
        self.rt.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if rec.take_dirty() {
                    let (vol, path) = (std::sync::Arc::clone(&vol), path.clone());
                    // The tree walk and the fsync block: keep them off the async workers.
                    let saved = tokio::task::spawn_blocking(move || vol.save_trace(&path)).await;
                    if let Ok(Err(error)) = saved {
                        tracing::warn!(%error, "writing the access trace failed; retrying at the next interval");
                        rec.dirty.store(true, Ordering::Relaxed);
                    }
                }
            }
        });
    }
}

/// Reads a trace file written by [`TraceRecorder::save`] (or by hand).
pub fn read_trace(path: &Path) -> Result<Trace> {
    let text = std::fs::read_to_string(path).map_err(|source| CoreError::LocalIo {
        what: "reading trace",
        path: path.to_path_buf(),
        source,
    })?;
    Trace::parse(&text).map_err(|source| CoreError::Trace {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}
