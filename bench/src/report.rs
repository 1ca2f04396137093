//! The results of one run: the table printed for people and the JSON written for machines (`--json`).
//!
//! Every hydrate figure sits next to the native ext4 baseline measured in the same run, with their ratio, so a
//! number is never read without its context (a busy or slow machine moves both sides).

use crate::hydrate::DaemonMemory;
use crate::reads::{mb_per_s, RandomRun, SeqRead, RANDOM_LEN};
use crate::tree::TreeStats;
use serde_json::{json, Value};
use std::fmt::Write as _;

// Re-exported for takeover.rs, which still names it here; the formatting itself lives in hydrate-units.
pub use hydrate_units::human;

/// Where and when the numbers were taken.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub date_utc: String,
    pub kernel: String,
    pub cores: usize,
    pub cpu_model: String,
    pub mem_total_kib: u64,
    pub workdir_fs: String,
    pub hydrate_version: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

#[derive(Debug, Clone)]
pub struct BuildResult {
    pub tree: TreeStats,
    pub image: String,
    /// Native baseline: every file of the tree read once, cold.
    pub native_tree_read: SeqRead,
    pub build_secs: f64,
    pub stored_blob_bytes: u64,
    pub blobs: u64,
    pub manifest_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ColdSeq {
    pub native: SeqRead,
    pub hydrate: SeqRead,
    pub mount_ready_secs: f64,
    pub store_bytes_read: u64,
    pub store_requests: u64,
    pub checksums_match: bool,
    /// The daemon right after mounting, before any read.
    pub idle_memory: DaemonMemory,
    /// During and after the cold read.
    pub memory: DaemonMemory,
}

#[derive(Debug, Clone)]
pub struct HotSeq {
    pub repeats: usize,
    /// Right after the cold fetch: the source's pages come from the cold read, the cache file's from the
    /// daemon's chunk-sized writes (smaller folios, slower to copy).
    pub fresh_native: SeqRead,
    pub fresh_passthrough: SeqRead,
    /// After drop_caches and one warming read of each file: both page caches filled the same way.
    pub native: SeqRead,
    /// Passthrough: best of `repeats` after one warming read.
    pub passthrough: SeqRead,
    pub passthrough_seen: bool,
    /// FUSE READ requests the daemon served during the timed passthrough reads (0 when the kernel reads the
    /// cache file itself).
    pub passthrough_read_upcalls: u64,
    /// --no-passthrough, best of `repeats`, the mount's page cache dropped before each read: every byte goes
    /// through the daemon (its cache file is in memory).
    pub daemon: SeqRead,
    /// FUSE READ requests per read of the whole file in that mode.
    pub daemon_read_upcalls: u64,
    /// --no-passthrough, best of `repeats` from the mount's own page cache (FOPEN_KEEP_CACHE): no upcalls.
    pub page_cache: SeqRead,
    /// Hot 4 KiB random reads of the complete file (passthrough) and of the source, both in the page cache:
    /// the run with the lower total time of `repeats` interleaved rounds each.
    pub random_native: RandomRun,
    pub random_passthrough: RandomRun,
    /// During and after the passthrough reads (right after the fetch, hot, random).
    pub passthrough_memory: DaemonMemory,
    /// During and after the --no-passthrough reads.
    pub daemon_memory: DaemonMemory,
}

#[derive(Debug, Clone)]
pub struct RandomResult {
    pub native: RandomRun,
    pub hydrate: RandomRun,
    pub store_bytes_read: u64,
    pub store_requests: u64,
    pub ondemand_chunks: u64,
    pub readahead_chunks: u64,
    pub read_upcalls: u64,
    pub data_matches: bool,
    /// During and after the cold random reads.
    pub memory: DaemonMemory,
}

impl RandomResult {
    fn reads(&self) -> u64 {
        self.hydrate.latencies_ns.len() as u64
    }
    /// Store bytes per byte the application read (the read amplification of lazy fetching).
    pub fn store_bytes_per_byte(&self) -> f64 {
        self.store_bytes_read as f64 / self.hydrate.bytes().max(1) as f64
    }
    pub fn requests_per_read(&self) -> f64 {
        self.store_requests as f64 / self.reads().max(1) as f64
    }
    pub fn native_device_bytes_per_byte(&self) -> f64 {
        self.native.device_bytes as f64 / self.native.bytes().max(1) as f64
    }
}

#[derive(Debug, Clone)]
pub struct Results {
    pub machine: Machine,
    pub params: Value,
    pub build: BuildResult,
    pub cold: ColdSeq,
    pub hot: HotSeq,
    pub random: RandomResult,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn memory_json(m: &DaemonMemory) -> Value {
    json!({ "peak_kib": m.peak_kib, "settled_kib": m.settled_kib })
}

fn seq_json(r: &SeqRead) -> Value {
    json!({ "bytes": r.bytes, "secs": r.secs, "mb_per_s": r.mb_per_s() })
}

fn random_json(r: &RandomRun) -> Value {
    json!({
        "reads": r.latencies_ns.len(),
        "bytes": r.bytes(),
        "secs": r.secs,
        "p50_us": r.p(0.50) as f64 / 1e3,
        "p99_us": r.p(0.99) as f64 / 1e3,
        "max_us": r.latencies_ns.last().copied().unwrap_or(0) as f64 / 1e3,
    })
}

impl BuildResult {
    pub fn to_json(&self) -> Value {
        let b = self;
        let build_mb_s = mb_per_s(b.tree.logical_bytes, b.build_secs);
        json!({
            "image": b.image,
            "files": b.tree.files,
            "logical_bytes": b.tree.logical_bytes,
            "duplicate_files": b.tree.duplicate_files,
            "duplicate_bytes": b.tree.duplicate_bytes,
            "stored_blob_bytes": b.stored_blob_bytes,
            "blobs": b.blobs,
            "manifest_bytes": b.manifest_bytes,
            "logical_per_stored": ratio(b.tree.logical_bytes as f64, (b.stored_blob_bytes + b.manifest_bytes) as f64),
            "secs": b.build_secs,
            "mb_per_s": build_mb_s,
            "native_tree_read": seq_json(&b.native_tree_read),
            "ratio_to_native_read": ratio(build_mb_s, b.native_tree_read.mb_per_s()),
        })
    }

