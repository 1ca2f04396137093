//! Test layers: a tar with every kind of entry the index must describe (written with the `tar` crate plus
//! hand-made PAX records, or by GNU tar), and the compressors real layers come from (gzip and pigz CLIs,
//! flate2 as Go/docker write it, hand-split multi-member gzip, zstd single- and multi-frame).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tar::{EntryType, Header};

/// A layer tar and what its regular files hold.
pub struct Layer {
    pub tar: Vec<u8>,
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

/// Deterministic data that compresses like real files: text-ish runs mixed with incompressible stretches.
pub fn mixed_data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let words: [&[u8]; 8] = [
        b"layer ",
        b"blob ",
        b"inflate ",
        b"window ",
        b"checkpoint\n",
        b"span ",
        b"digest ",
        b"0x7f ",
    ];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        if rng.random_ratio(1, 8) {
            let mut noise = vec![0u8; rng.random_range(64..4096)];
            rng.fill_bytes(&mut noise);
            out.extend_from_slice(&noise);
        } else {
            for _ in 0..rng.random_range(16..256) {
                out.extend_from_slice(words[rng.random_range(0..words.len())]);
            }
        }
    }
    out.truncate(len);
    out
}

pub fn random_data(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// PAX extended-header records: "LEN key=value\n", LEN counting itself.
pub fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let body = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

fn header(kind: EntryType, size: u64, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(1000);
    header.set_gid(1000);
    header.set_mtime(1_600_000_000);
    header
}

struct TarWriter {
    builder: tar::Builder<Vec<u8>>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl TarWriter {
    fn file(&mut self, path: &str, data: &[u8]) {
        let mut header = header(EntryType::Regular, data.len() as u64, 0o644);
        self.builder.append_data(&mut header, path, data).unwrap();
        self.files.push((path.into(), data.to_vec()));
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) {
        let body = pax_records(records);
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_path("PaxHeaders.0/entry").unwrap();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        self.builder.append(&header, body.as_slice()).unwrap();
    }
}

/// A tar with every kind of entry; `big` is the size of the file meant to span several checkpoints.
pub fn sample_layer(big: usize) -> Layer {
    let mut w = TarWriter {
        builder: tar::Builder::new(Vec::new()),
        files: Vec::new(),
    };
    let mut dir = header(EntryType::Directory, 0, 0o755);
    w.builder
        .append_data(&mut dir, "usr/bin/", std::io::empty())
        .unwrap();
    w.file("usr/bin/small", &mixed_data(1, 1000));
    w.file("empty", b"");
    // A GNU long name (././@LongLink), written by the tar crate for paths over 100 bytes.
    let gnu_long = format!("gnu/{}/file", "g".repeat(150));
    w.file(&gnu_long, &mixed_data(2, 5000));
    // A PAX long name over a truncated ustar name, with PAX uid/gid/mtime overriding the header.
    let pax_long = format!("pax/{}/file", "p".repeat(200));
    w.pax(&[
        ("path", pax_long.as_bytes()),
        ("uid", b"3000000"),
        ("gid", b"3000001"),
        ("mtime", b"1700000000.25"),
    ]);
    let data = mixed_data(3, 7000);
    let mut h = header(EntryType::Regular, data.len() as u64, 0o600);
    h.set_path("pax/truncated").unwrap();
    h.set_cksum();
    w.builder.append(&h, data.as_slice()).unwrap();
    w.files.push((pax_long.into(), data));
    // xattrs as containers carry them (file capabilities are binary).
    let capability: &[u8] = &[
        1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    w.pax(&[
        ("SCHILY.xattr.security.capability", capability),
        ("SCHILY.xattr.user.comment", b"hello"),
    ]);
    w.file("usr/bin/ping", &mixed_data(4, 3000));
    let mut link = header(EntryType::Symlink, 0, 0o777);
    w.builder
        .append_link(&mut link, "usr/bin/link", "small")
        .unwrap();
    let mut hard = header(EntryType::Link, 0, 0o644);
    w.builder
        .append_link(&mut hard, "usr/bin/hard", "usr/bin/small")
        .unwrap();
    w.file("etc/.wh.removed", b"");
    w.file("var/.wh..wh..opq", b"");
    let mut device = header(EntryType::Char, 0, 0o666);
    device.set_device_major(1).unwrap();
    device.set_device_minor(3).unwrap();
    w.builder
        .append_data(&mut device, "dev/null", std::io::empty())
        .unwrap();
    w.file("big/mixed", &mixed_data(5, big));
    // Incompressible: deflate stores it in stored blocks.
    w.file("big/random", &random_data(6, big / 2));
    w.file("zz/last", &mixed_data(7, 10_000));
    let tar = w.builder.into_inner().unwrap();
    Layer {
        tar,
        files: w.files,
    }
}

/// Runs `program args` with `input` on stdin and returns stdout; panics naming the install script when the
/// tool is missing.
pub fn pipe(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot run {program} ({err}): install it with scripts/install-test-deps.sh")
        });
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "{program} {args:?} failed");
    output.stdout
}

pub fn flate2_gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Independent gzip members, each compressing one `piece`-byte slice: one uncompressed stream.
pub fn multi_member_gzip(data: &[u8], piece: usize) -> Vec<u8> {
    data.chunks(piece)
        .flat_map(|chunk| flate2_gzip(chunk, 6))
        .collect()
}

/// zstd frames of `piece` bytes each (zstd:chunked-like), with a skippable frame after the first.
pub fn multi_frame_zstd(data: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, chunk) in data.chunks(piece).enumerate() {
        out.extend(zstd::bulk::compress(chunk, 3).unwrap());
        if i == 0 {
            // Skippable frame: magic 0x184D2A50, 4-byte length, payload.
            out.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
            out.extend_from_slice(&5u32.to_le_bytes());
            out.extend_from_slice(b"skip!");
        }
    }
    out
}

/// A directory tree written by GNU tar in `format` (gnu: ././@LongLink names; posix: PAX records).
pub fn gnu_tar(dir: &Path, format: &str) -> Vec<u8> {
    let output = Command::new("tar")
        .args([
            &format!("--format={format}"),
            "--sort=name",
            "--mtime=@1600000000",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .expect("GNU tar runs");
    assert!(output.status.success(), "tar failed: {:?}", output.stderr);
    output.stdout
}
