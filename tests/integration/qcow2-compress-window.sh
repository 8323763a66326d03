#!/bin/bash
# Proves: compressed qcow2 clusters written by vimg (libdeflate, whose matches
# reach back up to 32 KiB where QEMU's own deflate stays within 4 KiB) read
# back right through QEMU: `qemu-img compare` against the source and a clean
# `qemu-img check`, for 64 KiB clusters (matches 16 and 32 KiB back, which a
# 4 KiB window could not use, in clusters whose byte histograms are as flat
# as random data's, so that only their repeats tell them from it: the target
# must come out small) and 2 MiB clusters, an image whose last cluster is
# partial, zstd, and multi-cluster `write -c` requests from vimg-io (random
# clusters stored plain among compressed ones). Also that vimg's -c target is
# no more than 2% larger than qemu-img's for the same data.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# w.raw (8 MiB + 4608 bytes): per 64 KiB cluster, a random block repeated (16 KiB,
# 32 KiB, 8 KiB blocks), base64 text, random bytes, zeros; the tail ends mid-cluster.
python3 - <<'PY'
import base64, os, random
rnd = random.Random(11)
def rand(n): return bytes(rnd.getrandbits(8) for _ in range(n))
K = 1024
kinds = [lambda: rand(16 * K) * 4, lambda: rand(32 * K) * 2, lambda: rand(8 * K) * 8,
         lambda: base64.b64encode(rand(48 * K)), lambda: rand(64 * K), lambda: bytes(64 * K)]
with open("w.raw", "wb") as f:
    for i in range(128):
        f.write(kinds[i % len(kinds)]())
    f.write(rand(2 * K) * 2 + rand(512))
PY

# check_target IMG: QEMU reads IMG as w.raw, finds no errors and some compressed clusters.
check_target() {
    qemu-img compare -q -f raw -F qcow2 w.raw "$1" || fail "$1: qemu-img compare differs"
    qemu-img check "$1" >check.out 2>&1 || { cat check.out >&2; fail "$1: qemu-img check"; }
    grep -q '[1-9][0-9.]*% compressed clusters' check.out || fail "$1: nothing compressed"
}

"$VIMG" convert -c -f raw -O qcow2 w.raw v.qcow2 || fail "vimg convert -c"
check_target v.qcow2
# The repeated random blocks only shrink with matches beyond 4 KiB: 64 of the
# 128 clusters compress to at most about a half, so the target is under 6 MiB.
size=$(stat -c %s v.qcow2)
[ "$size" -lt $((6 << 20)) ] || fail "v.qcow2 is $size bytes: long matches not used"
qemu-img convert -c -f raw -O qcow2 w.raw q.qcow2
qsize=$(stat -c %s q.qcow2)
[ "$size" -le $((qsize * 102 / 100)) ] || fail "v.qcow2 $size bytes, qemu-img's $qsize"

"$VIMG" convert -c -f raw -O qcow2 -o cluster_size=2M w.raw big.qcow2 || fail "2M clusters"
check_target big.qcow2

"$VIMG" convert -c -f raw -O qcow2 -o compression_type=zstd w.raw z.qcow2 || fail "zstd"
check_target z.qcow2
qemu-img info z.qcow2 | grep -q 'compression type: zstd' || fail "z.qcow2 is not zstd"

# vimg-io: compressed writes of several clusters at once, the last one partial
# (-s fills the buffer from the start of its file: one file per half).
size=$(stat -c %s w.raw)
head -c 4194304 w.raw >head.raw
tail -c +$((4194304 + 1)) w.raw >tail.raw
qemu-img create -q -f qcow2 io.qcow2 "$size"
"$VIMG_IO" -f qcow2 -c "write -c -s head.raw 0 4M" \
    -c "write -c -s tail.raw 4M $((size - 4194304))" io.qcow2 >io.out 2>&1 ||
    { cat io.out >&2; fail "vimg-io write -c"; }
check_target io.qcow2
# Reading it through qemu-io as well (qemu-img compare went through the same code).
qemu-io -f qcow2 -c "read -v 0 512" io.qcow2 >/dev/null || fail "qemu-io read"
pass
