#!/bin/bash
# Proves: vimg-nbd -s, -l and -B behave as qemu-nbd's. -s serves the image
# through a temporary overlay: qemu-io writes are read back, and the image
# keeps its old bytes. -l serves an internal qcow2 snapshot (by name, by id,
# and as snapshot.id=/snapshot.name=) read-only. -B NAME offers
# qemu:dirty-bitmap:NAME: nbdinfo --list, nbdinfo --map and qemu-img map
# with x-dirty-bitmap print the same for both servers, also after writes to
# a writable export with an enabled bitmap. Option errors print the same.
source "$(dirname "$0")/lib.sh"
source "$LIB_DIR/nbd-lib.sh"
need qemu-img qemu-io qemu-nbd nbdinfo
[ -x "$VIMG_NBD" ] || fail "vimg-nbd not built"

uri() { echo "nbd+unix:///?socket=$TESTDIR/$1.sock"; }
# both ARGS -- CMD...: each server with ARGS; CMD with @U replaced by its URI and @P by its
# socket prints the same.
both() {
    local args=() x s
    while [ "$1" != "--" ]; do args+=("$1"); shift; done; shift
    for s in q v; do
        local tool=qemu-nbd cmd=()
        [ $s = v ] && tool=$VIMG_NBD
        start $s "$tool" "${args[@]}"
        for x in "$@"; do x=${x//@U/$(uri $s)}; cmd+=("${x//@P/$TESTDIR/$s.sock}"); done
        "${cmd[@]}" 2>&1 | sed "s|$TESTDIR/$s.sock|SOCK|g; /ops\/sec/d" >out.$s
        stop $s
    done
    expect_same out.q out.v "${args[*]} -- $*"
}

qemu-img create -q -f qcow2 img.qcow2 4M
qemu-io -c 'write -P 1 0 64k' -c 'write -P 1 1M 64k' img.qcow2 >/dev/null
qemu-img snapshot -c snap1 img.qcow2
qemu-io -c 'write -P 2 0 64k' img.qcow2 >/dev/null
qemu-img bitmap --add -g 64k img.qcow2 live
qemu-img bitmap --add -g 128k img.qcow2 frozen
qemu-io -c 'write -P 3 1M 200k' -c 'write -P 3 3M 4k' img.qcow2 >/dev/null
qemu-img bitmap --disable img.qcow2 frozen
cp img.qcow2 orig.qcow2

# -s: writes land in the overlay only.
both -s -f qcow2 img.qcow2 -- qemu-io -f raw -c 'write -P 9 0 8k' -c 'read -P 9 0 8k' \
    -c 'read -P 2 8k 56k' @U
grep -q "wrote 8192/8192" out.v || fail "no write through -s"
qemu-img compare orig.qcow2 img.qcow2 >/dev/null || fail "-s changed the image's content"
# -l: the snapshot's content, read-only.
for l in snap1 1 snapshot.name=snap1 snapshot.id=1 snapshot.id=1,snapshot.name=snap1; do
    both -l "$l" img.qcow2 -- qemu-io -f raw -r -c 'read -P 1 0 64k' -c 'read -P 0 64k 64k' @U
    grep -q "read 65536/65536 bytes at offset 0" out.v || fail "-l $l read nothing"
    grep -q "verification failed" out.v && fail "-l $l served other bytes"
done
both -l snap1 img.qcow2 -- qemu-io -f raw -c 'write 0 4k' @U
grep -q "Permission denied" out.v || fail "-l export is writable"
both -l snap1 img.qcow2 -- qemu-img map --output=json -f raw @U
# -B: a disabled bitmap, read-only and writable; an enabled one with writes.
both -r -B frozen img.qcow2 -- nbdinfo --map=qemu:dirty-bitmap:frozen @U
grep -q dirty out.v || fail "-B frozen shows no dirty extent"
both -r -B frozen img.qcow2 -- nbdinfo --list @U
grep -q "qemu:dirty-bitmap:frozen" out.v || fail "-B context not listed"
both -r -A -B live img.qcow2 -- nbdinfo --list @U
both -r -B live img.qcow2 -- qemu-img map --output=json --image-opts \
    "driver=nbd,server.type=unix,server.path=@P,x-dirty-bitmap=qemu:dirty-bitmap:live"
grep -q '"present": false' out.v || fail "x-dirty-bitmap map shows no dirty extent"
# After the server exits, the bitmap's new bits are in the qcow2 (qemu-nbd persists them):
# qemu-img info/check and a map of the bitmap served again by qemu-nbd agree.
for s in q v; do
    tool=qemu-nbd; [ $s = v ] && tool=$VIMG_NBD
    cp orig.qcow2 w$s.qcow2
    start $s "$tool" -B live w$s.qcow2
    qemu-io -f raw -c 'write -P 5 2M 4k' -c 'write -z 2500k 64k' "$(uri $s)" >/dev/null
    nbdinfo --map=qemu:dirty-bitmap:live "$(uri $s)" >out.$s
    stop $s
done
expect_same out.q out.v "enabled bitmap after writes"
for s in q v; do
    { qemu-img info w$s.qcow2 | sed -n "/bitmaps:/,/granularity/p"
      qemu-img check w$s.qcow2 | grep -v "allocated\|end offset"
      start r qemu-nbd -r -B live w$s.qcow2
      qemu-img map --output=json --image-opts \
          "driver=nbd,server.type=unix,server.path=$TESTDIR/r.sock,x-dirty-bitmap=qemu:dirty-bitmap:live"
      stop r; } >persist.$s 2>&1
done
expect_same persist.q persist.v "-B bitmap written back on exit"
grep -q '"start": 2097152, "length": 65536, "depth": 0, "present": false' persist.v ||
    fail "the write at 2M is not in the stored bitmap"
grep -q '"start": 2555904, "length": 131072, "depth": 0, "present": false' persist.v ||
    fail "the zero write at 2500k is not in the stored bitmap"

# Errors.
for args in "-l snapshot.foo=1" "-l nosuch" "-s -l snap1" "-B nosuch" "-l 1 -f raw" \
            "-B nosuch -f raw"; do
    qemu-nbd $args -k "$TESTDIR/e.sock" img.qcow2 >e.q 2>&1; echo "exit=$?" >>e.q
    "$VIMG_NBD" $args -k "$TESTDIR/e.sock" img.qcow2 >e.v 2>&1; echo "exit=$?" >>e.v
    sed -i 's/^qemu-nbd:/TOOL:/; s/^vimg-nbd:/TOOL:/' e.q e.v
    expect_same e.q e.v "vimg-nbd $args"
done
pass
