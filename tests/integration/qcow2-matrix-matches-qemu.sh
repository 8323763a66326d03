#!/bin/bash
# Proves, for every valid combination of compat (0.10, 1.1) x cluster_size
# (512, 4k, 64k, 2M) x refcount_bits (1, 16, 64) x extended_l2 x
# compression_type (zlib, zstd) x backing file (none, qcow2): one seeded
# sequence of compressed writes, writes, zero writes (with and without
# unmap) and discards run by vimg-io leaves an image that `qemu-img check`
# finds clean (no corruption, no leak) and that `qemu-img compare` finds
# equal to the image qemu-io makes from the same sequence; and the image
# qemu-io made reads in vimg (convert to raw) byte for byte as in qemu-img,
# and checks clean in `vimg check`. compat=0.10 takes only 16-bit refcounts,
# no extended L2 and zlib; extended L2 needs clusters of 16k or more.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

size=$((8 * 1024 * 1024))
qemu-img create -q -f qcow2 base.qcow2 $size
qemu-io -c "write -P 0xbb 0 3M" -c "write -P 0xcc 5M 2M" -c "write -z 6M 64k" base.qcow2 >/dev/null

# gen SEED CLUSTER: the sequence, one qemu-io -c argument per line.
gen() {
    python3 - "$@" "$size" <<'EOF'
import random, sys
seed, cluster, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
touched = set()
ops = []
# Compressed writes first, into clusters nothing has allocated (as QEMU needs).
for _ in range(3):
    n = rng.randint(1, 3) * cluster
    off = rng.randrange(0, size // cluster) * cluster
    n = min(n, size - off)
    cl = set(range(off // cluster, (off + n) // cluster))
    if cl & touched:
        continue
    touched |= cl
    ops.append("write -c -P %d %d %d" % (rng.randint(1, 255), off, n))
for _ in range(40):
    unit = rng.choice([512, 4096, cluster, 1])
    off = rng.randrange(0, size // 512) * 512
    if unit >= 512:
        off = off // unit * unit
    n = min(rng.randint(1, 300000) // 512 * 512 + 512, size - off)
    if unit == cluster:
        n = min((n // cluster + 1) * cluster, size - off)
    kind = rng.choice("wwwwwzzud")
    ops.append({"w": "write -P %d %d %d" % (rng.randint(1, 255), off, n),
                "z": "write -z %d %d" % (off, n),
                "u": "write -z -u %d %d" % (off, n),
                "d": "discard %d %d" % (off, n)}[kind])
print("\n".join(ops))
EOF
}

n=0
seed=0
for compat in 0.10 1.1; do
    for cs in 512 4096 65536 2097152; do
        for rb in 1 16 64; do
            for ext in off on; do
                for ct in zlib zstd; do
                    [ $compat = 0.10 ] && { [ $rb = 16 ] && [ $ext = off ] && [ $ct = zlib ] || continue; }
                    [ $ext = on ] && [ $cs -lt 16384 ] && continue
                    for back in no yes; do
                        seed=$((seed + 1))
                        opts="compat=$compat,cluster_size=$cs,refcount_bits=$rb"
                        [ $compat = 1.1 ] && opts="$opts,extended_l2=$ext,compression_type=$ct"
                        b=()
                        [ $back = yes ] && b=(-b base.qcow2 -F qcow2)
                        what="$opts backing=$back seed=$seed"
                        rm -f q.qcow2 v.qcow2 q.raw vq.raw
                        qemu-img create -q -f qcow2 -o "$opts" "${b[@]}" q.qcow2 $size ||
                            fail "create $what"
                        cp q.qcow2 v.qcow2
                        args=()
                        while read -r op; do args+=(-c "$op"); done < <(gen $seed $cs)
                        qemu-io "${args[@]}" q.qcow2 >q.out 2>&1 || fail "qemu-io $what: $(tail -3 q.out)"
                        "$VIMG_IO" "${args[@]}" v.qcow2 >v.out 2>&1 || fail "vimg-io $what: $(tail -3 v.out)"
                        ! grep -q "failed" q.out v.out || fail "a request failed: $what: $(grep failed q.out v.out | head -3)"
                        qemu-img check -q v.qcow2 >chk 2>&1 || fail "qemu-img check $what: $(cat chk)"
                        qemu-img compare -q q.qcow2 v.qcow2 >cmpout 2>&1 ||
                            fail "vimg-io and qemu-io images differ: $what: $(cat cmpout)"
                        qemu-img convert -O raw q.qcow2 q.raw
                        "$VIMG" convert -O raw q.qcow2 vq.raw || fail "vimg convert $what"
                        cmp -s q.raw vq.raw || fail "vimg reads qemu-io's image differently: $what"
                        "$VIMG" check -q q.qcow2 >chk 2>&1 || fail "vimg check of qemu-io's image $what: $(cat chk)"
                        n=$((n + 1))
                    done
                done
            done
        done
    done
done
[ "$n" = 80 ] || fail "ran $n of 80 combinations"
pass
