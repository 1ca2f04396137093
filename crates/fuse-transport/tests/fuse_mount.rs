//! Real-mount tests (need root and /dev/fuse): a small in-memory filesystem served through the transport
//! and used through ordinary syscalls.

mod common;

use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hydrate_fuse_transport::abi;
use hydrate_fuse_transport::{Negotiated, Session, SessionEnd};

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8 name")
        })
        .collect();
    names.sort();
    names
}

#[test]
fn metadata_directories_links_xattrs_and_statfs() {
    let (mut mnt, dev) = Mounted::new();
    let session = Session::new(dev, config(true, false));
    let stats = session.stats();
    let server = spawn(session, Arc::new(TestFs::new()));

    let meta = std::fs::metadata(mnt.path("hello.txt")).expect("stat hello.txt");
    assert_eq!(meta.len(), HELLO_TEXT.len() as u64);
    assert_eq!(meta.mode(), libc::S_IFREG | 0o644);
    assert_eq!(meta.ino(), HELLO);
    assert!(std::fs::metadata(mnt.path("sub"))
        .expect("stat sub")
        .is_dir());
    let missing = std::fs::metadata(mnt.path("missing")).expect_err("missing file");
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));

    assert_eq!(
        names(&mnt.mountpoint),
        ["big.bin", "hello.txt", "late.txt", "link", "sub"]
    );
    assert!(names(&mnt.path("sub")).is_empty());
    assert_eq!(
        std::fs::read_link(mnt.path("link")).expect("readlink"),
        std::path::Path::new("hello.txt")
    );
    assert_eq!(
        std::fs::read(mnt.path("link")).expect("read through link"),
        HELLO_TEXT
    );

    // getxattr: size probe, too-small buffer, whole value, missing name.
    let hello = mnt.path("hello.txt");
    assert_eq!(getxattr_sized(&hello, "user.color", 0), Ok((4, vec![])));
    assert_eq!(getxattr_sized(&hello, "user.color", 2), Err(libc::ERANGE));
    assert_eq!(
        getxattr_sized(&hello, "user.color", 64),
        Ok((4, b"blue".to_vec()))
    );
    assert_eq!(getxattr_sized(&hello, "user.other", 64), Err(libc::ENODATA));
    assert_eq!(listxattr_sized(&hello, 0), Ok((11, vec![])));
    assert_eq!(listxattr_sized(&hello, 4), Err(libc::ERANGE));
    assert_eq!(
        listxattr_sized(&hello, 64),
        Ok((11, b"user.color\0".to_vec()))
    );

    let vfs = nix::sys::statvfs::statvfs(&mnt.mountpoint).expect("statvfs");
    assert_eq!(
        (vfs.blocks(), vfs.block_size(), vfs.name_max()),
        (1000, 4096, 255)
    );

    // Writes are refused by the read-only mount (the kernel never asks) or the transport (EROFS).
    let err = std::fs::write(mnt.path("new"), b"x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    assert!(
        stats.get(abi::FUSE_READDIRPLUS) > 0,
        "readdirplus was negotiated: {:?}",
        stats.snapshot()
    );
    assert!(stats.get(abi::FUSE_GETXATTR) >= 4);
    mnt.unmount();
    assert!(matches!(
        server.join().expect("server thread").expect("serve"),
        SessionEnd::Unmounted
    ));
}

#[test]
fn readdir_without_readdirplus() {
    let (mut mnt, dev) = Mounted::new();
    let session = Session::new(dev, config(false, false));
    let stats = session.stats();
    let server = spawn(session, Arc::new(TestFs::new()));

    assert_eq!(
        names(&mnt.mountpoint),
        ["big.bin", "hello.txt", "late.txt", "link", "sub"]
    );
    assert!(stats.get(abi::FUSE_READDIR) > 0);
    assert_eq!(stats.get(abi::FUSE_READDIRPLUS), 0);
    assert_eq!(stats.get(abi::FUSE_INIT), 1, "INIT served once");
    mnt.unmount();
    server.join().expect("server thread").expect("serve");
}

