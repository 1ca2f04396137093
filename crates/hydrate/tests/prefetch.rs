//! End-to-end test of learned prefetch through a real FUSE mount: `mount --record-trace` records what a
//! workload touched (also files the kernel would have read through passthrough), `attach-trace` and
//! `build --prefetch-from` store the plan, and a fresh mount of the planned image replays it so that the same
//! workload fetches nothing on demand. Checked through counters, never timing.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

fn workload(root: &Path) {
    for i in [3, 7, 11] {
        fs::read(root.join(format!("lib/m{i}.py"))).unwrap();
    }
    pread(&root.join("big"), 1 << 20, 200_000).unwrap();
}

fn wait_for_metric(m: &Mount, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.metric(name) < at_least {
        assert!(
            Instant::now() < deadline,
            "metric {name} never reached {at_least}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_recorded_trace_becomes_a_plan_that_a_later_mount_replays() {
    let tmp = tempfile::Builder::new()
        .prefix("hydrate-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let t = tmp.path();
    let (src, store) = (t.join("src"), t.join("store"));
    fs::create_dir_all(src.join("lib")).unwrap();
    for i in 0..20 {
        write_random(&src.join(format!("lib/m{i}.py")), 3000 + i * 500, i);
    }
    write_random(&src.join("big"), 4 << 20, 99);
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    hydrate_ok(&["build", &s(&src), "--store", &s(&store), "--tag", "app:1"]);

    // Record. A file complete in the cache before the recording (m3, read by an earlier mount of the same
    // cache) must still show up: recording turns passthrough off and records opens.
    let cache = t.join("cache-rec");
    let m = Mount::new(&store, "app:1", &t.join("mnt"), &cache, &[]);
    fs::read(m.path("lib/m3.py")).unwrap();
    m.unmount();
    let trace = t.join("app.trace");
    let m = Mount::new(
        &store,
        "app:1",
        &t.join("mnt"),
        &cache,
        &["--record-trace", &s(&trace)],
    );
    workload(&m.mountpoint);
    assert_eq!(m.metric("fuse_passthrough_opens"), 0);
    m.unmount();
    let text = fs::read_to_string(&trace).unwrap();
    assert!(text.starts_with("# hydrate-trace 1\n"), "{text}");
    for want in [
        "open lib/m3.py",
        "read 0 4500 lib/m3.py",
        "open lib/m7.py",
        "open big",
    ] {
        assert!(text.lines().any(|l| l == want), "no {want:?} in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("read 1048576 ") && l.ends_with(" big")),
        "{text}"
    );

    // Attach: a new image with the same blobs; a build from the trace gives the same image.
    let out = hydrate_ok(&[
        "attach-trace",
        "--store",
        &s(&store),
        "app:1",
        &s(&trace),
        "--tag",
        "app:planned",
    ]);
    // m3, m7, m11 whole, and the range(s) of big.
    let entries: u64 = out
        .split("prefetch plan: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(entries >= 4, "{out}");
    let planned = out.split_whitespace().nth(1).unwrap().to_owned();
    let built = hydrate_ok(&[
        "build",
        &s(&src),
        "--store",
        &s(&store),
        "--prefetch-from",
        &s(&trace),
    ]);
    assert_eq!(
        built.split_whitespace().nth(1),
        Some(planned.as_str()),
        "{built}"
    );

    // Replay on a fresh cache, then the workload: every read it makes hits the cache.
    let m = Mount::new(
        &store,
        "app:planned",
        &t.join("mnt"),
        &t.join("cache-plan"),
        &["--no-passthrough", "--fill-budget", "0"],
    );
    wait_for_metric(&m, "volume_plan_done", 1);
    assert!(m.metric("volume_plan_chunks") > 0);
    workload(&m.mountpoint);
    assert!(m.metric("volume_reads") > 0);
    assert_eq!(m.metric("volume_ondemand_chunks"), 0);
    assert_eq!(m.metric("volume_cache_hit_reads"), m.metric("volume_reads"));
    // Files outside the trace are still fetched on demand, and right.
    let got = fs::read(m.path("lib/m19.py")).unwrap();
    assert_eq!(got, fs::read(src.join("lib/m19.py")).unwrap());
    assert!(m.metric("volume_ondemand_chunks") > 0);
    m.unmount();

    // --no-prefetch leaves the plan alone.
    let m = Mount::new(
        &store,
        "app:planned",
        &t.join("mnt"),
        &t.join("cache-none"),
        &["--no-prefetch", "--fill-budget", "0"],
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(m.metric("volume_plan_chunks"), 0);
    m.unmount();
}

#[test]
fn the_background_fill_makes_a_small_image_local_without_reads_and_stays_off_at_zero() {
    let tmp = tempfile::Builder::new()
        .prefix("hydrate-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let t = tmp.path();
    let (src, store) = (t.join("src"), t.join("store"));
    make_tree(
        &src,
        &TreeSpec {
            small_files: 300,
            big_file: Some(3 << 20),
            depth: 5,
        },
    );
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    hydrate_ok(&["build", &s(&src), "--store", &s(&store), "--tag", "small:1"]);

    // Off: a mount left alone fetches nothing.
    let m = Mount::new(
        &store,
        "small:1",
        &t.join("mnt"),
        &t.join("cache-off"),
        &["--fill-budget", "0"],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(m.metric("store_range_requests"), 0);
    assert_eq!(m.metric("volume_fill_files"), 0);
    m.unmount();

    // Default: the whole image (it fits the budget) arrives without a single read; then every file is
    // complete, opened with passthrough, and equal to the source, and the comparison fetches nothing more.
    let m = Mount::new(&store, "small:1", &t.join("mnt"), &t.join("cache-on"), &[]);
    wait_for_metric(&m, "volume_fill_done", 1);
    assert_eq!(m.metric("volume_reads"), 0, "the fill went through reads");
    assert_eq!(m.metric("volume_prefetch_errors"), 0);
    assert!(m.metric("volume_fill_files") > 100);
    let fetched = m.metric("store_range_requests");
    assert!(fetched > 0);
    let compared = compare_trees(&src, &m.mountpoint);
    assert!(compared > 300, "compared only {compared} paths");
    assert_eq!(
        m.metric("store_range_requests"),
        fetched,
        "reads after the fill fetched"
    );
    assert_eq!(
        m.metric("fuse_requests_read"),
        0,
        "complete files went through the daemon"
    );
    assert!(m.metric("fuse_passthrough_opens") > 300);
    m.unmount();

    // A budget below the image's size: the small files only, the big one stays lazy.
    let m = Mount::new(
        &store,
        "small:1",
        &t.join("mnt"),
        &t.join("cache-small"),
        &["--fill-budget", "2M"],
    );
    wait_for_metric(&m, "volume_fill_done", 1);
    let before = m.metric("store_range_requests");
    let offset = (2u64 << 20) + 123;
    let got = pread(&m.path("b/big.bin"), offset, 4096).unwrap();
    assert_eq!(got, pread(&src.join("b/big.bin"), offset, 4096).unwrap());
    assert!(
        m.metric("store_range_requests") > before,
        "the big file was filled over the budget"
    );
    m.unmount();
}
