//! Pass 1 of a conversion: applying layers, in order, to an in-memory merged tree, with the OCI image-spec
//! layer semantics (changesets, whiteouts, opaque directories, hard links), then emitting the result into a
//! [`TreeBuild`].
//!
//! The tree holds metadata only. A regular file remembers which layer entry holds its content (layer index
//! and the entry's ordinal in that layer), so pass 2 can stream the content from the layer again.
//!
//! Rules, with the decisions the spec leaves open:
//! - Entry paths are cleaned lexically ("./", "/" and "." dropped, ".." popped); a ".." above the root is an
//!   error. Parent components are resolved through symlinks inside the image root the way umoci and
//!   containerd's securejoin do (absolute targets restart at the image root, ".." stops at the root, at most
//!   40 symlinks per path); missing parents are created (0755, root, mtime 0).
//! - An entry replaces whatever non-directory is at its path, or a directory when the entry is not one; a
//!   directory entry over a directory updates its metadata and keeps the children.
//! - Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) of a layer are applied when the layer ends,
//!   so their position in the tar does not matter, and only hide what lower layers created: every name
//!   records the layer that last wrote it. A lower directory that holds entries of the whiting-out layer
//!   stays, with its lower contents removed.
//! - Each entry records the layer that created its name; hard links share the target's inode, so nlink
//!   counts the names left in the final tree.

use std::collections::{BTreeMap, HashMap, VecDeque};

use hydrate_builder::TreeBuild;
use hydrate_format::{validate::NAME_MAX, FileKind, NodeId, NodeMeta};

use crate::layer::{EntryInfo, EntryKind};
use crate::ConvertError;

const ROOT: usize = 0;
/// Symlinks followed while resolving one path (Linux MAXSYMLINKS).
const SYMLINK_LIMIT: usize = 40;
/// Deepest directory accepted; bounds recursion and hostile inputs.
const DEPTH_LIMIT: usize = 1024;
const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT: &[u8] = b".wh.";

/// Where a regular file's content is: layer index and the entry's ordinal in that layer.
pub(crate) type ContentSource = (usize, u64);

#[derive(Debug)]
enum Data {
    Dir(BTreeMap<Vec<u8>, Name>),
    File { size: u64, source: ContentSource },
    Symlink(Vec<u8>),
    Special { kind: FileKind, rdev: u64 },
}

#[derive(Debug)]
struct Inode {
    meta: NodeMeta,
    data: Data,
}

/// A directory entry: the inode it names and the layer that last wrote the name.
#[derive(Debug, Clone, Copy)]
struct Name {
    inode: usize,
    layer: usize,
}

#[derive(Debug)]
enum Hide {
    Whiteout(Vec<Vec<u8>>, Vec<u8>),
    Opaque(Vec<Vec<u8>>),
}

/// Counters of what the layers did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub hardlinks: u64,
}

#[derive(Debug)]
pub(crate) struct Merged {
    /// Arena of inodes; removed subtrees stay as unreachable garbage (metadata only).
    inodes: Vec<Inode>,
    hides: Vec<Hide>,
    pub stats: MergeStats,
}

impl Merged {
    pub fn new() -> Merged {
        Merged {
            inodes: vec![Inode {
                meta: NodeMeta {
                    mode: 0o755,
                    ..NodeMeta::default()
                },
                data: Data::Dir(BTreeMap::new()),
            }],
            hides: Vec::new(),
            stats: MergeStats::default(),
        }
    }

