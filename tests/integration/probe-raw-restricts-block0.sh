#!/bin/bash
# Proves: an image whose format is probed as raw gets QEMU's warning when
# opened read-write, refuses writes that would make block 0 look like another
# format (here a qcow2 header), and accepts them when raw is named; the
# GRUB boot-sector sample probes as raw and nothing else.
source "$(dirname "$0")/lib.sh"
need qemu-io qemu-img
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"

qemu-img create -q -f raw base.img 1M
printf 'QFI\373\000\000\000\003' >magic.bin
n=0
both() {  # qemu-io/vimg-io on copies of base.img with the same arguments
    n=$((n + 1))
    cp base.img q.img; cp base.img v.img
    qemu-io "${@//IMG/q.img}" >"p$n.q" 2>&1; echo "exit=$?" >>"p$n.q"
    "$VIMG_IO" "${@//IMG/v.img}" >"p$n.v" 2>&1; echo "exit=$?" >>"p$n.v"
    for f in "p$n.q" "p$n.v"; do
        sed -i 's/[qv]\.img/IMG/g; s/^qemu-io:/TOOL:/; s/^vimg-io:/TOOL:/; s/[0-9:.]* sec (.*)/TIME/' "$f"
    done
    expect_same "p$n.q" "p$n.v" "$*"
    cmp q.img v.img || fail "images differ after $*"
}
both -c 'write -s magic.bin 0 8' -c 'write -P 1 512 512' -c 'write -s magic.bin 4096 8' IMG
both -c 'write -s magic.bin 0 8' -f raw IMG
both -c 'write -P 0 0 512' -c 'read -P 0 0 512' IMG
both -r -c 'read 0 512' IMG
od -A n -t x1 -N 4 v.img | grep -q '51 46 49 fb' && fail "probed raw let a qcow2 magic in"

mbr=$(testdata grub_mbr.raw.bz2)
run_both m1 info --output=json "$mbr"; expect_same m1.q m1.v "info of the GRUB sample"
grep -q '"format": "raw"' m1.v || fail "GRUB boot sector not probed as raw"
pass
