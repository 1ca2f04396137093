//! Dependency-aware prefetch for dynamically linked programs and libraries.
//!
//! When a program starts, the loader opens its interpreter and then every library it needs, one after
//! another, each open a round trip to the store if the library is not local: measured on the real-image start
//! (Debian with python3 and numpy over a 10 ms / 1 Gbit/s link, docs/benchmarks.md) the loader's misses on
//! `ld-linux`, `libm`, `libc`, `liblapack`, `libgfortran` and `libcrypto` were a third of the time the
//! program waited, two round trips each (the header, then the data segment it relocates). All of them can be
//! known from the first file: its `PT_INTERP` and the `DT_NEEDED` entries of its dynamic section name them, and
//! the loader's search order (`DT_RPATH`/`DT_RUNPATH` with `$ORIGIN`, then the system directories) finds them
//! in the image.
//!
//! So the first read of an ELF file's header queues it here; a blocking task reads its program headers, its
//! dynamic section and the strings they name (on-demand priority: these are a few KiB, usually in the chunk
//! just fetched), resolves every dependency in the image's tree (symlinks followed), fetches each one whole in
//! the background like the ELF file itself, and follows its dependencies in turn. Each file is followed once
//! per mount (`MAX_FOLLOWED` files at most). Libraries opened with `dlopen` (a Python extension module) are
//! followed when the loader reads their header, which is what starts their own dependencies early.
//!
//! Not modelled: `/etc/ld.so.conf` directories (the multiarch and FHS directories cover Debian, Ubuntu, Fedora
//! and Alpine images), `LD_LIBRARY_PATH` (the daemon does not see the program's environment), hwcaps
//! subdirectories and `$LIB`/`$PLATFORM` tokens. A name that does not resolve is skipped: this is a prefetch,
//! the loader itself finds whatever it needs.

use crate::volume::Volume;
use hydrate_format::{FileKind, Ino, Manifest};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::read::{ReadCache, ReadCacheOps, ReadRef};
use object::Endianness;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

/// Files followed per mount at most (a program and its libraries are a few dozen; a mount that runs many
/// programs stops following after this many, and reads fetch the rest as usual).
const MAX_FOLLOWED: usize = 4096;
/// Symlinks followed while resolving one path (Linux's limit).
const MAX_SYMLINKS: u32 = 40;
/// Bytes of a dynamic section read at most (a large library's has a few hundred entries of 16 bytes).
const MAX_DYNAMIC: u64 = 64 << 10;

/// The per-mount state: files already followed, and the queue to the task that follows them.
pub(crate) struct ElfDeps {
    followed: Mutex<HashSet<Ino>>,
    queue: tokio::sync::mpsc::UnboundedSender<(Ino, Option<Ino>)>,
}

/// What an ELF file needs from the image: its interpreter, its `DT_NEEDED` names, and its `DT_RUNPATH` (or,
/// without one, `DT_RPATH`) directories.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    pub machine: object::elf::Machine,
    pub interpreter: Option<Vec<u8>>,
    pub needed: Vec<Vec<u8>>,
    pub search: Vec<Vec<u8>>,
}

/// Reads the header, program headers, interpreter and dynamic section of the ELF file in `data`; `None` for
/// what is not a dynamically linked ELF file (or is malformed: then the loader will say so, not us).
/// `interpreter` hears of the interpreter as soon as the program headers name it, before the dynamic section
/// (at the end of the file, often another fetch) is read: the kernel opens it while `execve` still runs.
pub(crate) fn needs<'a, R: ReadRef<'a>>(data: R, interpreter: impl FnMut(&[u8])) -> Option<Needs> {
    let ident = data.read_bytes_at(0, 16).ok()?;
    if &ident[..4] != b"\x7fELF" {
        return None;
    }
    match object::elf::FileClass(ident[4]) {
        object::elf::ELFCLASS64 => {
            needs_of::<object::elf::FileHeader64<Endianness>, R>(data, interpreter)
        }
        object::elf::ELFCLASS32 => {
            needs_of::<object::elf::FileHeader32<Endianness>, R>(data, interpreter)
        }
        _ => None,
    }
}

