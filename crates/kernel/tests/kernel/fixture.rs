//! The source tree, the image built from it, Volumes over it, and the mounts with guards that always unmount.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hydrate_builder::{build_dir, BuildOptions, NoProgress};
use hydrate_cache::{CacheConfig, DiskCache};
use hydrate_core::{load_manifest, ImageId, Volume, VolumeConfig};
use hydrate_fetch::{FetchConfig, FetchEngine};
use hydrate_fuse_transport::{
    FuseDev, MountOptions, Negotiated, Session, SessionConfig, SessionEnd, StopHandle,
};
use hydrate_kernel::{BlobFs, BlobFsConfig, ErofsMount, KernelImage, BLOB_NAME};
use hydrate_store::{BlobStore, FaultyStore, LocalStore};
use hydrate_testkit::rng::random_bytes;

pub const BIG: usize = 3 * (1 << 20) + 17;
pub const MANY: usize = 3000;
pub const HIGH_UID: u32 = 100_000;
pub const HIGH_GID: u32 = 200_000;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Writes the source tree: every entry kind, sizes around block boundaries, duplicates, hard links, xattrs,
/// a large directory, nanosecond mtimes, ids above 65535. Devices and ownership need root.
pub fn write_tree(src: &Path, big_file: Option<usize>) {
    let file = |rel: &str, data: &[u8]| {
        let path = src.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    std::fs::create_dir_all(src).unwrap();
    file("empty", b"");
    file("small.txt", b"hello, erofs\n");
    file("block.bin", &random_bytes(1, 4096));
    file("odd.bin", &random_bytes(2, 5000));
    file("odd-copy.bin", &random_bytes(2, 5000));
    file("big.bin", &random_bytes(3, BIG));
    file("mmap.bin", &random_bytes(4, 2 * (1 << 20) + 100));
    file("sub/deeper/file", &random_bytes(5, 100));
    file("cold/a.bin", &random_bytes(6, (1 << 20) + 5));
    file("cold/b.bin", &random_bytes(7, 200 << 10));
    file("cold/c.bin", &random_bytes(9, 300 << 10));
    file("cold/other-user.bin", &random_bytes(10, 100 << 10));
    // Names are bytes, not text.
    std::fs::write(
        src.join(std::ffi::OsStr::from_bytes(b"name-\xff\xfe")),
        b"latin-1 and worse",
    )
    .unwrap();
    if let Some(size) = big_file {
        file("large.bin", &random_bytes(8, size));
    }
    for i in 0..MANY {
        file(&format!("many/f{i:05}"), format!("file {i}\n").as_bytes());
    }
    std::fs::hard_link(src.join("big.bin"), src.join("sub/hard-big")).unwrap();
    std::fs::hard_link(src.join("small.txt"), src.join("sub/deeper/hard-small")).unwrap();
    std::os::unix::fs::symlink("small.txt", src.join("link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(300), src.join("sub/long-dangling")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    xattr::set(src.join("small.txt"), "user.color", b"blue").unwrap();
    xattr::set(src.join("big.bin"), "user.empty", b"").unwrap();
    xattr::set(src.join("sub"), "user.dir", &[0, 1, 2, 255]).unwrap();
    if is_root() {
        xattr::set(src.join("odd.bin"), "trusted.overlay.opaque", b"y").unwrap();
        nix::sys::stat::mknod(
            &src.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            libc::makedev(1, 3),
        )
        .unwrap();
        let owned = |rel: &str| {
            std::os::unix::fs::lchown(src.join(rel), Some(HIGH_UID), Some(HIGH_GID)).unwrap()
        };
        owned("odd.bin");
        owned("link");
        owned("sub");
    }
    std::fs::set_permissions(
        src.join("block.bin"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4751),
    )
    .unwrap();
    // Nanosecond mtimes, children before their directories (creating a child changes its parent's mtime).
    let mut paths = Vec::new();
    collect(src, &mut paths);
    paths.push(src.to_path_buf());
    for (i, path) in paths.iter().enumerate() {
        let t =
            filetime::FileTime::from_unix_time(1_700_000_000 + i as i64, 123_456_789 - i as u32);
        filetime::set_symlink_file_times(path, t, t).unwrap();
    }
}

/// Every path under `dir`, depth first, children before their directory.
pub fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            collect(&path, out);
        }
        out.push(path);
    }
}

/// A built image in a local store, and what it takes to open Volumes on it.
pub struct Image {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub image: ImageId,
    pub store: Arc<FaultyStore<LocalStore>>,
    pub rt: tokio::runtime::Runtime,
}

