#!/bin/bash
# Proves: under -s (and `open -s`) vimg-io works on a temporary qcow2 overlay
# as qemu-io does — same stdout, stderr and exit status for generated command
# sequences over raw and qcow2 images, the image itself left unchanged unless
# a sequence reopens it without -s, and no overlay left behind in $TMPDIR
# (difftest.py --snapshot checks all three). Then, directly: writes under -s
# never reach the image, and a $TMPDIR that does not exist fails as qemu-io's.
source "$(dirname "$0")/lib.sh"
need qemu-io qemu-img python3
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"

run_set() {  # seed count format
    python3 "$SRC_ROOT/tests/io-gen/difftest.py" --vimg-io "$VIMG_IO" --snapshot \
        --workdir "$TESTDIR/set-$1" --format "$3" --seed "$1" --count "$2" ||
        fail "vimg-io and qemu-io differ under -s ($3)"
}

run_set 9101 60 qcow2
run_set 9102 60 raw

qemu-img create -q -f qcow2 img.qcow2 1M || fail "qemu-img create failed"
qemu-io -f qcow2 -c 'write -P 0x11 0 128k' img.qcow2 >/dev/null || fail "setup write failed"
cp img.qcow2 before.qcow2
mkdir tmp
TMPDIR=$TESTDIR/tmp "$VIMG_IO" -s -c 'write -P 0x22 64k 128k' -c 'read -P 0x11 0 64k' \
    -c 'read -P 0x22 64k 128k' -c 'write -b 0 64k' -c 'truncate 2M' img.qcow2 >out.v ||
    fail "vimg-io -s failed: $(cat out.v)"
cmp -s img.qcow2 before.qcow2 || fail "a write under -s reached the image"
[ -z "$(ls tmp)" ] || fail "overlay left behind: $(ls tmp)"

for tool in qemu-io "$VIMG_IO"; do
    TMPDIR=$TESTDIR/nosuch "$tool" -s -c 'read 0 512' img.qcow2 2>&1 |
        sed -e 's/^[^:]*: //; s/vl\.[A-Za-z0-9]*/vl.X/' >"err.$(basename "$tool")"
done
expect_same err.qemu-io err.vimg-io "missing TMPDIR"
pass