    /// Applies one entry of `layer`; the error is the detail, the caller names layer and entry.
    pub fn apply(&mut self, layer: usize, ordinal: u64, e: EntryInfo) -> Result<(), String> {
        let mut comps = normalize(&e.path)?;
        let Some(name) = comps.pop() else {
            return match e.kind {
                EntryKind::Dir => {
                    self.inodes[ROOT].meta = e.meta;
                    Ok(())
                }
                _ => Err("the image root can only be a directory".into()),
            };
        };
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if name == OPAQUE {
                self.hides.push(Hide::Opaque(comps));
            } else if !hidden.starts_with(WHITEOUT) && !hidden.is_empty() {
                self.hides.push(Hide::Whiteout(comps, hidden.to_vec()));
            }
            // Other `.wh..wh.*` names are aufs bookkeeping, never part of the image.
            return Ok(());
        }
        check_name(&name)?;
        let parent = self
            .resolve_dir(&comps, Some(layer))?
            .ok_or("parent directory missing")?;
        let existing = self.child(parent, &name);
        let inode = match e.kind {
            EntryKind::Dir => match existing {
                Some(n) if matches!(self.inodes[n.inode].data, Data::Dir(_)) => {
                    self.inodes[n.inode].meta = e.meta;
                    n.inode
                }
                _ => self.new_inode(e.meta, Data::Dir(BTreeMap::new())),
            },
            EntryKind::File { size } => self.new_inode(
                e.meta,
                Data::File {
                    size,
                    source: (layer, ordinal),
                },
            ),
            EntryKind::Symlink(target) => self.new_inode(e.meta, Data::Symlink(target)),
            EntryKind::Special { kind, rdev } => {
                self.new_inode(e.meta, Data::Special { kind, rdev })
            }
            EntryKind::HardLink(target) => {
                let inode = self.link_target(&target)?;
                self.stats.hardlinks += 1;
                inode
            }
        };
        self.dir_mut(parent).insert(name, Name { inode, layer });
        Ok(())
    }

    /// Applies the whiteouts and opaque markers of `layer`, which has no entries left.
    pub fn end_layer(&mut self, layer: usize) {
        for hide in std::mem::take(&mut self.hides) {
            match hide {
                Hide::Whiteout(dir, name) => {
                    self.stats.whiteouts += 1;
                    // A whiteout whose parent is gone or not a directory hides nothing.
                    let Ok(Some(parent)) = self.resolve_dir(&dir, None) else {
                        continue;
                    };
                    let Some(n) = self.child(parent, &name) else {
                        continue;
                    };
                    if n.layer == layer {
                        continue;
                    }
                    let keep = matches!(self.inodes[n.inode].data, Data::Dir(_))
                        && self.filter_lower(n.inode, layer);
                    if !keep {
                        self.dir_mut(parent).remove(&name);
                    }
                }
                Hide::Opaque(dir) => {
                    self.stats.opaque_dirs += 1;
                    if let Ok(Some(d)) = self.resolve_dir(&dir, None) {
                        self.filter_lower(d, layer);
                    }
                }
            }
        }
    }

    /// Removes from directory `dir` every descendant not written by `layer`, keeping lower directories that
    /// still hold some of its entries. Returns whether anything is left.
    fn filter_lower(&mut self, dir: usize, layer: usize) -> bool {
        let names: Vec<(Vec<u8>, Name)> = match &self.inodes[dir].data {
            Data::Dir(entries) => entries.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            _ => return false,
        };
        let mut any = false;
        for (name, n) in names {
            let is_dir = matches!(self.inodes[n.inode].data, Data::Dir(_));
            let has_upper = is_dir && self.filter_lower(n.inode, layer);
            if n.layer == layer || has_upper {
                any = true;
            } else {
                self.dir_mut(dir).remove(&name);
            }
        }
        any
    }

    /// The inode a hard link target names (resolved now, in the tree built so far).
    fn link_target(&mut self, target: &[u8]) -> Result<usize, String> {
        let lossy = || String::from_utf8_lossy(target).into_owned();
        let mut comps = normalize(target).map_err(|e| format!("hard link target: {e}"))?;
        let name = comps
            .pop()
            .ok_or_else(|| "hard link to the image root".to_owned())?;
        let found = self
            .resolve_dir(&comps, None)?
            .and_then(|d| self.child(d, &name));
        match found {
            None => Err(format!("hard link target {:?} does not exist", lossy())),
            Some(n) if matches!(self.inodes[n.inode].data, Data::Dir(_)) => {
                Err(format!("hard link target {:?} is a directory", lossy()))
            }
            Some(n) => Ok(n.inode),
        }
    }

    fn new_inode(&mut self, meta: NodeMeta, data: Data) -> usize {
        self.inodes.push(Inode { meta, data });
        self.inodes.len() - 1
    }

    fn child(&self, dir: usize, name: &[u8]) -> Option<Name> {
        match &self.inodes[dir].data {
            Data::Dir(entries) => entries.get(name).copied(),
            _ => None,
        }
    }

    fn dir_mut(&mut self, dir: usize) -> &mut BTreeMap<Vec<u8>, Name> {
        match &mut self.inodes[dir].data {
            Data::Dir(entries) => entries,
            // Callers only pass inodes they just resolved as directories.
            _ => unreachable!("inode {dir} is not a directory"),
        }
    }

    /// Resolves directory components from the root, following symlinks inside the image root. With
    /// `create` (the current layer), missing directories are created; without, a missing or non-directory
    /// component gives `None`.
    fn resolve_dir(
        &mut self,
        comps: &[Vec<u8>],
        create: Option<usize>,
    ) -> Result<Option<usize>, String> {
        let mut stack: Vec<usize> = Vec::new();
        let mut queue: VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut links = 0;
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                stack.pop();
                continue;
            }
            if stack.len() >= DEPTH_LIMIT {
                return Err(format!("deeper than {DEPTH_LIMIT} directories"));
            }
            let cur = stack.last().copied().unwrap_or(ROOT);
            let next = match self.child(cur, &c) {
                Some(n) => match &self.inodes[n.inode].data {
                    Data::Dir(_) => n.inode,
                    Data::Symlink(target) => {
                        links += 1;
                        if links > SYMLINK_LIMIT {
                            return Err(format!(
                                "more than {SYMLINK_LIMIT} symlinks while resolving the parent path"
                            ));
                        }
                        if target.starts_with(b"/") {
                            stack.clear();
                        }
                        for t in target.split(|&b| b == b'/').rev() {
                            queue.push_front(t.to_vec());
                        }
                        continue;
                    }
                    _ if create.is_some() => {
                        return Err(format!(
                            "parent component {:?} is not a directory",
                            String::from_utf8_lossy(&c)
                        ))
                    }
                    _ => return Ok(None),
                },
                None => match create {
                    Some(layer) => {
                        check_name(&c)?;
                        let d = self.new_inode(
                            NodeMeta {
                                mode: 0o755,
                                ..NodeMeta::default()
                            },
                            Data::Dir(BTreeMap::new()),
                        );
                        self.dir_mut(cur).insert(c, Name { inode: d, layer });
                        d
                    }
                    None => return Ok(None),
                },
            };
            stack.push(next);
        }
        Ok(Some(stack.last().copied().unwrap_or(ROOT)))
    }

    /// Emits the merged tree: returns it and, for every regular file left, where its content is.
    pub fn emit(&self) -> Result<(TreeBuild, HashMap<ContentSource, NodeId>), ConvertError> {
        let mut tree = TreeBuild::new(self.inodes[ROOT].meta.clone());
        let mut files: HashMap<ContentSource, NodeId> = HashMap::new();
        let mut emitted: HashMap<usize, NodeId> = HashMap::new();
        let mut stack = vec![(ROOT, tree.root(), String::new())];
        while let Some((dir, node, path)) = stack.pop() {
            let Data::Dir(entries) = &self.inodes[dir].data else {
                continue;
            };
            for (name, n) in entries {
                let child_path = format!("{path}/{}", String::from_utf8_lossy(name));
                let fail = |e: hydrate_format::FormatError| {
                    ConvertError::corrupt(format!("image path {child_path}"), e.to_string())
                };
                if let Some(&existing) = emitted.get(&n.inode) {
                    tree.add_link(node, name, existing).map_err(fail)?;
                    continue;
                }
                let inode = &self.inodes[n.inode];
                let meta = inode.meta.clone();
                let id = match &inode.data {
                    Data::Dir(_) => {
                        let id = tree.add_dir(node, name, meta).map_err(fail)?;
                        stack.push((n.inode, id, child_path));
                        id
                    }
                    Data::File { size, source } => {
                        let id = tree.add_file(node, name, meta, *size).map_err(fail)?;
                        files.insert(*source, id);
                        id
                    }
                    Data::Symlink(target) => {
                        tree.add_symlink(node, name, meta, target).map_err(fail)?
                    }
                    Data::Special { kind, rdev } => tree
                        .add_special(node, name, meta, *kind, *rdev)
                        .map_err(fail)?,
                };
                emitted.insert(n.inode, id);
            }
        }
        Ok((tree, files))
    }
}