impl Image {
    pub fn build(big_file: Option<usize>) -> Image {
        Self::from_tree(|src| write_tree(src, big_file))
    }

    /// An image of the tree `write` creates.
    pub fn from_tree(write: impl FnOnce(&Path)) -> Image {
        // /var/tmp: a real disk filesystem (user and trusted xattrs; erofs wants its metadata file on a
        // local filesystem anyway).
        let dir = tempfile::Builder::new()
            .prefix("hydrate-kernel-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        write(&src);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let local = LocalStore::open(&dir.path().join("store")).unwrap();
        let report = rt
            .block_on(build_dir(
                &src,
                &local,
                &BuildOptions::default(),
                &NoProgress,
            ))
            .unwrap();
        Image {
            src,
            image: report.image,
            store: Arc::new(FaultyStore::new(local)),
            rt,
            dir,
        }
    }

    /// A Volume with its own fresh cache directory `name`.
    pub fn volume(&self, name: &str) -> Arc<Volume> {
        let store: Arc<dyn BlobStore> = self.store.clone();
        open_volume(&self.dir.path().join(name), store, self.image, &self.rt)
    }
}

/// A Volume on `image` in `store` with its manifest and cache under `base`.
pub fn open_volume(
    base: &Path,
    store: Arc<dyn BlobStore>,
    image: ImageId,
    rt: &tokio::runtime::Runtime,
) -> Arc<Volume> {
    let manifest = rt
        .block_on(load_manifest(
            store.as_ref(),
            &image,
            &base.join("manifests"),
        ))
        .unwrap();
    let cache = DiskCache::open(CacheConfig {
        dir: base.join("cache"),
        quota_bytes: 4 << 30,
        flush_interval: Duration::from_millis(200),
    })
    .unwrap();
    let engine = FetchEngine::new(
        store,
        FetchConfig {
            retries: 1,
            backoff_base: Duration::from_millis(1),
            ..FetchConfig::default()
        },
    );
    Arc::new(Volume::new(
        image,
        manifest,
        cache,
        engine,
        rt.handle().clone(),
        VolumeConfig::default(),
    ))
}

/// A FUSE mount served by a thread of this process; unmounted on drop (lazily if the test is failing).
pub struct FuseMount {
    pub mountpoint: PathBuf,
    thread: Option<JoinHandle<std::io::Result<SessionEnd>>>,
    stop: StopHandle,
    mounted: bool,
}

impl FuseMount {
    pub fn serve<F: hydrate_fuse_transport::Filesystem>(
        mountpoint: PathBuf,
        config: SessionConfig,
        make: impl FnOnce(&Session) -> Arc<F>,
    ) -> FuseMount {
        std::fs::create_dir_all(&mountpoint).unwrap();
        let opts = MountOptions {
            fsname: "hydrate-test".into(),
            ..MountOptions::default()
        };
        let dev = hydrate_fuse_transport::mount(&mountpoint, &opts).unwrap();
        let session = Session::new(dev, config);
        let fs = make(&session);
        let stop = session.stop_handle();
        let thread = std::thread::spawn(move || session.serve(fs));
        FuseMount {
            mountpoint,
            thread: Some(thread),
            stop,
            mounted: true,
        }
    }

    /// Stops serving without unmounting (a worker gone while the supervisor holds the connection): what it
    /// takes to resume.
    pub fn stop(&mut self) -> (FuseDev, Negotiated) {
        self.stop.stop();
        let end = self.thread.take().unwrap().join().unwrap().unwrap();
        match end {
            SessionEnd::Stopped {
                dev,
                negotiated: Some(negotiated),
            } => (dev, negotiated),
            other => panic!("session did not stop cleanly: {other:?}"),
        }
    }

    /// Serves the connection again (another worker taking over).
    pub fn resume<F: hydrate_fuse_transport::Filesystem>(
        &mut self,
        dev: FuseDev,
        negotiated: Negotiated,
        config: SessionConfig,
        fs: Arc<F>,
    ) {
        let session = Session::resume(dev, config, negotiated);
        self.stop = session.stop_handle();
        self.thread = Some(std::thread::spawn(move || session.serve(fs)));
    }

    /// The connection's number under /sys/fs/fuse/connections (the mount's device minor).
    pub fn connection(&self) -> u32 {
        let dev = std::fs::metadata(&self.mountpoint).unwrap().dev();
        libc::minor(dev)
    }

