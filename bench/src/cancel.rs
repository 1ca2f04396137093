//! Ctrl-C and SIGTERM handling: turn a stop signal into an error at the next check, so the benchmark unwinds
//! through its guards (unmount every mount, remove the work directory) instead of dying with mounts left behind.
//!
//! The handlers only raise a flag (signal-hook, async-signal-safe); long loops call [`check`] between steps.
//! Handlers are reset by exec and no signal is blocked, so child processes (`hydrate build`) still stop on
//! Ctrl-C like any program. A second Ctrl-C while the first is being handled exits at once.

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static CANCELLED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    CANCELLED.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

pub fn install() -> Result<()> {
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // Order matters: the shutdown hook checks the flag before the second hook sets it, so the first signal
        // only cancels and a repeated one exits.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(flag()))
            .with_context(|| format!("installing the handler of signal {signal}"))?;
        signal_hook::flag::register(signal, Arc::clone(flag()))
            .with_context(|| format!("installing the handler of signal {signal}"))?;
    }
    Ok(())
}

/// Fails once a stop signal has arrived.
pub fn check() -> Result<()> {
    if flag().load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `total` in short steps, failing early on a stop signal.
pub fn sleep(total: Duration) -> Result<()> {
    let end = Instant::now() + total;
    while Instant::now() < end {
        check()?;
        std::thread::sleep(
            Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())),
        );
    }
    check()
}
