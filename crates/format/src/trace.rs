//! Access traces and the prefetch plans made from them.
//!
//! A [`Trace`] is what `hydrate mount --record-trace` writes: the files a workload opened and the byte ranges it
//! first read, in order, named by path (not inode number) so that a trace recorded on one image can be applied
//! to a rebuilt one. [`plan_from_trace`] turns a trace into the manifest's prefetch section for a given image:
//! small files whole (fetching a whole small file costs one request, as a part of it would), ranges of large
//! files as read, in first-access order.
//!
//! Text format (version 1), one event per line, ASCII only:
//! ```text
//! # hydrate-trace 1
//! open usr/lib/python3/os.py
//! read 0 65536 data/model.bin
//! ```
//! Paths are relative to the image root; bytes outside `!`..`~` and `%` itself are written as `%XX`, so any
//! file name survives. Lines starting with `#` are comments; the first line must be the version line.

use std::collections::HashMap;

use crate::ids::{FileKind, Ino};
use crate::manifest::Manifest;
use crate::rangeset::RangeSet;
use crate::records::PrefetchEntry;
use crate::FormatError;

const VERSION_LINE: &str = "# hydrate-trace 1";

/// What a workload did to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceKind {
    /// The file was opened (recorded even when the kernel then served its reads itself).
    Open,
    /// `[offset, offset + len)` was read for the first time.
    Read { offset: u64, len: u64 },
}

/// One event of a trace: a path (relative to the image root, `/`-separated bytes) and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    pub path: Vec<u8>,
    pub kind: TraceKind,
}

/// An ordered access trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub events: Vec<TraceEvent>,
}

impl Trace {
    /// Parses the text format; the error names the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Trace, FormatError> {
        let bad = |line: usize, detail: String| FormatError::Trace { line, detail };
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, first)) if first.trim_end() == VERSION_LINE => {}
            Some((_, first)) => {
                return Err(bad(
                    1,
                    format!("expected {VERSION_LINE:?}, found {first:?} (not a hydrate trace?)"),
                ))
            }
            None => return Err(bad(1, "empty file: no version line".into())),
        }
        let mut events = Vec::new();
        for (i, line) in lines {
            let n = i + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(' ').collect();
            let (kind, path) = match fields.as_slice() {
                ["open", path] => (TraceKind::Open, *path),
                ["read", offset, len, path] => {
                    let number = |s: &str, what: &str| {
                        s.parse::<u64>()
                            .map_err(|e| bad(n, format!("{what} {s:?}: {e}")))
                    };
                    let offset = number(offset, "offset")?;
                    let len = number(len, "length")?;
                    if len == 0 || offset.checked_add(len).is_none() {
                        return Err(bad(n, format!("empty or overflowing range {offset}+{len}")));
                    }
                    (TraceKind::Read { offset, len }, *path)
                }
                _ => {
                    return Err(bad(
                        n,
                        format!(
                            "expected \"open PATH\" or \"read OFFSET LEN PATH\", found {line:?}"
                        ),
                    ))
                }
            };
            let path = unescape(path).map_err(|detail| bad(n, detail))?;
            events.push(TraceEvent { path, kind });
        }
        Ok(Trace { events })
    }

    /// The text format, starting with the version line.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(32 + self.events.len() * 48);
        out.push_str(VERSION_LINE);
        out.push('\n');
        for e in &self.events {
            match e.kind {
                TraceKind::Open => out.push_str("open "),
                TraceKind::Read { offset, len } => {
                    out.push_str(&format!("read {offset} {len} "));
                }
            }
            escape_into(&e.path, &mut out);
            out.push('\n');
        }
        out
    }
}

fn escape_into(path: &[u8], out: &mut String) {
    for &b in path {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape at byte {i} of path {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.is_empty() {
        return Err("empty path".into());
    }
    Ok(out)
}

/// How a trace becomes a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Files up to this size are prefetched whole at their first touch (open or read).
    pub small_file_max: u64,
    /// Reads of larger files are widened to multiples of this (aligned), so the plan names whole chunks'
    /// worth of data rather than the kernel's 4 KiB–128 KiB read sizes.
    pub align: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            small_file_max: 256 * 1024,
            align: 64 * 1024,
        }
    }
}

