//! Image annotations: a small sorted key → bytes map carried in the manifest's annotations section.
//!
//! Annotations let an image carry facts about where it came from (for a converted container image: the OCI
//! image config blob and the source digests) inside the manifest, so the image id covers them and nothing
//! beside the manifest has to be stored or trusted.
//!
//! Encoding (one encoding per content, so equal maps give equal image ids): a sequence of entries
//! `u32 LE key_len, key bytes, u32 LE value_len, value bytes`, strictly sorted by key bytes (hence unique),
//! with nothing between entries; the section's length is the exact byte length of the entries, and the
//! zero padding to the next 8-byte boundary follows it like after the string table. Keys are 1..=[`KEY_MAX`]
//! bytes of printable ASCII without spaces (0x21..=0x7e), values any bytes up to [`VALUE_MAX`], at most
//! [`COUNT_MAX`] entries.
//!
//! This module owns the key constants hydrate uses, the limits, the encoder, the validator run by
//! [`crate::Manifest::parse`] and the zero-copy iterator behind [`crate::Manifest::annotations`].

use std::collections::BTreeMap;

use crate::records::Section;
use crate::FormatError;

/// The OCI image config JSON blob of a converted image, verbatim (the bytes whose digest is
/// [`OCI_CONFIG_DIGEST`]), so the runtime configuration (entrypoint, env, user…) travels with the image.
pub const OCI_CONFIG: &str = "dev.hydrate.oci.config";
/// The digest of the [`OCI_CONFIG`] blob as OCI writes it, `sha256:<64 lowercase hex>`.
pub const OCI_CONFIG_DIGEST: &str = "dev.hydrate.oci.config-digest";
/// The reference the image was converted from, e.g. `docker://127.0.0.1:5000/library/app:1`.
pub const OCI_SOURCE: &str = "dev.hydrate.oci.source";
/// The digest of the source image manifest the conversion read, `sha256:<64 lowercase hex>`, which pins the
/// source even when [`OCI_SOURCE`] names a mutable tag.
pub const OCI_SOURCE_DIGEST: &str = "dev.hydrate.oci.source-digest";

/// Longest key, in bytes.
pub const KEY_MAX: usize = 256;
/// Largest value, in bytes (16 MiB: an OCI config is a few KiB; the limit bounds what a reader may be
/// asked to hold, not what hydrate writes).
pub const VALUE_MAX: usize = 16 << 20;
/// Most entries in one manifest.
pub const COUNT_MAX: usize = 1024;

/// Checks a key; returns what is wrong with it.
pub(crate) fn check_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() || key.len() > KEY_MAX {
        return Err(format!("key length {} outside 1..={KEY_MAX}", key.len()));
    }
    match key.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        Some(i) => Err(format!(
            "byte {:#04x} at position {i} is not printable ASCII without spaces",
            key[i]
        )),
        None => Ok(()),
    }
}

/// A key for error messages: escaped, and cut short because an invalid key may be arbitrarily long.
pub(crate) fn show_key(key: &[u8]) -> String {
    const SHOWN: usize = 64;
    let cut = &key[..key.len().min(SHOWN)];
    let more = if key.len() > SHOWN { "…" } else { "" };
    format!("\"{}{more}\"", cut.escape_ascii())
}

/// Encodes a (therefore sorted, unique-keyed) map whose keys and values were checked on insertion.
pub(crate) fn encode(entries: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let size = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size);
    for (key, value) in entries {
        // Both lengths fit: keys are at most KEY_MAX and values at most VALUE_MAX bytes.
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Splits a `u32 LE` length prefix off `b`.
fn read_len(b: &[u8]) -> Option<(usize, &[u8])> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    Some((usize::try_from(u32::from_le_bytes(*len)).ok()?, rest))
}

