#!/usr/bin/env bash
# hydrate demo: image a real directory (this machine's Python standard library), mount it lazily, run a real
# workload on the mount, and show how little of the image the workload made hydrate fetch.
#
#   sudo scripts/demo.sh
#
# Everything lives in a temporary directory under /var/tmp that is unmounted and removed at exit, also when a
# step fails (the script then exits non-zero).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

require_root "hydrate mounts a FUSE file system"
# build-essential/pkg-config: C parts of the dependencies (zstd); python3: the directory imaged and the workload.
# protobuf-compiler: `protoc` builds the containerd snapshotter's gRPC bindings (crate containerd-snapshots).
ensure_packages build-essential pkg-config protobuf-compiler python3 coreutils util-linux
ensure_fuse
ensure_cargo

cd "$repo"
say "building hydrate (release)"
cargo build --release -p hydrate
hydrate="$(target_dir)/release/hydrate"

# The system interpreter and its own standard library, so the mounted copy matches the interpreter exactly.
python=/usr/bin/python3
[[ -x $python ]] || python="$(command -v python3)"
stdlib="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
[[ -f $stdlib/os.py ]] || die "no Python standard library at $stdlib"

work="$(mktemp -d /var/tmp/hydrate-demo.XXXXXX)"
store="$work/store"
mnt="$work/mnt"
cache="$work/cache"
cleanup() {
    local status=$?
    if ! unmount_hydrate "$hydrate" "$mnt"; then
        echo "could not unmount $mnt; leaving $work in place" >&2
        exit 1
    fi
    rm -rf -- "$work"
    if ((status != 0)); then
        echo "demo FAILED (exit $status)" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building an image of $stdlib into the store $store"
"$hydrate" build "$stdlib" --store "$store" --tag python-stdlib:1
"$hydrate" inspect --store "$store" python-stdlib:1

say "mounting it on $mnt (cache $cache)"
mkdir -p "$mnt"
# The background fill is off: the demo shows what the workload alone makes hydrate fetch (a mount with the
# defaults would also bring this 17 MB image in whole, in the background, see README "Prefetch").
"$hydrate" mount --store "$store" python-stdlib:1 "$mnt" --cache-dir "$cache" --fill-budget 0
"$hydrate" status "$mnt" | grep -E '^(mountpoint|image|pid|cache_dir)='
echo "visible at once: $(find "$mnt" -type f | wc -l) files, $(du -sh --apparent-size "$mnt" | cut -f1) (nothing fetched yet)"

say "workload: $python imports and uses modules from the mounted standard library"
PYTHONDONTWRITEBYTECODE=1 "$python" -s - "$mnt" <<'PY'
import sys

mnt = sys.argv[1]
sys.path.insert(0, mnt)
before = set(sys.modules)

import argparse, asyncio, base64, dataclasses, decimal, email.parser, email.policy, http.client, json, logging
import textwrap, urllib.parse

assert json.loads(json.dumps({"sizes": list(range(10)), "name": "hydrate"}))["name"] == "hydrate"
msg = email.parser.Parser(policy=email.policy.default).parsestr(
    "From: a@example.com\nTo: b@example.com\nSubject: lazy\n\nfetched on touch\n")
assert msg["subject"] == "lazy" and msg.get_content().strip() == "fetched on touch"

async def answer():
    await asyncio.sleep(0.01)
    return 42

assert asyncio.run(answer()) == 42
assert urllib.parse.urlsplit("https://example.com/a?b=c").query == "b=c"
assert http.client.HTTPConnection("example.com").host == "example.com"
assert str(decimal.Decimal("1.1") + decimal.Decimal("2.2")) == "3.3"
assert base64.b64decode(base64.b64encode(b"hydrate")) == b"hydrate"
Point = dataclasses.make_dataclass("Point", ["x", "y"])
assert Point(1, 2).y == 2
parser = argparse.ArgumentParser(prog="demo")
parser.add_argument("--n", type=int)
assert parser.parse_args(["--n", "3"]).n == 3
assert textwrap.shorten("a b c d e f", width=7) == "a [...]"
logging.getLogger("demo").debug("unused")

new = sorted(set(sys.modules) - before)
def where(name):
    mod = sys.modules[name]
    spec = getattr(mod, "__spec__", None)
    if spec is not None and spec.origin in ("frozen", "built-in"):
        return None
    return getattr(mod, "__file__", None)
files = {m: where(m) for m in new}
from_mount = [m for m, f in files.items() if f and f.startswith(mnt + "/")]
# Extension modules (lib-dynload) are found through the interpreter's own path; any other source module must
# have come from the mount, or the workload did not exercise hydrate.
elsewhere = [(m, f) for m, f in files.items()
             if f and not f.startswith(mnt + "/") and "/lib-dynload/" not in f]
if elsewhere:
    sys.exit(f"modules imported from outside the mount: {elsewhere[:5]}")
if len(from_mount) < 20:
    sys.exit(f"only {len(from_mount)} modules came from the mount: {from_mount}")
print(f"imported {len(from_mount)} modules from the mount (json, email, http.client, asyncio, ...); all checks passed")
PY

say "sha256 of files read through the mount vs the originals"
files=(os.py json/__init__.py email/message.py asyncio/base_events.py http/client.py pydoc_data/topics.py)
present=()
for f in "${files[@]}"; do
    [[ -f $stdlib/$f ]] && present+=("$f")
done
(cd "$stdlib" && sha256sum -- "${present[@]}") | (cd "$mnt" && sha256sum --check --strict -)

say "what the workload cost"
metrics="$("$hydrate" status --metrics "$mnt")"
# Counters absent from the output are zero (the daemon may omit idle ones); store_bytes_read must be there.
grep -q '^hydrate_store_bytes_read ' <<<"$metrics" || die "the daemon exports no metric hydrate_store_bytes_read"
metric() { awk -v name="hydrate_$1" '$1 == name { v = $2 } END { print v + 0 }' <<<"$metrics"; }
fetched="$(metric store_bytes_read)"
requests=$(($(metric store_range_requests) + $(metric store_get_requests)))
stored="$(find "$store/blobs" "$store/manifests" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')"
logical="$(find "$stdlib" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')"
awk -v f="$fetched" -v r="$requests" -v s="$stored" -v l="$logical" 'BEGIN {
    printf "image: %.1f MB of files, %.1f MB in the store (blobs + manifest)\n", l / 1e6, s / 1e6
    printf "fetched from the store: %.2f MB in %d requests = %.1f%% of the stored image\n", f / 1e6, r, 100 * f / s
}'

say "unmounting"
"$hydrate" umount "$mnt"
if is_mounted "$mnt"; then die "$mnt is still mounted after hydrate umount"; fi
echo "demo OK"