fn needs_of<'a, Elf: FileHeader<Endian = Endianness>, R: ReadRef<'a>>(
    data: R,
    mut interpreter: impl FnMut(&[u8]),
) -> Option<Needs> {
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let phdrs = header.program_headers(endian, data).ok()?;
    let mut needs = Needs {
        machine: header.e_machine(endian),
        ..Needs::default()
    };
    let mut dynamic = None;
    for ph in phdrs {
        match ph.p_type(endian) {
            object::elf::PT_INTERP => {
                needs.interpreter = ph.interpreter(endian, data).ok()?.map(<[u8]>::to_vec);
                if let Some(path) = &needs.interpreter {
                    interpreter(path);
                }
            }
            object::elf::PT_DYNAMIC => dynamic = Some(ph),
            _ => {}
        }
    }
    let Some(dynamic) = dynamic else {
        return Some(needs);
    };
    let (offset, size): (u64, u64) = (
        dynamic.p_offset(endian).into(),
        dynamic.p_filesz(endian).into(),
    );
    let entries: &[Elf::Dyn] = data
        .read_slice_at(
            offset,
            (size.min(MAX_DYNAMIC) as usize) / size_of::<Elf::Dyn>(),
        )
        .ok()?;
    let (mut strtab, mut strsz) = (None, None);
    let (mut needed, mut runpath, mut rpath) = (Vec::new(), None, None);
    for entry in entries {
        let value: u64 = entry.d_val(endian).into();
        match entry.d_tag(endian) {
            object::elf::DT_NULL => break,
            object::elf::DT_NEEDED => needed.push(value),
            object::elf::DT_STRTAB => strtab = Some(value),
            object::elf::DT_STRSZ => strsz = Some(value),
            object::elf::DT_RUNPATH => runpath = Some(value),
            object::elf::DT_RPATH => rpath = Some(value),
            _ => {}
        }
    }
    // DT_STRTAB is an address: the PT_LOAD segment holding it gives its file offset.
    let (address, len) = (strtab?, strsz?);
    let strings_at = phdrs.iter().find_map(|ph| {
        let (vaddr, filesz, off): (u64, u64, u64) = (
            ph.p_vaddr(endian).into(),
            ph.p_filesz(endian).into(),
            ph.p_offset(endian).into(),
        );
        (ph.p_type(endian) == object::elf::PT_LOAD && address >= vaddr && address - vaddr < filesz)
            .then(|| off + (address - vaddr))
    })?;
    let string = |at: u64| -> Option<Vec<u8>> {
        (at < len)
            .then(|| {
                data.read_bytes_at_until(strings_at + at..strings_at + len, 0)
                    .ok()
            })
            .flatten()
            .map(<[u8]>::to_vec)
    };
    needs.needed = needed.into_iter().filter_map(string).collect();
    // The loader ignores DT_RPATH when DT_RUNPATH is present.
    if let Some(list) = runpath.or(rpath).and_then(string) {
        needs.search = list
            .split(|&b| b == b':')
            .filter(|d| !d.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
    }
    Some(needs)
}

/// The loader's default directories for a machine (multiarch first, as Debian's and Ubuntu's ld.so.conf list
/// them, then the FHS ones).
fn system_dirs(machine: object::elf::Machine) -> &'static [&'static str] {
    match machine {
        object::elf::EM_X86_64 => &[
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
            "/usr/local/lib",
        ],
        object::elf::EM_AARCH64 => &[
            "/lib/aarch64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
            "/usr/local/lib",
        ],
        _ => &["/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib"],
    }
}

/// The regular file `path` names in the image, from directory `dir` when relative, following symlinks
/// (absolute targets from the image's root, never outside it).
pub(crate) fn resolve<B: AsRef<[u8]>>(
    manifest: &Manifest<B>,
    dir: Ino,
    path: &[u8],
) -> Option<Ino> {
    walk(manifest, dir, path, FileKind::Regular, &mut 0)
}

/// The directory `path` names, like [`resolve`].
fn resolve_dir<B: AsRef<[u8]>>(manifest: &Manifest<B>, dir: Ino, path: &[u8]) -> Option<Ino> {
    walk(manifest, dir, path, FileKind::Directory, &mut 0)
}

