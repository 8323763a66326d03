#!/bin/bash
# Proves: the generated qemu-io sequences that once set vimg-io apart from
# qemu-io on qcow2 now match it (output, exit status, guest data, allocation
# map, clean `qemu-img check`), under every creation option set and backing
# file the difftest uses:
#   default seed sequence 253 and seed 12 sequence 50: `write -z -n` of part
#     of a cluster that holds data must fail with "Operation not supported"
#     (no fallback to writing zeros), not write the zeros as data;
#   seed 13 sequence 4 (4 KiB clusters): `truncate -m metadata` takes a
#     contiguous run of host clusters per L2 table (passing over a freed
#     cluster too small for it) and writes the part of the last cluster past
#     the new end, so the map shows the same zero and data runs.
#   seed 13 sequence 104, seed 21 sequences 87 and 88 (checked directly
#     below): `truncate -m full`
#     under -n (O_DIRECT) fails writing the zeros; the image is left as QEMU
#     leaves it (new refcount table, no leaked clusters, old size, the file
#     cut back), with QEMU's "Failed to resize underlying file: " prefix.
# Also compares `write -z -n` over subclusters of compressed, data and zero
# clusters with extended L2 entries directly, and `create -o
# preallocation=metadata` and `truncate -m metadata` at sizes that end inside
# a cluster.
source "$(dirname "$0")/lib.sh"
need qemu-io qemu-img python3
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"

