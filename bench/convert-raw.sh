#!/bin/bash
# Benchmark: `vimg convert` raw -> raw against `qemu-img convert` and
# `cp --sparse=always` on the same source: a 2 GiB sparse raw image holding
# 1 GiB of data in 1 MiB blocks, one in eight of them written zeros (which a
# sparse-aware copy must turn back into holes). Reports each tool's best wall
# and CPU time over RUNS interleaved runs, the ratios vimg/qemu-img and
# vimg/cp, and the allocated size of each target. Goals: vimg <= 1.0x
# qemu-img, <= 1.2x cp, allocation <= qemu-img's.
#
# Usage: bench/convert-raw.sh [BUILD_DIR]   (default: build)
# Environment: TMPDIR (where the 3 GiB of scratch files go), RUNS (default 5).
# Timings are warm-cache: the source is read once before the first run.
set -eu
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC_ROOT/build}
VIMG=$BUILD/tools/vimg
RUNS=${RUNS:-5}
for tool in qemu-img python3 cp; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$VIMG" ] || { echo "vimg not built at $VIMG" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/vimg-bench.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
SRC=$DIR/src.raw

python3 - "$SRC" <<'EOF'
import os, sys
MiB = 1 << 20
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 2048 * MiB)
zeros = bytes(MiB)
for i in range(1024):
    os.pwrite(fd, zeros if i % 8 == 0 else os.urandom(MiB), i * 2 * MiB)
os.close(fd)
EOF
cat "$SRC" >/dev/null

# Runs are interleaved (one of each tool per round) so that load from other
# processes hits every tool alike; each tool's best wall time and best CPU time
# (user + system) count.
TOOLS=(qemu_img vimg cp)
set_cmd() {
    case $1 in
    qemu_img) CMD=(qemu-img convert -f raw -O raw "$SRC" "$DIR/out.raw") ;;
    vimg) CMD=("$VIMG" convert -f raw -O raw "$SRC" "$DIR/out.raw") ;;
    cp) CMD=(cp --sparse=always "$SRC" "$DIR/out.raw") ;;
    esac
}
alloc() { stat -c %b "$1" | awk '{ printf "%.1f MiB", $1 * 512 / 1048576 }'; }
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a < b) ? a : b }'; }

declare -A WALL CPU ALLOC
for ((round = 0; round < RUNS; round++)); do
    for tool in "${TOOLS[@]}"; do
        rm -f "$DIR/out.raw"
        set_cmd "$tool"
        /usr/bin/time -f "%e %U %S" -o "$DIR/time" "${CMD[@]}" >/dev/null 2>&1 ||
            { echo "$tool failed" >&2; exit 1; }
        read -r wall user sys <"$DIR/time"
        WALL[$tool]=$(min "$wall" "${WALL[$tool]:-}")
        CPU[$tool]=$(min "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" "${CPU[$tool]:-}")
        if [ "$round" = 0 ]; then
            cmp -s "$SRC" "$DIR/out.raw" || { echo "$tool: target differs from the source" >&2; exit 1; }
            ALLOC[$tool]=$(alloc "$DIR/out.raw")
        fi
    done
done

echo "source: 2 GiB raw, $(alloc "$SRC") allocated; best of $RUNS interleaved runs (warm cache)"
for tool in "${TOOLS[@]}"; do
    printf '%-9s wall %6.2f s   cpu %6.2f s   target allocated %s\n' "$tool" "${WALL[$tool]}" \
        "${CPU[$tool]}" "${ALLOC[$tool]}"
done
awk -v vw="${WALL[vimg]}" -v qw="${WALL[qemu_img]}" -v cw="${WALL[cp]}" \
    -v vc="${CPU[vimg]}" -v qc="${CPU[qemu_img]}" -v cc="${CPU[cp]}" 'BEGIN {
    printf "wall: vimg/qemu-img %.2fx (goal <= 1.00)   vimg/cp %.2fx (goal <= 1.20)\n", vw / qw, vw / cw
    printf "cpu:  vimg/qemu-img %.2fx                  vimg/cp %.2fx\n", vc / qc, vc / cc }'
