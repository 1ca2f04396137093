//! Container images for tests and the benchmark, written as OCI image layouts (`index.json`, `blobs/sha256/…`)
//! that skopeo, umoci and `hydrate convert` read.
//!
//! Layers are tar streams built entry by entry, so a test can state exactly the awkward cases a real image
//! carries: whiteouts, opaque directories, hard links into lower layers, device nodes, pax records (xattrs,
//! large uids, sub-second mtimes), long names, and names no well-behaved tool writes ([`Layer::raw_file`]).
//! This is the one layer builder and layout writer of the tests: the converter's tests, the CLI's container
//! tests and the benchmark all use it. A layout can hold OCI or Docker schema2 images, unlisted images for a
//! hand-made index or manifest list ([`OciLayout::write_image`], [`OciLayout::add_manifest`]), and layers
//! given as tar bytes made elsewhere ([`LayerTar`]).
//! [`Layer::from_dir`] packs a real directory (for runnable images), and [`host_program_rootfs`] assembles a
//! minimal root filesystem around a program of this machine with the shared libraries it links.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use hydrate_format::oci::{
    sha256_digest, sha256_hex, Sha256Hasher, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR,
    DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD,
    OCI_MANIFEST, REF_NAME,
};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// gzip at its fastest level (quick to write in tests).
    Gzip,
    /// gzip at its default level 6, as docker and buildah write layers (benchmarks compare downloads of it).
    GzipDefault,
    Zstd,
}

impl Compression {
    fn media_type(self, kind: ImageKind) -> &'static str {
        match (kind, self) {
            (ImageKind::Oci, Compression::None) => OCI_LAYER_TAR,
            (ImageKind::Oci, Compression::Gzip | Compression::GzipDefault) => OCI_LAYER_GZIP,
            (ImageKind::Docker, Compression::None) => DOCKER_LAYER_TAR,
            (ImageKind::Docker, Compression::Gzip | Compression::GzipDefault) => DOCKER_LAYER_GZIP,
            // Docker has no zstd layer type; its tools write the OCI one.
            (_, Compression::Zstd) => OCI_LAYER_ZSTD,
        }
    }
}

/// Which media types an image's manifest, config and layers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Oci,
    /// Docker schema2 (what `docker push` writes).
    Docker,
}

/// Owner, mode and mtime of an entry.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