/// What [`plan_from_trace`] made of a trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Prefetch entries in first-access order; ranges of one file never overlap.
    pub entries: Vec<PrefetchEntry>,
    /// Trace events whose path is not a regular file of this image (the image changed since the trace).
    pub unresolved: usize,
    /// Bytes the plan names.
    pub bytes: u64,
}

/// Turns `trace` into prefetch entries for `manifest`, in first-access order: a small file whole at its first
/// touch, a large file's read ranges (aligned, each byte named once); opens of large files add nothing (their
/// reads say what is needed).
pub fn plan_from_trace<B: AsRef<[u8]>>(
    manifest: &Manifest<B>,
    trace: &Trace,
    opts: PlanOptions,
) -> Plan {
    let align = opts.align.max(1);
    let mut plan = Plan::default();
    let mut covered: HashMap<Ino, RangeSet> = HashMap::new();
    let mut resolved: HashMap<&[u8], Option<(Ino, u64)>> = HashMap::new();
    for event in &trace.events {
        let file = *resolved.entry(event.path.as_slice()).or_insert_with(|| {
            let ino = manifest.resolve(&event.path)?;
            let attr = manifest.attr(ino)?;
            (attr.kind == FileKind::Regular).then_some((ino, attr.size))
        });
        let Some((ino, size)) = file else {
            plan.unresolved += 1;
            continue;
        };
        let want = if size <= opts.small_file_max {
            0..size
        } else {
            match event.kind {
                TraceKind::Open => continue,
                TraceKind::Read { offset, len } => {
                    let start = offset / align * align;
                    let end = offset
                        .saturating_add(len)
                        .div_ceil(align)
                        .saturating_mul(align);
                    start.min(size)..end.min(size)
                }
            }
        };
        let done = covered.entry(ino).or_default();
        let new_parts = done.missing(want.clone());
        done.insert(want);
        for part in new_parts {
            plan.bytes += part.end - part.start;
            // Extend the previous entry when this continues it: a streamed file becomes one entry.
            match plan.entries.last_mut() {
                Some(last) if last.ino() == ino && last.offset() + last.len() == part.start => {
                    *last =
                        PrefetchEntry::new(ino, last.offset(), last.len() + part.end - part.start);
                }
                _ => plan
                    .entries
                    .push(PrefetchEntry::new(ino, part.start, part.end - part.start)),
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_keeps_odd_names() {
        let trace = Trace {
            events: vec![
                TraceEvent {
                    path: b"a dir/f%1\n\xff".to_vec(),
                    kind: TraceKind::Open,
                },
                TraceEvent {
                    path: b"big".to_vec(),
                    kind: TraceKind::Read {
                        offset: 4096,
                        len: 8192,
                    },
                },
            ],
        };
        let text = trace.to_text();
        assert!(text.is_ascii());
        assert!(text.contains("open a%20dir/f%251%0A%FF\n"));
        assert_eq!(Trace::parse(&text).unwrap(), trace);
    }

    #[test]
    fn parse_names_the_bad_line() {
        let err = Trace::parse("# hydrate-trace 1\nopen a\nread x 1 b\n").unwrap_err();
        assert!(matches!(err, FormatError::Trace { line: 3, .. }), "{err}");
        let err = Trace::parse("open a\n").unwrap_err();
        assert!(matches!(err, FormatError::Trace { line: 1, .. }), "{err}");
        let err = Trace::parse("# hydrate-trace 1\nread 0 0 a\n").unwrap_err();
        assert!(matches!(err, FormatError::Trace { line: 2, .. }), "{err}");
        let err = Trace::parse("# hydrate-trace 1\nopen a%4\n").unwrap_err();
        assert!(matches!(err, FormatError::Trace { line: 2, .. }), "{err}");
    }
}
