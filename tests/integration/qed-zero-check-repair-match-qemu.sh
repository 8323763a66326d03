#!/bin/bash
# Proves, for qed against qemu-img / qemu-io: zero writes (write -z, aligned
# and not, over data, zero and unallocated clusters, with a new L2 table)
# and discard give byte-identical files and the same map; `check` and
# `check -r leaks|all` print the same counts (leaks, invalid L2 and L1
# entries, clusters used twice) with the same exit codes and repair alike;
# an image left with need-check set is checked and repaired when opened
# read-write, and left alone read-only; table_size / cluster_size checks
# at create give qemu-img's messages.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

n=0
check() {  # ARGS...: vimg and qemu-img print the same and exit alike
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

# Zero writes and discard.
cmds=(-c 'write -P 1 0 64k' -c 'write -z 8k 16k' -c 'write -z 1M 8k' -c 'write -z 2001 9000'
      -c 'write -z 5M 2M' -c 'write -P 3 5M 100' -c 'write -z 0 4k' -c 'discard 32k 8k'
      -c 'write -z 7M 100' -c 'write -z 12M 1M')
qemu-img create -q -f qed -o cluster_size=4k,table_size=2 q.qed 16M
cp q.qed v.qed
qemu-io -f qed "${cmds[@]}" q.qed >/dev/null || fail "qemu-io zero writes"
"$VIMG_IO" -f qed "${cmds[@]}" v.qed >/dev/null || fail "vimg-io zero writes"
cmp q.qed v.qed || fail "zero writes gave different files"
check map --output=json v.qed
check check v.qed
qemu-img compare q.qed v.qed >/dev/null || fail "qemu-img compare after zero writes"

# A base image with data in two L2 tables, then damaged copies.
qemu-img create -q -f qed -o cluster_size=4k,table_size=2 base.qed 4M
qemu-io -f qed -c 'write -P 1 0 12k' -c 'write -P 2 3M 4k' -c 'write -P 3 1M 4k' base.qed \
    >/dev/null
python3 - <<'EOF'
import shutil, struct
def entries(d, off, n):
    return [struct.unpack_from("<Q", d, off + 8 * i)[0] for i in range(n)]
d = bytearray(open("base.qed", "rb").read())
l1 = struct.unpack_from("<Q", d, 40)[0]
l2s = [e for e in entries(d, l1, 1024) if e]
def save(name, pokes, grow=0, flags=None):
    b = bytearray(d) + bytes(grow)
    for off, val in pokes:
        struct.pack_into("<Q", b, off, val)
    if flags is not None:
        struct.pack_into("<Q", b, 16, flags)
    open(name, "wb").write(b)
save("leaks.qed", [], grow=16384)
save("bad-l2-entry.qed", [(l2s[0] + 8, 0x10000000)])
save("bad-l1-entry.qed", [(l1 + 8 * 1, 0x123)])
save("twice.qed", [(l2s[0] + 16, entries(d, l2s[0], 1)[0])])
save("need-check.qed", [(l2s[0] + 8, 0x10000000)], flags=2)
EOF
for img in leaks bad-l2-entry bad-l1-entry twice; do
    for r in "" "-r leaks" "-r all"; do
        for out in human json; do
            # Each tool repairs its own copy.
            cp "$img.qed" q.qed
            cp "$img.qed" v.qed
            # shellcheck disable=SC2086
            qemu-img check $r --output=$out q.qed >q.out 2>&1
            echo "exit=$?" >>q.out
            # shellcheck disable=SC2086
            "$VIMG" check $r --output=$out v.qed 2>&1 | sed 's/v\.qed/q.qed/; s/^vimg:/qemu-img:/' >v.out
            echo "exit=${PIPESTATUS[0]}" >>v.out
            expect_same q.out v.out "check $r --output=$out of $img"
            cmp q.qed v.qed || fail "check $r repaired $img differently"
        done
    done
done

# need-check: repaired at a read-write open, untouched read-only.
cp need-check.qed q.qed
cp need-check.qed v.qed
qemu-io -f qed -c 'read -P 1 0 4k' q.qed >/dev/null || fail "qemu-io opens need-check image"
"$VIMG_IO" -f qed -c 'read -P 1 0 4k' v.qed >/dev/null || fail "vimg-io opens need-check image"
cmp q.qed v.qed || fail "need-check repair at open differs"
cmp -s need-check.qed v.qed && fail "need-check image was not repaired"
cp need-check.qed v.qed
"$VIMG_IO" -r -f qed -c 'read 0 4k' v.qed >/dev/null
cmp need-check.qed v.qed || fail "read-only open changed a need-check image"
check check need-check.qed

# Creation options.
for o in cluster_size=1000 cluster_size=2k cluster_size=128M cluster_size=64M cluster_size=4.5k \
         cluster_size=0x1000 table_size=3 table_size=32 table_size=0 table_size=0x4 \
         table_size=1k table_size=1.0 table_size=-1 table_size=4294967297 \
         table_size=4294967296 cluster_size=4k,table_size=1; do
    check create -f qed -o "$o" o.qed 1G
done
check create -f qed -o cluster_size=4k,table_size=1 o.qed 1025M
pass
