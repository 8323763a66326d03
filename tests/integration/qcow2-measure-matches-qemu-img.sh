#!/bin/bash
# Proves: `vimg measure -O qcow2` prints what `qemu-img measure -O qcow2`
# prints (human and JSON) for --size and for raw and qcow2 inputs (holes,
# data, zero and compressed clusters, backing chains, persistent bitmaps,
# internal snapshots read with -l), under every creation option that changes
# the numbers, and refuses bad options with qemu-img's texts.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

truncate -s 10M holes.raw
dd if=/dev/urandom of=holes.raw bs=1k count=3 seek=100 conv=notrunc status=none
dd if=/dev/urandom of=holes.raw bs=64k count=5 seek=40 conv=notrunc status=none
head -c 1000 /dev/urandom >odd.raw
qemu-img create -q -f qcow2 base.qcow2 8M
qemu-io -c 'write -P 1 0 1M' -c 'write -z 2M 1M' -c 'write -P 2 5000 3000' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 3 4M 64k' top.qcow2 >/dev/null
qemu-img convert -c -O qcow2 holes.raw comp.qcow2
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M
qemu-io -c 'write -P 4 1M 512' v2.qcow2 >/dev/null
cp base.qcow2 bm.qcow2
qemu-img bitmap --add bm.qcow2 b1
qemu-img bitmap --add -g 4k bm.qcow2 bitmap-two
# Snapshot s1 holds less data than the active layer; s2 has another size.
cp base.qcow2 snap.qcow2
qemu-img snapshot -c s1 snap.qcow2
qemu-io -c 'write -P 5 3M 4M' snap.qcow2 >/dev/null
qemu-img resize -q snap.qcow2 20M
qemu-io -c 'write -P 6 12M 6M' snap.qcow2 >/dev/null
qemu-img snapshot -c s2 snap.qcow2
qemu-io -c 'discard 0 20M' snap.qcow2 >/dev/null

n=0
check() {
    n=$((n + 1))
    run_both "m$n" measure "$@"
    expect_same "m$n.q" "m$n.v" "measure $*"
}
for out in human json; do
    for size in 0 1 1000 64k 1G 1T 9223372036854775807; do
        check --output=$out -O qcow2 --size "$size"
    done
    for f in holes.raw odd.raw base.qcow2 top.qcow2 comp.qcow2 v2.qcow2 bm.qcow2; do
        check --output=$out -O qcow2 "$f"
    done
    check --output=$out -O qcow2 -o compat=0.10 bm.qcow2
    check --output=$out -O qcow2 -o cluster_size=512 bm.qcow2
    check --output=$out -O qcow2 -o cluster_size=2M,extended_l2=on bm.qcow2
done
for o in cluster_size=512 cluster_size=4k cluster_size=2M refcount_bits=1 refcount_bits=8 \
         refcount_bits=64 cluster_size=512,refcount_bits=64 extended_l2=on \
         extended_l2=on,cluster_size=16k preallocation=metadata preallocation=falloc \
         preallocation=full compat=0.10 compat=v2 compat=1.1 compat=v3 lazy_refcounts=on \
         compression_type=zstd data_file=x.raw encryption=on cluster_size=3000 \
         cluster_size=4M refcount_bits=3 refcount_bits=128 compat=0.10,refcount_bits=8 \
         compat=0.10,extended_l2=on extended_l2=on,cluster_size=4k preallocation=bogus \
         compat=foo encrypt.format=luks refcount_bits=x cluster_size=x; do
    check -O qcow2 --size 100G -o "$o"
    check -O qcow2 holes.raw -o "$o"
done
for l in s1 1 s2 2 snapshot.name=s2 snapshot.id=1 snapshot.id=1,snapshot.name=s1 \
         snapshot.id=1,snapshot.name=s2 snapshot.id=3 nosuch snapshot.bad=1; do
    check -O qcow2 -l "$l" snap.qcow2
    check --output=json -O raw -l "$l" snap.qcow2
done
check -O qcow2 -o cluster_size=4k,preallocation=metadata -l s2 snap.qcow2
check -O qcow2 -l s1 top.qcow2
check -O qcow2 -l s1 holes.raw
check -O qcow2 --size 64T -o cluster_size=512
check -O qcow2 --size 8E
pass
