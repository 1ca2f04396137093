#!/usr/bin/env bash
# Runs each fuzz target for N seconds (default 30): ./fuzz/run.sh [SECONDS] [TARGET...]
# Installs cargo-fuzz if missing. cargo-fuzz needs nightly flags (-Zsanitizer); on a stable toolchain
# RUSTC_BOOTSTRAP=1 unlocks them. Seeds in fuzz/seeds/<target> are copied into the (ignored) corpus.
#
# Sanitizer: none. hydrate-format is #![forbid(unsafe_code)], so AddressSanitizer adds nothing for our code,
# and it misreports inside zstd: cc-rs forwards -Zsanitizer=address to gcc, whose ASan instrumentation does
# not match rustc's LLVM ASan runtime (a global table in ZSTD_selectBtGetAllMatches is reported as
# stack-use-after-scope). Panics, timeouts and the RSS limit are still caught.
set -euo pipefail

secs="${1:-30}"
shift || true
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(manifest chunk layers)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
cd "$here"
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if [ -d "seeds/$t" ]; then
        cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true
    fi
    echo "== fuzzing $t for ${secs}s" >&2
    cargo fuzz run --sanitizer none "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=1024 -max_len=65536
done
