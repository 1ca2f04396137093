//! End-to-end tests of the remote stores against real servers on loopback (root and /dev/fuse required):
//! Garage (S3, one node and a 3-node cluster with a node crash), nginx (read-only HTTP store) and the
//! fault-injecting proxy (latency, bandwidth, resets, 500s, truncated bodies, flipped bytes, stalls).
//!
//! A test whose server binary is missing is skipped with a loud message, unless HYDRATE_REQUIRE_SERVERS is set
//! (CI): then it fails. Servers come from scripts/install-test-deps.sh.

mod common;

use common::*;
use hydrate_testkit::garage::Garage;
use hydrate_testkit::nginx::{Nginx, NginxMode};
use hydrate_testkit::proxy::FaultProxy;
use hydrate_testkit::require_binary;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn build_into(src: &Path, store: &str, tag: &str) {
    hydrate_ok(&[
        "build",
        src.to_str().unwrap(),
        "--store",
        store,
        "--tag",
        tag,
        "--blob-size",
        "8M",
    ]);
}

/// A mount of `tag` with the background fill off: these tests count and fault what reads fetch.
fn mount(env: &Scratch, store: &str, tag: &str, name: &str, extra: &[&str]) -> Mount {
    let mut args = vec!["--fill-budget", "0"];
    args.extend_from_slice(extra);
    Mount::new(
        Path::new(store),
        tag,
        &env.p(&format!("mnt-{name}")),
        &env.p(&format!("cache-{name}")),
        &args,
    )
}

/// All text the mount's daemon processes logged (the daemon log lives in the cache directory).
fn daemon_log(m: &Mount) -> String {
    let mut text = String::new();
    walk(&m.cache_dir, &mut |p, meta| {
        if meta.is_file() && p.extension().is_some_and(|e| e == "log") {
            text.push_str(&fs::read_to_string(p).unwrap_or_default());
        }
    });
    text
}

fn garage_or_skip(test: &str) -> Option<PathBuf> {
    let bin = require_binary("garage", test)?;
    Garage::export_credentials();
    Some(bin)
}

#[test]
fn garage_build_mount_and_compare_every_byte() {
    let Some(bin) = garage_or_skip("garage_build_mount_and_compare_every_byte") else {
        return;
    };
    let garage = Garage::start(&bin).unwrap();
    let env = Scratch::new("hydrate-remote");
    let src = env.p("src");
    make_tree(
        &src,
        &TreeSpec {
            small_files: 300,
            big_file: Some(40 << 20),
            depth: 8,
        },
    );
    let store = garage.store_addr(0, "team/images");
    build_into(&src, &store, "tree:1");
    let m = mount(&env, &store, "tree:1", "g", &[]);
    assert!(compare_trees(&src, &m.mountpoint) > 300);
    assert!(m.metric("fetch_requests") > 0);
    assert_eq!(m.metric("fetch_errors"), 0);
}

#[test]
fn garage_cluster_loses_a_node_during_reads_and_no_read_fails() {
    let test = "garage_cluster_loses_a_node_during_reads_and_no_read_fails";
    let Some(bin) = garage_or_skip(test) else {
        return;
    };
    let Some(nginx_bin) = require_binary("nginx", test) else {
        return;
    };
    let mut garage = Garage::start_cluster(&bin, 3, 3).unwrap();
    let env = Scratch::new("hydrate-remote");
    let src = env.p("src");
    fs::create_dir_all(&src).unwrap();
    let len = 96u64 << 20;
    write_random(&src.join("big"), len, 7);
    // Clients reach the cluster through a load balancer over all three nodes, as they would in production, and
    // node 0 (the first upstream, the one the build's uploads went through) crashes while a reader streams.
    let addrs = garage.nodes().iter().map(|n| n.s3_addr).collect();
    let balancer = Nginx::start(&nginx_bin, NginxMode::ReverseProxy(addrs)).unwrap();
    let store = garage.store_addr_at(&balancer.url(), "cluster");
    build_into(&src, &store, "big:1");
    let m = mount(&env, &store, "big:1", "c", &["--read-deadline", "30s"]);
    let expected = fs::read(src.join("big")).unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let reader = {
        let (path, progress) = (m.path("big"), progress.clone());
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut offset = 0u64;
            while offset < len {
                let piece =
                    pread(&path, offset, 1 << 20).expect("a read failed during the node crash");
                assert!(!piece.is_empty(), "short file at {offset}");
                offset += piece.len() as u64;
                out.extend_from_slice(&piece);
                progress.store(offset, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
            out
        })
    };
    while progress.load(Ordering::Relaxed) < len / 4 {
        std::thread::sleep(Duration::from_millis(10));
        assert!(!reader.is_finished(), "reader ended early");
    }
    let pid = garage.nodes()[0].pid().unwrap();
    garage.kill_node(0);
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err());
    let requests_at_kill = m.metric("fetch_requests");
    let got = reader.join().expect("reader panicked");
    assert!(got == expected, "bytes differ after the node crash");
    assert!(
        m.metric("fetch_requests") > requests_at_kill,
        "the reads after the crash must have reached the cluster"
    );
    assert_eq!(m.metric("fetch_errors"), 0);
    assert_eq!(m.metric("fetch_deadline_expired"), 0);
}

