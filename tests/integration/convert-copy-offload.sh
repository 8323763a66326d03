#!/bin/bash
# Proves: `vimg convert -C` copies data with copy offloading
# (copy_file_range) where source and target share a filesystem, falls back to
# reading and writing where they do not (a tmpfs target), keeps holes, and
# ends with the same target, map and -p output as `qemu-img convert -C`.
source "$(dirname "$0")/lib.sh"
need qemu-img python3

truncate -s 8M m.img
python3 - <<'PY'
import os, random
rnd = random.Random(5)
fd = os.open("m.img", os.O_WRONLY)
os.pwrite(fd, bytes(rnd.randrange(1, 256) for _ in range(3 << 20)), 0)
os.pwrite(fd, bytes(rnd.randrange(1, 256) for _ in range(4096)), 6 << 20)
os.close(fd)
PY

# offload DIR ARGS...: both tools convert m.img to DIR/o.img with -C.
offload() {
    local dir=$1 tool; shift
    for tool in q v; do
        rm -f "$dir/o.img"
        if [ $tool = q ]; then qemu-img convert -C "$@" m.img "$dir/o.img" >"out.$tool" 2>&1
        else "$VIMG" convert -C "$@" m.img "$dir/o.img" >"out.$tool" 2>&1; fi
        echo "exit=$?" >>"out.$tool"
        qemu-img map -f raw --output=json "$dir/o.img" >"map.$tool"
        cmp -s m.img "$dir/o.img" || fail "-C target differs from the source ($dir $*)"
    done
    sed -i 's/qemu-img:/TOOL:/g; s/vimg:/TOOL:/g' out.q out.v
    expect_same out.q out.v "output of convert -C $*"
    expect_same map.q map.v "map after convert -C $*"
}

offload . -f raw -O raw
offload . -p -f raw -m 2
offload . -f raw -W

if command -v strace >/dev/null; then
    rm -f o.img
    # LeakSanitizer cannot run under ptrace: an ASan build runs without it here.
    ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0 \
        strace -f -e trace=copy_file_range -o trace.txt "$VIMG" convert -C -f raw m.img o.img ||
        fail "convert -C failed under strace"
    grep -q 'copy_file_range(.*) = [1-9]' trace.txt || fail "-C did not offload the copy"
fi

mkdir mnt
if mount -t tmpfs -o size=64M tmpfs mnt 2>/dev/null; then
    on_exit umount "$TESTDIR/mnt"
    offload mnt -f raw
    offload mnt -p -f raw -O raw
fi
pass
