#!/bin/bash
# Proves: `vimg-io -c truncate` and `vimg resize` answer as qemu-io and
# qemu-img do, format by format: the same error lines in the same order of
# checks (the format's own checks come first: qcow2 asks for a multiple of 512
# before it refuses preallocated shrinking, qed refuses every preallocation
# mode and shrinking, formats without resize say so, only the file below says
# "Cannot use preallocation for shrinking files"), the same resulting virtual
# size, and an image `qemu-img check` calls clean. qed images grow with
# `vimg resize` as with qemu-img, and keep their data.
source "$(dirname "$0")/lib.sh"
need qemu-io qemu-img
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"
cd "$TESTDIR"

cmds=(-c "truncate -m full 512k" -c "truncate -m falloc 1000" -c "truncate -m metadata 2000k"
      -c "truncate -m metadata 512k" -c "truncate 3000" -c "truncate 511k" -c "truncate 4M"
      -c "truncate -m full 4M" -c "truncate -m falloc 5M" -c "truncate 1T"
      -c "truncate 5000T" -c "truncate -m off 2M")
for fmt in qcow2 raw qed vdi qcow vpc vmdk vhdx; do
    for tool in q v; do
        rm -f "t.$tool"
        qemu-img create -q -f $fmt "t.$tool" 1M
        qemu-img info -f $fmt "t.$tool" | grep -q "virtual size" || fail "create $fmt"
        if [ $tool = q ]; then
            qemu-io "${cmds[@]}" -f $fmt "t.$tool" >"out.$tool" 2>&1
        else
            "$VIMG_IO" "${cmds[@]}" -f $fmt "t.$tool" >"out.$tool" 2>&1
        fi
        echo "exit=$?" >>"out.$tool"
        qemu-img info -f $fmt "t.$tool" | grep "virtual size" >>"out.$tool"
        case $fmt in qcow2|qed|vdi|qcow|vhdx|vmdk)
            qemu-img check -q -f $fmt "t.$tool" >>"out.$tool" 2>&1 ;;
        esac
    done
    sed -i 's/^vimg-io:/qemu-io:/' out.v
    expect_same out.q out.v "truncate sequence on $fmt"
done

# qed: resize grows, keeps the data, refuses shrinking and odd sizes.
for tool in q v; do
    rm -f "r.$tool"
    qemu-img create -q -f qed "r.$tool" 1M
    qemu-io -c "write -P 0x5a 512k 512k" -f qed "r.$tool" >/dev/null
    {
        for size in 3M 1M 1000 2049T 64G; do
            if [ $tool = q ]; then qemu-img resize -f qed "r.$tool" $size
            else "$VIMG" resize -f qed "r.$tool" $size; fi
            echo "exit=$?"
            if [ $tool = q ]; then qemu-img resize --shrink -f qed "r.$tool" $size
            else "$VIMG" resize --shrink -f qed "r.$tool" $size; fi
            echo "exit=$?"
        done
        qemu-img info -f qed "r.$tool" | grep "virtual size"
        qemu-img check -f qed "r.$tool"
        qemu-io -c "read -P 0x5a 512k 512k" -c "read -P 0 1M 2M" -f qed "r.$tool" | grep -c "^read"
    } >"res.$tool" 2>&1
done
sed -i 's/^vimg:/qemu-img:/' res.v
expect_same res.q res.v "qed resize"
pass
