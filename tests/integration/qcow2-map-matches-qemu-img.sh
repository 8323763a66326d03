#!/bin/bash
# Proves: `vimg map` on qcow2 images prints what `qemu-img map` prints, JSON
# and human, including
#   - the host offset of zeroed and unallocated (sub)clusters that keep their
#     host cluster (QEMU's ZERO_ALLOC and UNALLOCATED_ALLOC: `write -z`
#     without -u, extended L2 subclusters never written, zeroed clusters
#     shared with a snapshot);
#   - runs split where the file below changes from data to hole inside a
#     data run of a metadata-preallocated image (the answer covers only as
#     much as the file's does);
#   - data clusters that are holes in the file of an image that is not
#     metadata-preallocated stay "data" (QEMU asks the file only when the
#     refcounts say more clusters are in use than the file has storage for);
# then 60 seeded random images: cluster sizes 512 B to 2 MiB, extended L2,
# every preallocation mode, compat 0.10, backing files, compressed clusters,
# internal snapshots, written by qemu-io with data, zero (-z and -z -u) and
# discard requests.
source "$(dirname "$0")/lib.sh"
need qemu-io qemu-img
cd "$TESTDIR"

compare_map() {     # compare_map IMAGE WHAT
    local f
    for f in json human; do
        qemu-img map --output=$f "$1" >q.out 2>&1
        echo "exit=$?" >>q.out
        "$VIMG" map --output=$f "$1" 2>&1 | sed 's/^vimg:/qemu-img:/' >v.out
        echo "exit=${PIPESTATUS[0]}" >>v.out
        diff v.out q.out >&2 || fail "map --output=$f differs: $2"
    done
}

# Zeroed clusters keeping their host cluster, also when shared with a snapshot.
qemu-img create -q -f qcow2 z.qcow2 1M
qemu-io -c "write -P 1 0 64k" -c "write -z 0 64k" -c "write -P 1 64k 64k" z.qcow2 >/dev/null
qemu-img snapshot -c s z.qcow2
qemu-io -c "write -z 64k 64k" -c "write -P 2 192k 64k" -c "write -z -u 192k 64k" z.qcow2 >/dev/null
compare_map z.qcow2 "zero clusters with host clusters"

# Extended L2: zero, unallocated and data subclusters of allocated clusters.
qemu-img create -q -f qcow2 -o extended_l2=on e.qcow2 1M
qemu-io -c "write -P 1 0 4k" -c "write -z 8k 4k" -c "write -P 1 64k 64k" \
        -c "write -z 64k 8k" -c "write -P 3 300k 2k" e.qcow2 >/dev/null
compare_map e.qcow2 "extended L2 subclusters"

# Metadata preallocation: data written into part of a preallocated run.
qemu-img create -q -f qcow2 -o preallocation=metadata m.qcow2 64M
qemu-io -c "write -P 1 1M 3M" -c "write -z 8M 1M" -c "write -P 2 20M 64k" m.qcow2 >/dev/null
compare_map m.qcow2 "metadata preallocation, partly written"

# Not preallocated: a data cluster whose storage was punched out of the file is
# still reported as data, as QEMU does.
qemu-img create -q -f qcow2 h.qcow2 16M
qemu-io -c "write -P 1 0 4M" h.qcow2 >/dev/null
off=$(qemu-img map --output=json h.qcow2 | sed -n 's/.*"offset": \([0-9]*\)}.*/\1/p' | head -1)
[ -n "$off" ] || fail "no offset in qemu-img map of h.qcow2"
fallocate -p -o $((off + 65536)) -l 65536 h.qcow2
compare_map h.qcow2 "data cluster punched out of a non-preallocated image"

# Seeded random images.
for seed in $(seq 1 60); do
    RANDOM=$seed
    cs=(512 4096 65536 2097152)
    c=${cs[$((RANDOM % 4))]}
    x=off
    [ $((RANDOM % 2)) = 1 ] && [ "$c" -ge 16384 ] && x=on
    pre=(off metadata falloc full)
    p=${pre[$((RANDOM % 4))]}
    [ "$c" = 2097152 ] && p=off
    bk=$((RANDOM % 2))
    [ "$bk" = 1 ] && [ "$x" = off ] && p=off
    compat=1.1
    [ $((RANDOM % 5)) = 0 ] && [ "$x" = off ] && compat=0.10
    opts="cluster_size=$c,extended_l2=$x,preallocation=$p,compat=$compat"
    rm -f b.qcow2 t.qcow2
    if [ "$bk" = 1 ]; then
        qemu-img create -q -f qcow2 b.qcow2 16M
        qemu-io -c "write -P 7 0 5M" -c "write -P 8 9M 1M" b.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -o "$opts" -b b.qcow2 -F qcow2 t.qcow2 16M ||
            fail "create $opts with backing"
    else
        qemu-img create -q -f qcow2 -o "$opts" t.qcow2 16M || fail "create $opts"
    fi
    cmds=()
    for i in $(seq 1 12); do
        off=$(( (RANDOM * RANDOM) % (16 << 20) / 512 * 512 ))
        len=$(( (RANDOM % 2048 + 1) * 512 ))
        [ $((off + len)) -gt $((16 << 20)) ] && len=$(( (16 << 20) - off ))
        case $((RANDOM % 6)) in
        0|1) cmds+=(-c "write -P $((RANDOM % 200)) $off $len") ;;
        2) cmds+=(-c "write -z $off $len") ;;
        3) cmds+=(-c "write -z -u $off $len") ;;
        4) cmds+=(-c "discard $off $len") ;;
        5) [ $((RANDOM % 3)) = 0 ] && cmds+=(-c "write -c -P 3 $((off / c * c)) $c") ;;
        esac
    done
    qemu-io "${cmds[@]}" t.qcow2 >/dev/null 2>&1
    if [ $((RANDOM % 4)) = 0 ]; then
        qemu-img snapshot -c s t.qcow2
        qemu-io -c "write -z 0 1M" -c "write -P 9 4M 64k" t.qcow2 >/dev/null 2>&1
    fi
    compare_map t.qcow2 "seed $seed ($opts, backing $bk)"
done
pass
