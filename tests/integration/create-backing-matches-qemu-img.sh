#!/bin/bash
# Proves: `create` with a backing file (-b/-F or -o backing_file=...) opens
# the backing file as qemu-img does: its size is the default size, a missing
# backing format or backing file is an error with qemu-img's two-line texts,
# and -u skips the check.
source "$(dirname "$0")/lib.sh"
need qemu-img

mkdir sub
qemu-img create -q -f qcow2 base.qcow2 3M
qemu-img create -q -f qcow2 sub/base2.qcow2 5M
n=0
check() {
    n=$((n + 1))
    rm -f IMG.qcow2 sub/IMG.qcow2
    run_both "b$n" create "$@"
    expect_same "b$n.q" "b$n.v" "create $*"
}
check -f qcow2 -b base.qcow2 -F qcow2 IMG.qcow2
check -f qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 IMG.qcow2
check -f qcow2 -b base.qcow2 -F qcow2 IMG.qcow2 1M
check -f qcow2 -b nope.qcow2 -F qcow2 IMG.qcow2
check -f qcow2 -b nope.qcow2 -F qcow2 IMG.qcow2 1M
check -f qcow2 -u -b nope.qcow2 -F qcow2 IMG.qcow2
check -f qcow2 -u -b nope.qcow2 -F qcow2 IMG.qcow2 1M
check -f qcow2 -b base.qcow2 IMG.qcow2 1M
check -f qcow2 -b base.qcow2 -F raw IMG.qcow2
check -f qcow2 -b base2.qcow2 -F qcow2 sub/IMG.qcow2
"$VIMG" create -q -f qcow2 -b base.qcow2 -F qcow2 v.qcow2
qemu-img info --output=json v.qcow2 | grep -q '"virtual-size": 3145728' || fail "size not taken from backing"
pass
