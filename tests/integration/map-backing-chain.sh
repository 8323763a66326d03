#!/bin/bash
# Proves: `vimg map` walks backing chains as `qemu-img map` does: depth of
# the layer that decides, "present" false for clusters no layer allocates,
# zeros past the end of a shorter backing file reported by the layer above
# it, zero clusters, raw backing files, and the human table's refusal of
# compressed clusters. Images are made by qemu-img and qemu-io.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

qio() { qemu-io "$@" >/dev/null || fail "qemu-io $*"; }
qemu-img create -q -f qcow2 base.qcow2 1M
qio -c "write -P 1 0 64k" -c "write -P 2 512k 128k" base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qio -c "write -P 3 32k 64k" -c "write -z 512k 64k" top.qcow2
qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 comp.qcow2
qio -c "write -c -P 4 768k 64k" comp.qcow2
qemu-img create -q -f qcow2 small.qcow2 256k
qio -c "write -P 5 0 128k" small.qcow2
qemu-img create -q -f qcow2 -b small.qcow2 -F qcow2 mid.qcow2 1M
qio -c "write -P 6 192k 64k" mid.qcow2
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 l3.qcow2
qio -c "write -P 7 0 32k" -c "discard 512k 64k" l3.qcow2
qemu-img create -q -f raw rb.raw 1M
qio -f raw -c "write -P 1 0 64k" rb.raw
qemu-img create -q -f qcow2 -b rb.raw -F raw onraw.qcow2
qio -c "write -P 2 128k 64k" onraw.qcow2

n=0
check() {
    n=$((n + 1))
    run_both "c$n" map "$@"
    expect_same "c$n.q" "c$n.v" "map $*"
}
for f in base.qcow2 top.qcow2 comp.qcow2 mid.qcow2 l3.qcow2 onraw.qcow2; do
    for out in human json; do
        check --output=$out "$f"
        check --output=$out --start-offset=100k --max-length=300k "$f"
        check --output=$out --start-offset=250k "$f"
    done
done
check -f qcow2 --output=json l3.qcow2
check -U --output=json top.qcow2
check --image-opts --output=json driver=qcow2,file.filename=l3.qcow2
check --output=json 'json:{"driver":"qcow2","backing":null,"file":{"filename":"l3.qcow2"}}'
pass
