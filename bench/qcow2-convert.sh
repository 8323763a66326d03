#!/bin/bash
# Benchmark: qcow2 through `vimg convert` and `vimg bench` against qemu-img.
# The source is a 2 GiB raw image holding 1 GiB of data in 1 MiB blocks
# (one in eight written zeros, the rest half random bytes, half base64 text
# that zlib shrinks to about 3/4). Measured, each as the best wall time over
# RUNS interleaved runs and the ratio vimg/qemu-img:
#   convert raw -> qcow2, qcow2 -> raw, raw -> qcow2 -c (zlib; with the
#   ratio of the target sizes), a 3-deep backing chain (base with the 1 GiB,
#   two overlays with 128 MiB each) -> raw;
#   bench: 4 KiB writes to a new qcow2 and 4 KiB reads of a fully allocated
#   one, 32 in flight (-d 32), at offsets stepping by 7919 blocks (prime, so
#   the order is scattered), as ops/s.
# Goals: convert raw<->qcow2 <= 0.9x, -c <= 0.5x with size <= 1.02x,
# chain <= 1.0x, bench ops/s >= qemu-img's.
#
# Usage: bench/qcow2-convert.sh [BUILD_DIR]   (default: build)
# Environment: TMPDIR (about 8 GiB of scratch files), RUNS (default 3),
#              COUNT (bench requests per run, default 100000).
# Timings are warm-cache. On a loaded machine wall times mostly measure the
# scheduler: read the CPU-time columns (user + system) beside them.
set -eu
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC_ROOT/build}
VIMG=$BUILD/tools/vimg
RUNS=${RUNS:-3}
COUNT=${COUNT:-100000}
for tool in qemu-img qemu-io python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$VIMG" ] || { echo "vimg not built at $VIMG" >&2; exit 1; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
DIR=$(mktemp -d "${TMPDIR:-/tmp}/vimg-bench.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
SRC=$DIR/src.raw

python3 - "$SRC" <<'EOF'
import base64, os, sys
MiB = 1 << 20
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 2048 * MiB)
for i in range(1024):
    if i % 8 == 0:
        block = bytes(MiB)
    elif i % 2:
        block = os.urandom(MiB)
    else:
        block = base64.b64encode(os.urandom(MiB * 3 // 4))
    os.pwrite(fd, block, i * 2 * MiB)
os.close(fd)
EOF
cat "$SRC" >/dev/null

# The chain: base = the source as qcow2, then two overlays of 128 x 1 MiB writes each.
qemu-img convert -f raw -O qcow2 "$SRC" "$DIR/base.qcow2"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$DIR/mid.qcow2"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$DIR/top.qcow2"
for layer in mid:3 top:7; do
    for ((i = 0; i < 128; i++)); do
        echo "write -P $((i % 250 + 1)) $(( (i * 15 + ${layer#*:}) * 1048576 )) 1M"
    done | qemu-io -f qcow2 "$DIR/${layer%:*}.qcow2" >/dev/null
done
cp "$DIR/base.qcow2" "$DIR/src.qcow2"

min() { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a < b) ? a : b }'; }

# timed NAME TOOL CMD...: runs CMD, keeps the best wall time in WALL[NAME,TOOL] and the
# best CPU time (user + system) in CPU[NAME,TOOL].
declare -A WALL CPU SIZE
timed() {
    local name=$1 tool=$2 wall user sys
    shift 2
    /usr/bin/time -f "%e %U %S" -o "$DIR/time" "$@" >/dev/null 2>&1 ||
        { echo "$name: $tool failed: $*" >&2; exit 1; }
    read -r wall user sys <"$DIR/time"
    WALL[$name,$tool]=$(min "$wall" "${WALL[$name,$tool]:-}")
    CPU[$name,$tool]=$(min "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" \
                           "${CPU[$name,$tool]:-}")
}

# convert_case NAME CHECK_REF ARGS...: both tools convert ARGS... to $DIR/out.TOOL.
convert_case() {
    local name=$1 ref=$2 out order=(qemu-img vimg)
    shift 2
    # Each round starts with the other tool, and dirty pages of the last
    # target are written back before a run, so that neither pays for the other.
    [ $((round % 2)) = 1 ] && order=(vimg qemu-img)
    for tool in "${order[@]}"; do
        out=$DIR/out.$tool
        rm -f "$out"
        sync
        if [ "$tool" = vimg ]; then
            timed "$name" "$tool" "$VIMG" convert "$@" "$out"
        else
            timed "$name" "$tool" qemu-img convert "$@" "$out"
        fi
        if [ "$round" = 0 ]; then
            qemu-img compare -q "$ref" "$out" ||
                { echo "$name: $tool's target differs from $ref" >&2; exit 1; }
            SIZE[$name,$tool]=$(stat -c %s "$out")
        fi
    done
    rm -f "$DIR"/out.*
}

for ((round = 0; round < RUNS; round++)); do
    convert_case raw-to-qcow2 "$SRC" -f raw -O qcow2 "$SRC"
    convert_case qcow2-to-raw "$SRC" -f qcow2 -O raw "$DIR/src.qcow2"
    convert_case "compress(-c)" "$SRC" -c -f raw -O qcow2 "$SRC"
    convert_case chain-to-raw "$DIR/top.qcow2" -f qcow2 -O raw "$DIR/top.qcow2"
done

# best_ops TOOL MODE IMAGE: the best ops/s over RUNS runs, from "Run completed in X
# seconds." MODE -w writes to a new image each run.
best_ops() {
    local tool=$1 mode=$2 img=$3 best=0 secs ops i cmd
    cmd=(qemu-img)
    [ "$tool" = vimg ] && cmd=("$VIMG")
    for ((i = 0; i < RUNS; i++)); do
        if [ "$mode" = "-w" ]; then
            rm -f "$img"
            qemu-img create -q -f qcow2 "$img" 1G
        fi
        secs=$("${cmd[@]}" bench $mode -f qcow2 -d 32 -s 4096 -S $((7919 * 4096)) \
               -c "$COUNT" "$img" | sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p')
        [ -n "$secs" ] || { echo "failed: $tool bench $mode $img" >&2; exit 1; }
        ops=$(awk -v c="$COUNT" -v s="$secs" 'BEGIN { printf "%d", (s > 0) ? c / s : 0 }')
        [ "$ops" -gt "$best" ] && best=$ops
    done
    echo "$best"
}

qemu-img create -q -f qcow2 -o preallocation=full "$DIR/full.qcow2" 1G
declare -A OPS
for tool in qemu-img vimg; do
    OPS[write,$tool]=$(best_ops "$tool" -w "$DIR/new.qcow2")
    OPS[read,$tool]=$(best_ops "$tool" "" "$DIR/full.qcow2")
done

echo "source: 2 GiB raw with 1 GiB data; best of $RUNS interleaved runs (warm cache)"
echo "load average at start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg)" \
     "($(nproc) CPUs)"
printf '%-14s %10s %10s %7s   %-8s %9s %9s %7s\n' case qemu-img vimg ratio goal \
    "cpu q-img" "cpu vimg" ratio
for name in raw-to-qcow2 qcow2-to-raw "compress(-c)" chain-to-raw; do
    case $name in
    raw-to-qcow2|qcow2-to-raw) goal="<= 0.90" ;;
    compress*) goal="<= 0.50" ;;
    *) goal="<= 1.00" ;;
    esac
    awk -v n="$name" -v q="${WALL[$name,qemu-img]}" -v v="${WALL[$name,vimg]}" -v g="$goal" \
        -v qc="${CPU[$name,qemu-img]}" -v vc="${CPU[$name,vimg]}" 'BEGIN {
        printf "%-14s %9.2fs %9.2fs %6.2fx   %-8s %8.2fs %8.2fs %6.2fx\n", n, q, v, v / q, g,
               qc, vc, (qc > 0) ? vc / qc : 0 }'
done
awk -v q="${SIZE[compress(-c),qemu-img]}" -v v="${SIZE[compress(-c),vimg]}" \
    'BEGIN { printf "%-14s %10d %10d %6.3fx   <= 1.02\n", "-c file size", q, v, v / q }'
for rw in write read; do
    awk -v n="bench $rw" -v q="${OPS[$rw,qemu-img]}" -v v="${OPS[$rw,vimg]}" \
        'BEGIN { printf "%-14s %8d/s %8d/s %6.2fx   >= 1.00 (ops/s)\n", n, q, v, v / q }'
done
