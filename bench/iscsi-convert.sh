#!/bin/bash
# Benchmark: `vimg convert` against `qemu-img convert` writing a SIZE raw
# image into the same iSCSI LUN (tgtd on a free loopback port, the LUN a
# thin-provisioned file in the scratch directory): once with a source that is
# 60% data (6 MiB extents every 10 MiB, the rest holes that become WRITE SAME
# / UNMAP), once with a source that is all data. Reports the best of RUNS
# wall-clock times for each tool and the ratio vimg/qemu-img.
# Goal: ratio <= 1.0.
#
# Usage: bench/iscsi-convert.sh [BUILD_DIR]   (default: build); run as root (tgtd).
# Environment: TMPDIR (scratch, about 3 x SIZE), RUNS (default 3), SIZE (default 1G).
set -eu
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC_ROOT/build}
VIMG=$BUILD/tools/vimg
RUNS=${RUNS:-3}
SIZE=${SIZE:-1G}
for c in qemu-img qemu-io tgtd tgtadm python3; do
    command -v $c >/dev/null || { echo "missing $c" >&2; exit 1; }
done
[ -x "$VIMG" ] || { echo "vimg not built at $VIMG" >&2; exit 1; }
"$VIMG" --help | grep -qw iscsi || { echo "vimg built without libiscsi" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/vimg-bench.XXXXXX")
TGTD_PID=""
CP=$((20000 + RANDOM % 10000))   # tgtd's control port: at most 32767
cleanup() {
    [ -z "$TGTD_PID" ] || kill -9 "$TGTD_PID" 2>/dev/null || true
    sleep 0.2
    rm -f "/var/run/tgtd/socket.$CP" "/var/run/tgtd/socket.$CP.lock"
    rm -rf "$DIR"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(tgtd -f -C "$CP" --iscsi portal="127.0.0.1:$PORT" >"$DIR/tgtd.log" 2>&1 & echo $! >"$DIR/tgtd.pid")
TGTD_PID=$(cat "$DIR/tgtd.pid")
for _ in $(seq 100); do
    tgtadm -C "$CP" --lld iscsi --op show --mode target >/dev/null 2>&1 && break
    sleep 0.05
done
IQN=iqn.2026-11.org.vimg.bench:convert
adm() { tgtadm -C "$CP" --lld iscsi "$@"; }
truncate -s "$SIZE" "$DIR/lun.img"
adm --op new --mode target --tid 1 -T "$IQN"
adm --op new --mode logicalunit --tid 1 --lun 1 -b "$DIR/lun.img"
adm --op update --mode logicalunit --tid 1 --lun 1 --params thin_provisioning=1
adm --op bind --mode target --tid 1 -I ALL
URL="iscsi://127.0.0.1:$PORT/$IQN/1"
for _ in $(seq 100); do qemu-img info "$URL" >/dev/null 2>&1 && break; sleep 0.05; done

SPARSE=$DIR/sparse.raw
FULL=$DIR/full.raw
qemu-img create -q -f raw "$SPARSE" "$SIZE"
BYTES=$(stat -c %s "$SPARSE")
cmds=()
for ((off = 0; off + 6291456 <= BYTES; off += 10485760)); do
    cmds+=(-c "write -P $(( (off >> 20) % 250 + 1 )) $off 6M")
done
qemu-io -f raw "${cmds[@]}" "$SPARSE" >/dev/null
head -c "$BYTES" /dev/urandom >"$FULL"

# best_secs CMD...: the best wall-clock seconds over RUNS runs of CMD.
best_secs() {
    local best="" t0 t1 i
    for ((i = 0; i < RUNS; i++)); do
        t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
        best=$(awk -v a="$t0" -v z="$t1" -v b="$best" \
            'BEGIN { t = z - a; if (b == "" || t < b) b = t; printf "%.3f", b }')
    done
    echo "$best"
}
ratio() { awk -v v="$1" -v q="$2" 'BEGIN { printf "%.2f", (q > 0) ? v / q : 0 }'; }
row() { printf '%-26s %12s %12s %7s\n' "$1" "$2" "$3" "$(ratio "$3" "$2")"; }

printf '%-26s %12s %12s %7s\n' "convert to iSCSI ($SIZE)" "qemu-img s" "vimg s" "ratio"
for src in "$SPARSE" "$FULL"; do
    name="raw, $( [ "$src" = "$SPARSE" ] && echo "60% data" || echo "all data")"
    q=$(best_secs qemu-img convert -n -f raw -O raw "$src" "$URL")
    v=$(best_secs "$VIMG" convert -n -f raw -O raw "$src" "$URL")
    cmp -s "$src" "$DIR/lun.img" || { echo "LUN differs from $src after convert" >&2; exit 1; }
    row "$name" "$q" "$v"
done
