#!/bin/bash
# Proves: `vimg compare` prints the same verdicts and exit codes as `qemu-img
# compare` ("Images are identical.", "Content mismatch at offset N!", the
# size-mismatch warning and its check of the extra area, strict mode's size
# and block-status mismatches), the same -p lines and -q silence, and the same
# errors: usage (1), open (2), block status (3) and read (4) failures.
source "$(dirname "$0")/lib.sh"
need qemu-img

qemu-img create -q -f raw a.img 1M
qemu-img create -q -f raw b.img 1M
qemu-img create -q -f raw c.img 2M
cp a.img d.img; printf x | dd of=d.img bs=1 seek=70001 conv=notrunc status=none
truncate -s 1M e.img
head -c 2M /dev/urandom >r1.img
cp r1.img r2.img; printf x | dd of=r2.img bs=1 seek=71025 conv=notrunc status=none
cp r1.img r3.img; truncate -s 3M r3.img
printf xy | dd of=r3.img bs=1 seek=$((2097152 + 1000)) conv=notrunc status=none
cp r1.img r4.img; truncate -s 30M r4.img
head -c 20M /dev/urandom >big.img; cp big.img big2.img
truncate -s 1000 odd.img
bad() {  # iotype: r1.img behind blkdebug failing that I/O type
    local image='{"driver":"file","filename":"r1.img"}'
    local rule="{\"event\":\"none\",\"iotype\":\"$1\",\"errno\":5}"
    local file="{\"driver\":\"blkdebug\",\"image\":$image,\"inject-error\":[$rule]}"
    echo "json:{\"driver\":\"raw\",\"file\":$file}"
}

i=0
check() {
    i=$((i + 1))
    qemu-img "$@" >"c$i.q" 2>&1; echo "exit=$?" >>"c$i.q"
    "$VIMG" "$@" >"c$i.v" 2>&1; echo "exit=$?" >>"c$i.v"
    sed -i 's/qemu-img:/TOOL:/g; s/qemu-img --help/TOOL --help/' "c$i.q"
    sed -i 's/vimg:/TOOL:/g; s/vimg --help/TOOL --help/' "c$i.v"
    expect_same "c$i.q" "c$i.v" "compare $*"
}

for p in "" -p -q -s "-p -s" "-q -s"; do
    check compare $p a.img b.img
    check compare $p -f raw -F raw a.img b.img
    check compare $p -f raw -F raw a.img c.img
    check compare $p -f raw -F raw c.img a.img
    check compare $p -f raw -F raw a.img d.img
    check compare $p -f raw -F raw d.img a.img
    check compare $p -f raw -F raw a.img e.img
    check compare $p -f raw -F raw r1.img r2.img
    check compare $p -f raw -F raw r1.img r3.img
    check compare $p -f raw -F raw r3.img r1.img
    check compare $p -f raw -F raw r1.img r4.img
    check compare $p -f raw -F raw big.img big2.img
    check compare $p -f raw -F raw odd.img a.img
    check compare $p -f raw -F raw missing a.img
    check compare $p -f raw -F raw a.img missing
    check compare $p -f foo a.img b.img
    check compare $p -F foo a.img b.img
    check compare $p -T foo a.img b.img
    check compare $p -T none -f raw -F raw a.img b.img
    check compare $p -U -f raw -F raw a.img b.img
    check compare $p --image-opts driver=raw,file.filename=a.img driver=raw,file.filename=b.img
    check compare $p --image-opts -f raw a.img b.img
    check compare $p "$(bad read)" r1.img
    check compare $p -f raw r1.img "$(bad read)"
    check compare $p "$(bad block-status)" r1.img
    check compare $p -f raw r1.img "$(bad block-status)"
    check compare $p -f raw r3.img "$(bad read)"
done
check compare
check compare a.img
check compare a.img b.img c.img
check compare -z a.img b.img
check compare -t none a.img b.img
check compare -f
check compare --object secret,id=x,data=y -f raw -F raw a.img b.img
pass
