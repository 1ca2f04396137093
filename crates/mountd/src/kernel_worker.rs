//! The worker's side of kernel mode (crate `hydrate-kernel`): the erofs metadata file in the cache directory,
//! and [`BlobFront`], the FUSE filesystem the worker serves instead of the image's tree: [`BlobFs`] over the
//! mount's Volume (so verification, plans, readahead, directory heuristics, metrics, quota, eviction and trace
//! recording are the same as in FUSE mode), plus what the worker needs of any front end: a hook run once the
//! connection is initialized (or resumed) and the requests in flight for `hydrate status`.

use anyhow::{bail, Context, Result};
use hydrate_core::{MappedManifest, Volume};
use hydrate_format::ImageId;
use hydrate_fuse::InFlight;
use hydrate_fuse_transport::{
    AttrOut, DirFiller, EntryOut, Errno, Filesystem, Negotiated, OpenOut, RequestCtx, StatfsOut,
};
use hydrate_kernel::{Blob, BlobFs, BlobFsConfig, FileParents, KernelImage};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a kernel-mode worker prepares before it gets the connection.
pub(crate) struct KernelPrepared {
    /// The erofs metadata file (the supervisor mounts it).
    pub metadata: PathBuf,
    pub blob: Arc<Blob>,
    /// Where the blob's files are named, for the Volume's heuristics.
    pub parents: FileParents,
}

/// Builds the image's erofs layout and writes its metadata file into `cache_dir`, or reuses the file a
/// previous worker or mount wrote: its name carries the image id and the layout version, and the build is
/// deterministic, so a file of that name holds these very bytes (written by temp file, fsync and rename, it is
/// never partial). The layout is built anyway: BlobFs serves from it, and it is not stored.
///
/// `mounted`: the metadata file the mount's erofs was mounted with, when this worker takes over. A worker
/// whose layout version differs (an upgrade to a hydrate that lays images out differently) would serve the
/// blob at other offsets than erofs reads them, so it refuses: the running worker keeps serving.
pub(crate) fn prepare(
    manifest: &MappedManifest,
    image: &ImageId,
    cache_dir: &Path,
    mounted: Option<&str>,
) -> Result<KernelPrepared> {
    let name = KernelImage::metadata_file_name(image);
    check_layout(mounted, &name)?;
    let started = Instant::now();
    let built = KernelImage::build(manifest)
        .with_context(|| format!("laying out image {image} as erofs for --kernel"))?;
    let metadata = cache_dir.join(name);
    let reused = metadata.is_file();
    if !reused {
        built
            .write_metadata(&metadata)
            .context("writing the erofs metadata file")?;
    }
    tracing::info!(
        metadata = %metadata.display(),
        reused,
        stats = ?built.stats(),
        blob_bytes = built.blob_size(),
        ms = started.elapsed().as_millis() as u64,
        "kernel mode: erofs image ready"
    );
    let (blob, parents) = built.into_parts();
    Ok(KernelPrepared {
        metadata,
        blob: Arc::new(blob),
        parents,
    })
}

/// Refuses to serve a mount whose erofs metadata file is not the one this worker would write (see
/// [`prepare`]).
fn check_layout(mounted: Option<&str>, name: &str) -> Result<()> {
    let Some(mounted) = mounted else {
        return Ok(());
    };
    if Path::new(mounted).file_name().and_then(|n| n.to_str()) != Some(name) {
        bail!(
            "the mount's erofs uses {mounted}, but this hydrate lays the image out as {name} (another layout \
             version): it cannot serve this mount; unmount and mount again to use it"
        );
    }
    Ok(())
}

type InitHook = Box<dyn FnOnce(&Negotiated) + Send>;

/// How often idle Volume handles are looked for.
const IDLE_SWEEP: Duration = Duration::from_millis(500);

/// [`BlobFs`] as the worker serves it (see the module doc).
pub(crate) struct BlobFront {
    fs: BlobFs,
    in_flight: InFlight,
    on_init: Mutex<Option<InitHook>>,
}

