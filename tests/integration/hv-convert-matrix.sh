#!/bin/bash
# Proves: `convert` among vmdk (monolithicSparse, streamOptimized), vpc,
# vhdx, qcow2 and raw, in both directions, keeps the content (qemu-img
# compare against the source) and the sparseness: the allocated size of
# what vimg writes is within 1.05x of what qemu-img writes for the same
# conversion (plus 64 KiB for file system rounding of tiny files), and
# qemu-img check finds the result clean where it checks the format.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# A 64 MiB disk with data, holes, zeros written as data and a partial grain.
truncate -s 64M base.raw
qemu-io -f raw -c 'write -P 0x5a 0 3M' -c 'write -P 0xa5 9M 4M' -c 'write -P 1 30M 4k' \
    -c 'write -P 2 40M 1M' -c 'write -P 0 41M 1M' -c 'write -P 3 63M 1M' base.raw >/dev/null ||
    fail "base"
head -c 2M /usr/bin/qemu-img | dd of=base.raw bs=1M seek=20 conv=notrunc status=none

targets=("raw" "qcow2" "vmdk" "vmdk -o subformat=streamOptimized" "vpc" "vhdx")
ext() { case "$1" in raw) echo raw ;; qcow2) echo qcow2 ;; vmdk*) echo vmdk ;; vpc) echo vhd ;;
        vhdx) echo vhdx ;; esac; }
alloc_kib() { du -k "$1" | cut -f1; }

i=0
for src in "${targets[@]}"; do
    i=$((i + 1))
    s=src$i.$(ext "$src")
    # Sources made by qemu-img, so that each direction starts from the reference's image.
    qemu-img convert -O $src base.raw "$s" || fail "make $s"
    j=0
    for dst in "${targets[@]}"; do
        j=$((j + 1))
        d=$(ext "$dst")
        "$VIMG" convert -O $dst "$s" "v$i-$j.$d" || fail "vimg convert $s -> $dst"
        qemu-img convert -O $dst "$s" "q$i-$j.$d" || fail "qemu-img convert $s -> $dst"
        qemu-img compare -q base.raw "v$i-$j.$d" || fail "$s -> $dst: content differs"
        case "$d" in qcow2|vmdk|vhdx)
            qemu-img check -q "v$i-$j.$d" || fail "$s -> $dst: qemu-img check" ;;
        esac
        av=$(alloc_kib "v$i-$j.$d"); aq=$(alloc_kib "q$i-$j.$d")
        [ $((av * 100)) -le $((aq * 105 + 6400)) ] ||
            fail "$s -> $dst: vimg allocates $av KiB, qemu-img $aq KiB"
        echo "$s -> $dst: vimg $av KiB, qemu-img $aq KiB"
        rm -f "v$i-$j.$d" "q$i-$j.$d"
    done
done
pass
