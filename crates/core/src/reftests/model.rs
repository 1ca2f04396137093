//! The model of the reference-model tests: the image's tree and bytes in plain vectors, and the image built
//! from them once per test process.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};

use hydrate_builder::{build_dir, BuildOptions, NoProgress};
use hydrate_format::{FileKind, ImageId};
use tempfile::TempDir;

use super::store::MemStore;

#[derive(Debug, Clone)]
pub(super) enum What {
    Dir,
    File(Arc<Vec<u8>>),
    Symlink(&'static [u8]),
    /// Another name of the file node at this index.
    HardLink(usize),
}

/// One name of the image, as the model knows it.
#[derive(Debug, Clone)]
pub(super) struct Node {
    /// `/`-separated, relative to the root; the root is "".
    pub path: &'static str,
    pub what: What,
}

impl Node {
    pub(super) fn name(&self) -> &'static [u8] {
        self.path.rsplit('/').next().unwrap_or("").as_bytes()
    }

    pub(super) fn parent_path(&self) -> &'static str {
        self.path.rsplit_once('/').map_or("", |(p, _)| p)
    }
}

fn bytes(seed: u64, len: usize, half_entropy: bool) -> Arc<Vec<u8>> {
    let mut v = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut v);
    if half_entropy {
        // Compressible: stored chunks are zstd, and shorter than their plain length.
        v.iter_mut().for_each(|b| *b &= 0x0f);
    }
    Arc::new(v)
}

/// The image: files of 0 bytes to several chunks, compressible and not, a hard link, symlinks, nesting.
fn model() -> Vec<Node> {
    let node = |path, what| Node { path, what };
    vec![
        node("", What::Dir),
        node("dir", What::Dir),
        node("dir/sub", What::Dir),
        node("empty", What::File(Arc::new(Vec::new()))),
        node("tiny", What::File(bytes(1, 1, false))),
        node("small", What::File(bytes(2, 3000, false))),
        node("mid", What::File(bytes(3, 200 << 10, true))),
        node("big", What::File(bytes(4, 700 << 10, false))),
        node("dir/a", What::File(bytes(5, 70 << 10, true))),
        node("dir/sub/b", What::File(bytes(6, 40 << 10, false))),
        node("dir/hard", What::HardLink(5)),
        node("link", What::Symlink(b"big")),
        node("dir/sub/dangling", What::Symlink(b"../nowhere")),
    ]
}

/// The image, built once per test process into the in-memory store.
pub(super) struct Fixture {
    _src: TempDir,
    pub store: Arc<MemStore>,
    pub image: ImageId,
    pub nodes: Vec<Node>,
    pub rt: tokio::runtime::Runtime,
}

impl Fixture {
    pub(super) fn get() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(Fixture::build)
    }

    fn build() -> Fixture {
        let nodes = model();
        let src = tempfile::tempdir().unwrap();
        for n in &nodes {
            let path = src.path().join(n.path);
            match &n.what {
                What::Dir => std::fs::create_dir_all(&path).unwrap(),
                What::File(data) => std::fs::write(&path, data.as_slice()).unwrap(),
                What::Symlink(target) => {
                    std::os::unix::fs::symlink(OsStr::from_bytes(target), &path).unwrap()
                }
                What::HardLink(of) => {
                    std::fs::hard_link(src.path().join(nodes[*of].path), &path).unwrap()
                }
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = Arc::new(MemStore::default());
        let opts = BuildOptions {
            blob_target_size: 128 << 10,
            threads: 1,
            ..BuildOptions::default()
        };
        let report = rt
            .block_on(build_dir(src.path(), store.as_ref(), &opts, &NoProgress))
            .unwrap();
        Fixture {
            _src: src,
            store,
            image: report.image,
            nodes,
            rt,
        }
    }

    /// The bytes of a file node (following a hard link).
    pub(super) fn data(&self, node: usize) -> Option<&Arc<Vec<u8>>> {
        match &self.nodes[node].what {
            What::File(data) => Some(data),
            What::HardLink(of) => self.data(*of),
            _ => None,
        }
    }

    pub(super) fn index_of(&self, path: &str) -> usize {
        self.nodes.iter().position(|n| n.path == path).unwrap()
    }

    /// The nodes of directory `dir`, in name order (the order readdir promises).
    pub(super) fn children(&self, dir: usize) -> Vec<usize> {
        let path = self.nodes[dir].path;
        let mut out: Vec<usize> = (1..self.nodes.len())
            .filter(|&i| self.nodes[i].parent_path() == path)
            .collect();
        out.sort_by_key(|&i| self.nodes[i].name());
        out
    }

    pub(super) fn kind(&self, node: usize) -> FileKind {
        match self.nodes[node].what {
            What::Dir => FileKind::Directory,
            What::File(_) | What::HardLink(_) => FileKind::Regular,
            What::Symlink(_) => FileKind::Symlink,
        }
    }
}
