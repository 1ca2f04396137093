//! S3Store and HttpStore against real servers on loopback (Garage, nginx): every operation, the error mapping
//! (404 → NotFound, 403 → Permanent, refused connection → Temporary), and a measurement of small ranged GETs on
//! one keep-alive connection with and without nginx in front of Garage (`--ignored`; docs/remote-stores.md).
//!
//! Skipped loudly when a server is not installed, failed instead when HYDRATE_REQUIRE_SERVERS is set.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hydrate_store::{BlobStore, ErrorKind, HttpStore, RemoteOptions, S3Store};
use hydrate_testkit::garage::Garage;
use hydrate_testkit::nginx::{Nginx, NginxMode};
use hydrate_testkit::require_binary;

fn garage(test: &str) -> Option<Garage> {
    let bin = require_binary("garage", test)?;
    Garage::export_credentials();
    Some(Garage::start(&bin).expect("starting garage"))
}

fn s3(addr: &str) -> S3Store {
    S3Store::open(addr, &RemoteOptions::default()).expect("opening the S3 store")
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_on_garage_does_every_operation_and_maps_errors() {
    let Some(garage) = garage("s3_store_on_garage_does_every_operation_and_maps_errors") else {
        return;
    };
    let store = s3(&garage.store_addr(0, "team/x"));
    let data = Bytes::from((0..=255u8).cycle().take(100_000).collect::<Vec<_>>());
    store.put("blobs/aa", data.clone()).await.unwrap();
    store
        .put("refs/app:1", Bytes::from_static(b"id\n"))
        .await
        .unwrap();
    assert_eq!(store.get("blobs/aa").await.unwrap(), data);
    assert_eq!(
        store.get_range("blobs/aa", 1000..5000).await.unwrap(),
        data.slice(1000..5000)
    );
    assert_eq!(store.head("blobs/aa").await.unwrap(), Some(100_000));
    assert_eq!(store.head("blobs/zz").await.unwrap(), None);
    assert_eq!(store.list("refs/").await.unwrap(), ["refs/app:1"]);
    assert_eq!(store.list("").await.unwrap(), ["blobs/aa", "refs/app:1"]);
    // Another prefix of the same bucket sees nothing of it.
    assert!(s3(&garage.store_addr(0, "team/y"))
        .list("")
        .await
        .unwrap()
        .is_empty());

    let err = store.get("blobs/missing").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = store
        .get_range("blobs/aa", 99_000..100_001)
        .await
        .unwrap_err();
    assert_ne!(err.kind(), ErrorKind::NotFound, "{err}");

    // A wrong bucket is denied (403): permanent, and retrying would not help.
    let denied = s3(&format!(
        "s3://not-ours/p?endpoint={}&region=garage",
        garage.endpoint(0)
    ));
    let err = denied.get("blobs/aa").await.unwrap_err();
    assert_ne!(err.kind(), ErrorKind::Temporary, "{err}");

    // Nothing listens: temporary, and fast (connect timeout, one client retry).
    let port = hydrate_testkit::free_port();
    let dead = s3(&format!(
        "s3://hydrate/p?endpoint=http://127.0.0.1:{port}&region=garage"
    ));
    let t = Instant::now();
    let err = dead.get("blobs/aa").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Temporary, "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn http_store_on_nginx_reads_ranges_and_refuses_writes() {
    let Some(nginx_bin) = require_binary(
        "nginx",
        "http_store_on_nginx_reads_ranges_and_refuses_writes",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
    std::fs::create_dir_all(dir.path().join("refs")).unwrap();
    let data: Vec<u8> = (0..=255u8).cycle().take(50_000).collect();
    std::fs::write(dir.path().join("blobs/aa"), &data).unwrap();
    std::fs::write(dir.path().join("refs/app:1"), b"x\n").unwrap();
    let nginx = Nginx::start(&nginx_bin, NginxMode::Directory(dir.path().to_owned())).unwrap();
    let store = HttpStore::open(&format!("{}/", nginx.url()), &RemoteOptions::default()).unwrap();
    assert_eq!(
        store.get_range("blobs/aa", 10..20).await.unwrap(),
        &data[10..20]
    );
    assert_eq!(store.get("refs/app:1").await.unwrap(), &b"x\n"[..]);
    assert_eq!(store.head("blobs/aa").await.unwrap(), Some(50_000));
    assert_eq!(store.head("blobs/zz").await.unwrap(), None);
    assert_eq!(
        store.get("blobs/zz").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let err = store.put("blobs/bb", Bytes::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(
        store.get_range("blobs/aa", 49_990..50_010).await.is_err(),
        "past the end is an error"
    );
}

/// Median latency of `n` sequential ranged GETs of `len` bytes (one keep-alive connection: each waits for the
/// previous one).
async fn sequential_gets(store: &dyn BlobStore, key: &str, len: u64, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let start = (i * 7919 * 4096) % (8 << 20);
        let t = Instant::now();
        store.get_range(key, start..start + len).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    times[n / 2]
}

/// The measurement behind docs/remote-stores.md: small sequential ranged GETs against Garage, directly and
/// through nginx, and nginx serving files, with object_store's client (TCP_NODELAY on our side).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
async fn keepalive_small_ranged_gets_garage_vs_nginx() {
    let Some(garage) = garage("keepalive_small_ranged_gets_garage_vs_nginx") else {
        return;
    };
    let Some(nginx_bin) = require_binary("nginx", "keepalive_small_ranged_gets_garage_vs_nginx")
    else {
        return;
    };
    let blob: Vec<u8> = (0..16u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let direct = s3(&garage.store_addr(0, "ka"));
    direct
        .put("blobs/big", Bytes::from(blob.clone()))
        .await
        .unwrap();
    let front = Nginx::start(
        &nginx_bin,
        NginxMode::ReverseProxy(vec![garage.nodes()[0].s3_addr]),
    )
    .unwrap();
    let proxied = s3(&garage.store_addr_at(&front.url(), "ka"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
    std::fs::write(dir.path().join("blobs/big"), &blob).unwrap();
    let files = Nginx::start(&nginx_bin, NginxMode::Directory(dir.path().to_owned())).unwrap();
    let http = HttpStore::open(&files.url(), &RemoteOptions::default()).unwrap();
    for len in [
        4096u64,
        16384,
        32768,
        49152,
        64000,
        65536,
        70000,
        131072,
        1 << 20,
    ] {
        for (name, store) in [
            ("garage", &direct as &dyn BlobStore),
            ("nginx -> garage", &proxied),
            ("nginx files", &http),
        ] {
            sequential_gets(store, "blobs/big", len, 10).await; // warm the connection
            let median = sequential_gets(store, "blobs/big", len, 200).await;
            println!(
                "{len:>8} B  {name:<16} median {:>8.2} ms",
                median.as_secs_f64() * 1e3
            );
        }
    }
}
