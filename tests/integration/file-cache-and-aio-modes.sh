#!/bin/bash
# Proves: every cache mode (-t none|writeback|writethrough|directsync|unsafe,
# -n) and aio mode (-i threads|native|io_uring) of the file protocol reads and
# writes the same bytes as qemu-io, prints the same lines, and refuses the same
# combinations (aio=native without cache.direct, O_DIRECT writes to a file
# whose size is not a multiple of the sector size).
source "$(dirname "$0")/lib.sh"
need qemu-io
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"

normalise() {
    sed -e 's/^qemu-io:/TOOL:/; s/^vimg-io:/TOOL:/' \
        -e 's/[0-9:.]* sec ([^)]*)/TIME/; s/[qv]\.img/IMG/g' "$1"
}
cmds=(-c 'write -P 0x11 0 64k' -c 'write -P 0x22 4095 3' -c 'write -z 128k 64k'
      -c 'writev -P 0x33 1M 512 4k 100' -c 'read -P 0x11 0 4095' -c 'read -P 0x22 4095 3'
      -c 'read -v 4090 16' -c 'flush' -c 'discard 64k 64k' -c 'map')
n=0
run() {  # args: tool options
    n=$((n + 1))
    qemu-img create -q -f raw q.img 4M; cp q.img v.img
    qemu-io "$@" "${cmds[@]}" q.img >"m$n.q.raw" 2>&1; echo "exit=$?" >>"m$n.q.raw"
    "$VIMG_IO" "$@" "${cmds[@]}" v.img >"m$n.v.raw" 2>&1; echo "exit=$?" >>"m$n.v.raw"
    normalise "m$n.q.raw" >"m$n.q"; normalise "m$n.v.raw" >"m$n.v"
    expect_same "m$n.q" "m$n.v" "options $*"
    cmp q.img v.img || fail "content differs with options $*"
}
for t in none writeback writethrough directsync unsafe; do
    run -f raw -t "$t"
    run -f raw -t "$t" -i threads
    run -f raw -t "$t" -i io_uring
    run -f raw -t "$t" -i native
done
run -f raw -n
run -f raw -n -i native
run -f raw -i bogus
run -f raw -t bogus

# O_DIRECT needs the size to be a multiple of the alignment to write.
truncate -s 1000 odd.img
qemu-io -n -f raw -c 'read 0 1' odd.img >q.out 2>&1; echo "exit=$?" >>q.out
"$VIMG_IO" -n -f raw -c 'read 0 1' odd.img >v.out 2>&1; echo "exit=$?" >>v.out
normalise q.out >q.n; normalise v.out >v.n
expect_same q.n v.n "O_DIRECT write permission on an unaligned file"
pass
