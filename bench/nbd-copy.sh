#!/bin/bash
# Benchmark: nbdcopy reading a raw image served by vimg-nbd against the same
# image served by qemu-nbd, both read-only on unix sockets (and the same
# content as a qcow2 image, the issue's goal: ratio >= 1.2): a SIZE image that
# is 60% data (6 MiB extents every 10 MiB) and 40% holes, copied to null: (the servers and
# the wire alone) and to a file. Then the other way: nbdcopy writing the image
# into a writable export of each server. Reports the best of RUNS runs as
# MiB/s of virtual size for each server and the ratio vimg-nbd/qemu-nbd.
# Goal: ratio >= 1.0.
#
# Usage: bench/nbd-copy.sh [BUILD_DIR]   (default: build)
# Environment: TMPDIR (scratch, about 3 x SIZE), RUNS (default 3), SIZE (default 1G).
set -eu
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC_ROOT/build}
VIMG_NBD=$BUILD/tools/vimg-nbd
RUNS=${RUNS:-3}
SIZE=${SIZE:-1G}
for c in qemu-img qemu-io qemu-nbd nbdcopy; do
    command -v $c >/dev/null || { echo "missing $c" >&2; exit 1; }
done
[ -x "$VIMG_NBD" ] || { echo "vimg-nbd not built at $VIMG_NBD" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/vimg-bench.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
IMG=$DIR/img.raw
qemu-img create -q -f raw "$IMG" "$SIZE"
BYTES=$(stat -c %s "$IMG")
cmds=()
for ((off = 0; off + 6291456 <= BYTES; off += 10485760)); do
    cmds+=(-c "write -P $(( (off >> 20) % 250 + 1 )) $off 6M")
done
qemu-io -f raw "${cmds[@]}" "$IMG" >/dev/null

# serve NAME TOOL ARGS...: starts a server on $DIR/NAME.sock.
serve() {
    local name=$1 tool=$2; shift 2
    "$tool" -t -k "$DIR/$name.sock" "$@" >/dev/null 2>&1 &
    PIDS+=($!)
    for _ in $(seq 200); do [ -S "$DIR/$name.sock" ] && return 0; sleep 0.05; done
    echo "server $name did not start" >&2; exit 1
}
# best_mibs CMD...: the best MiB/s (of BYTES) over RUNS runs of CMD.
best_mibs() {
    local best=0 t0 t1 r i
    for ((i = 0; i < RUNS; i++)); do
        t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
        r=$(awk -v b="$BYTES" -v a="$t0" -v z="$t1" 'BEGIN { printf "%d", b / 1048576 / (z - a) }')
        if [ "$r" -gt "$best" ]; then best=$r; fi
    done
    echo "$best"
}
ratio() { awk -v v="$1" -v q="$2" 'BEGIN { printf "%.2f", (q > 0) ? v / q : 0 }'; }
row() { printf '%-22s %12s %12s %7s\n' "$1" "$2" "$3" "$(ratio "$3" "$2")"; }

serve q qemu-nbd -r -f raw "$IMG"
serve v "$VIMG_NBD" -r -f raw "$IMG"
qemu-img create -q -f raw "$DIR/qw.raw" "$SIZE"
qemu-img create -q -f raw "$DIR/vw.raw" "$SIZE"
serve qw qemu-nbd -f raw "$DIR/qw.raw"
serve vw "$VIMG_NBD" -f raw "$DIR/vw.raw"

printf '%-22s %12s %12s %7s\n' "MiB/s" qemu-nbd vimg-nbd ratio
q=$(best_mibs nbdcopy "nbd+unix:///?socket=$DIR/q.sock" null:)
v=$(best_mibs nbdcopy "nbd+unix:///?socket=$DIR/v.sock" null:)
row "read to null:" "$q" "$v"
q=$(best_mibs nbdcopy "nbd+unix:///?socket=$DIR/q.sock" "$DIR/out.raw")
v=$(best_mibs nbdcopy "nbd+unix:///?socket=$DIR/v.sock" "$DIR/out.raw")
row "read to file" "$q" "$v"
q=$(best_mibs nbdcopy "$IMG" "nbd+unix:///?socket=$DIR/qw.sock")
v=$(best_mibs nbdcopy "$IMG" "nbd+unix:///?socket=$DIR/vw.sock")
row "write from file" "$q" "$v"
q=$(best_mibs nbdcopy --request-size=65536 "nbd+unix:///?socket=$DIR/q.sock" null:)
v=$(best_mibs nbdcopy --request-size=65536 "nbd+unix:///?socket=$DIR/v.sock" null:)
row "read 64k requests" "$q" "$v"
cmp "$IMG" "$DIR/vw.raw" || { echo "vimg-nbd wrote other bytes" >&2; exit 1; }

qemu-img convert -f raw -O qcow2 "$IMG" "$DIR/img.qcow2"
serve q2 qemu-nbd -r -f qcow2 "$DIR/img.qcow2"
serve v2 "$VIMG_NBD" -r -f qcow2 "$DIR/img.qcow2"
q=$(best_mibs nbdcopy "nbd+unix:///?socket=$DIR/q2.sock" null:)
v=$(best_mibs nbdcopy "nbd+unix:///?socket=$DIR/v2.sock" null:)
row "qcow2 read to null:" "$q" "$v"
q=$(best_mibs nbdcopy "nbd+unix:///?socket=$DIR/q2.sock" "$DIR/out.raw")
v=$(best_mibs nbdcopy "nbd+unix:///?socket=$DIR/v2.sock" "$DIR/out.raw")
row "qcow2 read to file" "$q" "$v"
