//! Shared pieces of the real-mount tests: a small in-memory filesystem, a mount guard that always
//! unmounts, and helpers for syscalls std does not wrap.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hydrate_fuse_transport::{
    mount, unmount, Attr, AttrOut, BackingId, DirFiller, DirPlusFiller, EntryOut, Errno,
    Filesystem, FuseDev, MountOptions, OpenOut, RequestCtx, Session, SessionConfig, SessionEnd,
    StatfsOut,
};

pub const ROOT: u64 = 1;
pub const HELLO: u64 = 2;
pub const BIG: u64 = 3;
pub const LINK: u64 = 4;
pub const SUB: u64 = 5;
pub const LATE: u64 = 6;

pub const HELLO_TEXT: &[u8] = b"hello, hydrate\n";
pub const BIG_LEN: usize = 3 * 1024 * 1024 + 123;

/// Deterministic pseudo-random content, so every byte of a read can be checked.
pub fn big_content() -> Vec<u8> {
    hydrate_testkit::rng::random_bytes(1, BIG_LEN)
}

struct Node {
    name: &'static [u8],
    parent: u64,
    mode: u32,
    content: Vec<u8>,
}

/// root/{hello.txt, big.bin, link -> hello.txt, sub/, late.txt}; hello.txt has xattr user.color=blue.
pub struct TestFs {
    nodes: HashMap<u64, Node>,
    /// Per-inode backing files for passthrough opens.
    pub backing: Mutex<HashMap<u64, BackingId>>,
    pub resent_requests: AtomicU64,
}

impl TestFs {
    pub fn new() -> Self {
        let mut nodes = HashMap::new();
        let mut add = |ino, name, parent, mode, content: Vec<u8>| {
            nodes.insert(
                ino,
                Node {
                    name,
                    parent,
                    mode,
                    content,
                },
            );
        };
        add(ROOT, &b""[..], ROOT, libc::S_IFDIR | 0o755, vec![]);
        add(
            HELLO,
            b"hello.txt",
            ROOT,
            libc::S_IFREG | 0o644,
            HELLO_TEXT.to_vec(),
        );
        add(BIG, b"big.bin", ROOT, libc::S_IFREG | 0o644, big_content());
        add(
            LINK,
            b"link",
            ROOT,
            libc::S_IFLNK | 0o777,
            b"hello.txt".to_vec(),
        );
        add(SUB, b"sub", ROOT, libc::S_IFDIR | 0o755, vec![]);
        add(
            LATE,
            b"late.txt",
            ROOT,
            libc::S_IFREG | 0o644,
            b"served after a hand-over".to_vec(),
        );
        TestFs {
            nodes,
            backing: Mutex::default(),
            resent_requests: AtomicU64::new(0),
        }
    }

