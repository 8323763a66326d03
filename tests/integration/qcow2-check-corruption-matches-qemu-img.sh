#!/bin/bash
# Proves: `vimg check` on deliberately corrupted qcow2 images reports what
# `qemu-img check` reports — the same finding lines ("ERROR cluster 5
# refcount=0 reference=1", "Leaked cluster ...", OFLAG_COPIED, unaligned and
# beyond-EOF entries, reserved bits, extended L2 bitmaps, bad refcount
# blocks, bad snapshot entries), the same summary in human and JSON output (fragmented and
# compressed counts, image end offset) and the same exit code. `-r leaks` and
# `-r all` print the same repair lines, and the repaired image is one that
# qemu-img calls what it calls its own repaired copy, with the same guest data
# and snapshot list. Snapshot table repairs (incomplete entries completed,
# overhanging entries and too long extra data dropped, QEMU's refusal to
# write a new table over the old one) and the refused rebuild over an
# unaligned refcount block leave byte-identical files, corrupt bit included.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# Layout of base.qcow2 (64 KiB clusters): header 0, reftable 0x10000,
# refblock 0x20000 (16-bit entries), L1 0x30000, L2 0x40000, data 0x50000..0x70000.
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -c "write -P 1 0 128k" -c "write -P 2 1M 64k" base.qcow2 >/dev/null
RB=$((0x20000)) L1=$((0x30000)) L2=$((0x40000))
[ "$(qemu-img map --output=json base.qcow2 | grep -c '"offset": 327680')" = 1 ] ||
    fail "base image layout is not the expected one"

# Compressed and normal clusters mixed (fragmented/compressed counts).
qemu-img create -q -f qcow2 comp.qcow2 4M
qemu-io -c "write -c -P 3 0 128k" -c "write -P 4 256k 64k" -c "write -c -P 5 512k 64k" \
    comp.qcow2 >/dev/null
# Preallocated zero clusters (ZERO_ALLOC entries).
cp base.qcow2 zero.qcow2
qemu-io -c "write -z 0 64k" zero.qcow2 >/dev/null
# A snapshot (its table at 0x70000, its L1 at 0x60000).
qemu-img create -q -f qcow2 snap.qcow2 4M
qemu-io -c "write -P 1 0 64k" snap.qcow2 >/dev/null
qemu-img snapshot -c snap1 snap.qcow2
qemu-io -c "write -P 2 0 64k" snap.qcow2 >/dev/null
SN=$((0x70000))

mk() { cp "$2" "$1.qcow2"; }
# Small clusters, 64-bit refcounts: 130 refcount blocks, a refcount table of
# two clusters, data runs broken by L2 tables (fragmentation is per L2 table).
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 small.qcow2 8M
qemu-io -c "write -P 3 0 4M" -c "write -P 4 6M 100k" small.qcow2 >/dev/null
RT=$(od -A n -t u8 --endian=big -j 48 -N 8 small.qcow2 | tr -d ' ')
RB0=$(od -A n -t u8 --endian=big -j "$RT" -N 8 small.qcow2 | tr -d ' ')

# Extended L2 entries (16 bytes: entry, then subcluster bitmap): data, zero, compressed.
qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 4M
qemu-io -c "write -P 1 0 4k" -c "write -z 64k 4k" -c "write -c -P 2 128k 64k" ext.qcow2 >/dev/null
XL2=$((0x40000))
mk extboth ext.qcow2;   poke_be64 extboth.qcow2 $((XL2 + 8)) 0x0000000100000001  # alloc+zero
mk extcomp ext.qcow2;   poke_be64 extcomp.qcow2 $((XL2 + 40)) 1        # compressed with bitmap
mk extunal ext.qcow2;   poke_be64 extunal.qcow2 $((XL2 + 24)) 0xff     # unallocated, alloc bits
mk extunal2 ext.qcow2;  poke_be64 extunal2.qcow2 $((XL2 + 56)) 0xff

