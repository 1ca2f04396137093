#!/usr/bin/env bash
# The hydrate benchmark in one command: builds the release binaries, then measures build throughput, cold and
# hot sequential reads (passthrough and not), cold and hot 4 KiB random reads, a metadata walk, mount time and
# RSS by image size, a cold start over an emulated link with and without a learned prefetch plan, and a
# container start from a registry (skopeo + umoci + runc vs hydrate rootfs + runc), kernel mode (erofs) against
# FUSE mode, against native ext4 (or a full download) in the same run; then plots the results
# (docs/benchmarks.md).
#
#   sudo bench/run.sh                      # full run: 1 GiB file + 3000 small files, 2 GB cold start, images of
#                                          # 10k/100k/1M files (20-30 minutes)
#   sudo bench/run.sh --quick              # 128 MiB + 300 files, 500 random reads, 256 MiB cold start, 10k-file
#                                          # images (a few minutes)
#   sudo bench/run.sh --plot out.png       # also plot the results (installs matplotlib into target/bench/venv)
#   sudo bench/run.sh --json out.json      # also write the results as JSON (default: target/bench/results.json)
#
# Any other option goes to hydrate-bench (see `target/release/hydrate-bench --help`), e.g. --big-size 2G,
# --small-files 5000, --random-reads 4000, --repeats 5, --workdir /var/tmp. Later options override earlier ones,
# so `--quick --big-size 256M` works.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

# The full run includes the worker-takeover section (issue 5) and the start-up section (issue 4); `--takeover-only`
# and `--startup-only` measure just one of them.
args=(--takeover --startup --containers --real-image --kernel)
json=""
plot=""
while (($#)); do
    case $1 in
        --quick) args+=(--big-size 128M --small-files 300 --random-reads 500 --walk-files 10000
                        --scale-files 10000 --startup-image-size 256M --container-image-size 256M) ;;
        --plot) [[ $# -ge 2 ]] || die "--plot needs a path"; plot=$2; shift ;;
        --json) [[ $# -ge 2 ]] || die "--json needs a path"; json=$2; shift ;;
        --json=*) json=${1#--json=} ;;
        -h | --help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1") ;;
    esac
    shift
done

require_root "the benchmark mounts and drops the page cache between measurements"
ensure_fuse
ensure_cargo
# `protoc` builds the containerd snapshotter's gRPC bindings (crate containerd-snapshots).
ensure_packages protobuf-compiler
# The container section also starts containers through containerd (ctr + the hydrate snapshotter).
ensure_packages containerd
cd "$repo"
say "building release binaries"
cargo build --release -p hydrate -p hydrate-bench
target="$(target_dir)"
if [[ -z $json ]]; then
    mkdir -p "$target/bench"
    json="$target/bench/results.json"
fi
say "running the benchmark"
"$target/release/hydrate-bench" --hydrate "$target/release/hydrate" "${args[@]}" --json "$json"
if [[ -n $plot ]]; then
    say "plotting to $plot"
    venv="$target/bench/venv"
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
    "$venv/bin/python" -c 'import matplotlib' 2>/dev/null || "$venv/bin/pip" install --quiet matplotlib
    "$venv/bin/python" bench/plot.py "$json" "$plot"
fi
