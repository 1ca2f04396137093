//! The fetch options of `hydrate mount` (`--fetch-timeout`, `--read-deadline`, `--max-in-flight`,
//! `--memory-limit`), validated and turned into the fetch engine's and the network client's settings.
//!
//! One request timeout governs both layers: the engine abandons (and retries) a request after
//! `--fetch-timeout`, and the HTTP client under S3/HTTP stores is given the same bound, with its idle-read and
//! connect timeouts no longer than it, so a stalled connection is noticed by whichever layer sees it first and
//! never outlives the engine's idea of the request.

use crate::cli::MountArgs;
use crate::units::{human, parse_size};
use anyhow::{bail, Context, Result};
use hydrate_fetch::{FetchConfig, MIN_BUDGET};
use hydrate_store::RemoteOptions;
use std::time::Duration;

/// Requests to S3 stores are at least this long: Garage (and s3s-fs) do not set TCP_NODELAY, so a response
/// shorter than one TCP segment (64 KiB on loopback) waits ~40 ms for the client's delayed ACK; a wider
/// range costs far less (docs/remote-stores.md has the measurements).
const S3_MIN_REQUEST: u64 = 64 << 10;

/// The engine and network settings `args` ask for.
pub fn from_args(args: &MountArgs) -> Result<(FetchConfig, RemoteOptions)> {
    let timeout = parse_duration(&args.fetch_timeout).context("--fetch-timeout")?;
    let deadline = parse_duration(&args.read_deadline).context("--read-deadline")?;
    if timeout.is_zero() || deadline.is_zero() {
        bail!("--fetch-timeout and --read-deadline must be positive");
    }
    let memory_limit = parse_size(&args.memory_limit).context("--memory-limit")?;
    if memory_limit < MIN_BUDGET {
        bail!(
            "--memory-limit {} is below the minimum of {}",
            args.memory_limit,
            human(MIN_BUDGET)
        );
    }
    let fetch = FetchConfig {
        max_in_flight: args.max_in_flight as usize,
        memory_limit,
        request_timeout: timeout,
        deadline,
        min_request_bytes: args
            .min_request_bytes
            .unwrap_or(if args.store.starts_with("s3://") {
                S3_MIN_REQUEST
            } else {
                0
            }),
        ..FetchConfig::default()
    };
    let defaults = RemoteOptions::default();
    let remote = RemoteOptions {
        connect_timeout: defaults.connect_timeout.min(timeout),
        request_timeout: timeout,
        read_timeout: defaults.read_timeout.min(timeout),
        pool_max_idle_per_host: defaults
            .pool_max_idle_per_host
            .max(args.max_in_flight as usize),
        ..defaults
    };
    Ok((fetch, remote))
}

/// `500ms`, `10s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let value: f64 = number
        .parse()
        .with_context(|| format!("{text:?}: expected a duration like 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        other => bail!("{text:?}: unknown unit {other:?} (use ms, s or m)"),
    };
    Duration::try_from_secs_f64(seconds).with_context(|| format!("{text:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "10h", "-1s", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
