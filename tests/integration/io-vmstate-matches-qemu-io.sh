#!/bin/bash
# Proves: `write -b` / `read -b` reach a qcow2 image's VM state — past the
# virtual disk, at the L1-aligned "vm state offset" — as qemu-io's do: same
# output (including EFBIG for an L1 table past its limit and EIO past QEMU's
# maximum length), an image `qemu-img check` finds clean, with the same disk
# as qemu-io leaves (`qemu-img compare`), whose VM state qemu-io reads back as
# written; on raw images -b fails with "Operation not supported".
# Not covered: offsets past 2^32 L2 tables (7E with 16 KiB clusters), where
# QEMU's 32-bit L1 index wraps the write onto other offsets and vimg fails
# with EFBIG instead.
# The generated qcow2 sequences of io-qcow2-matches-qemu-io.sh mix -b in too.
source "$(dirname "$0")/lib.sh"
need qemu-io qemu-img
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"

cmds=(-c 'write -b 0 64k' -c 'write -b -P 0x11 1000k 100k' -c 'read -b -P 0xcd 0 64k'
      -c 'read -b -P 0 64k 64k' -c 'write -b -P 0x22 1G 512' -c 'write -b -P 0x33 100G 512'
      -c 'write -b 1T 512' -c 'read -b 7E 512' -c 'write -b -c 0 512' -c 'write -b 0 0'
      -c 'read -b 0x7fffffff9ffffe00 512' -c 'read -b 0x7fffffffa0000000 512'
      -c 'write -b 0x7fffffff00000000 512' -c 'write -b 0x7ffffffffffffe00 512'
      -c 'write -b 1 512' -c 'write -b -z 0 512' -c 'write -b -f 0 512')
check_opts() {  # create-opts
    rm -f q.qcow2 v.qcow2
    qemu-img create -q -f qcow2 ${1:+-o "$1"} q.qcow2 1M || fail "qemu-img create failed"
    cp q.qcow2 v.qcow2
    qemu-io -f qcow2 "${cmds[@]}" q.qcow2 2>&1 | sed 's/qemu-io/TOOL/; /ops;/d' >out.q
    "$VIMG_IO" -f qcow2 "${cmds[@]}" v.qcow2 2>&1 | sed 's/vimg-io/TOOL/; /ops;/d' >out.v
    expect_same out.q out.v "-b output ($1)"
    qemu-img check -q v.qcow2 || fail "qemu-img check failed ($1)"
    qemu-img compare -q q.qcow2 v.qcow2 || fail "disks differ ($1)"
    qemu-io -r -f qcow2 -c 'read -b -P 0x11 1000k 100k' -c 'read -b -P 0x22 1G 512' \
        -c 'read -b -P 0x33 100G 512' -c 'read -b -P 0xcd 512 64000' v.qcow2 >out.r 2>&1
    grep -q failed out.r && fail "VM state not read back ($1): $(cat out.r)"
}
check_opts ""
check_opts "compat=0.10"
check_opts "cluster_size=16k,extended_l2=on"
check_opts "cluster_size=4k"

qemu-img create -q -f raw r.img 1M
for tool in qemu-io "$VIMG_IO"; do
    "$tool" -f raw -c 'write -b 0 512' -c 'read -b 0 0' -c 'read -b 0x7fffffffc0000000 512' \
        r.img >"raw.$(basename "$tool")" 2>&1
done
expect_same raw.qemu-io raw.vimg-io "raw -b"
pass
