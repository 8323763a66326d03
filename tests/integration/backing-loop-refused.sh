#!/bin/bash
# Proves: a backing chain that loops (an image naming itself, a<->b, a 3-cycle
# across formats) is refused on open with one line naming the file, by vimg
# and vimg-io, read-only and read-write, quickly and without touching the
# images (qemu-io -r recurses until it runs out of file descriptors), while a
# long legitimate chain still opens and reads through.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$TESTDIR"

qemu-img create -q -f qcow2 self.qcow2 1M
qemu-img rebase -q -u -b self.qcow2 -F qcow2 self.qcow2
qemu-img create -q -f qcow2 a.qcow2 1M
qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2
qemu-img rebase -q -u -b b.qcow2 -F qcow2 a.qcow2
qemu-img create -q -f qed x.qed 1M
qemu-img create -q -f qcow2 -b x.qed -F qed y.qcow2
qemu-img create -q -f qcow2 -b y.qcow2 -F qcow2 z.qcow2
qemu-img rebase -q -u -b z.qcow2 -F qcow2 x.qed
md5sum *.qcow2 *.qed >sums

for img in self.qcow2 b.qcow2 z.qcow2; do
    for ro in "" -r; do
        timeout 20 "$VIMG_IO" $ro -c "read 0 4k" "$img" >out 2>&1
        rc=$?
        [ $rc = 1 ] || fail "vimg-io $ro $img: exit $rc: $(head -c 300 out)"
        [ "$(wc -l <out)" = 1 ] || fail "vimg-io $ro $img: not one line: $(head -c 300 out)"
        grep -q "creates an infinite loop" out || fail "vimg-io $ro $img: $(cat out)"
    done
    timeout 20 "$VIMG" convert -O raw "$img" out.raw 2>out && fail "convert of $img succeeded"
    grep -q "^vimg: Could not open '$img': Backing file '.*' creates an infinite loop.$" out ||
        fail "convert $img: $(head -c 300 out)"
    # info of the image alone works (as qemu-img's); --backing-chain names the loop as qemu-img.
    run_both info info "$img"
    expect_same info.q info.v "info $img"
    run_both chain info --backing-chain "$img"
    tail -n 2 chain.q >chain.q.tail; tail -n 2 chain.v >chain.v.tail
    expect_same chain.q.tail chain.v.tail "info --backing-chain $img"
done
md5sum -c --quiet sums || fail "a refused image changed"

# A chain of 40 images still opens and reads the base's data through all of them.
qemu-img create -q -f qcow2 c0.qcow2 1M
qemu-io -f qcow2 -c "write -P 0x42 0 64k" c0.qcow2 >/dev/null
for i in $(seq 1 40); do
    qemu-img create -q -f qcow2 -b c$((i - 1)).qcow2 -F qcow2 c$i.qcow2
done
"$VIMG_IO" -r -c "read -P 0x42 0 64k" c40.qcow2 >out || fail "40-deep chain: $(cat out)"
grep -q "Pattern verification failed" out && fail "40-deep chain data"
pass
