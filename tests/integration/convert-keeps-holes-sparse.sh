#!/bin/bash
# Proves: `vimg convert` makes the same target as `qemu-img convert` from
# sparse sources: same content, same holes (`qemu-img map`) and the same
# allocated blocks, for -S 0 (fully allocated), the default 4k, 512, 64k and
# 16M, zero blocks written as data (which must become holes), unaligned zero
# runs inside data, several sources of odd sizes concatenated, preallocation,
# -m/-W, and the same -p progress lines.
source "$(dirname "$0")/lib.sh"

# run q|v ARGS...: runs qemu-img (q) or vimg (v).
run() { local t=$1; shift; if [ "$t" = q ]; then qemu-img "$@"; else "$VIMG" "$@"; fi; }
need qemu-img python3 filefrag

# m.img: 12 MiB mixing data, written zeros, small and unaligned zero runs, holes.
truncate -s 12M m.img
python3 - <<'PY'
import os, random
rnd = random.Random(7)
def data(n): return bytes(rnd.randrange(1, 256) for _ in range(n))
fd = os.open("m.img", os.O_WRONLY)
def w(off, buf): os.pwrite(fd, buf, off)
M = 1 << 20
w(0, data(M))                      # data
w(M, bytes(M))                     # 1 MiB of written zeros: must become a hole
w(2 * M, data(4096))
w(2 * M + 4096, bytes(1024))       # a zero run shorter than -S
w(2 * M + 5120, data(3000))
w(2 * M + 11192, bytes(70000))     # an unaligned zero run
w(2 * M + 90000, data(513))
w(5 * M, bytes(600))               # zeros opening a block
w(5 * M + 600, data(100))
w(7 * M + 512, data(512))          # a lone sector
w(9 * M, data(3 * M))
os.close(fd)
PY
truncate -s 1000 odd.img
printf hello | dd of=odd.img conv=notrunc status=none
qemu-img create -q -f raw z.img 0

# data_blocks FILE: the blocks FILE's extents hold (preallocated ones too), after
# writeback. Not st_blocks: that also counts ext4's own extent tree blocks, which
# depend on where the blocks landed (vimg reserves large writes' blocks with
# fallocate, which ext4 places less contiguously than one writeback; posix.c),
# and, before writeback, delayed allocations differently from fallocate'd ones.
data_blocks() {
    sync "$1"
    filefrag -v "$1" | awk '$1 ~ /^[0-9]+:$/ { split($0, f, ":"); n += f[4] } END { print n + 0 }'
}

# layout ARGS...: both tools convert to o.img; content, map and blocks must match.
layout() {
    local tool
    for tool in q v; do
        rm -f o.img
        run $tool "$@" >"out.$tool" 2>&1
        echo "exit=$?" >>"out.$tool"
        qemu-img map -f raw --output=json o.img >"map.$tool"
        data_blocks o.img >"blocks.$tool"
        mv o.img "o.$tool"
    done
    sed -i 's/qemu-img:/TOOL:/g; s/vimg:/TOOL:/g' out.q out.v
    expect_same out.q out.v "output of convert $*"
    cmp -s o.q o.v || fail "content differs: convert $*"
    expect_same map.q map.v "map after convert $*"
    expect_same blocks.q blocks.v "allocated blocks after convert $*"
}

for sparse in "" "-S 0" "-S 512" "-S 1k" "-S 3584" "-S 64k" "-S 1M" "-S 16M"; do
    layout convert -p -f raw -O raw $sparse m.img o.img
    layout convert -f raw -O raw $sparse m.img odd.img m.img o.img
    layout convert -p -f raw $sparse odd.img z.img m.img odd.img o.img
done
layout convert -p -f raw -O raw -o preallocation=full m.img o.img
layout convert -f raw -O raw -o preallocation=falloc m.img o.img
layout convert -f raw -O raw -m 1 m.img o.img
layout convert -f raw -O raw -W -m 3 m.img o.img
layout convert -p -f raw z.img o.img
layout convert -p -f raw odd.img o.img

# The zero megabyte written as data is a hole in vimg's target.
"$VIMG" convert -f raw -O raw m.img v.img
hole='"start": 1048576, "length": 1048576, .*"data": false'
qemu-img map -f raw --output=json v.img | grep -q "$hole" ||
    fail "written zeros did not become a hole"
pass