/// Splits a length-prefixed field off `b`.
fn read_field(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = read_len(b)?;
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// Validates the annotations section (its exact bytes, without the padding that follows).
pub(crate) fn check_section(bytes: &[u8]) -> Result<(), FormatError> {
    let err = |detail: String| FormatError::section(Section::Annotations, detail);
    let mut rest = bytes;
    let mut prev: Option<&[u8]> = None;
    let mut index = 0usize;
    while !rest.is_empty() {
        let at = bytes.len() - rest.len();
        let entry = || match prev {
            Some(p) => format!("entry {index} at byte {at} (after key {})", show_key(p)),
            None => format!("entry {index} at byte {at}"),
        };
        if index == COUNT_MAX {
            return Err(err(format!("{}: more than {COUNT_MAX} entries", entry())));
        }
        let (key_len, after) = read_len(rest)
            .ok_or_else(|| err(format!("{}: truncated before its key length", entry())))?;
        if key_len == 0 || key_len > KEY_MAX {
            return Err(err(format!(
                "{}: key length {key_len} outside 1..={KEY_MAX}",
                entry()
            )));
        }
        let (key, after) = read_field(rest).ok_or_else(|| {
            err(format!(
                "{}: {key_len}-byte key truncated ({} bytes left)",
                entry(),
                after.len()
            ))
        })?;
        let named = || format!("{} key {}", entry(), show_key(key));
        check_key(key).map_err(|d| err(format!("{}: {d}", named())))?;
        if prev.is_some_and(|p| p >= key) {
            return Err(err(format!(
                "{}: not sorted after the previous key (or duplicates it)",
                named()
            )));
        }
        let (value_len, tail) = read_len(after)
            .ok_or_else(|| err(format!("{}: truncated before its value length", named())))?;
        if value_len > VALUE_MAX {
            return Err(err(format!(
                "{}: value of {value_len} bytes exceeds {VALUE_MAX}",
                named()
            )));
        }
        let (_, after) = read_field(after).ok_or_else(|| {
            err(format!(
                "{}: {value_len}-byte value truncated ({} bytes left)",
                named(),
                tail.len()
            ))
        })?;
        prev = Some(key);
        rest = after;
        index += 1;
    }
    Ok(())
}

/// The entries of a validated annotations section, in key order, borrowed from the manifest bytes.
pub(crate) struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    pub(crate) fn new(section: &'a [u8]) -> Self {
        Entries { rest: section }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // The section was validated, so none of these fail; if one did, iteration ends instead of panicking.
        let item = read_field(self.rest).and_then(|(key, rest)| {
            let (value, rest) = read_field(rest)?;
            Some((std::str::from_utf8(key).ok()?, value, rest))
        });
        match item {
            Some((key, value, rest)) => {
                self.rest = rest;
                Some((key, value))
            }
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

impl std::iter::FusedIterator for Entries<'_> {}

#[cfg(test)]
mod tests {
    use zerocopy::FromBytes;

    use super::*;
    use crate::records::{Header, PrefetchEntry};
    use crate::tests::{meta, sample_manifest, section_range};
    use crate::{ContentId, Digest, Ino, Manifest, ManifestWriter};

    /// The sample manifest with its annotations section replaced by `raw` (header fixed up, padding zero).
    fn with_raw_annotations(raw: &[u8]) -> Vec<u8> {
        let good = sample_manifest();
        let ann = section_range(&good, Section::Annotations);
        let prefetch = section_range(&good, Section::Prefetch);
        let mut out = good[..ann.start].to_vec();
        out.extend_from_slice(raw);
        out.resize(out.len().div_ceil(8) * 8, 0);
        let prefetch_at = out.len() as u64;
        out.extend_from_slice(&good[prefetch]);
        let total = out.len() as u64;
        let (h, _) = Header::mut_from_prefix(&mut out).unwrap();
        h.sections[Section::Annotations as usize].len = (raw.len() as u64).into();
        h.sections[Section::Prefetch as usize].offset = prefetch_at.into();
        h.total_len = total.into();
        out
    }

    fn entry(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = (key.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// Parses the sample with `raw` as its annotations and returns the refusal's message, checking that it
    /// is attributed to the annotations section.
    fn refusal(raw: &[u8]) -> String {
        let e = Manifest::parse(with_raw_annotations(raw)).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::Section {
                    section: Section::Annotations,
                    ..
                }
            ),
            "{e}"
        );
        e.to_string()
    }

    #[test]
    fn raw_encoding_round_trips_through_the_validator() {
        let raw = [
            entry(b"a", b""),
            entry(b"a.b", b"\0\x01"),
            entry(b"b", b"v"),
        ]
        .concat();
        let m = Manifest::parse(with_raw_annotations(&raw)).unwrap();
        m.self_check().unwrap();
        let got: Vec<(&str, &[u8])> = m.annotations().collect();
        assert_eq!(
            got,
            vec![("a", &b""[..]), ("a.b", &b"\0\x01"[..]), ("b", &b"v"[..])]
        );
        assert_eq!(m.annotation("a.b"), Some(&b"\0\x01"[..]));
        assert_eq!(m.annotation("a."), None);
        // An empty section is valid and has no entries.
        let m = Manifest::parse(with_raw_annotations(&[])).unwrap();
        assert_eq!(m.annotations().count(), 0);
        assert_eq!(m.annotation(OCI_SOURCE), None);
    }

    #[test]
    fn validator_refuses_bad_annotations_naming_section_and_key() {
        let msg = refusal(&[entry(b"b", b"1"), entry(b"a", b"2")].concat());
        assert!(msg.contains("annotations") && msg.contains("\"a\"") && msg.contains("not sorted"));
        let msg = refusal(&[entry(b"dup", b"1"), entry(b"dup", b"1")].concat());
        assert!(
            msg.contains("\"dup\"") && msg.contains("duplicates"),
            "{msg}"
        );
        for bad in [&b"a b"[..], b"a\x7f", b"\xc3\xa9", b"tab\t", b"nul\0"] {
            let msg = refusal(&entry(bad, b"v"));
            assert!(msg.contains("not printable ASCII"), "{msg}");
        }
        assert!(refusal(&entry(b"", b"v")).contains("key length 0"));
        assert!(refusal(&entry(&[b'k'; KEY_MAX + 1], b"v")).contains("key length 257"));
        // Oversize value: declared only, and actually present.
        let mut declared = entry(b"big", b"");
        let n = declared.len();
        declared[n - 4..].copy_from_slice(&(VALUE_MAX as u32 + 1).to_le_bytes());
        let msg = refusal(&declared);
        assert!(msg.contains("\"big\"") && msg.contains("exceeds"), "{msg}");
        let msg = refusal(&entry(b"big", &vec![7; VALUE_MAX + 1]));
        assert!(msg.contains("\"big\"") && msg.contains("exceeds"), "{msg}");
        // Truncated entries: in the key length, the key, the value length, the value.
        let whole = entry(b"key", b"value");
        for (cut, what) in [
            (2, "key length"),
            (5, "key truncated"),
            (9, "value length"),
            (12, "value truncated"),
        ] {
            let msg = refusal(&whole[..cut]);
            assert!(msg.contains(what), "cut {cut}: {msg}");
        }
        // Trailing garbage after a valid entry is a truncated or invalid entry, named after the last key.
        let msg = refusal(&[whole.clone(), vec![1, 2, 3]].concat());
        assert!(
            msg.contains("after key \"key\"") && msg.contains("truncated"),
            "{msg}"
        );
        let msg = refusal(&[whole.clone(), vec![0; 4]].concat());
        assert!(
            msg.contains("entry 1") && msg.contains("key length 0"),
            "{msg}"
        );
        // Too many entries.
        let many: Vec<u8> = (0..=COUNT_MAX)
            .flat_map(|i| entry(format!("k{i:05}").as_bytes(), b""))
            .collect();
        assert!(refusal(&many).contains("more than 1024 entries"));
        let last = entry(format!("k{COUNT_MAX:05}").as_bytes(), b"").len();
        assert!(Manifest::parse(with_raw_annotations(&many[..many.len() - last])).is_ok());
    }

    #[test]
    fn validator_refuses_nonzero_padding_after_annotations() {
        let raw = entry(b"k", b"v"); // 10 bytes, then 6 bytes of padding.
        let good = with_raw_annotations(&raw);
        let ann = section_range(&good, Section::Annotations);
        assert!(Manifest::parse(good.as_slice()).is_ok());
        for at in ann.end..section_range(&good, Section::Prefetch).start {
            let mut bad = good.clone();
            bad[at] = 1;
            let e = Manifest::parse(bad).unwrap_err();
            assert!(e.to_string().contains("between the annotations and"), "{e}");
        }
    }

    #[test]
    fn writer_checks_annotations_when_set_and_replaces_values() {
        let mut w = ManifestWriter::new(meta(0o755, 0));
        for bad in ["", "a b", "é", "tab\t", &"k".repeat(KEY_MAX + 1)] {
            let e = w.set_annotation(bad, b"v".to_vec()).unwrap_err();
            assert!(matches!(e, FormatError::Writer { .. }), "{e}");
        }
        let e = w.set_annotation("big", vec![0; VALUE_MAX + 1]).unwrap_err();
        assert!(e.to_string().contains("\"big\""), "{e}");
        w.set_annotation(&"k".repeat(KEY_MAX), vec![0; VALUE_MAX])
            .unwrap();
        w.set_annotation(OCI_CONFIG_DIGEST, "sha256:00").unwrap();
        w.set_annotation(OCI_CONFIG_DIGEST, "sha256:11").unwrap();
        for i in 2..COUNT_MAX {
            w.set_annotation(&format!("n{i}"), []).unwrap();
        }
        assert!(w.set_annotation("one-too-many", []).is_err());
        // Replacing an existing key is still allowed at the limit.
        w.set_annotation("n2", "x").unwrap();
        let m = Manifest::parse(w.finish().unwrap()).unwrap();
        m.self_check().unwrap();
        assert_eq!(m.annotations().count(), COUNT_MAX);
        assert_eq!(m.annotation(OCI_CONFIG_DIGEST), Some(&b"sha256:11"[..]));
        assert_eq!(m.annotation("n2"), Some(&b"x"[..]));
        assert_eq!(
            m.annotation(&"k".repeat(KEY_MAX)).map(<[u8]>::len),
            Some(VALUE_MAX)
        );
        assert_eq!(m.annotation("one-too-many"), None);
    }

    #[test]
    fn annotations_are_covered_by_the_image_id() {
        let build = |value: &str| {
            let mut w = ManifestWriter::new(meta(0o755, 0));
            w.set_annotation(OCI_SOURCE, value).unwrap();
            Manifest::parse(w.finish().unwrap()).unwrap().image_id()
        };
        assert_eq!(build("docker://a/b:1"), build("docker://a/b:1"));
        assert_ne!(build("docker://a/b:1"), build("docker://a/b:2"));
    }

    #[test]
    fn with_prefetch_keeps_annotations_byte_for_byte() {
        let mut w = ManifestWriter::new(meta(0o755, 0));
        let config = br#"{"architecture":"amd64","config":{"Entrypoint":["/app"]}}"#;
        w.set_annotation(OCI_CONFIG, config.to_vec()).unwrap();
        w.set_annotation(OCI_SOURCE, "docker://127.0.0.1:5000/library/app:1")
            .unwrap();
        let blob = w.add_blob(crate::BlobId(Digest::of(b"blob")), 64);
        let chunk = w.add_chunk(crate::ChunkRecord::new(
            crate::ChunkId(Digest::of(b"c")),
            blob,
            crate::COMPRESSION_NONE,
            0,
            64,
            64,
        ));
        let root = w.root();
        w.add_file(
            root,
            b"f",
            meta(0o644, 0),
            ContentId::default(),
            vec![chunk],
        )
        .unwrap();
        let before = w.finish().unwrap();
        let m = Manifest::parse(before.as_slice()).unwrap();
        let after = m
            .with_prefetch(&[PrefetchEntry::new(Ino(2), 0, 64)])
            .unwrap();
        let n = Manifest::parse(after.as_slice()).unwrap();
        let ann = section_range(&before, Section::Annotations);
        assert_eq!(ann, section_range(&after, Section::Annotations));
        assert_eq!(before[ann.clone()], after[ann]);
        assert!(m.annotations().eq(n.annotations()));
        assert_eq!(n.annotation(OCI_CONFIG), Some(&config[..]));
        assert_eq!(n.prefetch().len(), 1);
        // And back: removing the plan restores the original bytes exactly.
        assert_eq!(n.with_prefetch(&[]).unwrap(), before);
    }

    #[test]
    fn show_key_escapes_and_shortens() {
        assert_eq!(show_key(b"a\"b\n"), r#""a\"b\n""#);
        assert_eq!(show_key(&[b'x'; 100]), format!("\"{}…\"", "x".repeat(64)));
    }
}
