//! `hydrate mount`, `umount`, `status`, `upgrade` and `abort`: the command-line face of the mount runtime
//! (crate `hydrate-mountd`) and of its control protocol (crate `hydrate-control`).
//!
//! `mount` turns its arguments into a [`MountSpec`] and validates all of it before a daemon starts, so a bad
//! option, store address, missing credentials or a missing mount point fail here with nothing left behind.

use crate::cli::{AbortArgs, MountArgs, StatusArgs, UmountArgs, UpgradeArgs};
use anyhow::{Context, Result};
use hydrate_control::mount::supervisor_sockets;
use hydrate_control::MountClient;
use hydrate_mountd::{launch, CacheSpec, FetchSpec, MountSpec, VolumeSpec};
use hydrate_units::{parse_duration, parse_size};

/// The validated spec of `hydrate mount ARGS`.
pub fn spec_from_args(a: &MountArgs) -> Result<MountSpec> {
    let size = |flag: &'static str, text: &str| parse_size(text).with_context(|| flag.to_owned());
    let duration =
        |flag: &'static str, text: &str| parse_duration(text).with_context(|| flag.to_owned());
    let mut spec = MountSpec::new(&a.store, &a.image, &a.mountpoint)?;
    spec.cache = CacheSpec {
        dir: a.cache_dir.clone(),
        size: size("--cache-size", &a.cache_size)?,
    };
    spec.log_file = a.log_file.clone();
    spec.threads = a.threads;
    // Kernel mode has no passthrough (erofs caches the data); the flag is implied.
    spec.passthrough = !a.no_passthrough && !a.kernel;
    spec.kernel = a.kernel;
    spec.private = a.private;
    spec.fetch = FetchSpec {
        timeout: duration("--fetch-timeout", &a.fetch_timeout)?,
        read_deadline: duration("--read-deadline", &a.read_deadline)?,
        max_in_flight: a.max_in_flight,
        memory_limit: size("--memory-limit", &a.memory_limit)?,
        min_request_bytes: a.min_request_bytes,
    };
    spec.volume = VolumeSpec {
        readahead: size("--readahead", &a.readahead)?,
        dir_prefetch: size("--dir-prefetch", &a.dir_prefetch)?,
        replay_plan: !a.no_prefetch,
        elf_prefetch: size("--elf-prefetch", &a.elf_prefetch)?,
        fill_budget: size("--fill-budget", &a.fill_budget)?,
    };
    spec.metrics = match &a.metrics {
        None => None,
        Some(text) => Some(text.parse().with_context(|| {
            format!("--metrics {text:?}: expected IP:PORT, e.g. 127.0.0.1:9100")
        })?),
    };
    spec.record_trace = a.record_trace.clone();
    spec.test_store_latency_ms = a.test_store_latency_ms;
    spec.validate()?;
    Ok(spec)
}

/// `log_filter`: what the daemon logs (its processes get it as HYDRATE_LOG, as `-v` gave it to us).
pub fn run(args: MountArgs, log_filter: &str) -> Result<()> {
    let spec = spec_from_args(&args)?;
    if args.foreground {
        return launch::run_foreground(spec);
    }
    let program = std::env::current_exe().context("locating the hydrate binary")?;
    let env = [("HYDRATE_LOG".to_owned(), log_filter.to_owned())];
    launch::mount(&spec, &program, &env)
}

pub fn umount(args: UmountArgs) -> Result<()> {
    launch::unmount(&args.mountpoint, args.lazy)
}

pub fn status(args: StatusArgs) -> Result<()> {
    let Some(mountpoint) = &args.mountpoint else {
        return list_mounts();
    };
    let client = MountClient::for_mountpoint(mountpoint)?;
    let context = || format!("status of {}", mountpoint.display());
    if args.metrics {
        print!(
            "{}",
            client.metrics().with_context(context)?.to_prometheus()
        );
        return Ok(());
    }
    let info = client.info().with_context(context)?;
    if args.json {
        let metrics = client.metrics().with_context(context)?;
        let both = serde_json::json!({ "info": info, "metrics": metrics });
        println!("{both}");
        return Ok(());
    }
    print!("{}", info.to_lines());
    for m in client.metrics().with_context(context)?.metrics {
        println!("hydrate_{} {}", m.name, m.value);
    }
    Ok(())
}