n=0
for case in "7202 253" "12 50" "13 4"; do
    set -- $case
    for set in ":none" "compat=0.10:none" "cluster_size=16k,extended_l2=on:none" \
               "cluster_size=4k:none" "compression_type=zstd:none" ":raw" \
               "cluster_size=4k:qcow2"; do
        opts=${set%:*} backing=${set##*:} n=$((n + 1))
        python3 "$SRC_ROOT/tests/io-gen/difftest.py" --vimg-io "$VIMG_IO" \
            --workdir "$TESTDIR/d$n" --format qcow2 --seed "$1" --only "$2" \
            --create-opts "$opts" --backing "$backing" >"$TESTDIR/d$n.out" 2>&1 ||
            { cat "$TESTDIR/d$n.out" >&2; fail "seed $1 sequence $2 ($opts, backing $backing)"; }
        rm -rf "$TESTDIR/d$n"
    done
done

# write -z -n with extended L2 entries: ENOTSUP unless the subcluster can take the zero flag.
enotsup=0
for cmd in "write -z -n 0 512" "write -z -n 512 512" "write -z -n 0 1k" "write -z -n -u 0 512" \
           "write -z -n 16k 512" "write -z -n 32768 16k" "write -z -n 40k 1k" \
           "write -z -n 50k 32k" "write -z -n 100k 1k"; do
    for t in q v; do
        tool=qemu-io
        [ $t = v ] && tool=$VIMG_IO
        img=$TESTDIR/x.$t.qcow2
        qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on "$img" 1M
        qemu-io -f qcow2 -c "write -c -P 1 0 16k" -c "write -P 2 32k 16k" -c "write -z 48k 16k" \
            "$img" >/dev/null || fail "setup"
        "$tool" -f qcow2 -c "$cmd" "$img" 2>&1 | sed 's/, [0-9].* ops; .*/, OPS/' >"$TESTDIR/x.$t.out"
        qemu-img map --output=json "$img" | sed 's/"offset": [0-9]*//' >>"$TESTDIR/x.$t.out"
    done
    expect_same "$TESTDIR/x.q.out" "$TESTDIR/x.v.out" "$cmd"
    grep -q "^write failed: Operation not supported" "$TESTDIR/x.v.out" && enotsup=$((enotsup + 1))
    qemu-img check -q "$TESTDIR/x.v.qcow2" || fail "qemu-img check after $cmd"
done

[ $enotsup = 4 ] || fail "expected 4 of the write -z -n commands to fail, $enotsup did"

# Growth with preallocation=metadata from a size inside a cluster, over a backing
# file too: the guest data before the old end stays, the maps agree.
head -c $((3 << 20)) /dev/urandom >"$TESTDIR/bk.raw"
for bk in "" "-b bk.raw -F raw"; do
    for t in q v; do
        tool=qemu-io
        [ $t = v ] && tool=$VIMG_IO
        (cd "$TESTDIR" && qemu-img create -q -f qcow2 -o cluster_size=4k $bk g.$t.qcow2 1049088) ||
            fail "qemu-img create"
        "$tool" -f qcow2 -c "truncate -m metadata 1906688" "$TESTDIR/g.$t.qcow2" ||
            fail "$tool truncate"
        qemu-img map --output=json "$TESTDIR/g.$t.qcow2" | sed 's/"offset": [0-9]*//' \
            >"$TESTDIR/g.$t.map"
    done
    expect_same "$TESTDIR/g.q.map" "$TESTDIR/g.v.map" "map after truncate -m metadata ($bk)"
    qemu-img compare -q "$TESTDIR/g.q.qcow2" "$TESTDIR/g.v.qcow2" ||
        fail "guest data differs after truncate -m metadata ($bk)"
    qemu-img check -q "$TESTDIR/g.v.qcow2" || fail "qemu-img check after truncate ($bk)"
done

# create -o preallocation=metadata: the same map as qemu-img's.
for opts in cluster_size=4k "" cluster_size=16k,extended_l2=on; do
    for size in 1906688 3M; do
        o=preallocation=metadata${opts:+,$opts}
        qemu-img create -q -f qcow2 -o "$o" "$TESTDIR/p.q.qcow2" $size || fail "qemu-img create"
        "$VIMG" create -q -f qcow2 -o "$o" "$TESTDIR/p.v.qcow2" $size || fail "vimg create"
        for t in q v; do
            qemu-img map --output=json "$TESTDIR/p.$t.qcow2" | sed 's/"offset": [0-9]*//' \
                >"$TESTDIR/p.$t.map"
        done
        expect_same "$TESTDIR/p.q.map" "$TESTDIR/p.v.map" "map after create -o $o $size"
        qemu-img check -q "$TESTDIR/p.v.qcow2" || fail "qemu-img check ($o $size)"
    done
done

# truncate -m full failing under -n (O_DIRECT; the case of seed 13 sequence
# 104 and seed 21 sequences 87/88): the same bytes in the image, the same
# message; a raw file keeps its length. QEMU's fill buffer is a plain 1 MiB
# malloc, so its O_DIRECT write fails unless the allocator happens to return a
# 512-aligned block (seen in one CI run out of many): cases where qemu-io's
# fill succeeded are left out rather than compared.
odirect=0
for opts in "" cluster_size=16k,extended_l2=on compat=0.10; do
    for to in 1024 1874944; do
        for t in q v; do
            tool=qemu-io
            [ $t = v ] && tool=$VIMG_IO
            qemu-img create -q -f qcow2 ${opts:+-o $opts} "$TESTDIR/n.$t.qcow2" 1000
            qemu-io -f qcow2 -c "write -P 7 0 512" "$TESTDIR/n.$t.qcow2" >/dev/null || fail "setup"
            "$tool" -n -f qcow2 -c "truncate -m full $to" "$TESTDIR/n.$t.qcow2" 2>&1 |
                sed 's/^[a-z-]*io: //' >"$TESTDIR/n.$t.out"
        done
        qemu-img check -q "$TESTDIR/n.v.qcow2" || fail "qemu-img check after -n truncate ($opts)"
        grep -q "^Failed to resize underlying file: " "$TESTDIR/n.q.out" || continue
        odirect=$((odirect + 1))
        expect_same "$TESTDIR/n.q.out" "$TESTDIR/n.v.out" "-n truncate -m full $to ($opts)"
        cmp -s "$TESTDIR/n.q.qcow2" "$TESTDIR/n.v.qcow2" ||
            fail "image differs from qemu-io's after -n truncate -m full $to ($opts)"
    done
done
if [ $odirect = 0 ]; then
    echo "note: O_DIRECT zero writes did not fail here ($TESTDIR); failure path not exercised" >&2
fi
for t in q v; do
    tool=qemu-io
    [ $t = v ] && tool=$VIMG_IO
    head -c 1000 /dev/zero >"$TESTDIR/n.$t.raw"
    "$tool" -n -f raw -c "truncate -m full 1874944" "$TESTDIR/n.$t.raw" 2>/dev/null
    stat -c %s "$TESTDIR/n.$t.raw" >"$TESTDIR/n.$t.len"
done
[ "$(cat "$TESTDIR/n.q.len")" = 1000 ] &&
    expect_same "$TESTDIR/n.q.len" "$TESTDIR/n.v.len" "raw file length after -n truncate -m full"

# truncate -m falloc|full as QEMU lays it out: at the same size too (a new
# refcount table, the last cluster moved), with extended L2 from a size inside
# a cluster, over a backing file (compat=0.10 too: allocated clusters, no zero
# flag needed): the same bytes as qemu-io's image.
head -c 4096 /dev/urandom >"$TESTDIR/short.raw"
for opts in "" cluster_size=16k,extended_l2=on compat=0.10; do
    for bk in "" "-b bk.raw -F raw" "-b short.raw -F raw"; do
        for sizes in "1024 1024" "16384 16384" "1024 17408" "5120 40960" "20480 3145728"; do
            set -- $sizes
            for t in q v; do
                tool=qemu-io
                [ $t = v ] && tool=$VIMG_IO
                (cd "$TESTDIR" && qemu-img create -q -f qcow2 ${opts:+-o $opts} $bk l.$t.qcow2 $1) ||
                    fail "qemu-img create"
                qemu-io -f qcow2 -c "write -P 7 0 512" "$TESTDIR/l.$t.qcow2" >/dev/null || fail "setup"
                "$tool" -f qcow2 -c "truncate -m full $2" "$TESTDIR/l.$t.qcow2" 2>&1 |
                    sed 's/^[a-z-]*io: //' >"$TESTDIR/l.$t.out"
            done
            expect_same "$TESTDIR/l.q.out" "$TESTDIR/l.v.out" "truncate -m full $1 -> $2 ($opts $bk)"
            cmp -s "$TESTDIR/l.q.qcow2" "$TESTDIR/l.v.qcow2" ||
                fail "image differs from qemu-io's after truncate -m full $1 -> $2 ($opts $bk)"
            qemu-img check -q "$TESTDIR/l.v.qcow2" || fail "qemu-img check ($1 -> $2, $opts $bk)"
        done
    done
done
pass