mk smalllow small.qcow2; poke_be64 smalllow.qcow2 $((RB0 + 8 * 40)) 0   # forces a rebuild
mk leak base.qcow2;      poke_be16 leak.qcow2 $((RB + 2 * 10)) 1   # cluster 10 counted, unused
truncate -s $((11 * 65536)) leak.qcow2
mk low base.qcow2;       poke_be16 low.qcow2 $((RB + 2 * 5)) 0     # data cluster refcount 0
mk high base.qcow2;      poke_be16 high.qcow2 $((RB + 2 * 5)) 2    # data cluster refcount 2
mk rbhigh base.qcow2;    poke_be16 rbhigh.qcow2 $((RB + 2 * 2)) 2  # refblock counts itself twice
mk eof base.qcow2;       poke_be64 eof.qcow2 $L2 0x8000000001000000   # L2 entry past EOF
mk dataual base.qcow2;   poke_be64 dataual.qcow2 $L2 0x8000000000050200  # unaligned data
mk zeroual base.qcow2;   poke_be64 zeroual.qcow2 $L2 0x8000000000050201  # unaligned prealloc zero
mk l2ual base.qcow2;     poke_be64 l2ual.qcow2 $L1 0x8000000000040200    # unaligned L2 table
mk overlap base.qcow2;   poke_be64 overlap.qcow2 $L2 0x8000000000030000  # data on the L1 table
mk l2rsv base.qcow2;     poke_be64 l2rsv.qcow2 $((L2 + 40)) 0x0100000000000000  # reserved bits
mk l2rsvz base.qcow2;    poke_be64 l2rsvz.qcow2 $((L2 + 40)) 3
mk l1rsv base.qcow2;     poke_be64 l1rsv.qcow2 $L1 0x8100000000040000
mk l1eof base.qcow2;     poke_be64 l1eof.qcow2 $L1 0x8000000010000000   # L2 table past EOF
mk copied base.qcow2;    poke_be64 copied.qcow2 $((L2 + 8)) 0x0000000000060000  # COPIED missing
mk l1copied base.qcow2;  poke_be64 l1copied.qcow2 $L1 0x0000000000040000
mk rbout base.qcow2;     poke_be64 rbout.qcow2 $((0x10000)) 0x200000     # refblock past EOF
mk rbual base.qcow2;     poke_be64 rbual.qcow2 $((0x10000)) 0x20200      # unaligned refblock
mk snl1ual snap.qcow2;   poke_be64 snl1ual.qcow2 $SN 0x60200             # snapshot L1 unaligned
mk snl1big snap.qcow2;   poke_be32 snl1big.qcow2 $((SN + 8)) 0x1000000   # snapshot L1 too large
mk sneof snap.qcow2;     poke_be64 sneof.qcow2 64 0x10000000             # table past EOF
mk sncount snap.qcow2;   poke_be32 sncount.qcow2 60 2                    # entry 1 incomplete
mk snextra snap.qcow2;   poke_be32 snextra.qcow2 $((SN + 36)) 0x100000   # extra data too long
mk snmany snap.qcow2;    poke_be32 snmany.qcow2 60 70000                 # snapshot count
mk snoffual snap.qcow2;  poke_be64 snoffual.qcow2 64 0x70100             # table unaligned
mk noreftable base.qcow2; poke_be32 noreftable.qcow2 56 0                # no refcount table

n=0
# check_both IMAGE ARGS...: both tools on their own copy of IMAGE (same name
# in separate directories), same output and exit code; with -r, the repaired
# copies then check the same and hold the same guest data.
check_both() {
    local img=$1; shift
    n=$((n + 1))
    rm -rf q v && mkdir q v && cp "$img" q/x.qcow2 && cp "$img" v/x.qcow2
    (cd q && qemu-img check "$@" x.qcow2 >../c$n.q.raw 2>&1; echo "exit=$?" >>../c$n.q.raw)
    (cd v && "$VIMG" check "$@" x.qcow2 >../c$n.v.raw 2>&1; echo "exit=$?" >>../c$n.v.raw)
    norm c$n.q.raw >c$n.q
    norm c$n.v.raw >c$n.v
    expect_same c$n.q c$n.v "check $* $img"
    case " $* " in
    *" -r "*)
        (cd q && qemu-img check x.qcow2 >../r$n.q 2>&1; echo "exit=$?" >>../r$n.q)
        (cd v && qemu-img check x.qcow2 >../r$n.v 2>&1; echo "exit=$?" >>../r$n.v)
        expect_same r$n.q r$n.v "qemu-img check after check $* $img"
        (cd q && qemu-img snapshot -l x.qcow2 >../l$n.q 2>&1)
        (cd v && qemu-img snapshot -l x.qcow2 >../l$n.v 2>&1)
        expect_same l$n.q l$n.v "snapshot list after check $* $img"
        if [ -n "${SAME_FILE:-}" ]; then
            cmp q/x.qcow2 v/x.qcow2 || fail "repaired files differ after check $* $img"
        fi
        if grep -q "^exit=0" r$n.q; then
            qemu-img compare -q q/x.qcow2 v/x.qcow2 || fail "guest data differs after $* $img"
        fi
        ;;
    esac
}

