//! Retries for the one-shot commands that move images between stores (`convert`, `push`).
//!
//! A mount has the fetch engine's retry policy; these commands make a few hundred requests each and must not
//! fail a long transfer on one 500 or reset, nor hammer a store that keeps failing. An operation is retried
//! when its error is temporary (a `StoreError` of kind `Temporary`: 5xx, 429, timeouts, resets, a body whose
//! digest did not match) or a copy that arrived [`Damaged`]; anything else (not found, denied, bad input)
//! fails at once.

use std::time::Duration;

use anyhow::Result;
use hydrate_store::{ErrorKind, StoreError};

/// Attempts per operation.
pub const ATTEMPTS: u32 = 5;
/// First retry delay (doubling, with jitter: `hydrate_fetch::backoff`).
const RETRY_BASE: Duration = Duration::from_millis(100);

/// Bytes read from a store that do not match their digest. Worth another read (they may have been damaged on
/// the way); if every attempt sees it, the stored copy itself is bad and the error says so.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Damaged(pub String);

/// Whether `e` is worth another attempt.
pub fn retryable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StoreError>()
        .is_some_and(|e| e.kind() == ErrorKind::Temporary)
        || e.downcast_ref::<Damaged>().is_some()
}

/// Runs `op` until it succeeds, fails with an error that is not [`retryable`], or [`ATTEMPTS`] attempts
/// failed, waiting with the fetch engine's jittered backoff between attempts; `what` names the object in the
/// warning logged before each retry.
pub async fn with_retries<T, F, Fut>(what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if retryable(&e) && attempt < ATTEMPTS => {
                tracing::warn!(what, attempt, error = %format!("{e:#}"), "store request failed; retrying");
                tokio::time::sleep(hydrate_fetch::backoff(RETRY_BASE, attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn retries_temporary_and_damaged_but_not_permanent_errors() {
        let calls = AtomicU32::new(0);
        let got = run(with_retries("x", || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0 => Err(anyhow::Error::new(StoreError::new(
                    ErrorKind::Temporary,
                    "s",
                    "x",
                    "503 busy",
                ))
                .context("reading x")),
                1 => Err(anyhow::Error::new(Damaged("x: damaged".into()))),
                _ => Ok(7),
            }
        }));
        assert_eq!(got.unwrap(), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 3);

        let calls = AtomicU32::new(0);
        let err = run(with_retries("x", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(anyhow::anyhow!("no such thing")).context("reading x")
        }))
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1, "{err:#}");

        let calls = AtomicU32::new(0);
        let err = run(with_retries("x", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(anyhow::Error::new(Damaged("x: damaged".into())))
        }))
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), ATTEMPTS);
        assert!(format!("{err:#}").contains("damaged"));
    }
}
