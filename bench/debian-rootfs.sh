#!/usr/bin/env bash
# Builds the benchmark's real distribution image: a Debian bookworm minbase userland with python3 and numpy
# (about 330 MB unpacked), written as one tar (numeric owners, xattrs) to OUT. The tar is cached: an existing OUT
# is kept, so reruns of the benchmark cost nothing here.
#
#   bench/debian-rootfs.sh OUT.tar
#
# The packages come from the Debian mirror this machine's apt is configured with (the first `URIs:` of a deb822
# source, or the first `deb` line of sources.list), so the benchmark needs no address of its own.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

[[ $# -eq 1 ]] || die "usage: $0 OUT.tar"
out=$1
if [[ -s $out ]]; then
    exit 0
fi
require_root "debootstrap creates device nodes and files owned by other users"
ensure_packages debootstrap

mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
    [[ -n $mirror ]] && break
done
if [[ -z $mirror && -f /etc/apt/sources.list ]]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' \
        /etc/apt/sources.list)
fi
[[ -n $mirror ]] || die "no Debian mirror found in /etc/apt/sources.list(.d); the real-image benchmark needs one"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/hydrate-debootstrap.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "debootstrap: bookworm minbase + python3 + numpy from $mirror (a minute or two)"
debootstrap --variant=minbase --include=python3,python3-numpy bookworm "$work/root" "$mirror" \
    >"$work/log" 2>&1 || { tail -20 "$work/log" >&2; die "debootstrap failed (log above)"; }
# Nothing of the build host's state belongs in the image.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* "$work/root/var/log/"*
mkdir -p "$(dirname "$out")"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$work/root" -cf "$out.part" .
mv "$out.part" "$out"
say "real distribution image: $(du -sh "$out" | cut -f1) tar at $out"
