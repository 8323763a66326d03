#!/bin/bash
# Benchmark: `vimg convert` raw -> vmdk (streamOptimized), raw -> vhdx and
# raw -> vpc against `qemu-img convert` on the same source: a 1 GiB sparse
# raw image holding 512 MiB of data (a mix of compressible system files and
# random bytes) in 1 MiB blocks, with holes between. Reports each tool's best
# wall and CPU time over RUNS interleaved runs, the ratios vimg/qemu-img and
# the target sizes. Goals: streamOptimized <= 0.5x qemu-img's time with the
# output <= 1.02x its size (grains compress in parallel, with libdeflate
# where it is built in); vhdx and vpc <= 1.0x.
#
# Usage: bench/hv-convert.sh [BUILD_DIR]   (default: build)
# Environment: TMPDIR (where 3 GiB of scratch files go), RUNS (default 3).
set -eu
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC_ROOT/build}
VIMG=$BUILD/tools/vimg
RUNS=${RUNS:-3}
command -v qemu-img >/dev/null || { echo "missing qemu-img" >&2; exit 1; }
[ -x "$VIMG" ] || { echo "vimg not built at $VIMG" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/vimg-bench.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
SRC=$DIR/src.raw
# Compressible data: the system's own files, as a disk image would hold them.
find /usr/lib /usr/bin -type f -size +64k 2>/dev/null | head -2000 | xargs cat 2>/dev/null |
    head -c $((384 << 20)) >"$DIR/text" || true
python3 - "$SRC" "$DIR/text" <<'PY'
import os, sys
MiB = 1 << 20
text = open(sys.argv[2], 'rb').read()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 1024 * MiB)
t = 0
for i in range(512):
    if i % 4 == 3:
        block = os.urandom(MiB)
    else:
        block = text[t:t + MiB].ljust(MiB, b'\0'); t = (t + MiB) % max(len(text) - MiB, 1)
    os.pwrite(fd, block, i * 2 * MiB)
os.close(fd)
PY
rm -f "$DIR/text"
cat "$SRC" >/dev/null

min() { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a < b) ? a : b }'; }
declare -A WALL CPU SIZE
CASES=("vmdk -o subformat=streamOptimized" "vhdx" "vpc")
for ((round = 0; round < RUNS; round++)); do
    for c in "${CASES[@]}"; do
        for tool in qemu-img "$VIMG"; do
            key="$c|$(basename "$tool")"
            rm -f "$DIR/out"
            /usr/bin/time -f "%e %U %S" -o "$DIR/time" $tool convert -f raw -O $c "$SRC" \
                "$DIR/out" >/dev/null 2>&1 || { echo "$tool convert -O $c failed" >&2; exit 1; }
            read -r wall user sys <"$DIR/time"
            WALL[$key]=$(min "$wall" "${WALL[$key]:-}")
            CPU[$key]=$(min "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" \
                        "${CPU[$key]:-}")
            if [ "$round" = 0 ]; then
                qemu-img compare -q -f raw "$SRC" "$DIR/out" ||
                    { echo "$tool -O $c: target differs from the source" >&2; exit 1; }
                SIZE[$key]=$(stat -c %s "$DIR/out")
            fi
        done
    done
done

echo "source: 1 GiB raw, 512 MiB data; best of $RUNS interleaved runs (warm cache), $(nproc) CPUs"
for c in "${CASES[@]}"; do
    q="$c|qemu-img"; v="$c|vimg"
    goal=1.00; [ "${c#vmdk}" != "$c" ] && goal=0.50
    awk -v c="$c" -v qw="${WALL[$q]}" -v vw="${WALL[$v]}" -v qc="${CPU[$q]}" -v vc="${CPU[$v]}" \
        -v qs="${SIZE[$q]}" -v vs="${SIZE[$v]}" -v goal="$goal" 'BEGIN {
        printf "-O %s\n", c
        printf "  qemu-img wall %6.2f s  cpu %6.2f s  size %d\n", qw, qc, qs
        printf "  vimg     wall %6.2f s  cpu %6.2f s  size %d\n", vw, vc, vs
        printf "  vimg/qemu-img: wall %.2fx (goal <= %.2f)  cpu %.2fx  size %.3fx\n",
               vw / qw, goal, vc / qc, vs / qs }'
done