    /// The build section alone (`--build-only`).
    pub fn table(&self) -> String {
        let mut t = Table::default();
        self.rows(&mut t);
        t.render()
    }

    fn rows(&self, t: &mut Table) {
        let b = self;
        let build_mb_s = mb_per_s(b.tree.logical_bytes, b.build_secs);
        t.row(
            "build (cold source → local store)",
            format!("{build_mb_s:.0} MB/s"),
            format!("{:.0} MB/s tree read", b.native_tree_read.mb_per_s()),
            ratio(build_mb_s, b.native_tree_read.mb_per_s()),
        );
        t.note(format!(
            "{} files, logical {}, stored {} in {} blobs + manifest {} (logical/stored {:.2}x; {} duplicate files, {})",
            b.tree.files,
            human(b.tree.logical_bytes),
            human(b.stored_blob_bytes),
            b.blobs,
            human(b.manifest_bytes),
            ratio(b.tree.logical_bytes as f64, (b.stored_blob_bytes + b.manifest_bytes) as f64),
            b.tree.duplicate_files,
            human(b.tree.duplicate_bytes),
        ));
    }
}

impl Results {
    pub fn to_json(&self) -> Value {
        let m = &self.machine;
        let b = &self.build;
        let (c, h, r) = (&self.cold, &self.hot, &self.random);
        json!({
            "machine": {
                "date_utc": m.date_utc, "kernel": m.kernel, "cores": m.cores, "cpu_model": m.cpu_model,
                "mem_total_kib": m.mem_total_kib, "workdir_fs": m.workdir_fs, "hydrate_version": m.hydrate_version,
                "loadavg_start": m.loadavg_start, "loadavg_end": m.loadavg_end,
            },
            "params": self.params,
            "build": b.to_json(),
            "cold_sequential": {
                "hydrate": seq_json(&c.hydrate),
                "native": seq_json(&c.native),
                "ratio": ratio(c.hydrate.mb_per_s(), c.native.mb_per_s()),
                "mount_ready_secs": c.mount_ready_secs,
                "store_bytes_read": c.store_bytes_read,
                "store_requests": c.store_requests,
                "content_matches": c.checksums_match,
                "daemon_memory_idle": memory_json(&c.idle_memory),
                "daemon_memory": memory_json(&c.memory),
            },
            "hot_sequential": {
                "repeats": h.repeats,
                "after_fetch_native": seq_json(&h.fresh_native),
                "after_fetch_passthrough": seq_json(&h.fresh_passthrough),
                "after_fetch_ratio": ratio(h.fresh_passthrough.mb_per_s(), h.fresh_native.mb_per_s()),
                "native": seq_json(&h.native),
                "passthrough": seq_json(&h.passthrough),
                "passthrough_ratio": ratio(h.passthrough.mb_per_s(), h.native.mb_per_s()),
                "passthrough_used": h.passthrough_seen,
                "passthrough_read_upcalls": h.passthrough_read_upcalls,
                "no_passthrough_daemon": seq_json(&h.daemon),
                "no_passthrough_daemon_ratio": ratio(h.daemon.mb_per_s(), h.native.mb_per_s()),
                "no_passthrough_daemon_read_upcalls": h.daemon_read_upcalls,
                "no_passthrough_page_cache": seq_json(&h.page_cache),
                "no_passthrough_page_cache_ratio": ratio(h.page_cache.mb_per_s(), h.native.mb_per_s()),
                "random_4k_native": random_json(&h.random_native),
                "random_4k_passthrough": random_json(&h.random_passthrough),
                "random_4k_reads_per_sec_ratio": ratio(h.random_native.secs, h.random_passthrough.secs),
                "passthrough_daemon_memory": memory_json(&h.passthrough_memory),
                "no_passthrough_daemon_memory": memory_json(&h.daemon_memory),
            },
            "random_4k": {
                "reads": r.reads(),
                "read_len": RANDOM_LEN,
                "hydrate": random_json(&r.hydrate),
                "native": random_json(&r.native),
                "store_bytes_read": r.store_bytes_read,
                "store_bytes_per_byte_read": r.store_bytes_per_byte(),
                "store_requests": r.store_requests,
                "store_requests_per_read": r.requests_per_read(),
                "ondemand_chunks": r.ondemand_chunks,
                "readahead_chunks": r.readahead_chunks,
                "fuse_read_upcalls": r.read_upcalls,
                "native_device_bytes_per_byte_read": r.native_device_bytes_per_byte(),
                "content_matches": r.data_matches,
                "daemon_memory": memory_json(&r.memory),
            },
        })
    }