    /// What every hydrate process dying does to the connection (no holder keeps /dev/fuse open).
    pub fn abort(&self) {
        let path = format!("/sys/fs/fuse/connections/{}/abort", self.connection());
        std::fs::write(&path, b"1").unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    pub fn unmount(&mut self) {
        if self.mounted {
            hydrate_fuse_transport::unmount(&self.mountpoint, false).unwrap();
            self.mounted = false;
        }
        if let Some(thread) = self.thread.take() {
            let end = thread.join().expect("session thread panicked");
            eprintln!(
                "FUSE session at {} ended: {end:?}",
                self.mountpoint.display()
            );
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.mounted {
            let lazy = std::thread::panicking();
            if hydrate_fuse_transport::unmount(&self.mountpoint, lazy).is_err() {
                let _ = hydrate_fuse_transport::unmount(&self.mountpoint, true);
            }
        }
    }
}

/// An erofs mount; unmounted on drop (detached if that fails).
pub struct Erofs {
    pub mount: ErofsMount,
    mounted: bool,
}

impl Erofs {
    /// Mounts `mount` and guards it.
    pub fn mount(mount: ErofsMount) -> Erofs {
        mount.mount(nix::mount::MsFlags::empty()).unwrap();
        Erofs {
            mount,
            mounted: true,
        }
    }

    pub fn unmount(&mut self) {
        if self.mounted {
            self.mount.unmount(false).unwrap();
            self.mounted = false;
        }
    }
}

impl Drop for Erofs {
    fn drop(&mut self) {
        if self.mounted && self.mount.unmount(false).is_err() {
            let _ = self.mount.unmount(true);
        }
    }
}

/// The whole kernel mode stack: BlobFs at `<dir>/<name>-blobfs`, erofs at `<dir>/<name>-mnt`.
/// Fields drop in declaration order: erofs before the BlobFs mount it holds busy.
pub struct KernelMode {
    pub erofs: Erofs,
    pub blobfs: FuseMount,
    pub fs: Arc<BlobFs>,
    pub vol: Arc<Volume>,
    pub blob: Arc<hydrate_kernel::Blob>,
    /// The erofs mount's bdi in sysfs, when identified.
    pub bdi: Option<PathBuf>,
}

impl KernelMode {
    pub fn start(image: &Image, vol: Arc<Volume>, name: &str) -> KernelMode {
        Self::start_with(
            image,
            vol,
            name,
            BlobFsConfig::default(),
            Some(hydrate_kernel::READAHEAD_KB),
        )
    }

    pub fn start_with(
        image: &Image,
        vol: Arc<Volume>,
        name: &str,
        config: BlobFsConfig,
        config_readahead: Option<u32>,
    ) -> KernelMode {
        let base = image.dir.path();
        let built = KernelImage::build(vol.manifest()).unwrap();
        eprintln!("kernel image: {built:?}");
        let metadata = base
            .join(name)
            .join(KernelImage::metadata_file_name(vol.image()));
        std::fs::create_dir_all(metadata.parent().unwrap()).unwrap();
        let info = built.write_metadata(&metadata).unwrap();
        eprintln!("metadata image: {info:?}");
        let blob = Arc::new(built.into_blob());
        let fs = Arc::new(BlobFs::new(Arc::clone(&vol), Arc::clone(&blob), config));
        let blobfs = FuseMount::serve(
            base.join(format!("{name}-blobfs")),
            BlobFs::session_config(2),
            |_| Arc::clone(&fs),
        );
        let target = base.join(format!("{name}-mnt"));
        std::fs::create_dir_all(&target).unwrap();
        let mount = ErofsMount {
            metadata,
            blob: blobfs.mountpoint.join(BLOB_NAME),
            target,
        };
        let bdi = mount.mount(nix::mount::MsFlags::empty()).unwrap();
        if let (Some(kb), Some(bdi)) = (config_readahead, &bdi) {
            ErofsMount::set_readahead(bdi, kb).unwrap();
        }
        KernelMode {
            erofs: Erofs {
                mount,
                mounted: true,
            },
            blobfs,
            fs,
            vol,
            blob,
            bdi,
        }
    }

    /// Another worker's BlobFs on the same connection: same Volume and layout, no state carried over.
    pub fn take_over(&mut self, dev: FuseDev, negotiated: Negotiated) {
        self.fs = Arc::new(BlobFs::new(
            Arc::clone(&self.vol),
            Arc::clone(&self.blob),
            BlobFsConfig::default(),
        ));
        let fs = Arc::clone(&self.fs);
        self.blobfs
            .resume(dev, negotiated, BlobFs::session_config(2), fs);
    }

    pub fn root(&self) -> &Path {
        &self.erofs.mount.target
    }

    /// Unmounts erofs first, then BlobFs (which is busy while erofs holds the blob).
    pub fn stop(mut self) {
        self.erofs.unmount();
        self.blobfs.unmount();
    }
}