/// `path` from `dir` (the root when absolute), each symlink resolved from the directory holding it; the end
/// must be of kind `want` and every component before it a directory.
fn walk<B: AsRef<[u8]>>(
    manifest: &Manifest<B>,
    dir: Ino,
    path: &[u8],
    want: FileKind,
    hops: &mut u32,
) -> Option<Ino> {
    let mut at = if path.starts_with(b"/") {
        Ino::ROOT
    } else {
        dir
    };
    let mut parts = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .peekable();
    while let Some(name) = parts.next() {
        let kind = if parts.peek().is_none() {
            want
        } else {
            FileKind::Directory
        };
        let next = match name {
            b"." => at,
            b".." => manifest.parent(at)?,
            _ => manifest.lookup(at, name)?,
        };
        at = match manifest.attr(next)?.kind {
            FileKind::Symlink => {
                *hops += 1;
                if *hops > MAX_SYMLINKS {
                    return None;
                }
                walk(manifest, at, manifest.symlink_target(next)?, kind, hops)?
            }
            found if found == kind => next,
            _ => return None,
        };
    }
    (manifest.attr(at)?.kind == want).then_some(at)
}

impl Needs {
    /// The libraries in the image the loader would load for these needs (the interpreter aside), with the
    /// directory of the file that needs them (`origin`, for `$ORIGIN`), if known.
    pub(crate) fn resolve(
        &self,
        manifest: &crate::MappedManifest,
        origin: Option<Ino>,
    ) -> Vec<Ino> {
        let mut found = Vec::new();
        let mut dirs: Vec<Ino> = Vec::new();
        for dir in &self.search {
            let (base, rest) = if let Some(rest) = dir.strip_prefix(b"$ORIGIN") {
                (origin, rest)
            } else if let Some(rest) = dir.strip_prefix(b"${ORIGIN}") {
                (origin, rest)
            } else {
                (Some(Ino::ROOT), dir.as_slice())
            };
            if let Some(ino) = base.and_then(|b| resolve_dir(manifest, b, rest)) {
                dirs.push(ino);
            }
        }
        dirs.extend(
            system_dirs(self.machine)
                .iter()
                .filter_map(|d| resolve_dir(manifest, Ino::ROOT, d.as_bytes())),
        );
        for name in &self.needed {
            if name.contains(&b'/') {
                found.extend(resolve(manifest, origin.unwrap_or(Ino::ROOT), name));
                continue;
            }
            found.extend(dirs.iter().find_map(|&dir| resolve(manifest, dir, name)));
        }
        found
    }
}

/// `ReadCacheOps` over a file of the image, reading through the volume (cache first, missing chunks fetched at
/// on-demand priority and stored), for [`needs`].
struct ImageFile<'v> {
    vol: &'v Volume,
    open: crate::volume::Speculative,
    pos: u64,
}

