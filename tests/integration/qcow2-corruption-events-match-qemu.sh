#!/bin/bash
# Proves: broken L1/L2 entries met during I/O are corruption events as in
# QEMU. Read-only, the tools print "qcow2: Image is corrupt: ...; further
# non-fatal corruption events will be suppressed" once and the request fails
# with EIO; read-write, they print "qcow2: Marking image as corrupt: ...",
# set the corrupt bit, and every later request fails with "No medium found"
# (nothing more is written through the broken metadata: before, vimg-io wrote
# over an unaligned cluster entry). Cases: an unaligned L2 table offset, an
# unaligned data cluster offset, an extended L2 entry both allocated and
# zero. Compared with qemu-io, qemu-img map and convert: output, exit status,
# the corrupt flag, `qemu-img check`, and the image bytes afterwards.
source "$(dirname "$0")/lib.sh"
need qemu-io qemu-img od
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"
cd "$TESTDIR"

be64_at() { echo $((16#$(od -An -tx1 -j"$2" -N8 "$1" | tr -d ' \n'))); }
poke() {    # poke FILE OFFSET HEX16
    printf "$(echo "$3" | sed 's/../\\x&/g')" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

qemu-img create -q -f qcow2 base.qcow2 16M
qemu-io -c "write -P 1 0 1M" -c "write -P 2 8M 64k" base.qcow2 >/dev/null
l1=$(be64_at base.qcow2 40)
l2=$(( $(be64_at base.qcow2 "$l1") & 0xfffffffffffe00 ))
cp base.qcow2 l2-unaligned.qcow2
poke l2-unaligned.qcow2 "$l1" 0000000000012345
cp base.qcow2 data-unaligned.qcow2
poke data-unaligned.qcow2 "$l2" 8000000000051200

qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 16M
qemu-io -c "write -P 1 0 4k" ext.qcow2 >/dev/null
l1=$(be64_at ext.qcow2 40)
l2=$(( $(be64_at ext.qcow2 "$l1") & 0xfffffffffffe00 ))
cp ext.qcow2 ext-invalid.qcow2
poke ext-invalid.qcow2 $((l2 + 8)) 0000000100000001

for case in l2-unaligned data-unaligned ext-invalid; do
    for tool in q v; do
        io=qemu-io im=qemu-img
        [ $tool = v ] && io=$VIMG_IO im=$VIMG
        {
            cp $case.qcow2 ro.$tool
            "$io" -r -c "read 0 64k" -c "read 0 64k" -c "read 8M 4k" ro.$tool; echo "exit=$?"
            "$im" map ro.$tool; echo "exit=$?"
            "$im" map --output=json ro.$tool; echo "exit=$?"
            "$im" convert -O raw ro.$tool out.raw; echo "exit=$?"
            cp $case.qcow2 rw.$tool
            "$io" -c "read 8M 4k" -c "read 0 64k" -c "write 0 4k" -c "read 8M 4k" -c flush \
                -c "read 0 4k" rw.$tool; echo "exit=$?"
            qemu-img info rw.$tool | grep corrupt
            qemu-img check rw.$tool; echo "exit=$?"
        } 2>&1 | sed -e 's/^vimg-io:/qemu-io:/; s/^vimg:/qemu-img:/' \
                     -e 's/[0-9.]* [KMG]iB\/sec and [0-9.]* ops\/sec/X/; s/[0-9]*\.[0-9][0-9] sec/T/' \
                     -e "s/\(ro\|rw\)\.$tool/\1.IMG/g" >out.$tool
    done
    expect_same out.q out.v "$case: output"
    cmp -s rw.q rw.v || fail "$case: image after the read-write run differs from qemu-io's"
    cmp -s ro.q $case.qcow2 && cmp -s ro.v $case.qcow2 || fail "$case: read-only run changed the image"
done
pass