impl BlobFront {
    pub(crate) fn new(vol: Arc<Volume>, kernel: KernelPrepared) -> Self {
        BlobFront {
            fs: BlobFs::new(vol, kernel.blob, BlobFsConfig::default()).with_parents(kernel.parents),
            in_flight: InFlight::default(),
            on_init: Mutex::new(None),
        }
    }

    /// Runs `hook` once the kernel's INIT is answered, or once serving starts on a resumed connection.
    pub(crate) fn on_init(&self, hook: impl FnOnce(&Negotiated) + Send + 'static) {
        *self.on_init.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(hook));
    }

    /// Releases BlobFs' idle Volume handles every half second (see [`BlobFs::release_idle`]: without it,
    /// the contents of the files erofs read last stay pinned and the cache quota cannot be kept). The
    /// thread ends with the filesystem.
    pub(crate) fn spawn_idle_release(self: &Arc<Self>) -> Result<()> {
        let front = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("blob-handles".into())
            .spawn(move || loop {
                std::thread::sleep(IDLE_SWEEP);
                let Some(front) = front.upgrade() else {
                    return;
                };
                let released = front.fs.release_idle();
                if released > 0 {
                    tracing::debug!(released, "released idle blob handles");
                }
            })
            .context("starting the blob handle thread")?;
        Ok(())
    }

    pub(crate) fn blobfs(&self) -> &BlobFs {
        &self.fs
    }

    pub(crate) fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }
}

impl Filesystem for BlobFront {
    fn init(&self, negotiated: &Negotiated) {
        tracing::info!(
            minor = negotiated.minor,
            blob_bytes = self.fs.size(),
            "blob connection initialized"
        );
        let hook = self
            .on_init
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(hook) = hook {
            hook(negotiated);
        }
    }

    fn lookup(&self, ctx: &RequestCtx, parent: u64, name: &[u8]) -> Result<EntryOut, Errno> {
        self.fs.lookup(ctx, parent, name)
    }

    fn getattr(&self, ctx: &RequestCtx, ino: u64, fh: Option<u64>) -> Result<AttrOut, Errno> {
        self.fs.getattr(ctx, ino, fh)
    }

    fn open(&self, ctx: &RequestCtx, ino: u64, flags: u32) -> Result<OpenOut, Errno> {
        self.fs.open(ctx, ino, flags)
    }

    fn read(
        &self,
        ctx: &RequestCtx,
        ino: u64,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        let _busy = self.in_flight.enter(ctx.unique);
        self.fs.read(ctx, ino, fh, offset, buf)
    }

    fn readdir(
        &self,
        ctx: &RequestCtx,
        ino: u64,
        fh: u64,
        offset: u64,
        out: &mut DirFiller,
    ) -> Result<(), Errno> {
        self.fs.readdir(ctx, ino, fh, offset, out)
    }

    fn statfs(&self, ctx: &RequestCtx, ino: u64) -> Result<StatfsOut, Errno> {
        self.fs.statfs(ctx, ino)
    }

    fn getxattr(&self, ctx: &RequestCtx, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        self.fs.getxattr(ctx, ino, name)
    }

    fn listxattr(&self, ctx: &RequestCtx, ino: u64) -> Result<Vec<u8>, Errno> {
        self.fs.listxattr(ctx, ino)
    }

    fn access(&self, ctx: &RequestCtx, ino: u64, mask: u32) -> Result<(), Errno> {
        self.fs.access(ctx, ino, mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_of_another_layout_version_refuses_the_mount() {
        let image: ImageId = "ab".repeat(32).parse().unwrap();
        let name = KernelImage::metadata_file_name(&image);
        check_layout(None, &name).unwrap();
        check_layout(Some(&format!("/var/cache/hydrate/x/{name}")), &name).unwrap();
        let older = name.replace(
            &format!("erofs-v{}", hydrate_kernel::LAYOUT_VERSION),
            "erofs-v0",
        );
        assert_ne!(older, name);
        let err = check_layout(Some(&format!("/c/{older}")), &name)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layout version") && err.contains(&older),
            "{err}"
        );
    }
}
