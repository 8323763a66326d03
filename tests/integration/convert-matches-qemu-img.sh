#!/bin/bash
# Proves: `vimg convert` accepts the same options as `qemu-img convert` and
# answers every bad or conflicting one (-S, -m, -r, -o, -l, -C with -c/-S,
# --target-is-zero and --target-image-opts without -n, -B/-F on raw, unknown
# formats, missing sources, -t/-T, -o help) with the same message, the same
# -p output and the same exit code, creating the same target (or none).
source "$(dirname "$0")/lib.sh"

# run q|v ARGS...: runs qemu-img (q) or vimg (v).
run() { local t=$1; shift; if [ "$t" = q ]; then qemu-img "$@"; else "$VIMG" "$@"; fi; }
need qemu-img qemu-io

qemu-img create -q -f raw a.img 1M
qemu-io -f raw -c 'write -P 0x11 0 64k' a.img >/dev/null
qemu-img create -q -f raw b.img 2M

i=0
# check ARGS...: runs both tools on fresh copies of t.img (for -n), compares
# stdout+stderr (tool names normalised), exit codes and the targets left.
check() {
    i=$((i + 1))
    local tool
    for tool in q v; do
        rm -f o.img; cp b.img t.img
        run $tool "$@" >"c$i.raw" 2>&1
        echo "exit=$?" >>"c$i.raw"
        sed 's/qemu-img:/TOOL:/g; s/vimg:/TOOL:/g; s/qemu-img --help/TOOL --help/;
             s/vimg --help/TOOL --help/' "c$i.raw" >"c$i.$tool"
        if [ -e o.img ]; then mv o.img "o$i.$tool"; fi
        mv t.img "t$i.$tool"
    done
    expect_same "c$i.q" "c$i.v" "convert $*"
    if [ -e "o$i.q" ] && [ ! -e "o$i.v" ]; then fail "vimg left no target: convert $*"; fi
    if [ ! -e "o$i.q" ] && [ -e "o$i.v" ]; then fail "vimg left a target: convert $*"; fi
    if [ -e "o$i.q" ]; then cmp -s "o$i.q" "o$i.v" || fail "targets differ: convert $*"; fi
    cmp -s "t$i.q" "t$i.v" || fail "-n targets differ: convert $*"
    rm -f "o$i.q" "o$i.v" "t$i.q" "t$i.v"
}

for p in "" -p; do
    check convert $p
    check convert $p a.img
    check convert $p -f raw a.img o.img
    check convert $p -O foo a.img o.img
    check convert $p -f foo a.img o.img
    check convert $p missing.img o.img
    check convert $p -f raw a.img missing.img o.img
    check convert $p -f raw a.img /nonexistent-dir/o.img
    check convert $p -S 1x a.img o.img
    check convert $p -S -1 a.img o.img
    check convert $p -S 100 a.img o.img
    check convert $p -S 16E a.img o.img
    check convert $p -S 16777217 a.img o.img
    check convert $p -S 16M -f raw a.img o.img
    check convert $p -m 0 a.img o.img
    check convert $p -m 17 a.img o.img
    check convert $p -m x a.img o.img
    check convert $p -m 0x3 -f raw a.img o.img
    check convert $p -r 1x a.img o.img
    check convert $p -r 16E a.img o.img
    check convert $p -C -c a.img o.img
    check convert $p -C -S 0 a.img o.img
    check convert $p -S 4k -C a.img o.img
    check convert $p --target-is-zero a.img o.img
    check convert $p --target-image-opts a.img t.img
    check convert $p --target-is-zero --target-image-opts a.img t.img
    check convert $p -n -o preallocation=full a.img t.img
    check convert $p --skip-broken-bitmaps a.img o.img
    check convert $p --bitmaps -f raw a.img o.img
    check convert $p -c -f raw a.img o.img
    check convert $p -c -n -f raw a.img t.img
    check convert $p -B b.img -f raw a.img o.img
    check convert $p -F raw -f raw a.img o.img
    check convert $p -B x -F raw -f raw a.img o.img
    check convert $p -o backing_file=x -f raw a.img o.img
    check convert $p -t foo -f raw a.img o.img
    check convert $p -t foo -n -f raw a.img t.img
    check convert $p -T foo a.img o.img
    check convert $p -o foo=bar -f raw a.img o.img
    check convert $p -o size=foo -f raw a.img o.img
    check convert $p -o '' a.img o.img
    check convert $p -o 'a,' a.img o.img
    check convert $p -o 'a=b,,' -f raw a.img o.img
    check convert $p -o help=1 -f raw a.img o.img
    check convert $p -O raw -o preallocation=bogus -f raw a.img o.img
    check convert $p -l snap -f raw a.img o.img
    check convert $p -l snapshot.foo=x a.img o.img
    check convert $p -l snapshot.name=x -f raw a.img a.img o.img
    check convert $p -l x -f raw a.img a.img o.img
    check convert $p -z a.img o.img
    check convert $p --foo a.img o.img
    check convert $p -f raw a.img a.img
    check convert $p -n -f raw a.img a.img
    check convert $p -n -f raw a.img nonexistent.img
    check convert $p -n -f raw b.img a.img
    check convert $p -n -O foo -f raw a.img t.img
    check convert $p --image-opts -f raw driver=raw,file.filename=a.img o.img
    check convert $p -n --target-image-opts -O raw -f raw a.img driver=raw,file.filename=t.img
    check convert $p -q -f raw a.img o.img
    check convert $p -o size=4M -f raw a.img o.img
    check convert $p -U -f raw a.img o.img
    check convert $p -W -m 16 -f raw a.img o.img
    check convert $p -r 1M -T none -t writeback -f raw a.img o.img
    check convert $p -n -f raw --target-is-zero -B x a.img t.img
done
check convert -o help a.img o.img
check convert -o '?' a.img o.img
check convert -O raw -o help
check convert -o help -O foo
check convert -o help,size=1 -f raw a.img o.img
pass
