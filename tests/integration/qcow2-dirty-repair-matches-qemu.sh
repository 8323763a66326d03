#!/bin/bash
# Proves: a qcow2 image with lazy_refcounts=on whose dirty bit (incompatible
# bit 0) is set is handled as QEMU handles it: `vimg check` reports it as
# `qemu-img check` does; a read-write open (vimg-io) repairs the refcounts
# (rebuilding the refcount structure), prints the same repair lines as
# qemu-io and clears the dirty bit, leaving an image that qemu-img calls
# clean with the guest data intact; a read-only open repairs nothing and
# leaves the file byte for byte as it was.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# 64 KiB clusters: reftable 0x10000, refblock 0x20000, L1 0x30000, L2 0x40000, data 0x50000.
qemu-img create -q -f qcow2 -o lazy_refcounts=on lazy.qcow2 4M
qemu-io -c "write -P 7 0 64k" -c "write -P 8 2M 64k" lazy.qcow2 >/dev/null
cp lazy.qcow2 dirty.qcow2
poke_be64 dirty.qcow2 72 1                      # incompatible_features: dirty
poke_be16 dirty.qcow2 $((0x20000 + 2 * 5)) 0    # data cluster counted 0 (not yet written back)
cp lazy.qcow2 dirtyleak.qcow2
poke_be64 dirtyleak.qcow2 72 1
poke_be16 dirtyleak.qcow2 $((0x20000 + 2 * 9)) 1   # a cluster counted but never used
truncate -s $((10 * 65536)) dirtyleak.qcow2

dirty_bit() { od -A n -t u1 -j 79 -N 1 "$1" | tr -d ' '; }
[ "$(dirty_bit dirty.qcow2)" = 1 ] || fail "could not set the dirty bit"

n=0
for img in dirty dirtyleak; do
    for args in "" "--output=json" "-r leaks" "-r all"; do
        n=$((n + 1))
        rm -rf q v && mkdir q v && cp $img.qcow2 q/x.qcow2 && cp $img.qcow2 v/x.qcow2
        # shellcheck disable=SC2086
        (cd q && qemu-img check $args x.qcow2 >../c$n.q.raw 2>&1; echo "exit=$?" >>../c$n.q.raw)
        # shellcheck disable=SC2086
        (cd v && "$VIMG" check $args x.qcow2 >../c$n.v.raw 2>&1; echo "exit=$?" >>../c$n.v.raw)
        norm c$n.q.raw >c$n.q
        norm c$n.v.raw >c$n.v
        expect_same c$n.q c$n.v "check $args $img"
        [ "$(dirty_bit q/x.qcow2)" = "$(dirty_bit v/x.qcow2)" ] ||
            fail "dirty bit after check $args $img: qemu-img $(dirty_bit q/x.qcow2)," \
                 "vimg $(dirty_bit v/x.qcow2)"
    done
done

# Read-write open: automatic repair, as qemu-io does it.
for img in dirty dirtyleak; do
    rm -rf q v && mkdir q v && cp $img.qcow2 q/x.qcow2 && cp $img.qcow2 v/x.qcow2
    (cd q && qemu-io -c "read -P 7 0 64k" -c "write -P 9 1M 64k" x.qcow2 2>&1 |
        grep -v "ops;" >../o.q)
    (cd v && "$VIMG_IO" -c "read -P 7 0 64k" -c "write -P 9 1M 64k" x.qcow2 2>&1 |
        grep -v "ops;" >../o.v)
    expect_same o.q o.v "rw open of $img"
    grep -q "Rebuilding refcount structure\|Repairing" o.v || fail "no repair reported for $img"
    [ "$(dirty_bit v/x.qcow2)" = 0 ] || fail "dirty bit still set after rw open of $img"
    qemu-img check v/x.qcow2 >k.v 2>&1 || { cat k.v >&2; fail "repaired $img is not clean"; }
    qemu-img check q/x.qcow2 >k.q 2>&1
    expect_same k.q k.v "qemu-img check of the auto-repaired $img"
    qemu-img compare -q q/x.qcow2 v/x.qcow2 || fail "auto-repaired $img lost data"
    qemu-io -r -c "read -P 7 0 64k" -c "read -P 9 1M 64k" -c "read -P 8 2M 64k" v/x.qcow2 \
        >/dev/null || fail "auto-repaired $img reads back wrong"
done

# Read-only open: no repair, no write, reads still work.
cp dirty.qcow2 ro.qcow2
"$VIMG_IO" -r -c "read -P 7 0 64k" -c "read -P 8 2M 64k" ro.qcow2 >o.ro 2>&1 ||
    { cat o.ro >&2; fail "read-only open of a dirty image failed"; }
if grep -q "Repairing\|Rebuilding" o.ro; then fail "read-only open repaired"; fi
cmp -s ro.qcow2 dirty.qcow2 || fail "read-only open changed the dirty image"
run_both info info --output=json dirty.qcow2
expect_same info.q info.v "info of a dirty image"
pass
