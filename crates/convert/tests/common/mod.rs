//! Test helpers: crafting layer tarballs with the `tar` crate and writing them as an OCI image layout
//! (blobs, config with diff_ids, manifest, index.json with a ref.name annotation).

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use hydrate_format::oci::{self, sha256_digest};
use serde_json::json;

/// Builds one layer tar.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_with(path, data, 0o644, &[])
    }

    /// A file with pax records before it (xattrs, uid, mtime…).
    pub fn file_with(mut self, path: &str, data: &[u8], mode: u32, pax: &[(&str, &[u8])]) -> Self {
        if !pax.is_empty() {
            self.b.append_pax_extensions(pax.iter().copied()).unwrap();
        }
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn whiteout(self, path: &str) -> Self {
        self.file(path, b"")
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn device(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        let mut h = header(kind, 0o600, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// An entry whose raw header name is `path` (bypassing the tar crate's path checks, e.g. for "..").
    pub fn raw_file(mut self, path: &[u8], data: &[u8]) -> Self {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Comp {
    Plain,
    Gzip,
    Zstd,
}

pub fn compress(tar: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::Plain => tar.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

pub fn media_type(c: Comp, docker: bool) -> &'static str {
    match (c, docker) {
        (Comp::Gzip, true) => oci::DOCKER_LAYER_GZIP,
        (Comp::Plain, _) => oci::OCI_LAYER_TAR,
        (Comp::Gzip, false) => oci::OCI_LAYER_GZIP,
        (Comp::Zstd, _) => oci::OCI_LAYER_ZSTD,
    }
}

pub fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(&digest[7..]), bytes).unwrap();
    digest
}

pub fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// Writes the blobs, config and manifest of an image into layout `dir`; returns the manifest descriptor.
pub fn write_image(dir: &Path, layers: &[(Vec<u8>, Comp)], docker: bool) -> serde_json::Value {
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for (tar, c) in layers {
        diff_ids.push(sha256_digest(tar));
        let blob = compress(tar, *c);
        let d = put_blob(dir, &blob);
        descs.push(descriptor(media_type(*c, docker), &d, blob.len()));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/app"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let (mt, cmt) = if docker {
        (oci::DOCKER_MANIFEST, oci::DOCKER_CONFIG)
    } else {
        (oci::OCI_MANIFEST, oci::OCI_CONFIG)
    };
    let cd = put_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": mt,
        "config": descriptor(cmt, &cd, config.len()),
        "layers": descs,
    }))
    .unwrap();
    let md = put_blob(dir, &manifest);
    descriptor(mt, &md, manifest.len())
}

/// Writes `oci-layout` and `index.json` listing `manifests`.
pub fn write_index(dir: &Path, manifests: Vec<serde_json::Value>) {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "mediaType": oci::OCI_INDEX, "manifests": manifests});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A one-image layout whose manifest is named `name`.
pub fn layout(dir: &Path, layers: &[(Vec<u8>, Comp)], name: &str) {
    let mut d = write_image(dir, layers, false);
    d["annotations"] = json!({ oci::REF_NAME: name });
    write_index(dir, vec![d]);
}
