# Shared helpers of scripts/demo.sh, scripts/test.sh and bench/run.sh (sourced, not run).
#
# They install only what is missing, find cargo also under sudo (whose PATH drops ~/.cargo/bin), and fail with
# a message that says what to do.

# shellcheck shell=bash

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# require_root WHY: exits 1 with a clear message unless running as root.
require_root() {
    if [[ ${EUID:-$(id -u)} -ne 0 ]]; then
        die "this needs root ($1); run it with sudo"
    fi
}

# ensure_packages PKG...: apt-get update + install of the Debian packages that are not installed yet.
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ensure_fuse: /dev/fuse must exist (hydrate mounts with mount(2) directly, so no fusermount is needed).
ensure_fuse() {
    if [[ ! -c /dev/fuse ]]; then
        modprobe fuse 2>/dev/null || true
    fi
    [[ -c /dev/fuse ]] || die "/dev/fuse is missing and 'modprobe fuse' did not create it (is this a container without FUSE?)"
}

# ensure_cargo: puts cargo on PATH. Rust is preinstalled on these machines, but sudo's secure_path hides the
# invoking user's ~/.cargo/bin.
ensure_cargo() {
    if command -v cargo >/dev/null; then
        return 0
    fi
    local home dir
    for home in "${CARGO_HOME:-}" "$HOME/.cargo" "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo}"; do
        dir="$home/bin"
        if [[ -n $home && -x $dir/cargo ]]; then
            export PATH="$dir:$PATH"
            # rustup's proxies find the toolchain through RUSTUP_HOME; keep the owner's when running under sudo.
            if [[ -z ${RUSTUP_HOME:-} && -d $home/../.rustup ]]; then
                RUSTUP_HOME="$(cd "$home/../.rustup" && pwd)"
                export RUSTUP_HOME
            fi
            return 0
        fi
    done
    die "cargo not found (Rust is expected to be preinstalled: https://rustup.rs)"
}

# target_dir: where cargo puts binaries for the workspace at the current directory.
target_dir() {
    printf '%s\n' "${CARGO_TARGET_DIR:-$PWD/target}"
}

# is_mounted PATH: whether PATH is a mount point (per /proc/self/mountinfo).
is_mounted() {
    local path
    path="$(realpath -m "$1")"
    awk -v mp="$path" '$5 == mp { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# unmount_hydrate HYDRATE_BIN MOUNTPOINT: hydrate umount, then lazily; never kills anything by name.
unmount_hydrate() {
    local bin=$1 mp=$2
    is_mounted "$mp" || return 0
    if "$bin" umount "$mp"; then
        return 0
    fi
    echo "hydrate umount $mp failed; detaching lazily" >&2
    "$bin" umount --lazy "$mp" || umount -l "$mp" || true
    ! is_mounted "$mp"
}
