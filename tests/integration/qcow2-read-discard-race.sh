#!/bin/bash
# Proves: in a qcow2 image a read or an in-place write racing a discard that
# frees the same cluster never touches that host cluster once it is handed
# out again. tests/helpers/qcow2-race reads and rewrites the first cluster
# from several threads while another discards it, writes 0xbb to other
# clusters (which get the freed host clusters) and reads them back: every
# read of the first cluster must see all 0xaa or all zeros and every 0xbb
# cluster must read back whole. Without vimg holding such I/O against the
# free this fails within about a second (tmpfs makes the discard rounds
# fast). The image is then checked clean by qemu-img and read by qemu-io.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
RACE=$VIMG_BUILD/tests/helpers/qcow2-race
[ -x "$RACE" ] || fail "qcow2-race not built at $RACE"

dir=$TESTDIR
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    dir=$(mktemp -d /dev/shm/vimg-race.XXXXXX) || fail "mktemp in /dev/shm"
    on_exit rm -rf "$dir"
fi

holds() {  # image offset length pattern...: does the range hold one of the patterns whole?
    local img=$1 off=$2 len=$3 p
    shift 3
    for p in "$@"; do
        qemu-io -r -f qcow2 -c "read -P $p $off $len" "$img" 2>&1 | grep -q '^read ' && return 0
    done
    return 1
}

for cs in 64k 4k; do
    img=$dir/race-$cs.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=$cs "$img" 4M || fail "qemu-img create"
    "$RACE" "$img" 6 >"$TESTDIR/out" 2>&1 || { cat "$TESTDIR/out" >&2; fail "race ($cs clusters)"; }
    grep -q " reads, [1-9][0-9]* discard rounds" "$TESTDIR/out" ||
        { cat "$TESTDIR/out" >&2; fail "no discard rounds ran ($cs clusters)"; }
    qemu-img check -q "$img" || fail "qemu-img check after the race ($cs clusters)"
    # The first cluster holds 0xaa or zeros, the others zeros or 0xbb.
    c=$(( ${cs%k} * 1024 ))
    holds "$img" 0 $c 0xaa 0 || fail "first cluster neither 0xaa nor zeros ($cs clusters)"
    for i in 0 1 2 3; do
        holds "$img" $(( (1 << 20) + i * c )) $c 0xbb 0 ||
            fail "cluster $i at 1 MiB neither 0xbb nor zeros ($cs clusters)"
    done
done
pass
