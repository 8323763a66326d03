#!/bin/bash
# Proves: vimg reads what qemu-io wrote into qcow2 images (plain, zero,
# compressed zlib and zstd clusters, extended L2 subclusters, backing
# chains, external data files) exactly as `qemu-img convert -O raw` does.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
RW=$VIMG_BUILD/tests/helpers/vimg-rw
[ -x "$RW" ] || fail "vimg-rw not built"

qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -c 'write -P 0xbb 0 4M' base.qcow2 >/dev/null
i=0
for o in "" compat=0.10 cluster_size=512 extended_l2=on compression_type=zstd \
         cluster_size=2M refcount_bits=1 data_file=data.raw extended_l2=on/back \
         compat=1.1/back compat=0.10/back; do
    i=$((i + 1))
    img="img$i.qcow2"
    b=()
    case $o in */back) b=(-b base.qcow2 -F qcow2); o=${o%/back};; esac
    qemu-img create -q -f qcow2 ${o:+-o $o} "${b[@]}" "$img" 4M
    cmds=(-c 'write -P 0x11 0 100k' -c 'write -P 0x22 1M 7k' -c 'write -z 2M 64k'
          -c 'write -P 0x44 3000 1000' -c 'discard 1M 64k')
    case $o in data_file*|cluster_size=2M) ;; *) cmds+=(-c 'write -c -P 0x33 3M 64k');; esac
    qemu-io "${cmds[@]}" "$img" >/dev/null || fail "qemu-io on $o"
    qemu-img convert -O raw "$img" "q$i.raw"
    "$RW" -f qcow2 "$img" cat >"v$i.raw" || fail "vimg-rw cat of $o"
    cmp "q$i.raw" "v$i.raw" || fail "content differs for '$o'"
done
pass
