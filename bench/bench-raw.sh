#!/bin/bash
# Benchmark: `vimg bench` against `qemu-img bench` on a raw image: 4 KiB
# requests, 32 in flight, at offsets that step by 7919 blocks (prime) and
# wrap around a 256 MiB preallocated image, so every block is hit in a
# scattered order. Reads and writes, with -t none (O_DIRECT, the disk) and
# -t writeback (the page cache), and each aio mode given in AIO. Reports the
# best of RUNS runs as ops/s for each tool and the ratio vimg/qemu-img.
# Goal: ratio >= 1.0 everywhere.
#
# Usage: bench/bench-raw.sh [BUILD_DIR]   (default: build)
# Environment: TMPDIR (scratch space, 256 MiB), RUNS (default 3),
#              COUNT (requests per run, default 200000), AIO (default "threads io_uring").
set -eu
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC_ROOT/build}
VIMG=$BUILD/tools/vimg
RUNS=${RUNS:-3}
COUNT=${COUNT:-200000}
AIO=${AIO:-threads io_uring}
command -v qemu-img >/dev/null || { echo "missing qemu-img" >&2; exit 1; }
[ -x "$VIMG" ] || { echo "vimg not built at $VIMG" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/vimg-bench.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
IMG=$DIR/img.raw
qemu-img create -q -f raw -o preallocation=full "$IMG" 256M

# best_ops TOOL ARGS...: the best ops/s over RUNS runs, from "Run completed in X seconds."
best_ops() {
    local best=0 secs ops i
    for ((i = 0; i < RUNS; i++)); do
        secs=$("$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p')
        [ -n "$secs" ] || { echo "failed: $*" >&2; exit 1; }
        ops=$(awk -v c="$COUNT" -v s="$secs" 'BEGIN { printf "%d", (s > 0) ? c / s : 0 }')
        [ "$ops" -gt "$best" ] && best=$ops
    done
    echo "$best"
}

printf '%-10s %-6s %-9s %12s %12s %7s\n' cache op aio qemu-img vimg ratio
for cache in none writeback; do
    for op in read write; do
        for aio in $AIO; do
            args=(bench -c "$COUNT" -d 32 -s 4k -S $((4096 * 7919)) -t "$cache" -i "$aio"
                  -f raw)
            [ "$op" = write ] && args+=(-w --pattern=0x5a)
            q=$(best_ops qemu-img "${args[@]}" "$IMG")
            v=$(best_ops "$VIMG" "${args[@]}" "$IMG")
            printf '%-10s %-6s %-9s %12s %12s %7s\n' "$cache" "$op" "$aio" "$q" "$v" \
                "$(awk -v a="$v" -v b="$q" 'BEGIN { printf "%.2fx", a / b }')"
        done
    done
done
