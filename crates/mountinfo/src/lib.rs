//! The one reader of `/proc/<pid>/mountinfo` (proc(5)): typed entries with every escaped field decoded, and
//! the lookups hydrate makes on them (the mounts at or below a directory, whether a path is a mount point, the
//! mount that holds a path, the topmost mount stacked at a path).
//!
//! The kernel writes a space, tab, newline or backslash inside a path, source or option as a backslash and
//! three octal digits (`/mnt/my\040app`); comparing raw fields with a path silently misses such mounts, which
//! is why nothing else in hydrate splits mountinfo lines itself. Paths are decoded to bytes, not UTF-8, so a
//! mount point with any name round-trips.
//!
//! Reading mountinfo rather than calling stat(2) matters for FUSE: a stat of a mount whose daemon died or is
//! still starting would hang or fail, and those are exactly the moments a mount must be found.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo: one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique id of the mount (may be reused after an unmount).
    pub mount_id: u32,
    /// Id of the parent mount (itself for the root of the mount namespace's tree).
    pub parent_id: u32,
    /// Major device number of `st_dev` for files on this filesystem (0 for FUSE and other virtual ones).
    pub major: u32,
    /// Minor device number; for FUSE it is also the connection's id under /sys/fs/fuse/connections.
    pub minor: u32,
    /// The directory of the filesystem that forms the root of this mount (not `/` for bind mounts).
    pub root: PathBuf,
    /// Where it is mounted, relative to the reading process's root.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `nosuid`, `relatime`, ...), each decoded.
    pub mount_options: Vec<String>,
    /// Optional fields such as `shared:1` or `master:2`.
    pub optional_fields: Vec<String>,
    /// Filesystem type, with its subtype if any (`ext4`, `fuse.hydrate`).
    pub fs_type: String,
    /// Filesystem-specific source (`/dev/sda1`, `hydrate:app`, `none`).
    pub source: String,
    /// Per-superblock options (`rw`, `upperdir=/x`, ...), each decoded: split first, then decoded, so an
    /// escaped comma inside a value stays in its option.
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Whether this is a FUSE mount (`fuse`, `fuse.NAME`, `fuseblk`).
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type == "fuseblk" || self.fs_type.starts_with("fuse.")
    }

    /// The device as the kernel names it in /sys/class/bdi and /sys/dev: `MAJOR:MINOR`.
    pub fn device(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }

    /// Whether `option` (e.g. `ro` or `upperdir=/var/lib/x`) is among the per-superblock options.
    pub fn has_super_option(&self, option: &str) -> bool {
        self.super_options.iter().any(|o| o == option)
    }

    /// Parses one mountinfo line.
    pub fn parse(line: &str) -> Result<MountEntry, MountInfoError> {
        let malformed = |reason: &'static str| MountInfoError::Malformed {
            line: line.to_owned(),
            reason,
        };
        let mut fields = line.split(' ');
        let mut next = |name: &'static str| fields.next().ok_or(malformed(name));
        let mount_id = next("no mount id")?
            .parse()
            .map_err(|_| malformed("mount id is not a number"))?;
        let parent_id = next("no parent id")?
            .parse()
            .map_err(|_| malformed("parent id is not a number"))?;
        let (major, minor) = next("no major:minor")?
            .split_once(':')
            .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)))
            .ok_or(malformed("major:minor is not two numbers"))?;
        let root = path(next("no root")?);
        let mount_point = path(next("no mount point")?);
        let mount_options = options(next("no mount options")?);
        let mut optional_fields = Vec::new();
        loop {
            match next("no \"-\" separator before the filesystem type")? {
                "-" => break,
                field => optional_fields.push(unescape_str(field)),
            }
        }
        let fs_type = unescape_str(next("no filesystem type")?);
        let source = unescape_str(next("no mount source")?);
        let super_options = options(next("no super options")?);
        Ok(MountEntry {
            mount_id,
            parent_id,
            major,
            minor,
            root,
            mount_point,
            mount_options,
            optional_fields,
            fs_type,
            source,
            super_options,
        })
    }
}

/// The mounts of one mount namespace, in the kernel's order (a mount stacked on another comes after it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountInfo {
    entries: Vec<MountEntry>,
}

impl MountInfo {
    /// The mounts this process sees (`/proc/self/mountinfo`).
    pub fn read_self() -> Result<MountInfo, MountInfoError> {
        MountInfo::read(Path::new("/proc/self/mountinfo"))
    }

    /// The mounts process `pid` sees (`/proc/PID/mountinfo`), e.g. in another mount namespace.
    pub fn read_pid(pid: i32) -> Result<MountInfo, MountInfoError> {
        MountInfo::read(Path::new(&format!("/proc/{pid}/mountinfo")))
    }