impl Meta {
    pub fn new(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
        }
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Meta {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// One layer: a tar stream under construction, spooled to an anonymous temporary file (benchmark layers are
/// gigabytes).
pub struct Layer {
    builder: tar::Builder<std::fs::File>,
}

impl Default for Layer {
    fn default() -> Self {
        Layer::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        let spool = tempfile::tempfile().expect("creating a temporary file for a test layer");
        let mut builder = tar::Builder::new(spool);
        builder.mode(tar::HeaderMode::Complete);
        Layer { builder }
    }

    fn header(kind: tar::EntryType, meta: Meta, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode);
        h.set_uid(meta.uid);
        h.set_gid(meta.gid);
        h.set_mtime(meta.mtime);
        h.set_size(size);
        h
    }

    fn append(&mut self, mut h: tar::Header, path: &str, data: &[u8]) -> &mut Layer {
        self.builder
            .append_data(&mut h, path, data)
            .unwrap_or_else(|e| panic!("adding {path} to a test layer: {e}"));
        self
    }

    pub fn dir(&mut self, path: &str, meta: Meta) -> &mut Layer {
        let h = Layer::header(tar::EntryType::Directory, meta, 0);
        self.append(h, path, &[])
    }

    pub fn file(&mut self, path: &str, meta: Meta, data: &[u8]) -> &mut Layer {
        let h = Layer::header(tar::EntryType::Regular, meta, data.len() as u64);
        self.append(h, path, data)
    }

    /// A regular file with extended attributes, carried as pax `SCHILY.xattr.*` records.
    pub fn file_with_xattrs(
        &mut self,
        path: &str,
        meta: Meta,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> &mut Layer {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        let records: Vec<(&str, &[u8])> = records.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.file_with_pax(path, meta, data, &records)
    }

    /// A regular file preceded by arbitrary pax records (`mtime`, `uid`, `SCHILY.xattr.*`, …), which override
    /// the header's fields for this entry.
    pub fn file_with_pax(
        &mut self,
        path: &str,
        meta: Meta,
        data: &[u8],
        records: &[(&str, &[u8])],
    ) -> &mut Layer {
        self.builder
            .append_pax_extensions(records.iter().copied())
            .expect("pax header");
        self.file(path, meta, data)
    }

    /// A regular file whose raw header name is `name`, bypassing the tar crate's path checks (`..`, absolute
    /// paths): what a hostile layer carries.
    pub fn raw_file(&mut self, name: &[u8], meta: Meta, data: &[u8]) -> &mut Layer {
        let mut h = Layer::header(tar::EntryType::Regular, meta, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        self.builder
            .append(&h, data)
            .unwrap_or_else(|e| panic!("adding a raw entry to a test layer: {e}"));
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Layer {
        let mut h = Layer::header(tar::EntryType::Symlink, Meta::new(0o777), 0);
        self.builder
            .append_link(&mut h, path, target)
            .unwrap_or_else(|e| panic!("adding symlink {path}: {e}"));
        self
    }

    /// A hard link `path` to `target` (a path of this or a lower layer).
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Layer {
        let mut h = Layer::header(tar::EntryType::Link, Meta::new(0o644), 0);
        self.builder
            .append_link(&mut h, path, target)
            .unwrap_or_else(|e| panic!("adding hard link {path}: {e}"));
        self
    }

    pub fn char_device(&mut self, path: &str, meta: Meta, major: u32, minor: u32) -> &mut Layer {
        self.device(tar::EntryType::Char, path, meta, major, minor)
    }

    pub fn block_device(&mut self, path: &str, meta: Meta, major: u32, minor: u32) -> &mut Layer {
        self.device(tar::EntryType::Block, path, meta, major, minor)
    }

    fn device(
        &mut self,
        kind: tar::EntryType,
        path: &str,
        meta: Meta,
        major: u32,
        minor: u32,
    ) -> &mut Layer {
        let mut h = Layer::header(kind, meta, 0);
        h.set_device_major(major).expect("device major");
        h.set_device_minor(minor).expect("device minor");
        self.append(h, path, &[])
    }

    pub fn fifo(&mut self, path: &str, meta: Meta) -> &mut Layer {
        let h = Layer::header(tar::EntryType::Fifo, meta, 0);
        self.append(h, path, &[])
    }

    /// Hides `path` of the lower layers (`.wh.<name>` next to it).
    pub fn whiteout(&mut self, path: &str) -> &mut Layer {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), Meta::new(0o644), &[])
    }

    /// Hides everything the lower layers have under `dir` (`dir/.wh..wh..opq`).
    pub fn opaque(&mut self, dir: &str) -> &mut Layer {
        self.file(&format!("{dir}/.wh..wh..opq"), Meta::new(0o644), &[])
    }

    /// A layer holding the tree under `root` as it is (owners, modes, mtimes, symlinks not followed).
    pub fn from_dir(root: &Path) -> std::io::Result<Layer> {
        let mut layer = Layer::new();
        layer.builder.follow_symlinks(false);
        layer.builder.append_dir_all(".", root)?;
        Ok(layer)
    }

    /// The finished tar, rewound to its start.
    fn finish(self) -> std::io::Result<std::fs::File> {
        let mut file = self.builder.into_inner()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }

    /// The finished tar's bytes (for tests that damage, hash or reuse them).
    pub fn into_bytes(self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.finish()
            .and_then(|mut file| file.read_to_end(&mut bytes))
            .expect("reading back a test layer");
        bytes
    }
}

/// A layer's uncompressed tar for [`OciLayout`]: a [`Layer`] being built, or tar bytes made elsewhere.
pub trait LayerTar {
    fn into_reader(self) -> std::io::Result<Box<dyn Read>>;
}

impl LayerTar for Layer {
    fn into_reader(self) -> std::io::Result<Box<dyn Read>> {
        Ok(Box::new(self.finish()?))
    }
}

impl LayerTar for Vec<u8> {
    fn into_reader(self) -> std::io::Result<Box<dyn Read>> {
        Ok(Box::new(Cursor::new(self)))
    }
}

/// What the image config's `config` object says about how to run the image.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// The config's Go architecture name; `None` is this machine's ([`host_architecture`]).
    pub architecture: Option<String>,
}

/// An OCI image layout directory being written.
pub struct OciLayout {
    dir: PathBuf,
    manifests: Vec<serde_json::Value>,
}

impl OciLayout {
    /// Starts a layout in `dir` (created; must not hold another layout).
    pub fn create(dir: &Path) -> std::io::Result<OciLayout> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(OciLayout {
            dir: dir.to_path_buf(),
            manifests: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob `digest` (one this layout computed, so well formed) lives.
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = sha256_hex(digest).expect("a digest computed by this layout");
        self.dir.join("blobs/sha256").join(hex)
    }

    /// Stores `data` as a blob of the layout; returns its digest.
    pub fn put_blob(&self, data: &[u8]) -> std::io::Result<String> {
        let digest = sha256_digest(data);
        std::fs::write(self.blob_path(&digest), data)?;
        Ok(digest)
    }

    /// Streams a tar into a compressed blob; returns (diff id, blob digest, blob size).
    fn put_layer(
        &self,
        mut tar: Box<dyn Read>,
        compression: Compression,
    ) -> std::io::Result<(String, String, u64)> {
        let spool = self.dir.join("blobs/sha256/.incoming");
        let out = HashingWriter::new(std::fs::File::create(&spool)?);
        let mut encoder: Box<dyn FinishWrite> = match compression {
            Compression::None => Box::new(out),
            Compression::Gzip => Box::new(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::fast(),
            )),
            Compression::GzipDefault => Box::new(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Box::new(zstd::Encoder::new(out, 3)?),
        };
        let mut plain = Sha256Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = tar.read(&mut buf)?;
            if n == 0 {
                break;
            }
            plain.update(&buf[..n]);
            encoder.write_all(&buf[..n])?;
        }
        let (digest, size) = encoder.finish_all()?;
        std::fs::rename(&spool, self.blob_path(&digest))?;
        Ok((plain.digest(), digest, size))
    }

