#!/bin/bash
# Proves: `vimg rebase -c` (qemu-img 8.2's option; the installed 7.2 has
# none) leaves an image that reads exactly as before, passes `qemu-img check`,
# and holds every cluster it merged compressed (or as a zero cluster):
# - the four cases of QEMU's iotest 314 give the `qemu-img check` figures
#   QEMU 8.2 prints there (100% compressed, same image end offsets), and a
#   format without compression is refused with its message;
# - seeded chains base <- mid <- top (cluster sizes 512 B to 2 MiB, extended
#   L2, compat=0.10, zstd, a top larger than its backing, subcluster, zero,
#   compressed writes and discards) rebased with -c onto nothing, onto base
#   (a layer of the old chain) and onto an unrelated image: `qemu-img compare`
#   against the old chain's contents, a clean check, and in `qemu-img map`
#   no uncompressed data in a cluster the top did not allocate (in part)
#   before.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

qio() { qemu-io "$@" >/dev/null || fail "qemu-io $*"; }

# --- iotest 314 ---------------------------------------------------------
size=$((48 * 1024 * 1024)); half=$((size / 2)); third=$((size / 3))
qemu-img create -q -f raw t.raw "$size"
"$VIMG" rebase -c -f raw -b "" t.raw >out 2>&1 && fail "rebase -c of a raw image succeeded"
grep -qx "vimg: Compression not supported for this file format" out ||
    fail "raw: $(cat out)"
"$VIMG" rebase -c -u -f raw -b "" t.raw >out 2>&1 && fail "rebase -c -u of a raw image succeeded"

# check_314 IMAGE "ALLOCATION LINE" END_OFFSET: the figures QEMU 8.2 prints.
check_314() {
    qemu-img check "$1" >chk || fail "qemu-img check $1: $(cat chk)"
    printf 'No errors were found on the image.\n%s\nImage end offset: %s\n' "$2" "$3" >want
    expect_same want chk "check after rebase -c ($1)"
}
qemu-img create -q -f qcow2 a.base "$size"
qemu-img create -q -f qcow2 -b a.base -F qcow2 a.img "$size"
qio -c "write -c -P 0xaa 0 $half" a.base
qio -c "write -c -P 0xbb $half $half" a.img
"$VIMG" rebase -c -f qcow2 -b "" a.img || fail "rebase -c onto nothing"
qio -c "read -P 0xaa 0 $half" -c "read -P 0xbb $half $half" a.img
check_314 a.img "768/768 = 100.00% allocated, 100.00% fragmented, 100.00% compressed clusters" 458752

qemu-img create -q -f raw b.base "$half"
qemu-img create -q -f qcow2 -b b.base -F raw b.img "$size"
qio -f raw -c "write -P 0xaa 0 $half" b.base
qio -c "write -c -P 0xbb $half $half" b.img
"$VIMG" rebase -c -f qcow2 -b "" b.img || fail "rebase -c with a raw backing file"
qio -c "read -P 0xaa 0 $half" -c "read -P 0xbb $half $half" b.img
check_314 b.img "768/768 = 100.00% allocated, 100.00% fragmented, 100.00% compressed clusters" 458752

qemu-img create -q -f qcow2 c.base "$size"
qemu-img create -q -f qcow2 -b c.base -F qcow2 c.itmd "$size"
qemu-img create -q -f qcow2 -b c.itmd -F qcow2 c.img "$size"
qio -c "write -c -P 0xaa 0 $third" c.base
qio -c "write -c -P 0xbb $third $third" c.itmd
qio -c "write -c -P 0xcc $((third * 2)) $third" c.img
"$VIMG" rebase -c -f qcow2 -b c.base -F qcow2 c.img || fail "rebase -c removing a delta"
qio -c "read -P 0xaa 0 $third" -c "read -P 0xbb $third $third" \
    -c "read -P 0xcc $((third * 2)) $third" c.img
check_314 c.img "512/768 = 66.67% allocated, 100.00% fragmented, 100.00% compressed clusters" 458752

qemu-img create -q -f qcow2 d.base 65536
qemu-img create -q -f qcow2 -b d.base -F qcow2 d.img 65536
qio -c "write -P 0xaa 0 32767" d.base
"$VIMG" rebase -c -f qcow2 -b "" d.img || fail "rebase -c of an unaligned merge"
qio -c "read -P 0xaa 0 32767" -c "read -P 0 32767 32769" d.img
check_314 d.img "1/1 = 100.00% allocated, 100.00% fragmented, 100.00% compressed clusters" 393216

# -u -c changes only the name, as without -c.
qemu-img create -q -f qcow2 -b d.base -F qcow2 e.img 65536
"$VIMG" rebase -c -u -b "" e.img || fail "rebase -c -u"
qemu-io -c "read -P 0 0 64k" e.img >/dev/null || fail "rebase -c -u copied data"