    /// The mounts listed in a mountinfo file.
    pub fn read(path: &Path) -> Result<MountInfo, MountInfoError> {
        let text = std::fs::read_to_string(path).map_err(|source| MountInfoError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        MountInfo::parse(&text)
    }

    /// Parses mountinfo text; a malformed line is an error naming it.
    pub fn parse(text: &str) -> Result<MountInfo, MountInfoError> {
        let entries = text
            .lines()
            .filter(|line| !line.is_empty())
            .map(MountEntry::parse)
            .collect::<Result<_, _>>()?;
        Ok(MountInfo { entries })
    }

    /// All mounts, in the kernel's order.
    pub fn entries(&self) -> &[MountEntry] {
        &self.entries
    }

    /// The mounts whose mount point is exactly `path`, bottom first (several when mounts are stacked).
    pub fn at<'a>(
        &'a self,
        path: &'a Path,
    ) -> impl DoubleEndedIterator<Item = &'a MountEntry> + 'a {
        self.entries.iter().filter(move |e| e.mount_point == path)
    }

    /// The mount on top at `path`: the one a lookup of `path` reaches.
    pub fn top_at(&self, path: &Path) -> Option<&MountEntry> {
        self.entries.iter().rev().find(|e| e.mount_point == path)
    }

    /// Whether something is mounted at exactly `path` (compared as given: pass an absolute, canonical path).
    pub fn is_mount_point(&self, path: &Path) -> bool {
        self.entries.iter().any(|e| e.mount_point == path)
    }

    /// The mounts at `dir` or anywhere below it (component-wise: `/mnt/a` is not below `/mnt/ab`).
    pub fn under<'a>(
        &'a self,
        dir: &'a Path,
    ) -> impl DoubleEndedIterator<Item = &'a MountEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.mount_point.starts_with(dir))
    }

    /// The mount that holds `path`: the deepest mount point that is `path` or one of its ancestors, the topmost
    /// one if mounts are stacked there. `path` should be absolute and canonical (symbolic links resolved).
    pub fn containing(&self, path: &Path) -> Option<&MountEntry> {
        self.entries
            .iter()
            .filter(|e| path.starts_with(&e.mount_point))
            .max_by_key(|e| e.mount_point.components().count())
    }
}

/// Why mountinfo could not be read.
#[derive(Debug)]
pub enum MountInfoError {
    /// The file could not be read (no /proc, or the process exited).
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line does not have the fields proc(5) lists.
    Malformed { line: String, reason: &'static str },
}

impl fmt::Display for MountInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountInfoError::Read { path, source } => {
                write!(
                    f,
                    "reading {}: {source} (is /proc mounted?)",
                    path.display()
                )
            }
            MountInfoError::Malformed { line, reason } => {
                write!(f, "malformed mountinfo line {line:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for MountInfoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MountInfoError::Read { source, .. } => Some(source),
            MountInfoError::Malformed { .. } => None,
        }
    }
}

/// Decodes the kernel's `\ooo` escapes (it writes space, tab, newline and backslash that way). A backslash
/// not followed by three octal digits is kept as it is.
pub fn unescape(field: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        match (first, tail) {
            (b'\\', &[high @ b'0'..=b'3', mid @ b'0'..=b'7', low @ b'0'..=b'7', ..]) => {
                out.push((high - b'0') << 6 | (mid - b'0') << 3 | (low - b'0'));
                rest = &tail[3..];
            }
            _ => {
                out.push(first);
                rest = tail;
            }
        }
    }
    out
}

