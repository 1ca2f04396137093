//! glibc malloc settings of a mount's long-lived processes, and giving memory back once the worker is idle.
//!
//! With its defaults, glibc keeps what a busy read path freed: every thread that allocates (runtime workers,
//! the blocking pool that reads the store and decodes chunks, FUSE threads) gets an arena of its own, up to
//! 8 per core, and after the first large buffer is freed the mmap threshold rises to its size (up to 32 MiB),
//! so later fetch buffers come from those arenas and stay there when freed. After one cold 1 GiB read the
//! worker kept ~140 MiB that way (issue 16). So the daemon uses few arenas, a fixed mmap threshold (large
//! buffers are mapped and unmapped, returned at once), and trims the heaps when reads stop.
//!
//! `HYDRATE_MALLOC_DEFAULTS=1` in the environment of `hydrate mount` keeps glibc's defaults (and lets its
//! `MALLOC_*` variables act), for comparisons.

use std::time::Duration;

/// Arenas for all threads: contention on malloc is low next to the I/O and decoding a read path does.
const ARENA_MAX: i32 = 2;
/// Allocations from this size on are mmapped (fetch ranges, large decoded runs, FUSE buffers); below it they
/// come from the arenas (chunks of up to 256 KiB are the common size in between).
const MMAP_THRESHOLD: i32 = 256 << 10;
/// Free memory at the top of a heap beyond this is returned at once.
const TRIM_THRESHOLD: i32 = 1 << 20;
/// How long the worker must have fetched nothing before its heaps are trimmed.
const IDLE_BEFORE_TRIM: Duration = Duration::from_secs(1);

/// Applies the settings above; call first thing in a daemon process, before it starts threads.
pub fn tune_for_daemon() {
    for (param, value) in [
        (libc::M_ARENA_MAX, ARENA_MAX),
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ] {
        // SAFETY: mallopt only changes glibc allocator parameters; it takes no pointers.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(param, value) };
        if ok != 1 {
            tracing::debug!(
                param,
                value,
                "mallopt refused a setting; keeping glibc's default"
            );
        }
    }
}

/// Starts a thread that returns freed heap memory to the kernel (`malloc_trim`) once `activity` (a counter
/// that moves while data is fetched) has stood still for [`IDLE_BEFORE_TRIM`] after moving.
pub fn spawn_idle_trimmer(activity: impl Fn() -> u64 + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("hydrate-trim".into())
        .spawn(move || {
            let mut last = activity();
            let mut trimmed = true;
            loop {
                std::thread::sleep(IDLE_BEFORE_TRIM);
                let now = activity();
                if now != last {
                    last = now;
                    trimmed = false;
                } else if !trimmed {
                    // SAFETY: malloc_trim only walks glibc's own heaps.
                    #[allow(unsafe_code)]
                    unsafe {
                        libc::malloc_trim(0);
                    }
                    trimmed = true;
                }
            }
        })
        .map(drop)
}