fn list_mounts() -> Result<()> {
    let mut found = 0;
    for socket in supervisor_sockets().context("listing /run/hydrate")? {
        // A socket nobody answers on is left by a daemon that died; skip it.
        let Ok(info) = MountClient::at_socket(socket).info() else {
            continue;
        };
        found += 1;
        let s = &info.supervisor;
        let w = info.worker.as_ref();
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!(
            "{}  image={} store={} pid={} worker={} generation={} restarts={} in_flight={} oldest_ms={} \
cache_used={} cache={}",
            info.mountpoint.display(),
            opt(w.map(|w| w.image.clone())),
            opt(w.map(|w| w.store.clone())),
            s.pid,
            opt(s.worker_pid.map(|p| p.to_string())),
            s.generation,
            s.restarts,
            opt(w.map(|w| w.requests_in_flight.to_string())),
            opt(w.map(|w| w.oldest_request_ms.to_string())),
            opt(w.map(|w| w.cache_used_bytes.to_string())),
            opt(w.map(|w| w.cache_dir.display().to_string())),
        );
    }
    if found == 0 {
        println!("no hydrate mounts");
    }
    Ok(())
}

pub fn upgrade(args: UpgradeArgs) -> Result<()> {
    let binary = match &args.binary {
        Some(bin) => {
            Some(std::fs::canonicalize(bin).with_context(|| format!("binary {}", bin.display()))?)
        }
        None => None,
    };
    let client = MountClient::for_mountpoint(&args.mountpoint)?;
    let generation = client
        .upgrade(binary)
        .with_context(|| format!("upgrading {}", args.mountpoint.display()))?;
    println!("{}: ok generation={generation}", args.mountpoint.display());
    Ok(())
}

pub fn abort(args: AbortArgs) -> Result<()> {
    let (mp, id) = launch::abort(&args.mountpoint)?;
    println!(
        "{}: connection {id} aborted; accesses now fail (ECONNABORTED, ENOTCONN) until it is unmounted",
        mp.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str], dir: &std::path::Path) -> Result<MountSpec> {
        let store = dir.join("store");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        let mut argv = vec![
            "hydrate".to_owned(),
            "mount".into(),
            "--store".into(),
            store.display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv.extend(["app:1".into(), dir.join("mnt").display().to_string()]);
        let crate::cli::Command::Mount(args) = crate::cli::Args::parse_from(argv).command else {
            unreachable!()
        };
        spec_from_args(&args)
    }

    #[test]
    fn the_command_line_defaults_are_the_spec_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let from_cli = parse(&[], dir.path()).unwrap();
        let mut plain = MountSpec::new(&from_cli.store, "app:1", &dir.path().join("mnt")).unwrap();
        plain.store = from_cli.store.clone();
        assert_eq!(from_cli, plain);
    }

    #[test]
    fn kernel_mode_implies_no_passthrough() {
        let dir = tempfile::tempdir().unwrap();
        let spec = parse(&["--kernel"], dir.path()).unwrap();
        assert!(spec.kernel);
        assert!(!spec.passthrough);
        assert!(!parse(&[], dir.path()).unwrap().kernel);
    }

    #[test]
    fn bad_options_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        for (args, want) in [
            (&["--cache-size", "lots"][..], "--cache-size"),
            (&["--fetch-timeout", "soon"][..], "--fetch-timeout"),
            (&["--memory-limit", "1M"][..], "--memory-limit"),
            (&["--metrics", "localhost"][..], "--metrics"),
            (&["--readahead", "x"][..], "--readahead"),
            (&["--kernel", "--private"][..], "--private"),
        ] {
            let err = format!("{:#}", parse(args, dir.path()).unwrap_err());
            assert!(err.contains(want), "{want} not in {err}");
        }
    }
}