fn path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn unescape_str(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

fn options(field: &str) -> Vec<String> {
    field.split(',').map(unescape_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
90 22 0:51 / /mnt/my\\040app rw,nosuid,nodev,relatime shared:60 - fuse.hydrate hydrate:app rw,user_id=0
91 90 0:52 / /mnt/my\\040app rw,nosuid shared:61 - fuse hydrate:b rw,user_id=0
92 22 0:53 / /mnt/other rw shared:62 master:3 - tmpfs tmpfs rw
93 22 0:54 / /mnt/tab\\011new\\012line\\134slash rw - tmpfs a\\040source rw
94 92 0:55 /sub /mnt/other/deep rw - overlay overlay rw,lowerdir=/l,upperdir=/up\\054per,workdir=/w
95 22 0:56 / /mnt/ab rw - tmpfs tmpfs rw
";

    fn sample() -> MountInfo {
        MountInfo::parse(SAMPLE).unwrap()
    }

    #[test]
    fn parses_every_field() {
        let info = sample();
        assert_eq!(info.entries().len(), 8);
        let e = &info.entries()[4];
        assert_eq!((e.mount_id, e.parent_id), (92, 22));
        assert_eq!((e.major, e.minor), (0, 53));
        assert_eq!(e.device(), "0:53");
        assert_eq!(e.root, Path::new("/"));
        assert_eq!(e.mount_point, Path::new("/mnt/other"));
        assert_eq!(e.mount_options, ["rw"]);
        assert_eq!(e.optional_fields, ["shared:62", "master:3"]);
        assert_eq!(e.fs_type, "tmpfs");
        assert_eq!(e.source, "tmpfs");
        assert_eq!(e.super_options, ["rw"]);
        assert!(!e.is_fuse());
        assert_eq!(info.entries()[6].root, Path::new("/sub"));
        assert_eq!(info.entries()[0].optional_fields, ["shared:1"]);
    }

    #[test]
    fn decodes_space_tab_newline_and_backslash() {
        let info = sample();
        assert!(info.is_mount_point(Path::new("/mnt/my app")));
        let odd = Path::new("/mnt/tab\tnew\nline\\slash");
        assert!(info.is_mount_point(odd));
        assert_eq!(info.top_at(odd).unwrap().source, "a source");
        assert!(!info.is_mount_point(Path::new("/mnt/my\\040app")));
        // An escaped comma stays inside its option.
        assert!(info.entries()[6].has_super_option("upperdir=/up,per"));
    }

    #[test]
    fn unescape_keeps_what_is_not_an_escape() {
        assert_eq!(unescape(r"/run/a\040b\134c"), b"/run/a b\\c");
        assert_eq!(unescape(r"/plain\x"), br"/plain\x");
        assert_eq!(unescape(r"/plain\"), br"/plain\");
        assert_eq!(unescape(r"/x\09"), br"/x\09");
        assert_eq!(unescape(r"/x\400"), br"/x\400");
        assert_eq!(unescape(r"\377"), [0xff]);
    }

    #[test]
    fn non_utf8_mount_points_round_trip() {
        let info = MountInfo::parse("1 0 0:1 / /mnt/\\377x rw - tmpfs tmpfs rw\n").unwrap();
        let want = PathBuf::from(OsString::from_vec(b"/mnt/\xffx".to_vec()));
        assert!(info.is_mount_point(&want));
    }

    #[test]
    fn stacked_mounts_resolve_to_the_top_one() {
        let info = sample();
        let app = Path::new("/mnt/my app");
        assert_eq!(info.at(app).count(), 2);
        let top = info.top_at(app).unwrap();
        assert_eq!((top.minor, top.fs_type.as_str()), (52, "fuse"));
        assert!(top.is_fuse());
        assert_eq!(info.top_at(Path::new("/mnt/none")), None);
    }

    #[test]
    fn mounts_under_a_directory_are_matched_by_component() {
        let info = sample();
        let under = |dir: &str| -> Vec<PathBuf> {
            info.under(Path::new(dir))
                .map(|e| e.mount_point.clone())
                .collect()
        };
        assert_eq!(
            under("/mnt/other"),
            ["/mnt/other", "/mnt/other/deep"].map(PathBuf::from)
        );
        assert_eq!(under("/mnt/a"), Vec::<PathBuf>::new());
        assert_eq!(under("/").len(), 8);
    }

    #[test]
    fn the_deepest_mount_holds_a_path() {
        let info = sample();
        let holder = |p: &str| info.containing(Path::new(p)).map(|e| e.mount_id);
        assert_eq!(holder("/etc/passwd"), Some(22));
        assert_eq!(holder("/mnt/other/deep/x"), Some(94));
        assert_eq!(holder("/mnt/other/deeper"), Some(92));
        assert_eq!(holder("/mnt/my app/f"), Some(91));
        assert_eq!(holder("/mnt/abc"), Some(22));
        assert_eq!(MountInfo::default().containing(Path::new("/")), None);
    }

    #[test]
    fn malformed_lines_are_named() {
        for (line, reason) in [
            ("x 0 0:1 / / rw - tmpfs t rw", "mount id is not a number"),
            (
                "1 0 01 / / rw - tmpfs t rw",
                "major:minor is not two numbers",
            ),
            (
                "1 0 0:1 / / rw shared:1 tmpfs t rw",
                "no \"-\" separator before the filesystem type",
            ),
            ("1 0 0:1 / / rw -", "no filesystem type"),
            ("1 0 0:1 / / rw - tmpfs t", "no super options"),
        ] {
            let error = MountInfo::parse(line).unwrap_err();
            assert!(
                matches!(&error, MountInfoError::Malformed { reason: r, .. } if *r == reason),
                "{line}: {error}"
            );
            assert!(error.to_string().contains(line), "{error}");
        }
    }

    #[test]
    fn reads_this_process_mounts() {
        let info = MountInfo::read_self().unwrap();
        assert!(info.is_mount_point(Path::new("/")));
        assert!(info.containing(Path::new("/proc/self")).is_some());
        let error = MountInfo::read_pid(-1).unwrap_err();
        assert!(error.to_string().contains("/proc/-1/mountinfo"), "{error}");
    }
}
