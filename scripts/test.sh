#!/usr/bin/env bash
# hydrate's full check: formatting, lints, every test of the workspace (the FUSE tests mount for real, so this
# runs as root), then a short fuzzing smoke run when the fuzz targets exist.
#
#   sudo scripts/test.sh
#
# Exits non-zero on the first failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

require_root "the FUSE tests mount file systems and the cache tests check ownership as root"
# protobuf-compiler: `protoc` builds the containerd snapshotter's gRPC bindings (crate containerd-snapshots).
ensure_packages build-essential pkg-config protobuf-compiler
# The HSM tests copy stubs with rsync -S and check ACLs (e2fsprogs and util-linux: mkfs.ext4, losetup, setpriv),
# and run again on loop-mounted xfs and btrfs (xfsprogs, btrfs-progs).
ensure_packages rsync acl e2fsprogs util-linux xfsprogs btrfs-progs
ensure_fuse
ensure_cargo
# The servers the remote-store tests run against (nginx, an OCI registry, Garage), installed only if missing.
bash "$repo/scripts/install-test-deps.sh"
# Installed: a test that cannot find its server must now fail, not skip.
export HYDRATE_REQUIRE_SERVERS=1
for tool in rustfmt clippy; do
    if ! cargo "${tool/rustfmt/fmt}" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "cargo $tool is missing and there is no rustup to add it"
        say "adding the $tool component"
        rustup component add "$tool"
    fi
done

# Garage is installed by cargo into ~/.cargo/bin.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

cd "$repo"
started=$SECONDS
say "cargo fmt --all --check"
cargo fmt --all --check

say "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

say "cargo test --workspace --no-fail-fast"
# Every test binary runs even after a failure, so one run reports all failures (the exit status stays non-zero).
cargo test --workspace --no-fail-fast

# The HSM tests once more on each other file system the HSM supports (the workspace run above used ext4).
for fs in xfs btrfs; do
    say "HSM tests on $fs: HYDRATE_HSM_FS=$fs cargo test -p hydrate --test hsm"
    HYDRATE_HSM_FS=$fs cargo test -p hydrate --test hsm
done

if [[ -f fuzz/run.sh ]]; then
    say "fuzz smoke run: fuzz/run.sh 20"
    bash fuzz/run.sh 20
else
    say "no fuzz/run.sh: fuzzing smoke run skipped"
fi

say "all checks passed in $((SECONDS - started)) s"
