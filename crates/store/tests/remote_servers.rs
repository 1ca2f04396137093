//! S3Store and HttpStore against real servers on loopback (Garage, nginx): every operation, the error mapping
//! (404 → NotFound, 403 → Permanent, refused connection → Temporary), and that sequential small ranged GETs
//! reuse one keep-alive connection, with and without nginx in front of Garage (counted by a proxy; the
//! latencies of docs/remote-stores.md are printed with `--nocapture`).
//!
//! Skipped loudly when a server is not installed, failed instead when HYDRATE_REQUIRE_SERVERS is set.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hydrate_store::{BlobStore, ErrorKind, HttpStore, RemoteOptions, S3Store};
use hydrate_testkit::garage::Garage;
use hydrate_testkit::nginx::{Nginx, NginxMode};
use hydrate_testkit::proxy::FaultProxy;
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

/// Sizes of the ranged GETs of the keep-alive checks: under, at and over one loopback TCP segment.
const GET_LENS: [u64; 5] = [4096, 32768, 64000, 65536, 1 << 20];
/// Sequential GETs per size.
const GETS: usize = 40;

fn test_blob() -> Vec<u8> {
    (0..16u32 << 20).map(|i| (i * 31 % 251) as u8).collect()
}

/// A proxy in front of `upstream` that counts the connections clients open. It runs a runtime of its own, so
/// it is started (and stopped) off the test's async threads.
async fn counting_proxy(upstream: SocketAddr) -> FaultProxy {
    tokio::task::spawn_blocking(move || FaultProxy::start(upstream))
        .await
        .unwrap()
        .expect("starting the counting proxy")
}

/// `n` sequential ranged GETs of `len` bytes (each waits for the previous one), every byte checked against
/// `blob`; returns the median latency (reported, never asserted: timings depend on the machine).
async fn sequential_gets(
    store: &dyn BlobStore,
    key: &str,
    blob: &[u8],
    len: u64,
    n: usize,
) -> Duration {
    let mut times = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let start = (i * 7919 * 4096) % (8 << 20);
        let t = Instant::now();
        let got = store.get_range(key, start..start + len).await.unwrap();
        times.push(t.elapsed());
        assert!(
            got[..] == blob[start as usize..(start + len) as usize],
            "{key} {start}+{len}: wrong bytes"
        );
    }
    times.sort();
    times[n / 2]
}

/// Sequential ranged GETs reuse keep-alive connections: each round of [`GETS`] requests through the counting
/// `proxy` opens at most half as many connections as it makes requests, where a client without keep-alive
/// would open one per request. (Not exactly one: hyper's pool races a new connection against the return of
/// the idle one, and on loopback the new one sometimes wins; measured: 0–3 per round directly, up to 10
/// through nginx in front of Garage.) Then prints the median latencies behind docs/remote-stores.md,
/// measured on `direct` (no proxy: the proxy re-segments the stream and hides the Nagle stall).
async fn check_keepalive(
    name: &str,
    proxied: &dyn BlobStore,
    proxy: &FaultProxy,
    direct: &dyn BlobStore,
    blob: &[u8],
) {
    for len in GET_LENS {
        let before = proxy.faults().stats().connections;
        sequential_gets(proxied, "blobs/big", blob, len, GETS).await;
        let opened = proxy.faults().stats().connections - before;
        assert!(
            opened * 2 <= GETS as u64,
            "{name}: {GETS} sequential {len}-byte GETs opened {opened} connections; keep-alive is not used"
        );
        let median = sequential_gets(direct, "blobs/big", blob, len, GETS / 2).await;
        println!(
            "{len:>8} B  {name:<16} {opened} new connections for {GETS} GETs; median {:>8.2} ms",
            median.as_secs_f64() * 1e3
        );
    }
    assert!(
        proxy.faults().stats().connections >= 1,
        "{name}: the requests did not go through the counting proxy"
    );
}

/// nginx serving files: an HttpStore keeps one connection for sequential ranged GETs.
#[tokio::test(flavor = "multi_thread")]
async fn keepalive_nginx_files_reuse_connections() {
    let test = "keepalive_nginx_files_reuse_connections";
    let Some(nginx_bin) = require_binary("nginx", test) else {
        return;
    };
    let blob = test_blob();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
    std::fs::write(dir.path().join("blobs/big"), &blob).unwrap();
    let files = Nginx::start(&nginx_bin, NginxMode::Directory(dir.path().to_owned())).unwrap();
    let proxy = counting_proxy(files.addr).await;
    let proxied = HttpStore::open(&proxy.url(), &RemoteOptions::default()).unwrap();
    let direct = HttpStore::open(&files.url(), &RemoteOptions::default()).unwrap();
    check_keepalive("nginx files", &proxied, &proxy, &direct, &blob).await;
}

/// Garage, directly and behind nginx: an S3Store keeps one connection for sequential ranged GETs (the
/// measurement of the Nagle/delayed-ACK stall of docs/remote-stores.md, with `--nocapture`).
#[tokio::test(flavor = "multi_thread")]
async fn keepalive_garage_direct_and_behind_nginx_reuse_connections() {
    let test = "keepalive_garage_direct_and_behind_nginx_reuse_connections";
    let Some(garage) = garage(test) else {
        return;
    };
    let Some(nginx_bin) = require_binary("nginx", test) else {
        return;
    };
    let blob = test_blob();
    let direct = s3(&garage.store_addr(0, "ka"));
    direct
        .put("blobs/big", Bytes::from(blob.clone()))
        .await
        .unwrap();
    let proxy = counting_proxy(garage.nodes()[0].s3_addr).await;
    let proxied = s3(&garage.store_addr_at(&proxy.url(), "ka"));
    check_keepalive("garage", &proxied, &proxy, &direct, &blob).await;
    let front = Nginx::start(
        &nginx_bin,
        NginxMode::ReverseProxy(vec![garage.nodes()[0].s3_addr]),
    )
    .unwrap();
    let front_proxy = counting_proxy(front.addr).await;
    let front_proxied = s3(&garage.store_addr_at(&front_proxy.url(), "ka"));
    let front_direct = s3(&garage.store_addr_at(&front.url(), "ka"));
    check_keepalive(
        "nginx -> garage",
        &front_proxied,
        &front_proxy,
        &front_direct,
        &blob,
    )
    .await;
}
