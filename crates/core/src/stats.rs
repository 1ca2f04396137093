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
    /// Reads that failed with an I/O error (fetch or verification failure).
    read_errors,
    /// Fetched chunks that could not be written to the cache (served from memory instead).
    cache_write_errors,
}