#[test]
fn concurrent_reads_return_exact_bytes() {
    let (mut mnt, dev) = Mounted::new();
    let session = Session::new(dev, config(true, false));
    let stats = session.stats();
    let server = spawn(session, Arc::new(TestFs::new()));

    let expected = Arc::new(big_content());
    let file = Arc::new(std::fs::File::open(mnt.path("big.bin")).expect("open big.bin"));
    let readers: Vec<_> = (0..4)
        .map(|t| {
            let (file, expected) = (Arc::clone(&file), Arc::clone(&expected));
            std::thread::spawn(move || {
                // Each thread reads interleaved, odd-sized chunks (unaligned offsets included).
                let chunk = 200_000 + t * 4099;
                let mut offset = t * 77_777;
                let mut buf = vec![0u8; chunk];
                while offset < expected.len() {
                    let n = file.read_at(&mut buf, offset as u64).expect("pread");
                    assert!(n > 0, "unexpected EOF at {offset}");
                    assert!(
                        buf[..n] == expected[offset..offset + n],
                        "bytes differ at {offset}"
                    );
                    offset += n + chunk * 3;
                }
            })
        })
        .collect();
    for r in readers {
        r.join().expect("reader thread");
    }
    assert_eq!(
        std::fs::read(mnt.path("big.bin")).expect("read whole"),
        *expected
    );
    assert!(stats.get(abi::FUSE_READ) > 0);
    drop(file);
    mnt.unmount();
    server.join().expect("server thread").expect("serve");
}

#[test]
fn passthrough_reads_bypass_the_server() {
    let (mut mnt, dev) = Mounted::new();
    let session = Session::new(dev, config(true, true));
    let stats = session.stats();
    let fs = Arc::new(TestFs::new());
    // A cloned fd of the same connection can register backing files while the session serves.
    let control = session.dev().try_clone().expect("clone /dev/fuse");
    let server = spawn(session, Arc::clone(&fs));

    // INIT must be answered (passthrough negotiated) before backing files can be registered.
    let _ = std::fs::metadata(&mnt.mountpoint).expect("stat root");
    let backing_path = mnt.dir.path().join("backing.bin");
    std::fs::write(&backing_path, big_content()).expect("write backing file");
    let backing = std::fs::File::open(&backing_path).expect("open backing file");
    let id = control
        .backing_open(&backing)
        .expect("FUSE_DEV_IOC_BACKING_OPEN");
    fs.backing.lock().unwrap().insert(BIG, id);

    let reads_before = stats.get(abi::FUSE_READ);
    for _ in 0..2 {
        assert_eq!(
            std::fs::read(mnt.path("big.bin")).expect("read passthrough file"),
            big_content()
        );
    }
    assert_eq!(
        stats.get(abi::FUSE_READ),
        reads_before,
        "passthrough reads made READ upcalls"
    );
    assert!(stats.get(abi::FUSE_OPEN) >= 2);

    // Control: a file without backing is read through the server.
    assert_eq!(
        std::fs::read(mnt.path("hello.txt")).expect("read hello"),
        HELLO_TEXT
    );
    assert!(stats.get(abi::FUSE_READ) > reads_before);

    control
        .backing_close(id)
        .expect("FUSE_DEV_IOC_BACKING_CLOSE");
    drop(control);
    mnt.unmount();
    server.join().expect("server thread").expect("serve");
}

