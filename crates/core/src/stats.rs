//! Counters of the core's read path, exported by the daemon (control socket, and later Prometheus).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Monotonic counters; relaxed atomics, read as a snapshot.
        #[derive(Debug, Default)]
        pub struct VolumeStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl VolumeStats {
            /// (name, value) pairs in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Files opened.
    opens,
    /// Read calls served (not counting reads the kernel served through passthrough).
    reads,
    /// Bytes returned by those reads.
    read_bytes,
    /// Reads served entirely from the local cache.
    cache_hit_reads,
    /// Chunks fetched because a read needed them.
    ondemand_chunks,
    /// Chunks fetched ahead of a sequential stream.
    readahead_chunks,
    /// Bytes of file data scheduled ahead of sequential streams (missing or not).
    readahead_bytes,
    /// Sequential reads that grew their stream's readahead window (up to the maximum).
    readahead_grows,
    /// Reads that broke a sequential stream (a seek): the window went back to zero.
    readahead_resets,
    /// ELF files (executables, shared libraries) fetched whole in the background after their first read.
    elf_whole_files,
    /// ELF files whose interpreter and `DT_NEEDED` libraries were looked up in the image (`crate::elf`).
    elf_followed,
    /// Libraries (and interpreters) those named, fetched whole in the background before the loader opens them.
    elf_dep_files,
    /// Chunks fetched at on-demand priority to read ELF headers and dynamic sections for that.
    elf_header_chunks,
    /// Reads not continuing their handle's previous read; they fetch only the chunks covering them.
    random_reads,
    /// Entries of the image's prefetch plan that the replay found (at least partly) missing.
    plan_entries_fetched,
    /// Entries of the plan already complete in the cache when the replay reached them.
    plan_entries_cached,
    /// Chunks fetched by the plan replay.
    plan_chunks,
    /// Plain bytes fetched by the plan replay.
    plan_bytes,
    /// 1 once the plan replay has finished (0 while it runs or without a plan).
    plan_done,
    /// Directories whose small files were prefetched when one of their files was first opened (no plan).
    dir_prefetch_dirs,
    /// Prefetch windows started in those directories (the first of each, and one per open outside them).
    dir_prefetch_windows,
    /// Chunks fetched by those directory prefetches.
    dir_prefetch_chunks,
    /// Files the background fill chose (the image's small files, or all of it when it fits the fill budget).
    fill_files,
    /// Chunks fetched by the background fill.
    fill_chunks,
    /// Plain bytes fetched by the background fill.
    fill_bytes,
    /// 1 once the background fill has finished (0 while it runs, or with the fill off).
    fill_done,
    /// Background prefetch chunks that failed (the on-demand read fetches and reports them again).
    prefetch_errors,
    /// Reads that failed with an I/O error (fetch or verification failure).
    read_errors,
    /// Fetched chunks that could not be written to the cache (served from memory instead).
    cache_write_errors,
}