    /// Adds an OCI image tagged `tag` made of `layers` (bottom first) and lists it in `index.json`; returns
    /// its manifest digest.
    pub fn add_image<L: LayerTar>(
        &mut self,
        tag: &str,
        layers: Vec<(L, Compression)>,
        run: &RunConfig,
    ) -> std::io::Result<String> {
        let mut descriptor = self.write_image(layers, run, ImageKind::Oci)?;
        let digest = descriptor["digest"].as_str().unwrap_or_default().to_owned();
        descriptor["annotations"] = serde_json::json!({ REF_NAME: tag });
        self.add_manifest(descriptor)?;
        Ok(digest)
    }

    /// Lists `descriptor` (of a manifest or index stored with [`OciLayout::put_blob`] or
    /// [`OciLayout::write_image`]) in `index.json`.
    pub fn add_manifest(&mut self, descriptor: serde_json::Value) -> std::io::Result<()> {
        self.manifests.push(descriptor);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": self.manifests,
        });
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)
    }

    /// Stores the layers, config and manifest of an image of `kind` without listing it in `index.json` (for
    /// a manifest list or index made by hand); returns the manifest's descriptor.
    pub fn write_image<L: LayerTar>(
        &self,
        layers: Vec<(L, Compression)>,
        run: &RunConfig,
        kind: ImageKind,
    ) -> std::io::Result<serde_json::Value> {
        let mut diff_ids = Vec::new();
        let mut descriptors = Vec::new();
        for (layer, compression) in layers {
            let (diff_id, digest, size) = self.put_layer(layer.into_reader()?, compression)?;
            diff_ids.push(diff_id);
            descriptors.push(serde_json::json!({
                "mediaType": compression.media_type(kind),
                "digest": digest,
                "size": size,
            }));
        }
        let mut config = serde_json::Map::new();
        if !run.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), serde_json::json!(run.entrypoint));
        }
        if !run.cmd.is_empty() {
            config.insert("Cmd".into(), serde_json::json!(run.cmd));
        }
        if !run.env.is_empty() {
            config.insert("Env".into(), serde_json::json!(run.env));
        }
        if let Some(dir) = &run.working_dir {
            config.insert("WorkingDir".into(), serde_json::json!(dir));
        }
        if let Some(user) = &run.user {
            config.insert("User".into(), serde_json::json!(user));
        }
        let config = serde_json::json!({
            "architecture": run.architecture.as_deref().unwrap_or(host_architecture()),
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let config = serde_json::to_vec(&config)?;
        let config_digest = self.put_blob(&config)?;
        let (manifest_type, config_type) = match kind {
            ImageKind::Oci => (OCI_MANIFEST, OCI_CONFIG),
            ImageKind::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {
                "mediaType": config_type,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": descriptors,
        });
        let manifest = serde_json::to_vec(&manifest)?;
        Ok(serde_json::json!({
            "mediaType": manifest_type,
            "digest": self.put_blob(&manifest)?,
            "size": manifest.len(),
        }))
    }
}

/// A writer that hashes what it writes to a file.
struct HashingWriter {
    file: std::io::BufWriter<std::fs::File>,
    hash: Sha256Hasher,
    len: u64,
}