for img in base comp zero snap leak low high rbhigh eof dataual zeroual l2ual overlap l2rsv l2rsvz \
           l1rsv l1eof copied l1copied rbout snl1ual snl1big sneof sncount ext extboth extcomp \
           extunal extunal2; do
    check_both $img.qcow2
    check_both $img.qcow2 --output=json
    case $img in sn*) export SAME_FILE=1 ;; esac
    check_both $img.qcow2 -r leaks
    check_both $img.qcow2 -r all
    unset SAME_FILE
done
for img in snextra snmany snoffual noreftable; do
    check_both $img.qcow2
    check_both $img.qcow2 --output=json
done
for img in snextra snmany snoffual; do
    SAME_FILE=1 check_both $img.qcow2 -r leaks
    SAME_FILE=1 check_both $img.qcow2 -r all
done
# A table over QEMU's 64 MiB bound: 600 entries with 64 KiB ids and names (sparse file).
mk snbig snap.qcow2
python3 - snbig.qcow2 <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b')
f.seek(60)
f.write(struct.pack('>I', 600))
at = 0x70000
for _ in range(600):
    f.seek(at)
    f.write(struct.pack('>QIHHIIQII', 0, 0, 0xffff, 0xffff, 0, 0, 0, 0, 16) + bytes(16))
    at += (40 + 16 + 2 * 0xffff + 7) // 8 * 8
f.seek(at)
f.write(b'\0')
PY
check_both snbig.qcow2
SAME_FILE=1 check_both snbig.qcow2 -r leaks
# Both a snapshot entry cut short by the file end and leaked clusters before it.
mk sntwo snap.qcow2; poke_be32 sntwo.qcow2 60 2; poke_be16 sntwo.qcow2 $((RB + 2 * 12)) 1
truncate -s $((13 * 65536)) sntwo.qcow2
SAME_FILE=1 check_both sntwo.qcow2 -r all
check_both noreftable.qcow2 -r all
check_both small.qcow2
check_both smalllow.qcow2
check_both smalllow.qcow2 -r all
check_both rbual.qcow2
check_both rbual.qcow2 --output=json
SAME_FILE=1 check_both rbual.qcow2 -r leaks
SAME_FILE=1 check_both rbual.qcow2 -r all
check_both low.qcow2 -q
check_both low.qcow2 -r all --output=json
check_both leak.qcow2 -r leaks --output=json

# The repaired images read back as the original guest data did.
cp leak.qcow2 fixed.qcow2
"$VIMG" check -q -r all fixed.qcow2 >/dev/null 2>&1 || fail "repair of leak.qcow2 failed"
qemu-io -r -c "read -P 1 0 128k" -c "read -P 2 1M 64k" fixed.qcow2 >/dev/null ||
    fail "repaired image lost data"
cp low.qcow2 fixed.qcow2
"$VIMG" check -q -r all fixed.qcow2 >/dev/null 2>&1 || fail "repair of low.qcow2 failed"
qemu-io -r -c "read -P 1 0 128k" -c "read -P 2 1M 64k" fixed.qcow2 >/dev/null ||
    fail "rebuilt image lost data"
qemu-img check fixed.qcow2 >/dev/null || fail "qemu-img finds the rebuilt image unclean"
pass