# --- seeded chains ------------------------------------------------------
# gen SEED LAYER SIZE CLUSTER: qemu-io arguments for one layer's writes.
gen() {
    python3 - "$@" <<'EOF'
import random, sys
seed, layer, size, cluster = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed + layer)
touched = set()   # QEMU compresses only into clusters never allocated
for _ in range(rng.randint(4, 12)):
    kind = rng.choice(["w", "w", "w", "c", "z", "zu", "d"])
    if kind == "c":
        n = rng.randint(1, 4) * cluster
        off = rng.randrange(0, size // cluster) * cluster
        n = min(n, size - off)
    else:
        unit = rng.choice([512, 4096, cluster])
        off = rng.randrange(0, size // unit) * unit
        n = min(rng.randint(1, 6) * unit, size - off)
    clusters = set(range(off // cluster, (off + n + cluster - 1) // cluster))
    if kind == "c" and clusters & touched:
        continue
    touched |= clusters
    pat = rng.randint(1, 255)
    cmd = {"w": "write -P %d" % pat, "c": "write -c -P %d" % pat, "z": "write -z",
           "zu": "write -z -u", "d": "discard"}[kind]
    print("-c", "%s %d %d" % (cmd, off, n))
EOF
}

# plain_ranges IMAGE [CLUSTER]: depth-0 ranges with a host offset (data
# stored plain); with CLUSTER, every depth-0 range widened to whole clusters.
plain_ranges() {
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
c = int(sys.argv[1]) if len(sys.argv) > 1 else 0
for e in json.load(sys.stdin):
    s, t = e["start"], e["start"] + e["length"]
    if c and e["depth"] == 0:
        print(s // c * c, (t + c - 1) // c * c)
    elif not c and e["depth"] == 0 and e["data"] and "offset" in e:
        print(s, t)
' "${@:2}"
}

# Every range in $2 lies inside a range in $1.
ranges_within() {
    python3 - "$1" "$2" <<'EOF'
import sys
def load(p):
    return [tuple(map(int, l.split())) for l in open(p) if l.strip()]
before, after = load(sys.argv[1]), load(sys.argv[2])
for s, e in after:
    covered = s
    for bs, be in sorted(before):
        if bs <= covered < be:
            covered = be
    if covered < e:
        sys.exit("uncompressed data at %d..%d was written by rebase" % (s, e))
EOF
}

n=0
for seed in 1 2 3 4 5 6 7 8; do
    case $seed in
        1) opts="cluster_size=65536" ;;
        2) opts="cluster_size=512" ;;
        3) opts="cluster_size=16384,extended_l2=on" ;;
        4) opts="cluster_size=2M" ;;
        5) opts="compat=0.10,cluster_size=4096" ;;
        6) opts="compression_type=zstd,cluster_size=16k" ;;
        7) opts="cluster_size=65536,extended_l2=on" ;;
        8) opts="cluster_size=8192,refcount_bits=1" ;;
    esac
    cluster=$(sed -n 's/.*cluster_size=\([0-9]*\)\([kM]\?\).*/\1 \2/p' <<<"$opts" |
              awk '{ m = $2 == "k" ? 1024 : $2 == "M" ? 1048576 : 1; print $1 * m }')
    [ -n "$cluster" ] || cluster=65536
    bsize=$((cluster * 40)); tsize=$((cluster * 48 + 1536))
    for target in none base other; do
        n=$((n + 1))
        dir="s$seed-$target"; mkdir "$dir" && cd "$dir" || exit 1
        for img in "base.qcow2 $bsize" "mid.qcow2 $bsize -b base.qcow2 -F qcow2" \
                   "top.qcow2 $tsize -b mid.qcow2 -F qcow2" "other.qcow2 $((bsize / 2))"; do
            set -- $img
            qemu-img create -q -f qcow2 -o "$opts" "$1" "$2" "${@:3}" ||
                fail "seed $seed: create $img"
        done
        mapfile -t a < <(gen "$seed" base "$bsize" "$cluster"); qio "${a[@]}" base.qcow2
        mapfile -t a < <(gen "$seed" mid "$bsize" "$cluster"); qio "${a[@]}" mid.qcow2
        mapfile -t a < <(gen "$seed" top "$tsize" "$cluster"); qio "${a[@]}" top.qcow2
        mapfile -t a < <(gen "$seed" other "$((bsize / 2))" "$cluster"); qio "${a[@]}" other.qcow2
        qemu-img convert -O raw top.qcow2 want.raw
        # Clusters the top allocates in part (extended L2) cannot take a
        # compressed write: the only ones rebase may write plain.
        plain_ranges top.qcow2 "$cluster" >before
        case $target in
            none) args=(-b "") ;;
            base) args=(-b base.qcow2 -F qcow2) ;;
            other) args=(-b other.qcow2 -F qcow2) ;;
        esac
        "$VIMG" rebase -c "${args[@]}" top.qcow2 >out 2>&1 ||
            fail "seed $seed ($opts) onto $target: $(cat out)"
        qemu-img compare -f raw -F qcow2 want.raw top.qcow2 >out 2>&1 ||
            fail "seed $seed ($opts) onto $target: contents differ: $(cat out)"
        qemu-img check top.qcow2 >out 2>&1 ||
            fail "seed $seed ($opts) onto $target: check: $(cat out)"
        plain_ranges top.qcow2 >after
        ranges_within before after || fail "seed $seed ($opts) onto $target"
        cd "$TESTDIR" || exit 1
    done
done
[ "$n" = 24 ] || fail "ran $n of 24 seeded cases"
pass