    /// The table for people: one row per measurement, hydrate next to its native baseline.
    pub fn table(&self) -> String {
        let mut t = Table::default();
        self.build.rows(&mut t);
        let c = &self.cold;
        t.row(
            &format!(
                "cold sequential read {} (fresh mount+cache)",
                human(c.hydrate.bytes)
            ),
            format!("{:.0} MB/s", c.hydrate.mb_per_s()),
            format!("{:.0} MB/s cold", c.native.mb_per_s()),
            ratio(c.hydrate.mb_per_s(), c.native.mb_per_s()),
        );
        t.note(format!(
            "mount ready in {:.0} ms; store read {} in {} requests; content {}",
            c.mount_ready_secs * 1e3,
            human(c.store_bytes_read),
            c.store_requests,
            if c.checksums_match {
                "verified"
            } else {
                "MISMATCH"
            }
        ));
        let h = &self.hot;
        let hot_row = |t: &mut Table, name: &str, r: &SeqRead| {
            t.row(
                name,
                format!("{:.0} MB/s", r.mb_per_s()),
                format!("{:.0} MB/s hot", h.native.mb_per_s()),
                ratio(r.mb_per_s(), h.native.mb_per_s()),
            );
        };
        hot_row(
            &mut t,
            &format!("hot sequential, passthrough (best of {})", h.repeats),
            &h.passthrough,
        );
        t.note(format!(
            "both files re-read into the page cache after drop_caches; target ≥ 0.95; passthrough {}; READ upcalls during timed reads: {}",
            if h.passthrough_seen {
                "used"
            } else {
                "NOT used (file not complete in the cache?)"
            },
            h.passthrough_read_upcalls
        ));
        t.row(
            "hot sequential, passthrough, right after the fetch",
            format!("{:.0} MB/s", h.fresh_passthrough.mb_per_s()),
            format!("{:.0} MB/s hot", h.fresh_native.mb_per_s()),
            ratio(h.fresh_passthrough.mb_per_s(), h.fresh_native.mb_per_s()),
        );
        t.note(
            "cache file pages as the daemon wrote them; the source's from its cold read".to_owned(),
        );
        hot_row(
            &mut t,
            "hot sequential, --no-passthrough, via daemon",
            &h.daemon,
        );
        t.note(format!(
            "mount's page cache dropped before each read; {} READ upcalls per read of the file",
            h.daemon_read_upcalls
        ));
        hot_row(
            &mut t,
            "hot sequential, --no-passthrough, page cache",
            &h.page_cache,
        );
        t.note("served from the mount's own page cache (FOPEN_KEEP_CACHE), no upcalls".to_owned());
        let reads_per_sec = |r: &RandomRun| r.latencies_ns.len() as f64 / r.secs.max(1e-9);
        t.row(
            &format!(
                "hot random {} KiB reads, passthrough (reads/s)",
                RANDOM_LEN / 1024
            ),
            format!("{:.0}", reads_per_sec(&h.random_passthrough)),
            format!("{:.0}", reads_per_sec(&h.random_native)),
            ratio(
                reads_per_sec(&h.random_passthrough),
                reads_per_sec(&h.random_native),
            ),
        );
        t.note(format!(
            "p50 {} vs {}, p99 {} vs {}; both files in the page cache",
            us(h.random_passthrough.p(0.5)),
            us(h.random_native.p(0.5)),
            us(h.random_passthrough.p(0.99)),
            us(h.random_native.p(0.99)),
        ));
        let r = &self.random;
        t.row(
            &format!(
                "random {} KiB reads x{} (fresh mount+cache), p50",
                RANDOM_LEN / 1024,
                r.reads()
            ),
            us(r.hydrate.p(0.5)),
            format!("{} cold", us(r.native.p(0.5))),
            ratio(r.hydrate.p(0.5) as f64, r.native.p(0.5) as f64),
        );
        t.row(
            "  same reads, p99",
            us(r.hydrate.p(0.99)),
            format!("{} cold", us(r.native.p(0.99))),
            ratio(r.hydrate.p(0.99) as f64, r.native.p(0.99) as f64),
        );
        t.row(
            "  bytes fetched per byte read",
            format!("{:.1} from store", r.store_bytes_per_byte()),
            format!("{:.1} from disk", r.native_device_bytes_per_byte()),
            ratio(r.store_bytes_per_byte(), r.native_device_bytes_per_byte()),
        );
        t.note(format!(
            "store: {} for {} read, {:.2} requests per read; {} chunks on demand + {} readahead; {} READ upcalls; content {}",
            human(r.store_bytes_read),
            human(r.hydrate.bytes()),
            r.requests_per_read(),
            r.ondemand_chunks,
            r.readahead_chunks,
            r.read_upcalls,
            if r.data_matches { "verified" } else { "MISMATCH" }
        ));
        t.note(format!(
            "daemon memory (supervisor + worker), peak / settled: idle {}; cold sequential {}; passthrough reads {}; \
             --no-passthrough reads {}; cold random {}",
            mem(&c.idle_memory),
            mem(&c.memory),
            mem(&h.passthrough_memory),
            mem(&h.daemon_memory),
            mem(&r.memory),
        ));
        let m = &self.machine;
        format!(
            "hydrate benchmark, {} UTC; {} cores ({}), {} GiB RAM, kernel {}, workdir on {}; load {} → {}\n\n{}\
             ratio = hydrate / ext4 (for latencies: p50 hydrate / p50 ext4, lower is better)\n",
            m.date_utc,
            m.cores,
            m.cpu_model,
            m.mem_total_kib >> 20,
            m.kernel,
            m.workdir_fs,
            m.loadavg_start,
            m.loadavg_end,
            t.render()
        )
    }
}

fn mem(m: &DaemonMemory) -> String {
    format!(
        "{} / {}",
        human(m.peak_kib << 10),
        human(m.settled_kib << 10)
    )
}

fn us(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.0} ms", ns as f64 / 1e6)
    } else {
        format!("{:.0} µs", ns as f64 / 1e3)
    }
}

