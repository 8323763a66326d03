#!/bin/bash
# Proves: `vimg convert` fails as `qemu-img convert` does, with the same
# one-line error and exit code, when the target filesystem is full (1 MiB
# tmpfs: plain, -S 0, -C, preallocation=falloc), when the target directory is
# read-only, when reading or querying the source fails (blkdebug), and that
# --salvage turns unreadable sectors into zeros with the same warnings.
source "$(dirname "$0")/lib.sh"

# run q|v ARGS...: runs qemu-img (q) or vimg (v).
run() { local t=$1; shift; if [ "$t" = q ]; then qemu-img "$@"; else "$VIMG" "$@"; fi; }
need qemu-img

head -c 4M /dev/urandom >data.img
head -c 1M /dev/urandom >s.img
qemu-img create -q -f raw a.img 1M

# same ARGS...: both tools give the same output and exit code (targets removed between).
same() {
    local tool
    for tool in q v; do
        rm -f small/o.img ro/o.img o.img
        run $tool "$@" >"out.$tool" 2>&1
        echo "exit=$?" >>"out.$tool"
    done
    sed -i 's/qemu-img:/TOOL:/g; s/vimg:/TOOL:/g' out.q out.v
    expect_same out.q out.v "convert $*"
}
# fails ARGS...: as same, and the command must fail.
fails() {
    same "$@"
    grep -q '^exit=0' out.v && fail "succeeded: $*"
    return 0
}

mkdir small ro
if mount -t tmpfs -o size=1M tmpfs small 2>/dev/null; then
    on_exit umount "$TESTDIR/small"
    fails convert -f raw data.img small/o.img
    fails convert -f raw -S 0 data.img small/o.img
    fails convert -f raw -C data.img small/o.img
    fails convert -f raw -m 1 data.img small/o.img
    fails convert -f raw -O raw -o preallocation=falloc data.img small/o.img
    fails dd -f raw if=data.img of=small/o.img bs=64k
else
    echo "SKIP: cannot mount a tmpfs; full-filesystem cases not run"
fi
if mount -t tmpfs -o ro,size=1M tmpfs ro 2>/dev/null; then
    on_exit umount "$TESTDIR/ro"
    fails convert -f raw data.img ro/o.img
    fails convert -f raw data.img a.img ro/o.img
fi

bad() {  # iotype [extra rule keys]: s.img behind blkdebug failing that I/O type
    local image='{"driver":"file","filename":"s.img"}'
    local rule="{\"event\":\"none\",\"iotype\":\"$1\",\"errno\":5${2:-}}"
    local file="{\"driver\":\"blkdebug\",\"image\":$image,\"inject-error\":[$rule]}"
    echo "json:{\"driver\":\"raw\",\"file\":$file}"
}
for rule in "" ',"sector":8' ',"sector":1000'; do
    fails convert "$(bad read "$rule")" o.img
    fails convert -f raw a.img "$(bad read "$rule")" o.img
    fails convert "$(bad block-status "$rule")" o.img
    fails convert -p -f raw a.img "$(bad block-status "$rule")" o.img
    same convert --salvage "$(bad read "$rule")" o.img
    same convert --salvage -f raw a.img "$(bad read "$rule")" o.img
    cmp -s <(head -c 1M o.img) <(head -c 1M a.img) || fail "--salvage changed good data"
done
same convert --salvage "$(bad block-status)" o.img
pass
