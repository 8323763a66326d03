#!/bin/bash
# Proves: `convert -O luks -o key-secret=ID` opens the new target with the
# secret, as qemu-img does, and the result decrypts in qemu-img to the source.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

qemu-img create -q -f raw src.raw 8M
qemu-io -f raw -c 'write -P 0x5a 1M 1M' -c 'write -P 0xa5 7M 4k' src.raw >/dev/null
"$VIMG" convert --object secret,id=s0,data=pw -O luks -o key-secret=s0,iter-time=10 \
    src.raw v.luks || fail "vimg convert to luks"
qemu-img convert --object secret,id=s0,data=pw -O raw \
    --image-opts driver=luks,key-secret=s0,file.filename=v.luks back.raw
cmp src.raw back.raw || fail "luks target does not decrypt to the source"
run_both e1 convert --object secret,id=s0,data=pw -O luks -o iter-time=10 src.raw IMG.luks
expect_same e1.q e1.v "convert -O luks without key-secret"
pass