#[test]
fn nginx_serves_a_local_store_directory_as_a_read_only_http_store() {
    let Some(nginx_bin) = require_binary(
        "nginx",
        "nginx_serves_a_local_store_directory_as_a_read_only_http_store",
    ) else {
        return;
    };
    let env = Scratch::new("hydrate-remote");
    let src = env.p("src");
    make_tree(
        &src,
        &TreeSpec {
            small_files: 200,
            big_file: Some(24 << 20),
            depth: 6,
        },
    );
    let local = env.p("store");
    build_into(&src, local.to_str().unwrap(), "web:1");
    let nginx = Nginx::start(&nginx_bin, NginxMode::Directory(local.clone())).unwrap();
    let url = format!("{}/", nginx.url());
    let port = hydrate_testkit::free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let m = mount(&env, &url, "web:1", "n", &["--metrics", &metrics_addr]);
    assert!(compare_trees(&src, &m.mountpoint) > 200);

    // The Prometheus endpoint serves the same counters as the control socket, plus the latency histogram.
    let text = http_get(&metrics_addr, "/metrics");
    let requests = m.metric("fetch_requests");
    assert!(requests > 0);
    assert!(text.contains("hydrate_fetch_requests "), "{text}");
    assert!(
        text.contains("# TYPE hydrate_fetch_request_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("hydrate_fetch_request_seconds_bucket{le=\"+Inf\"}"),
        "{text}"
    );

    // Read-only: building into it is refused with a clear message.
    let err = hydrate_err(&[
        "build",
        src.to_str().unwrap(),
        "--store",
        &url,
        "--tag",
        "x:1",
    ]);
    assert!(err.contains("read-only"), "{err}");
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A mounted image served by nginx through the fault proxy, and the source bytes to check reads against.
struct FaultBench {
    _nginx: Nginx,
    proxy: FaultProxy,
    mount: Mount,
    src: PathBuf,
    _env: Scratch,
}

const DEADLINE: Duration = Duration::from_secs(4);

fn fault_bench(test: &str) -> Option<FaultBench> {
    let nginx_bin = require_binary("nginx", test)?;
    let env = Scratch::new("hydrate-remote");
    let src = env.p("src");
    fs::create_dir_all(&src).unwrap();
    for (i, len) in [24u64 << 20, 24 << 20, 24 << 20, 8 << 20]
        .into_iter()
        .enumerate()
    {
        write_random(&src.join(format!("f{i}")), len, 100 + i as u64);
    }
    let local = env.p("store");
    build_into(&src, local.to_str().unwrap(), "faults:1");
    let nginx = Nginx::start(&nginx_bin, NginxMode::Directory(local)).unwrap();
    let proxy = FaultProxy::start(nginx.addr).unwrap();
    let mount = mount(
        &env,
        &proxy.url(),
        "faults:1",
        "f",
        &[
            "--fetch-timeout",
            "1s",
            "--read-deadline",
            "4s",
            "--no-passthrough",
        ],
    );
    Some(FaultBench {
        _nginx: nginx,
        proxy,
        mount,
        src,
        _env: env,
    })
}

/// Reads `file` at random offsets; every successful read must return exactly the source bytes. Returns
/// (reads, failed reads); failures must be EIO.
fn random_reads(b: &FaultBench, file: &str, count: usize, seed: u64) -> (usize, usize) {
    let expected = fs::read(b.src.join(file)).unwrap();
    let path = b.mount.path(file);
    let mut rng = Rng::new(seed);
    let mut failed = 0;
    for _ in 0..count {
        let len = [4096usize, 65536, 1 << 20][rng.below(3) as usize];
        let offset = rng.below(expected.len() as u64 - len as u64);
        match pread(&path, offset, len) {
            Ok(got) => assert!(
                got[..] == expected[offset as usize..offset as usize + len],
                "wrong bytes at {offset}+{len} of {file}"
            ),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                failed += 1;
            }
        }
    }
    (count, failed)
}

#[test]
fn faults_never_yield_wrong_bytes_and_reads_recover() {
    let Some(b) = fault_bench("faults_never_yield_wrong_bytes_and_reads_recover") else {
        return;
    };
    let f = b.proxy.faults();

    // An emulated link: every byte arrives, slower.
    f.set_latency(Duration::from_millis(5));
    f.set_bandwidth(Some(200 << 20));
    assert_eq!(random_reads(&b, "f0", 40, 1).1, 0);
    f.clear();

    // Resets, 500s, truncated bodies and flipped bytes together, at rates retries can absorb: no wrong byte,
    // and (nearly) every read succeeds.
    f.set_reset_probability(0.02);
    f.set_http_500_probability(0.1);
    f.set_truncate_probability(0.02);
    f.set_flip_probability(0.02);
    let (reads, failed) = random_reads(&b, "f1", 120, 2);
    let s = f.stats();
    assert!(
        s.resets > 0 && s.http_500s > 0 && s.truncations > 0 && s.flips > 0,
        "every kind of fault must have been injected: {s:?}"
    );
    assert!(
        failed * 10 < reads,
        "{failed} of {reads} reads failed: {s:?}"
    );
    let metrics = b.mount.metrics();
    assert!(metrics["fetch_retries"] > 0, "{metrics:?}");

    // Every response corrupted: reads fail with EIO (verification), never return wrong bytes.
    f.clear();
    f.set_flip_probability(1.0);
    let (reads, failed) = random_reads(&b, "f2", 5, 3);
    assert_eq!(
        failed, reads,
        "all reads must fail while every byte stream is damaged"
    );
    assert!(b.mount.metric("fetch_verify_failures") > 0);
    f.clear();
    let (_, failed) = random_reads(&b, "f2", 5, 3);
    assert_eq!(failed, 0, "the same reads succeed once the damage stops");
}

#[test]
fn a_stalled_store_fails_reads_with_eio_at_the_deadline_and_they_recover() {
    let Some(b) =
        fault_bench("a_stalled_store_fails_reads_with_eio_at_the_deadline_and_they_recover")
    else {
        return;
    };
    let f = b.proxy.faults();
    let path = b.mount.path("f3");
    let expected = fs::read(b.src.join("f3")).unwrap();
    f.set_stall(true);
    let started = Instant::now();
    let err = pread(&path, 4 << 20, 4096).expect_err("a read through a stalled store must fail");
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took >= DEADLINE - Duration::from_millis(500),
        "failed before the deadline: {took:?}"
    );
    assert!(
        took < DEADLINE + Duration::from_secs(3),
        "failed long after the deadline: {took:?}"
    );

    // The log line names the store, the object, the range and the cause.
    let log = daemon_log(&b.mount);
    let line = log
        .lines()
        .find(|l| l.contains("not served within its deadline"))
        .unwrap_or_else(|| panic!("no deadline log line in:\n{log}"));
    eprintln!("deadline log line: {line}");
    for part in [
        b.proxy.url(),
        "object=blobs/".to_owned(),
        "start=".to_owned(),
        "end=".to_owned(),
        "cause=".to_owned(),
    ] {
        assert!(line.contains(&part), "{part:?} missing in {line}");
    }

    // The fault clears: the same read succeeds, without remounting.
    f.set_stall(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        match pread(&path, 4 << 20, 4096) {
            Ok(got) => break got,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the read did not recover after the stall: {e}"),
        }
    };
    assert!(got[..] == expected[4 << 20..(4 << 20) + 4096]);
    assert!(b.mount.metric("fetch_deadline_expired") >= 1);
}

