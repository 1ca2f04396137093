//! `hydrate inspect`: what an image holds, read from its manifest alone (no file data is fetched).

use crate::cli::InspectArgs;
use anyhow::{bail, Context, Result};
use hydrate_format::{FileKind, ImageId, Ino, Manifest};
use hydrate_units::human;
use std::collections::HashSet;

pub fn run(args: InspectArgs) -> Result<()> {
    let (id, manifest) = load_manifest(&args.store, &args.image)?;
    let ino = match &args.path {
        None => Ino(1),
        Some(path) => resolve_path(&manifest, path)?,
    };
    let attr = manifest.attr(ino).context("inode vanished")?;
    if args.path.is_none() && !args.tree {
        return summary(&id, manifest.as_bytes().len(), &manifest);
    }
    match attr.kind {
        FileKind::Directory if args.tree => print_tree(&manifest, ino, &mut Vec::new()),
        FileKind::Directory => {
            for index in 0..manifest.dir_len(ino) {
                let (name, child) = manifest.dir_entry(ino, index).context("directory entry")?;
                print_line(&manifest, child, &String::from_utf8_lossy(name));
            }
        }
        FileKind::Regular => chunk_map(&manifest, ino, args.path.as_deref().unwrap_or("")),
        _ => print_line(&manifest, ino, args.path.as_deref().unwrap_or("")),
    }
    Ok(())
}

/// Opens the existing store `store_addr`, resolves `image` (tag or digest) in it and runs `load` on the store
/// and the image id, on a runtime of its own: the start of every command that reads one image.
pub(crate) fn with_image<T, F, Fut>(store_addr: &str, image: &str, load: F) -> Result<T>
where
    F: FnOnce(std::sync::Arc<dyn hydrate_store::BlobStore>, ImageId) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let store = hydrate_store::open_existing_store(store_addr)
        .with_context(|| format!("store {store_addr}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let id = hydrate_store::resolve(store.as_ref(), image)
            .await
            .with_context(|| format!("image {image:?}"))?;
        load(store, id).await
    })
}

/// Resolves `image` in `store` and reads its manifest, checked against its digest.
pub(crate) fn load_manifest(
    store_addr: &str,
    image: &str,
) -> Result<(ImageId, Manifest<bytes::Bytes>)> {
    with_image(store_addr, image, |store, id| async move {
        let bytes = store
            .get(&hydrate_store::keys::manifest(&id))
            .await
            .with_context(|| format!("manifest of image {id}"))?;
        let actual = ImageId(hydrate_format::Digest::of(&bytes));
        if actual != id {
            bail!(
                "manifest of image {id} in {} has digest {actual}: the store holds a damaged copy",
                store.describe()
            );
        }
        let manifest = Manifest::parse(bytes).with_context(|| format!("manifest of image {id}"))?;
        Ok((id, manifest))
    })
}

fn resolve_path<B: AsRef<[u8]>>(manifest: &Manifest<B>, path: &str) -> Result<Ino> {
    let mut ino = Ino(1);
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        ino = manifest
            .lookup(ino, part.as_bytes())
            .with_context(|| format!("{path}: no entry {part:?} in the image"))?;
    }
    Ok(ino)
}