/// Four aligned columns plus indented note lines under a row.
#[derive(Default)]
struct Table {
    rows: Vec<(String, String, String, String)>,
    notes: Vec<Vec<String>>,
}

impl Table {
    fn row(&mut self, name: &str, hydrate: String, baseline: String, ratio: f64) {
        self.rows
            .push((name.to_owned(), hydrate, baseline, format!("{ratio:.2}")));
        self.notes.push(Vec::new());
    }

    fn note(&mut self, text: String) {
        if let Some(last) = self.notes.last_mut() {
            last.push(text);
        }
    }

    fn render(&self) -> String {
        let header = (
            "measurement".to_owned(),
            "hydrate".to_owned(),
            "ext4 baseline".to_owned(),
            "ratio".to_owned(),
        );
        let width = |f: fn(&(String, String, String, String)) -> &String| {
            self.rows
                .iter()
                .chain([&header])
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
        };
        let w = [
            width(|r| &r.0),
            width(|r| &r.1),
            width(|r| &r.2),
            width(|r| &r.3),
        ];
        let mut out = String::new();
        let line = |out: &mut String, r: &(String, String, String, String)| {
            let _ = writeln!(
                out,
                "{:<a$}  {:>b$}  {:>c$}  {:>d$}",
                r.0,
                r.1,
                r.2,
                r.3,
                a = w[0],
                b = w[1],
                c = w[2],
                d = w[3]
            );
        };
        line(&mut out, &header);
        let _ = writeln!(out, "{}", "-".repeat(w.iter().sum::<usize>() + 6));
        for (row, notes) in self.rows.iter().zip(&self.notes) {
            line(&mut out, row);
            for n in notes {
                let _ = writeln!(out, "    {n}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(bytes: u64, secs: f64) -> SeqRead {
        SeqRead {
            bytes,
            secs,
            checksum: None,
        }
    }

    fn random(lat: Vec<u64>, device_bytes: u64) -> RandomRun {
        let n = lat.len();
        RandomRun {
            latencies_ns: lat,
            data: vec![0; n * RANDOM_LEN],
            device_bytes,
            secs: 1.0,
        }
    }

    fn sample() -> Results {
        Results {
            machine: Machine {
                date_utc: "2025-01-02 03:04:05".into(),
                cores: 2,
                ..Machine::default()
            },
            params: json!({ "big_size": 1000 }),
            build: BuildResult {
                tree: TreeStats {
                    files: 3,
                    logical_bytes: 2_000_000,
                    ..TreeStats::default()
                },
                image: "abc".into(),
                native_tree_read: seq(2_000_000, 0.5),
                build_secs: 1.0,
                stored_blob_bytes: 900_000,
                blobs: 1,
                manifest_bytes: 100_000,
            },
            cold: ColdSeq {
                native: seq(1_000_000, 1.0),
                hydrate: seq(1_000_000, 2.0),
                mount_ready_secs: 0.01,
                store_bytes_read: 1_000_000,
                store_requests: 4,
                checksums_match: true,
                idle_memory: DaemonMemory {
                    peak_kib: 9000,
                    settled_kib: 9000,
                },
                memory: DaemonMemory {
                    peak_kib: 40_960,
                    settled_kib: 12_288,
                },
            },
            hot: HotSeq {
                repeats: 3,
                fresh_native: seq(1_000_000, 0.1),
                fresh_passthrough: seq(1_000_000, 0.2),
                native: seq(1_000_000, 0.1),
                passthrough: seq(1_000_000, 0.1),
                passthrough_seen: true,
                passthrough_read_upcalls: 0,
                daemon: seq(1_000_000, 0.5),
                daemon_read_upcalls: 8,
                page_cache: seq(1_000_000, 0.2),
                passthrough_memory: DaemonMemory::default(),
                daemon_memory: DaemonMemory::default(),
                random_native: random(vec![1_000, 2_000], 0),
                random_passthrough: random(vec![1_000, 3_000], 0),
            },
            random: RandomResult {
                native: random(vec![100_000, 200_000], 8192 * 4),
                hydrate: random(vec![50_000, 400_000], 0),
                store_bytes_read: 16 * 8192,
                store_requests: 3,
                ondemand_chunks: 2,
                readahead_chunks: 0,
                read_upcalls: 2,
                data_matches: true,
                memory: DaemonMemory::default(),
            },
        }
    }

    #[test]
    fn json_carries_derived_figures() {
        let j = sample().to_json();
        assert_eq!(j["build"]["mb_per_s"], json!(2.0));
        assert_eq!(j["build"]["logical_per_stored"], json!(2.0));
        assert_eq!(j["build"]["ratio_to_native_read"], json!(0.5));
        assert_eq!(j["cold_sequential"]["ratio"], json!(0.5));
        assert_eq!(
            j["cold_sequential"]["daemon_memory"],
            json!({ "peak_kib": 40_960, "settled_kib": 12_288 })
        );
        assert_eq!(j["hot_sequential"]["passthrough_ratio"], json!(1.0));
        assert_eq!(j["hot_sequential"]["after_fetch_ratio"], json!(0.5));
        assert_eq!(
            j["hot_sequential"]["no_passthrough_daemon_ratio"],
            json!(0.2)
        );
        let r = &j["random_4k"];
        assert_eq!(r["store_bytes_per_byte_read"], json!(16.0));
        assert_eq!(r["store_requests_per_read"], json!(1.5));
        assert_eq!(r["native_device_bytes_per_byte_read"], json!(4.0));
        assert_eq!(r["hydrate"]["p99_us"], json!(400.0));
        assert_eq!(j["machine"]["cores"], json!(2));
    }

    #[test]
    fn table_aligns_rows_and_shows_every_measurement() {
        let text = sample().table();
        for needle in [
            "build",
            "cold sequential",
            "passthrough (best of 3)",
            "via daemon",
            "page cache",
            "random 4 KiB reads x2",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        assert!(text.contains("400 µs"), "{text}");
        assert!(text.contains("16.0 from store"), "{text}");
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.ends_with("0.50") || l.ends_with("1.00"))
            .collect();
        assert!(rows.len() >= 2, "{text}");
        assert!(
            rows.windows(2)
                .all(|w| w[0].chars().count() == w[1].chars().count()),
            "{text}"
        );
    }
}
