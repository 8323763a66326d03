#!/bin/bash
# Benchmark: 4 KiB random reads at queue depth 64 (fio's nbd engine, one
# connection) from vimg-nbd against qemu-nbd, both serving the same fully
# allocated qcow2 image read-only on unix sockets. Reports the best IOPS of
# RUNS runs of SECS seconds for each server and the ratio vimg-nbd/qemu-nbd,
# and the server CPU time per request.
# Goal: ratio >= 1.0.
#
# Usage: bench/nbd-randread.sh [BUILD_DIR]   (default: build)
# Environment: TMPDIR (scratch, about SIZE), RUNS (default 3), SECS (default 10),
#              SIZE (default 1G), DEPTH (default 64).
set -eu
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC_ROOT/build}
VIMG_NBD=$BUILD/tools/vimg-nbd
RUNS=${RUNS:-3}
SECS=${SECS:-10}
SIZE=${SIZE:-1G}
DEPTH=${DEPTH:-64}
for c in qemu-img qemu-nbd fio; do
    command -v $c >/dev/null || { echo "missing $c" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio has no nbd engine" >&2; exit 1; }
[ -x "$VIMG_NBD" ] || { echo "vimg-nbd not built at $VIMG_NBD" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/vimg-bench.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
# Fully allocated with random data, so that every read goes through the L2 tables to the file.
dd if=/dev/urandom of="$DIR/src.raw" bs=1M count="$(( $(numfmt --from=iec "$SIZE") >> 20 ))" \
    status=none
qemu-img convert -f raw -O qcow2 "$DIR/src.raw" "$DIR/img.qcow2"
rm -f "$DIR/src.raw"
# Warm the page cache: the servers, not the disk, are measured.
cat "$DIR/img.qcow2" >/dev/null

serve() {
    local name=$1 tool=$2; shift 2
    "$tool" -t -r -k "$DIR/$name.sock" "$@" >/dev/null 2>&1 &
    PIDS+=($!)
    eval "${name}_pid=$!"
    for _ in $(seq 200); do [ -S "$DIR/$name.sock" ] && return 0; sleep 0.05; done
    echo "server $name did not start" >&2; exit 1
}
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# run NAME: one fio run against server NAME; updates ${NAME}_best (IOPS) and
# ${NAME}_ticks/${NAME}_ios (server CPU time and requests, summed over runs).
run() {
    local name=$1 pid t0 out iops ios
    eval "pid=\$${name}_pid"
    t0=$(ticks "$pid")
    out=$(fio --name=randread --ioengine=nbd --uri="nbd+unix:///?socket=$DIR/$name.sock" \
              --rw=randread --bs=4k --iodepth="$DEPTH" --runtime="$SECS" --time_based \
              --size="$SIZE" --output-format=terse --terse-version=3 |
          awk -F';' '$1 == "3" { print int($8), int($6 / 4) }')
    set -- $out
    eval "if [ $1 -gt \${${name}_best:-0} ]; then ${name}_best=$1; fi"
    eval "${name}_ticks=\$(( \${${name}_ticks:-0} + $(ticks "$pid") - t0 ))"
    eval "${name}_ios=\$(( \${${name}_ios:-0} + $2 ))"
}

serve q qemu-nbd -f qcow2 "$DIR/img.qcow2"
serve v "$VIMG_NBD" -f qcow2 "$DIR/img.qcow2"
# Interleaved, so that a busy machine slows both alike.
for ((i = 0; i < RUNS; i++)); do run q; run v; done
ratio() { awk -v v="$1" -v q="$2" 'BEGIN { printf "%.2f", (q > 0) ? v / q : 0 }'; }
us() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }'; }
printf '%-32s %12s %12s %7s\n' "" qemu-nbd vimg-nbd ratio
printf '%-32s %12s %12s %7s\n' "4k randread depth $DEPTH: IOPS" "$q_best" "$v_best" \
    "$(ratio "$v_best" "$q_best")"
# Server CPU per request is steadier than IOPS on a shared machine (lower is better).
qu=$(us "$q_ticks" "$q_ios"); vu=$(us "$v_ticks" "$v_ios")
printf '%-32s %12s %12s %7s\n' "server CPU us per request" "$qu" "$vu" "$(ratio "$vu" "$qu")"
