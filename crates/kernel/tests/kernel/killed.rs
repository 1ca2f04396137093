//! The issue's own words: SIGKILL every hydrate process. BlobFs is served by a child process (this test
//! binary run again for one helper test), erofs is mounted over the child's FUSE mount, and the child is
//! killed: the only holder of the /dev/fuse descriptor is gone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hydrate_core::ImageId;
use hydrate_kernel::{BlobFs, BlobFsConfig, ErofsMount, KernelImage, BLOB_NAME};
use hydrate_store::{BlobStore, LocalStore};

use crate::fixture::{open_volume, Erofs, FuseMount, Image};

const SERVER_ENV: &str = "HYDRATE_KERNEL_TEST_SERVER";

/// The BlobFs server: builds the metadata, mounts and serves BlobFs, says it is ready, and serves until
/// killed. Does nothing unless started by `sigkill_of_the_server_fails_unread_reads`.
#[test]
#[ignore = "helper process of sigkill_of_the_server_fails_unread_reads"]
fn blobfs_server_process() {
    let Ok(dir) = std::env::var(SERVER_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let image: ImageId = std::fs::read_to_string(dir.join("image-id"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(LocalStore::open(&dir.join("store")).unwrap());
    let vol = open_volume(&dir.join("server"), store, image, &rt);
    let built = KernelImage::build(vol.manifest()).unwrap();
    built.write_metadata(&dir.join("server.erofs")).unwrap();
    let fs = Arc::new(BlobFs::new(
        vol,
        Arc::new(built.into_blob()),
        BlobFsConfig::default(),
    ));
    let mount = FuseMount::serve(dir.join("server-blobfs"), BlobFs::session_config(2), |_| fs);
    std::fs::write(dir.join("ready"), b"").unwrap();
    // Never unmounted from here: this process ends by SIGKILL.
    std::mem::forget(mount);
    loop {
        std::thread::park();
    }
}

/// Kills the child if the test ends early.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Unmounts a FUSE mount this process did not mount (the child's), lazily: its server is gone.
struct ChildMount(PathBuf);

impl Drop for ChildMount {
    fn drop(&mut self) {
        let _ = hydrate_fuse_transport::unmount(&self.0, std::thread::panicking());
    }
}

fn wait_ready(server: &mut Server, ready: &Path) {
    let started = Instant::now();
    while !ready.exists() {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("the server process exited: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "server not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_of_the_server_fails_unread_reads() {
    if !hydrate_testkit::require_root(hydrate_testkit::test_name!(), "FUSE and erofs mounts") {
        return;
    }
    let image = Image::build(None);
    let dir = image.dir.path();
    std::fs::write(dir.join("image-id"), image.image.to_string()).unwrap();
    let mut server = Server(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "killed::blobfs_server_process",
                "--nocapture",
            ])
            .env(SERVER_ENV, dir)
            .spawn()
            .unwrap(),
    );
    wait_ready(&mut server, &dir.join("ready"));
    let blobfs = ChildMount(dir.join("server-blobfs"));
    let target = dir.join("server-mnt");
    std::fs::create_dir(&target).unwrap();
    let mut erofs = Erofs::mount(ErofsMount {
        metadata: dir.join("server.erofs"),
        blob: blobfs.0.join(BLOB_NAME),
        target: target.clone(),
    });
    for rel in ["small.txt", "big.bin"] {
        let got = std::fs::read(target.join(rel)).unwrap();
        assert!(got == std::fs::read(image.src.join(rel)).unwrap(), "{rel}");
    }

    server.0.kill().unwrap();
    let status = server.0.wait().unwrap();
    eprintln!("server process killed: {status}");
    assert_eq!(
        std::fs::read(target.join("small.txt")).unwrap(),
        b"hello, erofs\n",
        "cached data stays"
    );
    assert_eq!(
        std::fs::metadata(target.join("cold/a.bin")).unwrap().len(),
        (1 << 20) + 5
    );
    for rel in ["cold/a.bin", "cold/b.bin", "mmap.bin"] {
        match std::fs::read(target.join(rel)) {
            Err(err) => {
                eprintln!("after SIGKILL, read of unread {rel}: {err}");
                assert!(
                    matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::ENOTCONN)),
                    "{rel}: {err}"
                );
            }
            Ok(bytes) => panic!(
                "after SIGKILL, {rel} read {} bytes (all zeros: {})",
                bytes.len(),
                bytes.iter().all(|&b| b == 0)
            ),
        }
    }
    erofs.unmount();
    drop(blobfs);
}
