#!/usr/bin/env bash
# Installs the servers hydrate's remote-store tests run against, only what is missing (idempotent):
#   - Debian packages: nginx (HTTP store, reverse proxy), docker-registry + skopeo + umoci (OCI registry store,
#     container conversion checked against umoci unpack), runc (runs converted images from `hydrate rootfs`;
#     crun refuses these machines' hybrid cgroup layout), podman (runs the same root filesystems with
#     `podman run --rootfs`, on runc), apache2-utils (htpasswd for the registry's auth test), containerd
#     (1.6, with `ctr`: the `hydrate snapshotter` tests run their own containerd against it), protobuf-compiler
#     (`protoc`, which the containerd-snapshots crate's gRPC bindings need at build time), erofs-utils
#     (`fsck.erofs`, which checks and extracts the images hydrate-erofs writes), pigz (hydrate-seekable
#     indexes layers pigz compressed, as many image builders do);
#   - Garage (a distributed S3 store, crates.io `garage`), pinned to an exact version, built with its own
#     target directory under /var/tmp so it never locks the workspace's. It takes ~13 minutes on 2 cores the
#     first time; afterwards `garage` is on PATH and this step is skipped.
# The tests start every server themselves on 127.0.0.1 in temporary directories: no system service is enabled.
#
#   sudo scripts/install-test-deps.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

GARAGE_VERSION=2.5.0

require_root "it installs Debian packages"
ensure_packages nginx docker-registry skopeo umoci runc podman apache2-utils containerd protobuf-compiler \
    erofs-utils pigz
# Debian starts the packaged services on install; the tests run their own instances on free ports, so stop
# these to keep ports 80 and 5000 free and the machine quiet. Never fails the setup.
for service in nginx docker-registry containerd; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
        systemctl disable "$service" >/dev/null 2>&1 || true
    fi
done

ensure_cargo
if ! command -v garage >/dev/null; then
    cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
    if [[ -x $cargo_bin/garage ]]; then
        export PATH="$cargo_bin:$PATH"
    else
        # Only the features the tests use (sqlite metadata, bundled C libraries): no LMDB, K2V or Prometheus
        # exporter, which cuts the build from ~20 to ~13 minutes on 2 busy cores.
        say "building garage $GARAGE_VERSION (cargo install, about 13 minutes on 2 cores)"
        CARGO_TARGET_DIR=/var/tmp/hydrate-garage-build \
            cargo install garage --locked --version "=$GARAGE_VERSION" --no-default-features \
            --features bundled-libs,sqlite
    fi
fi
garage --version >/dev/null || die "garage is not runnable after installing it"
say "test servers ready: $(command -v nginx || echo /usr/sbin/nginx), $(command -v garage), \
$(command -v docker-registry || echo /usr/bin/docker-registry)"