/// Stop serving without unmounting, drop one request on the floor as a crashed server would, then resume
/// on the same connection from the saved negotiation state: the kernel re-sends the lost request.
#[test]
fn resume_without_init_recovers_a_lost_request() {
    let (mut mnt, dev) = Mounted::new();
    // The supervisor's copy of the connection: it keeps the mount alive between servers.
    let holder = dev.try_dup().expect("dup /dev/fuse");
    let session = Session::new(dev, config(true, false));
    let stop = session.stop_handle();
    let server = spawn(session, Arc::new(TestFs::new()));

    assert_eq!(
        std::fs::read(mnt.path("hello.txt")).expect("read before hand-over"),
        HELLO_TEXT
    );
    stop.stop();
    let SessionEnd::Stopped {
        dev,
        negotiated: Some(negotiated),
    } = server.join().expect("server").expect("serve")
    else {
        panic!("session should report a stop with negotiated state");
    };
    let saved = negotiated.to_bytes();
    drop(dev);

    // An application touches a file nobody has looked up yet; it blocks waiting for a server.
    let late = mnt.path("late.txt");
    let app = std::thread::spawn(move || std::fs::read(late));

    // Play the crashed server: read requests from the connection (the application's LOOKUP, and perhaps a
    // late RELEASE from before the stop) and never answer them.
    let mut buf = vec![0u8; Negotiated::from_bytes(&saved).unwrap().read_buffer_size()];
    let mut lost = Vec::new();
    while !lost.contains(&abi::FUSE_LOOKUP) {
        let mut fds = [nix::poll::PollFd::new(
            holder.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).expect("poll");
        assert_eq!(
            ready, 1,
            "the application's LOOKUP should reach the device; lost so far: {lost:?}"
        );
        match nix::unistd::read(&holder, &mut buf) {
            Ok(_) => lost.push(u32::from_ne_bytes(buf[4..8].try_into().unwrap())),
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => panic!("reading the lost request failed: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(!app.is_finished(), "the application must still be waiting");

    // A new server resumes from the saved state: no INIT, RESEND, and the application completes.
    let negotiated = Negotiated::from_bytes(&saved).expect("saved state");
    let fs = Arc::new(TestFs::new());
    let session = Session::resume(
        holder.try_dup().expect("dup"),
        config(true, false),
        negotiated,
    );
    assert_eq!(session.negotiated(), Some(negotiated));
    let stats = session.stats();
    let server = spawn(session, Arc::clone(&fs));

    let content = app
        .join()
        .expect("application thread")
        .expect("read after resume");
    assert_eq!(content, b"served after a hand-over");
    assert!(
        fs.resent_requests.load(Ordering::SeqCst) >= 1,
        "the lost LOOKUP came back marked as resent"
    );
    assert_eq!(
        stats.get(abi::FUSE_INIT),
        0,
        "a resumed session gets no INIT"
    );
    assert_eq!(
        std::fs::read(mnt.path("hello.txt")).expect("read after resume"),
        HELLO_TEXT
    );

    drop(holder);
    mnt.unmount();
    assert!(matches!(
        server.join().expect("server thread").expect("serve"),
        SessionEnd::Unmounted
    ));
}

#[test]
fn cloned_worker_fds_serve_and_notifier_works() {
    let (mut mnt, dev) = Mounted::new();
    let cfg = hydrate_fuse_transport::SessionConfig {
        clone_fd: true,
        ..config(true, false)
    };
    let session = Session::new(dev, cfg);
    let notifier = session.notifier();
    assert!(
        notifier.resend().is_err(),
        "notifications before INIT are refused"
    );
    let server = spawn(session, Arc::new(TestFs::new()));

    assert_eq!(
        std::fs::read(mnt.path("hello.txt")).expect("read"),
        HELLO_TEXT
    );
    notifier
        .inval_inode(HELLO, 0, 0)
        .expect("inval_inode of a cached inode");
    notifier
        .inval_entry(ROOT, b"hello.txt")
        .expect("inval_entry of a cached name");
    notifier.resend().expect("resend with nothing pending");
    assert_eq!(
        std::fs::read(mnt.path("hello.txt")).expect("read again"),
        HELLO_TEXT
    );
    mnt.unmount();
    server.join().expect("server thread").expect("serve");
}
