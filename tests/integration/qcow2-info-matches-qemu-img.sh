#!/bin/bash
# Proves: `vimg info` (human, JSON, --backing-chain) prints exactly what
# `qemu-img info` prints for qcow2 images qemu-img made with many creation
# options, and refuses broken headers with qemu-img's messages.
source "$(dirname "$0")/lib.sh"
need qemu-img

n=0
check() {
    n=$((n + 1))
    run_both "i$n" info "$@"
    expect_same "i$n.q" "i$n.v" "info $*"
}

qemu-img create -q -f qcow2 base.qcow2 64M
i=0
for o in "" compat=0.10 cluster_size=512 cluster_size=2M cluster_size=4k,refcount_bits=1 \
         refcount_bits=64 lazy_refcounts=on extended_l2=on compression_type=zstd \
         preallocation=metadata data_file=img-data.raw data_file=img-raw.raw,data_file_raw=on; do
    i=$((i + 1))
    qemu-img create -q -f qcow2 ${o:+-o $o} "img$i.qcow2" 64M
    check "img$i.qcow2"
    check --output=json "img$i.qcow2"
    check -f qcow2 --output=json "img$i.qcow2"
done
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-img create -q -f qcow2 -o compat=0.10 -b top.qcow2 -F qcow2 top2.qcow2 128M
for f in top.qcow2 top2.qcow2; do
    check "$f"
    check --output=json "$f"
    check --backing-chain "$f"
    check --backing-chain --output=json "$f"
done
qemu-img create -q -f qcow2 bm.qcow2 1M
qemu-img bitmap --add bm.qcow2 b0
qemu-img bitmap --add -g 128k --disable bm.qcow2 b1
check --output=json bm.qcow2

# Headers poked into something QEMU refuses (or still opens).
qemu-img create -q -f qcow2 good.qcow2 1G
poke() {    # name offset bytes...
    local name=$1; shift
    cp good.qcow2 "$name.qcow2"
    while [ $# -gt 1 ]; do _poke "$name.qcow2" "$1" "$2"; shift 2; done
    # Version 1 is qcow's, not ours, when probed.
    [ "$name" = version1 ] || check "$name.qcow2"
    check -f qcow2 "$name.qcow2"
}
poke version4 7 '\x04'
poke version1 7 '\x01'
poke cluster_bits8 23 '\x08'
poke cluster_bits22 23 '\x16'
poke header_length96 103 '\x60'
poke header_length108 103 '\x6c'
poke l1_size_small 38 '\x00\x01'
poke l1_size_huge 36 '\x10\x00\x00\x00'
poke l1_unaligned 45 '\x10\x00\x01'
poke l1_past_eof 44 '\x10'
poke rt_unaligned 53 '\x00\x00\x01'
poke rt_too_large 56 '\x00\x00\x10\x00'
poke refcount_order7 99 '\x07'
poke crypt3 32 '\x00\x00\x00\x03'
poke unknown_incompat 79 '\x20'
poke unknown_incompat2 72 '\x80' 79 '\x61'
poke dirty 79 '\x01'
poke corrupt 79 '\x02'
poke compression_bit 79 '\x08'
poke compression_type 104 '\x01'
poke compression_type2 104 '\x02' 79 '\x08'
poke extl2_small 79 '\x10' 23 '\x0d'
poke too_big 24 '\xff'
poke ext_too_large 120 '\x00\x01\x00\x00'
poke unknown_ext 112 '\x12\x34\x56\x78'
pass