fn summary<B: AsRef<[u8]>>(id: &ImageId, manifest_len: usize, m: &Manifest<B>) -> Result<()> {
    let (mut files, mut dirs, mut links, mut other, mut logical) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut referenced = 0u64;
    for i in 1..=m.inode_count() {
        let a = m.attr(Ino(i)).context("inode")?;
        match a.kind {
            FileKind::Regular => {
                files += 1;
                logical += a.size;
                referenced += m.file_chunks(Ino(i)).len() as u64;
            }
            FileKind::Directory => dirs += 1,
            FileKind::Symlink => links += 1,
            _ => other += 1,
        }
    }
    let unique_plain: u64 = m.chunks().iter().map(|c| u64::from(c.plain_len())).sum();
    let stored: u64 = m.chunks().iter().map(|c| u64::from(c.stored_len())).sum();
    let blobs: HashSet<u32> = m.chunks().iter().map(|c| c.blob_index()).collect();
    println!("image      {id}");
    println!("manifest   {}", human(manifest_len as u64));
    println!(
        "inodes     {} ({files} files, {dirs} dirs, {links} symlinks, {other} other)",
        m.inode_count()
    );
    println!("logical    {}", human(logical));
    println!(
        "chunks     {referenced} referenced, {} unique",
        m.chunks().len()
    );
    println!(
        "unique     {} (dedup ratio {:.2}x)",
        human(unique_plain),
        ratio(logical, unique_plain)
    );
    println!(
        "stored     {} (compression {:.2}x, total {:.2}x)",
        human(stored),
        ratio(unique_plain, stored),
        ratio(logical, stored)
    );
    println!(
        "blobs      {} used of {} listed",
        blobs.len(),
        m.blobs().len()
    );
    print_annotations(m);
    Ok(())
}

/// What a converted image records about its source; other annotations by key. The image config is JSON of
/// unbounded size, so only its size and digest are shown (`hydrate rootfs` is what uses it).
fn print_annotations<B: AsRef<[u8]>>(m: &Manifest<B>) {
    use hydrate_format::annotation;
    let text = |key: &str| {
        m.annotation(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    if let Some(source) = text(annotation::OCI_SOURCE) {
        let digest = text(annotation::OCI_SOURCE_DIGEST).unwrap_or_else(|| "?".into());
        println!("source     {source} ({digest})");
    }
    if let Some(config) = m.annotation(annotation::OCI_CONFIG) {
        let digest = text(annotation::OCI_CONFIG_DIGEST).unwrap_or_else(|| "?".into());
        println!("config     {} ({digest})", human(config.len() as u64));
    }
    let known = [
        annotation::OCI_SOURCE,
        annotation::OCI_SOURCE_DIGEST,
        annotation::OCI_CONFIG,
        annotation::OCI_CONFIG_DIGEST,
    ];
    for (key, value) in m.annotations().filter(|(k, _)| !known.contains(k)) {
        println!("annotation {key}={}", String::from_utf8_lossy(value));
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

fn print_line<B: AsRef<[u8]>>(m: &Manifest<B>, ino: Ino, name: &str) {
    let Some(a) = m.attr(ino) else { return };
    let target = m
        .symlink_target(ino)
        .map(|t| format!(" -> {}", String::from_utf8_lossy(t)))
        .unwrap_or_default();
    println!(
        "{:>7o} {:>5} {:>5} {:>3} {:>12} {name}{target}",
        a.mode, a.uid, a.gid, a.nlink, a.size
    );
}

fn print_tree<B: AsRef<[u8]>>(m: &Manifest<B>, dir: Ino, prefix: &mut Vec<String>) {
    for index in 0..m.dir_len(dir) {
        let Some((name, child)) = m.dir_entry(dir, index) else {
            continue;
        };
        prefix.push(String::from_utf8_lossy(name).into_owned());
        print_line(m, child, &prefix.join("/"));
        if m.attr(child).is_some_and(|a| a.kind == FileKind::Directory) {
            print_tree(m, child, prefix);
        }
        prefix.pop();
    }
}

fn chunk_map<B: AsRef<[u8]>>(m: &Manifest<B>, ino: Ino, path: &str) {
    print_line(m, ino, path);
    if let Some(a) = m.attr(ino) {
        println!("content {}", a.content);
    }
    println!(
        "{:>12} {:>8} {:>8}  {:<16} {:<16} {:>12}",
        "offset", "plain", "stored", "chunk", "blob", "blob offset"
    );
    for fc in m.file_chunks(ino) {
        let c = m.chunk(fc.chunk_index());
        let blob = m.blob(c.blob_index());
        println!(
            "{:>12} {:>8} {:>8}  {:<16} {:<16} {:>12}",
            fc.file_offset(),
            c.plain_len(),
            c.stored_len(),
            &c.id().to_string()[..16],
            &blob.id().to_string()[..16],
            c.blob_offset()
        );
    }
}