#[test]
fn garage_behind_a_faulty_proxy_returns_exact_bytes() {
    let Some(bin) = garage_or_skip("garage_behind_a_faulty_proxy_returns_exact_bytes") else {
        return;
    };
    let garage = Garage::start(&bin).unwrap();
    let env = Scratch::new("hydrate-remote");
    let src = env.p("src");
    fs::create_dir_all(&src).unwrap();
    write_random(&src.join("data"), 32 << 20, 11);
    build_into(&src, &garage.store_addr(0, "p"), "p:1");
    let proxy = FaultProxy::start(garage.nodes()[0].s3_addr).unwrap();
    let store = garage.store_addr_at(&proxy.url(), "p");
    let m = mount(
        &env,
        &store,
        "p:1",
        "gp",
        &["--fetch-timeout", "2s", "--read-deadline", "20s"],
    );
    let f = proxy.faults();
    f.set_latency(Duration::from_millis(2));
    f.set_http_500_probability(0.2);
    f.set_reset_probability(0.01);
    f.set_flip_probability(0.01);
    let got = fs::read(m.path("data")).expect("sequential read through a faulty link");
    assert!(
        got == fs::read(src.join("data")).unwrap(),
        "wrong bytes through the faulty link"
    );
    assert!(f.stats().http_500s > 0, "{:?}", f.stats());
    assert!(m.metric("fetch_retries") > 0);
}

