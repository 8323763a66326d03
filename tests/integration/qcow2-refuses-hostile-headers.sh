#!/bin/bash
# Proves: qcow2 headers with hostile sizes and counts (L1 size, refcount
# table clusters, snapshot count, header extension length, header length,
# backing file name length, virtual size, cluster bits, refcount order) are
# refused with qemu-img's message and exit code by `vimg info`, `vimg check`
# and vimg-io, and that refusing them allocates nothing near the claimed
# size (peak RSS stays small: the size is checked before it sizes a buffer).
# Fields that QEMU accepts (tables past the end of the file) open in both.
# A refcount table of zeros makes `amend -o refcount_bits` fail cleanly; one
# past the end of the file makes allocations a corruption event, not an
# overwrite of the header.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io /usr/bin/time python3

qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -c "write -P 1 0 128k" base.qcow2 >/dev/null
qemu-img snapshot -c s1 base.qcow2

n=0
# hostile NAME FIELD_WIDTH OFFSET VALUE...: a copy of base with the fields poked.
hostile() {
    local name=$1 img=$1.qcow2; shift
    cp base.qcow2 "$img"
    while [ $# -gt 0 ]; do "poke_be$1" "$img" "$2" "$3"; shift 3; done
    n=$((n + 1))
    run_both i$n info "$img"
    expect_same i$n.q i$n.v "info $name"
    run_both k$n check "$img"
    expect_same k$n.q k$n.v "check $name"
    qemu-io -r -c "read 0 512" "$img" 2>&1 | sed 's/^qemu-io:/TOOL:/; /ops;/d' >o$n.q
    "$VIMG_IO" -r -c "read 0 512" "$img" 2>&1 | sed 's/^vimg-io:/TOOL:/; /ops;/d' >o$n.v
    expect_same o$n.q o$n.v "vimg-io $name"
    /usr/bin/time -f %M -o rss$n "$VIMG" info "$img" >/dev/null 2>&1
    [ "$(tail -1 rss$n)" -lt 131072 ] || fail "vimg info $name peaked at $(tail -1 rss$n) KiB"
}

hostile l1-size-huge        32 36 0x7fffffff
hostile l1-size-over-limit  32 36 0x400001
hostile l1-size-zero        32 36 0
hostile l1-offset-past-eof  64 40 0x7fff0000
hostile reftable-huge       32 56 0xffffffff
hostile reftable-over-limit 32 56 129
hostile reftable-zero       32 56 0
hostile reftable-unaligned  64 48 0x10200
hostile snapshots-too-many  32 60 65537
hostile snapshots-max-u32   32 60 0xffffffff
hostile snapshots-unaligned 64 64 0x70004
hostile ext-len-huge        32 116 0xffffffff
hostile ext-len-64k         32 116 0x10000
hostile header-len-huge     32 100 0x20000
hostile backing-name-huge   64 8 0x200 32 16 0xffffffff
hostile size-huge           64 24 0x7fffffffffffffff
hostile cluster-bits-40     32 20 40
hostile refcount-order-7    32 96 7
grep -q "Snapshot table too large" i9.v || fail "snapshot count not refused as QEMU does"

# A refcount table pointing at a cluster of zeros: every refcount reads 0.
# qemu-img amend -o refcount_bits=8 dies of SIGSEGV on such an image; vimg
# refuses it, naming the file, and leaves it untouched; `check -r all`
# repairs it, after which the amend works and the image checks clean.
qemu-img create -q -f qcow2 -o cluster_size=4k zrt.qcow2 4M
qemu-io -c "write -P 0 0 64k" -c "write -P 3 1M 64k" zrt.qcow2 >/dev/null
zero_cluster=$(qemu-img map --output=json zrt.qcow2 |
               python3 -c 'import json,sys; print([e for e in json.load(sys.stdin) if e["data"]][0]["offset"])')
poke_be64 zrt.qcow2 48 "$zero_cluster"
cp zrt.qcow2 zrt.before
"$VIMG" amend -o refcount_bits=8 zrt.qcow2 >am.out 2>&1 && fail "amend of zeroed refcounts succeeded"
grep -qx "vimg: Cannot change the refcount width of 'zrt.qcow2': its refcount structures are corrupt (the header cluster has refcount 0); repair it with 'check -r all' first" am.out ||
    fail "amend of zeroed refcounts: $(cat am.out)"
cmp -s zrt.qcow2 zrt.before || fail "the refused amend changed the image"
"$VIMG" check -r all zrt.qcow2 >/dev/null 2>&1
"$VIMG" amend -o refcount_bits=8 zrt.qcow2 || fail "amend after the repair"
qemu-img check -q zrt.qcow2 || fail "image after repair and amend does not check clean"
qemu-io -c "read -P 3 1M 64k" zrt.qcow2 | grep -q "^read 65536/65536" || fail "data lost"

# A refcount table far past the end of the file reads as zeros: every
# cluster, the header included, looks free. Allocating one must not hand out
# the header: as QEMU's overlap check, a fatal corruption event (image marked
# corrupt, EIO), with qemu-img's messages. QEMU then still writes a refcount
# table entry at the bogus offset (the file grows to about 3.8 GB, sparse);
# vimg writes nothing more.
qemu-img create -q -f qcow2 -o cluster_size=4k far.qcow2 4M
qemu-io -c "write -P 1 0 64k" far.qcow2 >/dev/null
qemu-img bitmap --add far.qcow2 b0     # armed at the first write, dropped with the node
poke_be64 far.qcow2 48 0xe6000000
for cmd in "resize IMG 8M" "snapshot -c s2 IMG"; do
    cp far.qcow2 far-q.qcow2
    cp far.qcow2 far-v.qcow2
    # shellcheck disable=SC2086
    qemu-img ${cmd/IMG/far-q.qcow2} >far.q.raw 2>&1; echo "exit=$?" >>far.q.raw
    # shellcheck disable=SC2086
    "$VIMG" ${cmd/IMG/far-v.qcow2} >far.v.raw 2>&1; echo "exit=$?" >>far.v.raw
    norm far.q.raw | sed 's/far-q/far-X/g' >far.q
    norm far.v.raw | sed 's/far-v/far-X/g' >far.v
    expect_same far.q far.v "$cmd with the refcount table past the end"
    grep -q "overlaps with qcow2_header" far.v || fail "$cmd: no corruption event"
    [ "$(stat -c %s far-v.qcow2)" -le "$(stat -c %s far.qcow2)" ] ||
        fail "$cmd: vimg grew the file to $(stat -c %s far-v.qcow2) bytes"
    qemu-img info --output=json far-v.qcow2 | grep -q '"corrupt": true' ||
        fail "$cmd: the image is not marked corrupt"
done
cp far.qcow2 far-v.qcow2
"$VIMG_IO" -c "write -P 5 0 128k" far-v.qcow2 >far.io 2>&1
rc=$?
# Exit status 1 as qemu-io; a sanitizer build also fails here on a leak.
[ $rc = 1 ] || fail "vimg-io write: exit $rc: $(cat far.io)"
grep -qx "write failed: Input/output error" far.io || fail "vimg-io write: $(cat far.io)"
qemu-io -r -c "read -P 1 0 64k" far-v.qcow2 | grep -q "^read 65536/65536" ||
    fail "the failed write damaged the data"
pass