impl HashingWriter {
    fn new(file: std::fs::File) -> HashingWriter {
        HashingWriter {
            file: std::io::BufWriter::new(file),
            hash: Sha256Hasher::new(),
            len: 0,
        }
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A layer encoder that can be finished through a trait object, handing back the blob's digest and size.
trait FinishWrite: Write {
    fn finish_all(self: Box<Self>) -> std::io::Result<(String, u64)>;
}

impl FinishWrite for HashingWriter {
    fn finish_all(mut self: Box<Self>) -> std::io::Result<(String, u64)> {
        self.file.flush()?;
        Ok((self.hash.digest(), self.len))
    }
}

impl FinishWrite for flate2::write::GzEncoder<HashingWriter> {
    fn finish_all(self: Box<Self>) -> std::io::Result<(String, u64)> {
        Box::new((*self).finish()?).finish_all()
    }
}

impl FinishWrite for zstd::Encoder<'static, HashingWriter> {
    fn finish_all(self: Box<Self>) -> std::io::Result<(String, u64)> {
        Box::new((*self).finish()?).finish_all()
    }
}

/// The Go architecture name of this machine, as image configs spell it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Copies `src` to `dest_root` + `src` (absolute path kept), creating parents; symlinks are recreated and their
/// targets copied too, so that `/lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/…` keeps working inside.
fn copy_into(dest_root: &Path, src: &Path, seen: &mut BTreeSet<PathBuf>) -> std::io::Result<()> {
    if !seen.insert(src.to_path_buf()) {
        return Ok(());
    }
    let rel = src.strip_prefix("/").unwrap_or(src);
    let dest = dest_root.join(rel);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let md = std::fs::symlink_metadata(src)?;
    if md.file_type().is_symlink() {
        let target = std::fs::read_link(src)?;
        let _ = std::fs::remove_file(&dest);
        std::os::unix::fs::symlink(&target, &dest)?;
        let resolved = src.parent().unwrap_or(Path::new("/")).join(&target);
        return copy_into(dest_root, &resolved, seen);
    }
    if md.is_dir() {
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(&dest)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "cp -a {} failed",
                src.display()
            )));
        }
        return Ok(());
    }
    std::fs::copy(src, &dest)?;
    std::fs::set_permissions(&dest, md.permissions())?;
    Ok(())
}

/// The shared libraries `program` loads, as `ldd` lists them (absolute paths, loader included).
fn shared_libraries(program: &Path) -> std::io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(program).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ldd {} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

/// Every `*.so*` regular file under `dir`.
fn shared_objects(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            shared_objects(&path, out)?;
        } else if kind.is_file() && entry.file_name().to_string_lossy().contains(".so") {
            out.push(path);
        }
    }
    Ok(())
}

/// Builds in `root` a minimal root filesystem that runs `programs` of this machine: each program (and the
/// symlinks leading to it), every shared library they link, plus `extra_dirs` copied whole (e.g. a language's
/// standard library) with the libraries their shared objects link, an `/etc/passwd` and `/etc/group` with root and `nobody`, and empty `/tmp`, `/proc`,
/// `/sys`, `/dev` for the runtime to mount on.
pub fn host_program_rootfs(
    root: &Path,
    programs: &[&Path],
    extra_dirs: &[&Path],
) -> std::io::Result<()> {
    let mut seen = BTreeSet::new();
    for program in programs {
        copy_into(root, program, &mut seen)?;
        for lib in shared_libraries(program)? {
            copy_into(root, &lib, &mut seen)?;
        }
    }
    for dir in extra_dirs {
        copy_into(root, dir, &mut seen)?;
        // Extension modules (`lib-dynload/*.so`) link libraries of their own (libsqlite3, libssl, …).
        let mut modules = Vec::new();
        shared_objects(dir, &mut modules)?;
        for module in modules {
            for lib in shared_libraries(&module).unwrap_or_default() {
                copy_into(root, &lib, &mut seen)?;
            }
        }
    }
    for dir in ["etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_carry_pax_xattrs_and_whiteouts() {
        let mut layer = Layer::new();
        layer
            .dir("d", Meta::new(0o755))
            .file_with_xattrs(
                "d/f",
                Meta::new(0o644),
                b"abc",
                &[
                    ("user.a", b"\x00\x01"),
                    (
                        "security.capability",
                        &[0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    ),
                ],
            )
            .whiteout("d/gone")
            .opaque("d");
        let mut file = layer.finish().unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        if let Ok(dump) = std::env::var("HYDRATE_DUMP_LAYER") {
            std::fs::write(dump, &bytes).unwrap();
        }
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let xattrs: Vec<(String, Vec<u8>)> = entry
                .pax_extensions()
                .unwrap()
                .into_iter()
                .flatten()
                .map(|e| {
                    let e = e.unwrap();
                    (e.key().unwrap().to_owned(), e.value_bytes().to_vec())
                })
                .collect();
            seen.push((path, xattrs));
        }
        assert_eq!(seen[1].0, "d/f");
        assert_eq!(
            seen[1].1,
            vec![
                ("SCHILY.xattr.user.a".to_owned(), b"\x00\x01".to_vec()),
                (
                    "SCHILY.xattr.security.capability".to_owned(),
                    vec![0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
                )
            ]
        );
        assert_eq!(seen[2].0, "d/.wh.gone");
        assert_eq!(seen[3].0, "d/.wh..wh..opq");
    }
}
