#!/bin/bash
# Proves: `vimg dd` copies what `qemu-img dd` copies for bs/count/skip
# operands (including qemu-img's count-then-skip arithmetic, byte-sized
# blocks and a skip past the end, which warns and exits 0 with an empty
# output) and fails the same way on missing if/of, bad or out-of-range
# bs/count/skip, unknown operands, unknown formats, missing input, an
# uncreatable output and read errors.
source "$(dirname "$0")/lib.sh"

# run q|v ARGS...: runs qemu-img (q) or vimg (v).
run() { local t=$1; shift; if [ "$t" = q ]; then qemu-img "$@"; else "$VIMG" "$@"; fi; }
need qemu-img

head -c 1M /dev/urandom >s.img
truncate -s 1000 odd.img
printf hello | dd of=odd.img conv=notrunc status=none

i=0
check() {
    i=$((i + 1))
    local tool
    for tool in q v; do
        rm -f o.img
        run $tool "$@" >"c$i.$tool" 2>&1
        echo "exit=$?" >>"c$i.$tool"
        if [ -e o.img ]; then mv o.img "o$i.$tool"; fi
    done
    sed -i 's/qemu-img:/TOOL:/g; s/qemu-img --help/TOOL --help/' "c$i.q"
    sed -i 's/vimg:/TOOL:/g; s/vimg --help/TOOL --help/' "c$i.v"
    expect_same "c$i.q" "c$i.v" "dd $*"
    if [ -e "o$i.q" ] || [ -e "o$i.v" ]; then
        cmp -s "o$i.q" "o$i.v" || fail "outputs differ: dd $*"
    fi
    rm -f "o$i.q" "o$i.v"
}

check dd
check dd if=s.img
check dd of=o.img
check dd -f raw if=s.img of=o.img
for ops in "bs=4k count=3" "bs=4k count=3 skip=2" "bs=4k skip=300" "bs=4k skip=256" "bs=0" \
    "bs=x" "bs=-1" "bs=1000" "bs=1k count=x" "count=-1" "skip=x" "foo=bar" "foo" "bs" "=x" \
    "bs=1k=2" "bs=1k bs=2k" "count=9E" "count=16E" "skip=9E" "skip=2E" "bs=2147483647 count=1" \
    "bs=2G" "bs=" "bs=1E" "bs=16E" "count=0x10" "bs=1.5k count=2" "count=1.5" \
    "bs=512 count=1k" "count=0" "bs=1M count=1000" "bs=3 count=5" "bs=3 count=5 skip=1" \
    "bs=3 count=200 skip=1" "bs=512 count=1 skip=2047" "skip=2048" "bs=1000 count=3 skip=1" \
    "bs=1000 skip=1040" "bs=1000 skip=1048" "bs=300k count=4 skip=1" "bs=512 count=2 skip=1" \
    "skip=0" "bs=1G count=1"; do
    check dd -f raw if=s.img of=o.img $ops
done
check dd -f raw if=odd.img of=o.img
check dd -f raw if=odd.img of=o.img bs=7
check dd -f raw if=s.img of=o.img if=odd.img
check dd -f raw if=missing of=o.img
check dd -f raw if=s.img of=/nonexistent-dir/o.img
check dd -f foo if=s.img of=o.img
check dd -O foo -f raw if=s.img of=o.img
check dd -O foo if=missing of=o.img
check dd -O foo -f raw if=s.img of=o.img skip=2E
check dd -f raw if=s.img of=/nonexistent-dir/o skip=2E
check dd -f raw if=s.img of=o.img extra
check dd -z if=s.img of=o.img
check dd -q -f raw if=s.img of=o.img
check dd if=s.img of=o.img -f raw
check dd -f raw -U if=s.img of=o.img
check dd -O raw -f raw if=s.img of=o.img
check dd --image-opts if=driver=raw,file.filename=s.img of=o.img
check dd --image-opts -f raw if=s.img of=o.img
check dd foo=bar bs=x
check dd bs=x foo=bar
check dd --object secret,id=x,data=y -f raw if=s.img of=o.img
check dd -f
image='{"driver":"file","filename":"s.img"}'
rule='{"event":"none","iotype":"read","errno":5}'
file="{\"driver\":\"blkdebug\",\"image\":$image,\"inject-error\":[$rule]}"
check dd if="json:{\"driver\":\"raw\",\"file\":$file}" of=o.img
pass