    fn attr(&self, ino: u64) -> Result<Attr, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let size = node.content.len() as u64;
        Ok(Attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: 1_700_000_000,
            mtime: 1_700_000_000,
            ctime: 1_700_000_000,
            mode: node.mode,
            nlink: if node.mode & libc::S_IFMT == libc::S_IFDIR {
                2
            } else {
                1
            },
            blksize: 4096,
            ..Attr::default()
        })
    }

    fn entry(&self, ino: u64) -> Result<EntryOut, Errno> {
        Ok(EntryOut {
            ino,
            generation: 1,
            attr: self.attr(ino)?,
            entry_valid: Duration::from_secs(60),
            attr_valid: Duration::from_secs(60),
        })
    }

    /// Children of `dir` in inode order, with the readdir offset that follows each.
    fn children(&self, dir: u64) -> Vec<(u64, &Node)> {
        let mut kids: Vec<_> = self
            .nodes
            .iter()
            .filter(|(&ino, n)| ino != ROOT && n.parent == dir)
            .map(|(&i, n)| (i, n))
            .collect();
        kids.sort_by_key(|(ino, _)| *ino);
        kids
    }

    fn note(&self, ctx: &RequestCtx) {
        if ctx.resent {
            self.resent_requests.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Filesystem for TestFs {
    fn lookup(&self, ctx: &RequestCtx, parent: u64, name: &[u8]) -> Result<EntryOut, Errno> {
        self.note(ctx);
        let ino = self
            .children(parent)
            .into_iter()
            .find(|(_, n)| n.name == name)
            .map(|(i, _)| i)
            .ok_or(Errno::ENOENT)?;
        self.entry(ino)
    }

    fn getattr(&self, ctx: &RequestCtx, ino: u64, _fh: Option<u64>) -> Result<AttrOut, Errno> {
        self.note(ctx);
        Ok(AttrOut {
            attr: self.attr(ino)?,
            valid: Duration::from_secs(60),
        })
    }

    fn readlink(&self, _ctx: &RequestCtx, ino: u64) -> Result<Vec<u8>, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        if node.mode & libc::S_IFMT != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        Ok(node.content.clone())
    }

    fn open(&self, ctx: &RequestCtx, ino: u64, _flags: u32) -> Result<OpenOut, Errno> {
        self.note(ctx);
        let passthrough = self.backing.lock().unwrap().get(&ino).copied();
        Ok(OpenOut {
            fh: ino,
            keep_cache: false,
            direct_io: false,
            passthrough,
        })
    }

    fn read(
        &self,
        ctx: &RequestCtx,
        ino: u64,
        _fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        self.note(ctx);
        let content = &self.nodes.get(&ino).ok_or(Errno::ENOENT)?.content;
        let start = (offset as usize).min(content.len());
        let n = (content.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&content[start..start + n]);
        Ok(n)
    }

    fn readdir(
        &self,
        _ctx: &RequestCtx,
        ino: u64,
        _fh: u64,
        offset: u64,
        out: &mut DirFiller,
    ) -> Result<(), Errno> {
        for (i, (child, node)) in self
            .children(ino)
            .into_iter()
            .enumerate()
            .skip(offset as usize)
        {
            if !out.push(
                child,
                i as u64 + 1,
                (node.mode & libc::S_IFMT) >> 12,
                node.name,
            ) {
                break;
            }
        }
        Ok(())
    }

    fn readdirplus(
        &self,
        _ctx: &RequestCtx,
        ino: u64,
        _fh: u64,
        offset: u64,
        out: &mut DirPlusFiller,
    ) -> Result<(), Errno> {
        for (i, (child, node)) in self
            .children(ino)
            .into_iter()
            .enumerate()
            .skip(offset as usize)
        {
            if !out.push(&self.entry(child)?, i as u64 + 1, node.name) {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&self, _ctx: &RequestCtx, _ino: u64) -> Result<StatfsOut, Errno> {
        Ok(StatfsOut {
            blocks: 1000,
            bfree: 0,
            bavail: 0,
            files: 6,
            ffree: 0,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        })
    }

    fn getxattr(&self, _ctx: &RequestCtx, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        match (ino, name) {
            (HELLO, b"user.color") => Ok(b"blue".to_vec()),
            _ => Err(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _ctx: &RequestCtx, ino: u64) -> Result<Vec<u8>, Errno> {
        Ok(if ino == HELLO {
            b"user.color\0".to_vec()
        } else {
            Vec::new()
        })
    }
}

/// A mounted test filesystem. Dropping it always unmounts (lazily when the test is failing, so nothing
/// stays mounted even if a request is stuck).
pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub mountpoint: PathBuf,
    mounted: bool,
}

impl Mounted {
    pub fn new() -> (Mounted, FuseDev) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("create mountpoint");
        let opts = MountOptions {
            fsname: "hydrate-test".into(),
            ..MountOptions::default()
        };
        let dev = mount(&mountpoint, &opts).expect("mount");
        (
            Mounted {
                dir,
                mountpoint,
                mounted: true,
            },
            dev,
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    pub fn unmount(&mut self) {
        if self.mounted {
            self.mounted = false;
            unmount(&self.mountpoint, false).expect("unmount");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let lazy = std::thread::panicking();
            if unmount(&self.mountpoint, lazy).is_err() {
                let _ = unmount(&self.mountpoint, true);
            }
        }
    }
}

/// Serves `session` on a background thread.
pub fn spawn(session: Session, fs: Arc<TestFs>) -> JoinHandle<std::io::Result<SessionEnd>> {
    std::thread::spawn(move || session.serve(fs))
}

pub fn config(readdirplus: bool, passthrough: bool) -> SessionConfig {
    SessionConfig {
        threads: 4,
        readdirplus,
        want_passthrough: passthrough,
        ..SessionConfig::default()
    }
}

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

/// getxattr(2) with an explicit buffer size (0 = size probe). Returns the length or the errno.
pub fn getxattr_sized(path: &Path, name: &str, size: usize) -> Result<(usize, Vec<u8>), i32> {
    let (p, n) = (cpath(path), CString::new(name).unwrap());
    let mut buf = vec![0u8; size];
    // SAFETY: both strings are NUL-terminated and live; buf has `size` writable bytes (null when size 0).
    let rc = unsafe {
        let ptr = if size == 0 {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast()
        };
        libc::getxattr(p.as_ptr(), n.as_ptr(), ptr, size)
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(if size == 0 { 0 } else { rc as usize });
    Ok((rc as usize, buf))
}

/// listxattr(2) with an explicit buffer size (0 = size probe).
pub fn listxattr_sized(path: &Path, size: usize) -> Result<(usize, Vec<u8>), i32> {
    let p = cpath(path);
    let mut buf = vec![0u8; size];
    // SAFETY: the path is NUL-terminated and live; buf has `size` writable bytes (null when size 0).
    let rc = unsafe {
        let ptr = if size == 0 {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast()
        };
        libc::listxattr(p.as_ptr(), ptr, size)
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(if size == 0 { 0 } else { rc as usize });
    Ok((rc as usize, buf))
}
