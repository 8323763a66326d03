#!/bin/bash
# Proves: vimg-nbd serves a raw image as qemu-nbd does. For the same image,
# qemu-img info/map, nbdinfo (export details, --map, --list, allocation
# depth) and qemu-nbd -L print the same from both servers; qemu-img
# compare/convert, qemu-io and nbdcopy read the image's bytes (and holes)
# through vimg-nbd; writes by qemu-io and nbdcopy land in the image; and
# vimg-nbd -L prints what qemu-nbd -L prints.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdinfo nbdcopy
[ -x "$VIMG_NBD" ] || fail "vimg-nbd not built"

wait_sock() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
    fail "no server on $1"
}
# start NAME TOOL ARGS...: a server on $TESTDIR/NAME.sock, stopped on exit.
start() {
    local name=$1 tool=$2; shift 2
    "$tool" -k "$TESTDIR/$name.sock" "$@" & eval "${name}_pid=$!"
    on_exit "kill $!"
    wait_sock "$TESTDIR/$name.sock"
}
stop() { eval "kill \$${1}_pid; wait \$${1}_pid 2>/dev/null"; }
uri() { echo "nbd+unix:///${2:-}?socket=$TESTDIR/$1.sock"; }
# both CMD...: CMD with @ replaced by each server's URI prints the same.
both() {
    local a=() b=() x
    for x in "$@"; do a+=("${x//@Q/$(uri q "$EXP")}"); b+=("${x//@Q/$(uri v "$EXP")}"); done
    "${a[@]}" 2>&1 | sed "s|$TESTDIR/q.sock|SOCK|g" >out.q
    "${b[@]}" 2>&1 | sed "s|$TESTDIR/v.sock|SOCK|g" >out.v
    expect_same out.q out.v "$*"
}

qemu-img create -q -f raw img.raw 64M
qemu-io -f raw -c 'write -P 0x5a 1M 3M' -c 'write -P 0x11 20M 64k' -c 'write -P 0x22 63M 1M' \
    img.raw >/dev/null

# 1. Read-only exports with a name and a description, with allocation depth.
EXP=exp
start q qemu-nbd -t -r -A -f raw -x exp -D "the disk" img.raw
start v "$VIMG_NBD" -t -r -A -f raw -x exp -D "the disk" img.raw
both qemu-img info @Q
both qemu-img info --output=json @Q
both qemu-img map --output=json @Q
both nbdinfo @Q
both nbdinfo --map @Q
both nbdinfo --map=qemu:allocation-depth @Q
both nbdinfo --list "nbd+unix:///?socket=@Q"
qemu-nbd -L -k "$TESTDIR/q.sock" >l.q 2>&1
qemu-nbd -L -k "$TESTDIR/v.sock" >l.v 2>&1
expect_same l.q l.v "qemu-nbd -L of both servers"
"$VIMG_NBD" -L -k "$TESTDIR/q.sock" >l.vq 2>&1
expect_same l.q l.vq "vimg-nbd -L against qemu-nbd -L"
qemu-img compare -f raw img.raw "$(uri v exp)" >out 2>&1 || { cat out >&2; fail "compare"; }
qemu-io -r -f raw -c 'read -P 0x5a 1M 3M' -c 'read -P 0 4M 16M' -c 'read -P 0x22 63M 1M' \
    "$(uri v exp)" >out 2>&1 || { cat out >&2; fail "qemu-io read"; }
grep -q "verification failed" out && { cat out >&2; fail "qemu-io pattern"; }
qemu-img convert -f raw -O raw "$(uri v exp)" conv.raw && cmp conv.raw img.raw || fail "convert"
nbdcopy "$(uri v exp)" copy.raw && cmp copy.raw img.raw || fail "nbdcopy content"
# nbdcopy skips holes, so the copy is as sparse as the source.
[ "$(du -k copy.raw | cut -f1)" -le $(( $(du -k img.raw | cut -f1) + 64 )) ] ||
    fail "nbdcopy did not keep holes: $(du -k copy.raw) vs $(du -k img.raw)"
# Writing to a read-only export fails, in qemu-io's words for both servers.
both qemu-io -f raw -c 'write 0 512' @Q
stop q; stop v

# 2. Writable default exports: qemu-io and nbdcopy write through vimg-nbd.
EXP=
cp --sparse=always img.raw w.raw
start v "$VIMG_NBD" -t -f raw --discard=unmap w.raw
qemu-io -f raw -c 'write -P 0xee 8M 1M' -c 'write -z 1M 1M' -c 'write -f -P 0x33 30M 4k' \
    -c 'discard 63M 1M' -c flush "$(uri v)" >out 2>&1 || { cat out >&2; fail "qemu-io write"; }
qemu-io -f raw -c 'write -P 0xee 8M 1M' -c 'write -z 1M 1M' -c 'write -P 0x33 30M 4k' \
    -c 'write -z 63M 1M' img.raw >/dev/null
qemu-img compare -f raw img.raw "$(uri v)" >out 2>&1 || { cat out >&2; fail "writes differ"; }
nbdcopy copy.raw "$(uri v)" || fail "nbdcopy to vimg-nbd"
qemu-img compare -f raw copy.raw "$(uri v)" >out 2>&1 || { cat out >&2; fail "nbdcopy write"; }
stop v
cmp w.raw copy.raw || fail "image differs after the server stopped"
pass