impl ReadCacheOps for ImageFile<'_> {
    fn len(&mut self) -> Result<u64, ()> {
        Ok(self.open.size())
    }

    fn seek(&mut self, pos: u64) -> Result<u64, ()> {
        self.pos = pos;
        Ok(pos)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        let n = self
            .vol
            .read_speculative(&self.open, self.pos, buf)
            .map_err(|_| ())?;
        self.pos += n as u64;
        Ok(n)
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), ()> {
        while !buf.is_empty() {
            match self.read(buf)? {
                0 => return Err(()),
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }
}

/// The command of a converted container image (its OCI config's `Entrypoint`, or `Cmd` without one): the program
/// and the `PATH` to find it with.
#[derive(serde::Deserialize)]
struct OciConfig {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(serde::Deserialize)]
struct RunConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

/// Docker's `PATH` when an image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The program an image's OCI config runs, found in the image: an absolute or relative path as it is, a bare
/// name through the config's `PATH`. `None` without a config or a command, or when it is not in the image.
pub(crate) fn entrypoint<B: AsRef<[u8]>>(manifest: &Manifest<B>) -> Option<Ino> {
    let json = manifest.annotation(hydrate_format::annotation::OCI_CONFIG)?;
    let config = serde_json::from_slice::<OciConfig>(json).ok()?.config?;
    let program = config
        .entrypoint
        .filter(|e| !e.is_empty())
        .or(config.cmd)?
        .into_iter()
        .next()?;
    if program.contains('/') {
        return resolve(manifest, Ino::ROOT, program.as_bytes());
    }
    let path = config
        .env
        .unwrap_or_default()
        .into_iter()
        .find_map(|e| e.strip_prefix("PATH=").map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_PATH.to_owned());
    path.split(':')
        .filter(|d| !d.is_empty())
        .find_map(|dir| resolve(manifest, Ino::ROOT, format!("{dir}/{program}").as_bytes()))
}

/// The interpreter of a script (`#!/bin/sh -e` → `/bin/sh`), from its first bytes.
fn shebang(head: &[u8]) -> Option<&[u8]> {
    let line = head.strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n')?];
    line.split(|&b| b == b' ' || b == b'\t')
        .find(|w| !w.is_empty())
}

impl Volume {
    /// Starts following the dependencies of ELF files whose header a read returns (see the module
    /// documentation); off when `VolumeConfig::elf_whole_max` is 0. Call once, with the volume in its `Arc`.
    ///
    /// An image without a plan whose OCI config names its command (a converted container image) has that
    /// program fetched whole and followed at once, before anything runs: a container runs its entrypoint, and
    /// its first files (the program, the loader, its libraries; a script's interpreter) are otherwise each a
    /// miss the program waits for, one after another.
    pub fn start_elf_deps(self: &Arc<Self>) {
        if self.config.elf_whole_max == 0 {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Ino, Option<Ino>)>();
        let deps = ElfDeps {
            followed: Mutex::new(HashSet::new()),
            queue: tx,
        };
        if self.elf_deps.set(deps).is_err() {
            return;
        }
        if self.manifest.prefetch().is_empty() {
            if let Some(program) = entrypoint(&self.manifest) {
                self.follow_program(program);
            }
        }
        let vol: Weak<Volume> = Arc::downgrade(self);
        self.rt.spawn(async move {
            while let Some((ino, origin)) = rx.recv().await {
                let Some(vol) = vol.upgrade() else { break };
                // Reading headers blocks on fetches: off the runtime's threads.
                tokio::task::spawn_blocking(move || vol.follow_elf(ino, origin));
            }
        });
    }

    /// Queues `ino` (whose first bytes are an ELF header) to have its dependencies followed, once per mount.
    pub(crate) fn elf_header_read(&self, ino: Ino) {
        let Some(deps) = self.elf_deps.get() else {
            return;
        };
        if self.mark_followed(deps, ino) {
            let origin = self.parent_of(ino);
            let _ = deps.queue.send((ino, origin));
        }
    }

    /// Fetches `program` whole and queues it to be followed: an ELF file directly, a script through its
    /// interpreter (read from its first line, which costs one fetch off the runtime's threads).
    pub(crate) fn follow_program(self: &Arc<Self>, program: Ino) {
        let Some(deps) = self.elf_deps.get() else {
            return;
        };
        if !self.mark_followed(deps, program) {
            return;
        }
        let size = self.manifest.attr(program).map_or(0, |a| a.size);
        let vol = Arc::clone(self);
        self.rt.spawn_blocking(move || {
            // In the loader's order: the program's header, its interpreter, its libraries, then the rest of
            // the program (a whole program first would queue megabytes on the link ahead of all of those).
            let whole = || {
                if size <= vol.config.elf_whole_max {
                    vol.fetch_whole(program);
                }
            };
            let Ok(file) = vol.speculative(program) else {
                return;
            };
            let mut head = [0u8; 256];
            let Ok(n) = vol.read_speculative(&file, 0, &mut head) else {
                return;
            };
            if let Some(interp) = shebang(&head[..n]) {
                let Some(interp) = resolve(&vol.manifest, Ino::ROOT, interp) else {
                    return;
                };
                let Some(deps) = vol.elf_deps.get() else {
                    return;
                };
                whole();
                if vol.mark_followed(deps, interp) {
                    vol.fetch_whole(interp);
                    vol.follow_elf(interp, None);
                }
            } else {
                vol.follow_elf(program, None);
                whole();
            }
        });
    }

    fn mark_followed(&self, deps: &ElfDeps, ino: Ino) -> bool {
        let mut followed = deps.followed.lock().expect("ELF set poisoned");
        followed.len() < MAX_FOLLOWED && followed.insert(ino)
    }

    /// Reads `ino`'s needs, fetches each dependency whole in the background, then follows the dependencies
    /// themselves (their headers join the fetches just started).
    fn follow_elf(&self, ino: Ino, origin: Option<Ino>) {
        let Some(deps) = self.elf_deps.get() else {
            return;
        };
        let mut next = Vec::new();
        let mut take = |dep: Ino| {
            if !self.mark_followed(deps, dep) {
                return;
            }
            let size = self.manifest.attr(dep).map_or(u64::MAX, |a| a.size);
            if size <= self.config.elf_whole_max && self.fetch_whole(dep) {
                self.stats.elf_dep_files.fetch_add(1, Ordering::Relaxed);
            }
            next.push(dep);
        };
        let Ok(file) = self.speculative(ino) else {
            return;
        };
        let data = ReadCache::new(ImageFile {
            vol: self,
            open: file,
            pos: 0,
        });
        let needs = needs(&data, |interp| {
            if let Some(dep) = resolve(&self.manifest, Ino::ROOT, interp) {
                take(dep);
            }
        });
        let Some(needs) = needs else {
            return;
        };
        self.stats.elf_followed.fetch_add(1, Ordering::Relaxed);
        for dep in needs.resolve(&self.manifest, origin) {
            take(dep);
        }
        for dep in next {
            // The dependency's own `$ORIGIN` is its directory, which only a lookup tells; its needs are found
            // in the system directories, as for almost every library.
            self.follow_elf(dep, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_ls() -> Vec<u8> {
        std::fs::read(std::fs::canonicalize("/usr/bin/ls").unwrap()).unwrap()
    }

    #[test]
    fn needs_reads_the_interpreter_and_needed_libraries_of_a_real_program() {
        let needs =
            needs(host_ls().as_slice(), |_| {}).expect("ls is a dynamically linked ELF program");
        let interp = String::from_utf8(needs.interpreter.clone().unwrap()).unwrap();
        assert!(
            interp.starts_with('/') && interp.contains("ld-"),
            "{interp}"
        );
        let names: Vec<String> = needs
            .needed
            .iter()
            .map(|n| String::from_utf8(n.clone()).unwrap())
            .collect();
        assert!(names.iter().any(|n| n.starts_with("libc.so")), "{names:?}");
        // glibc's libc needs the loader by name.
        let libc = needs.resolve_on_host("libc.so.6");
        let lib = super::needs(std::fs::read(libc).unwrap().as_slice(), |_| {}).unwrap();
        assert!(
            lib.needed.iter().any(|n| n.starts_with(b"ld-linux")),
            "{:?}",
            lib.needed
        );
    }

    impl Needs {
        fn resolve_on_host(&self, name: &str) -> std::path::PathBuf {
            system_dirs(self.machine)
                .iter()
                .map(|d| std::path::Path::new(d).join(name))
                .find(|p| p.exists())
                .unwrap()
        }
    }

    #[test]
    fn needs_refuses_what_is_not_a_whole_elf_file_without_panicking() {
        assert_eq!(needs(b"#!/bin/sh\necho hi\n".as_slice(), |_| {}), None);
        assert_eq!(needs(b"\x7fEL".as_slice(), |_| {}), None);
        let ls = host_ls();
        // Cut anywhere before the dynamic section's strings: refused or partial, never a panic.
        for len in [16, 63, 64, 200, 1000, 4096] {
            let _ = needs(&ls[..len], |_| {});
        }
        // Damaged headers and dynamic sections.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut bad = ls.clone();
            for _ in 0..8 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let at = (rng as usize) % bad.len().min(64 << 10);
                bad[at] = (rng >> 32) as u8;
            }
            let _ = needs(bad.as_slice(), |_| {});
        }
    }
}

#[cfg(test)]
mod entrypoint_tests {
    use super::*;
    use hydrate_format::{annotation, ContentId, Digest, ManifestWriter, NodeMeta};

    fn meta(mode: u32) -> NodeMeta {
        NodeMeta {
            mode,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    /// A merged-/usr tree (`bin` → `usr/bin`) with `usr/bin/python3` → `python3.11`, `usr/local/bin/tool`,
    /// and the OCI config `config` (none if empty).
    fn image(config: &str) -> Manifest<Vec<u8>> {
        let mut w = ManifestWriter::new(meta(0o40755));
        let root = w.root();
        let usr = w.add_dir(root, b"usr", meta(0o40755)).unwrap();
        let bin = w.add_dir(usr, b"bin", meta(0o40755)).unwrap();
        let local = w.add_dir(usr, b"local", meta(0o40755)).unwrap();
        let local_bin = w.add_dir(local, b"bin", meta(0o40755)).unwrap();
        w.add_symlink(root, b"bin", meta(0o120777), b"usr/bin")
            .unwrap();
        let content = ContentId(Digest::of(b""));
        w.add_file(bin, b"python3.11", meta(0o100755), content, vec![])
            .unwrap();
        w.add_symlink(bin, b"python3", meta(0o120777), b"python3.11")
            .unwrap();
        w.add_file(local_bin, b"tool", meta(0o100755), content, vec![])
            .unwrap();
        w.add_symlink(bin, b"loop", meta(0o120777), b"loop")
            .unwrap();
        if !config.is_empty() {
            w.set_annotation(annotation::OCI_CONFIG, config.as_bytes())
                .unwrap();
        }
        Manifest::parse(w.finish().unwrap()).unwrap()
    }

    fn regular<B: AsRef<[u8]>>(m: &Manifest<B>, found: Option<Ino>) -> Option<Ino> {
        found.inspect(|&ino| assert_eq!(m.attr(ino).unwrap().kind, FileKind::Regular))
    }

    #[test]
    fn the_command_is_found_as_the_runtime_would_find_it() {
        let m = image(r#"{"config":{"Cmd":["/bin/python3","-c","1"]}}"#);
        let python = m.resolve(b"usr/bin/python3.11");
        assert_eq!(regular(&m, entrypoint(&m)), python);
        // Entrypoint wins over Cmd; a bare name goes through the default PATH.
        let m = image(r#"{"config":{"Entrypoint":["tool"],"Cmd":["python3"]}}"#);
        assert_eq!(entrypoint(&m), m.resolve(b"usr/local/bin/tool"));
        // An empty Entrypoint means the Cmd; the config's own PATH is used when it sets one.
        let m = image(r#"{"config":{"Entrypoint":[],"Cmd":["python3"],"Env":["PATH=/bin"]}}"#);
        assert_eq!(entrypoint(&m), python);
        let m = image(r#"{"config":{"Cmd":["tool"],"Env":["PATH=/bin"]}}"#);
        assert_eq!(entrypoint(&m), None);
    }

    #[test]
    fn no_command_no_config_a_symlink_loop_or_bad_json_find_nothing() {
        assert_eq!(entrypoint(&image("")), None);
        assert_eq!(entrypoint(&image(r#"{"config":{}}"#)), None);
        assert_eq!(
            entrypoint(&image(r#"{"config":{"Cmd":["/bin/loop"]}}"#)),
            None
        );
        assert_eq!(entrypoint(&image(r#"{"config":{"Cmd":["/nope"]}}"#)), None);
        assert_eq!(entrypoint(&image(r#"{"config":"#)), None);
    }

    #[test]
    fn a_scripts_interpreter_is_its_first_word() {
        assert_eq!(shebang(b"#!/bin/sh -e\necho"), Some(&b"/bin/sh"[..]));
        assert_eq!(
            shebang(b"#!  /usr/bin/env python3\n"),
            Some(&b"/usr/bin/env"[..])
        );
        assert_eq!(
            shebang(b"#!/bin/sh"),
            None,
            "no end of line in the bytes read"
        );
        assert_eq!(shebang(b"\x7fELF"), None);
    }
}