fn check_name(name: &[u8]) -> Result<(), String> {
    if name.len() > NAME_MAX {
        return Err(format!("a path component is longer than {NAME_MAX} bytes"));
    }
    Ok(())
}

/// Cleans an entry path lexically into components; ".." above the root is refused.
pub(crate) fn normalize(path: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("the path escapes the image root (\"..\")".into());
                }
            }
            c => out.push(c.to_vec()),
        }
    }
    if out.len() > DEPTH_LIMIT {
        return Err(format!("deeper than {DEPTH_LIMIT} directories"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The merge rules checked against a direct model on a two-level tree, plus path cleaning.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        File(&'static str),
        Dir(&'static str),
        Whiteout(&'static str),
        Opaque,
    }

    const PATHS: [&str; 4] = ["a", "d", "d/x", "d/y"];

    fn op() -> impl Strategy<Value = Op> {
        let p = proptest::sample::select(&PATHS[..]);
        prop_oneof![
            p.clone().prop_map(Op::File),
            p.clone().prop_map(Op::Dir),
            p.prop_map(Op::Whiteout),
            Just(Op::Opaque),
        ]
    }

    /// path -> (is_dir, layer that last wrote the name)
    type Model = BTreeMap<String, (bool, usize)>;

    fn children(m: &Model, dir: &str) -> Vec<String> {
        m.keys()
            .filter(|k| k.starts_with(&format!("{dir}/")))
            .cloned()
            .collect()
    }

    /// Removes lower-layer children of `dir` (one level is all the model has); returns whether any remain.
    fn filter(m: &mut Model, dir: &str, layer: usize) -> bool {
        let mut any = false;
        for c in children(m, dir) {
            if m[&c].1 == layer {
                any = true;
            } else {
                m.remove(&c);
            }
        }
        any
    }

    fn model(layers: &[Vec<Op>]) -> Result<Model, ()> {
        let mut m = Model::new();
        for (layer, ops) in layers.iter().enumerate() {
            let mut hides = Vec::new();
            for op in ops {
                let (p, is_dir) = match op {
                    Op::File(p) => (*p, false),
                    Op::Dir(p) => (*p, true),
                    hide => {
                        hides.push(hide.clone());
                        continue;
                    }
                };
                if let Some((parent, _)) = p.split_once('/') {
                    match m.get(parent) {
                        Some((false, _)) => return Err(()),
                        Some(_) => {}
                        None => {
                            m.insert(parent.into(), (true, layer));
                        }
                    }
                }
                if is_dir && m.get(p).is_some_and(|e| e.0) {
                    m.get_mut(p).unwrap().1 = layer;
                    continue;
                }
                for c in children(&m, p) {
                    m.remove(&c);
                }
                m.insert(p.into(), (is_dir, layer));
            }
            for hide in hides {
                match hide {
                    Op::Whiteout(p) => match m.get(p).copied() {
                        Some((_, l)) if l == layer => {}
                        Some((true, _)) if !filter(&mut m, p, layer) => {
                            m.remove(p);
                        }
                        Some((true, _)) => {}
                        Some((false, _)) => {
                            m.remove(p);
                        }
                        None => {}
                    },
                    _ => {
                        if m.get("d").is_some_and(|e| e.0) {
                            filter(&mut m, "d", layer);
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    fn entry(path: &str, kind: EntryKind) -> EntryInfo {
        EntryInfo {
            path: path.as_bytes().to_vec(),
            kind,
            meta: NodeMeta::default(),
        }
    }

    fn merged(layers: &[Vec<Op>]) -> Result<BTreeMap<String, bool>, String> {
        let mut t = Merged::new();
        for (layer, ops) in layers.iter().enumerate() {
            for (i, op) in ops.iter().enumerate() {
                let e = match op {
                    Op::File(p) => entry(p, EntryKind::File { size: 0 }),
                    Op::Dir(p) => entry(p, EntryKind::Dir),
                    Op::Whiteout(p) => match p.rsplit_once('/') {
                        Some((d, n)) => entry(&format!("{d}/.wh.{n}"), EntryKind::File { size: 0 }),
                        None => entry(&format!(".wh.{p}"), EntryKind::File { size: 0 }),
                    },
                    Op::Opaque => entry("d/.wh..wh..opq", EntryKind::File { size: 0 }),
                };
                t.apply(layer, i as u64, e)?;
            }
            t.end_layer(layer);
        }
        let mut out = BTreeMap::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((dir, path)) = stack.pop() {
            let Data::Dir(entries) = &t.inodes[dir].data else {
                continue;
            };
            for (name, n) in entries {
                let p = format!("{path}{}", String::from_utf8_lossy(name));
                let is_dir = matches!(t.inodes[n.inode].data, Data::Dir(_));
                if is_dir {
                    stack.push((n.inode, format!("{p}/")));
                }
                out.insert(p, is_dir);
            }
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn merge_matches_the_model(layers in proptest::collection::vec(
            proptest::collection::vec(op(), 0..6), 1..5)) {
            let got = merged(&layers);
            match model(&layers) {
                Err(()) => prop_assert!(got.is_err(), "{got:?}"),
                Ok(m) => {
                    let want: BTreeMap<String, bool> = m.into_iter().map(|(k, v)| (k, v.0)).collect();
                    prop_assert_eq!(got.unwrap(), want);
                }
            }
        }
    }

    #[test]
    fn paths_are_cleaned_and_escapes_refused() {
        assert_eq!(
            normalize(b"./a//b/./c/").unwrap(),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(normalize(b"/a/../b").unwrap(), [b"b".to_vec()]);
        assert!(normalize(b"./").unwrap().is_empty());
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(&b"a/".repeat(DEPTH_LIMIT + 1)).is_err());
    }

    #[test]
    fn symlink_loops_and_absolute_targets_stay_inside_the_root() {
        let mut t = Merged::new();
        t.apply(0, 0, entry("loop", EntryKind::Symlink(b"loop".to_vec())))
            .unwrap();
        let e = t
            .apply(0, 1, entry("loop/x", EntryKind::File { size: 0 }))
            .unwrap_err();
        assert!(e.contains("symlinks"), "{e}");
        // An absolute or climbing target is resolved inside the image, never on the host.
        t.apply(
            0,
            2,
            entry("up", EntryKind::Symlink(b"../../../etc".to_vec())),
        )
        .unwrap();
        t.apply(0, 3, entry("up/passwd", EntryKind::File { size: 1 }))
            .unwrap();
        t.apply(
            0,
            4,
            entry("abs", EntryKind::Symlink(b"/srv/data".to_vec())),
        )
        .unwrap();
        t.apply(0, 5, entry("abs/f", EntryKind::File { size: 1 }))
            .unwrap();
        let etc = t.child(ROOT, b"etc").unwrap().inode;
        assert!(t.child(etc, b"passwd").is_some());
        let srv = t.child(ROOT, b"srv").unwrap().inode;
        let data = t.child(srv, b"data").unwrap().inode;
        assert!(t.child(data, b"f").is_some());
        let e = t
            .apply(0, 6, entry("up/passwd/x", EntryKind::File { size: 0 }))
            .unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
    }
}