/// Cold 4 KiB reads at `samples` spread-out offsets of `path` (each in a chunk not fetched before), every byte
/// checked against `want`; returns the median time (reported, never asserted).
fn cold_small_reads(path: &Path, want: &[u8], samples: u64) -> Duration {
    let mut times = Vec::new();
    let stride = want.len() as u64 / samples;
    for i in 0..samples {
        let offset = (i * stride + stride / 2) / 4096 * 4096;
        let t = Instant::now();
        let got = pread(path, offset, 4096).unwrap();
        times.push(t.elapsed());
        assert!(
            got[..] == want[offset as usize..offset as usize + 4096],
            "cold read at {offset}: wrong bytes"
        );
    }
    times.sort();
    times[times.len() / 2]
}

/// The S3 request widening (docs/remote-stores.md), checked by counting: cold small reads from Garage, with
/// requests of one chunk (`--min-request-bytes 0`) and with the `s3://` default (requests shorter than 64 KiB
/// widened backwards). Widening must not change how many requests the reads make, must make them no shorter
/// than 64 KiB (so that Garage's responses fill a loopback TCP segment and escape the Nagle/delayed-ACK
/// stall), and costs at most 64 KiB more per request. The latencies are printed (`--nocapture`), not asserted.
#[test]
fn garage_cold_small_reads_with_and_without_request_widening() {
    const READS: u64 = 40;
    const SEGMENT: u64 = 64 << 10;
    let Some(bin) = garage_or_skip("garage_cold_small_reads_with_and_without_request_widening")
    else {
        return;
    };
    let garage = Garage::start(&bin).unwrap();
    let env = Scratch::new("hydrate-remote");
    let src = env.p("src");
    fs::create_dir_all(&src).unwrap();
    let len = 64u64 << 20;
    // Half-entropy bytes: chunks compress to about half, so most stored chunks are under 64 KiB.
    let mut rng = Rng::new(5);
    let mut data = vec![0u8; len as usize];
    rng.fill(&mut data);
    data.iter_mut().for_each(|b| *b &= 0x0f);
    fs::write(src.join("data"), &data).unwrap();
    let store = garage.store_addr(0, "w");
    build_into(&src, &store, "w:1");
    // `mount` turns the background fill off: the counts are those of the reads alone.
    let mut counts = Vec::new();
    for (name, extra) in [
        ("one chunk per request", &["--min-request-bytes", "0"][..]),
        ("widened to 64 KiB", &[][..]),
    ] {
        let m = mount(&env, &store, "w:1", &format!("w{}", extra.len()), extra);
        let median = cold_small_reads(&m.path("data"), &data, READS);
        let requests = m.metric("fetch_requests");
        let fetched = m.metric("fetch_bytes_fetched");
        println!(
            "{name:<24} cold 4 KiB read median {:>7.2} ms, {requests} requests, {fetched} bytes fetched for \
             {READS} reads",
            median.as_secs_f64() * 1e3
        );
        counts.push((requests, fetched));
    }
    let [(plain_requests, plain_bytes), (wide_requests, wide_bytes)] = counts[..] else {
        unreachable!()
    };
    assert!(
        plain_requests >= READS && plain_bytes < plain_requests * SEGMENT,
        "the test needs cold reads of chunks stored in under 64 KiB: {plain_requests} requests fetched \
         {plain_bytes} bytes"
    );
    assert_eq!(
        wide_requests, plain_requests,
        "widening changes the size of requests, never their number"
    );
    assert!(
        wide_bytes >= wide_requests * SEGMENT,
        "widened requests average under 64 KiB: {wide_requests} requests fetched {wide_bytes} bytes"
    );
    assert!(
        wide_bytes <= plain_bytes + wide_requests * SEGMENT,
        "widening added more than 64 KiB per request: {plain_bytes} -> {wide_bytes} bytes"
    );
}
