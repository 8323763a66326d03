#!/bin/bash
# Proves: `vimg bitmap` (--add [-g] [--disable], --remove, --clear, --enable,
# --disable, --merge [-b [-F]], several in order) on qcow2 does what
# `qemu-img bitmap` does: run on copies of one image (its bitmaps made and
# dirtied by QEMU), both give the same messages and exit codes, `qemu-img
# info --output=json` lists the same bitmaps (flags, granularity), an
# independent reader finds the same dirty ranges, and `qemu-img check` stays
# clean. Each tool then works on the other's result. Failing actions leave
# QEMU's bitmaps valid (the writable open clears the autoclear bit).
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# dump IMG: autoclear bits, then per bitmap: name, granularity, dirty byte ranges.
dump() {
    python3 - "$1" <<'PY'
import struct, sys
d = open(sys.argv[1], 'rb').read()
cs = 1 << struct.unpack('>I', d[20:24])[0]
size = struct.unpack('>Q', d[24:32])[0]
at, ext = struct.unpack('>I', d[100:104])[0], None
while at + 8 <= cs:
    t, l = struct.unpack('>II', d[at:at + 8])
    if t == 0:
        break
    if t == 0x23852875:        # bitmaps extension
        ext = struct.unpack('>IIQQ', d[at + 8:at + 32])
    at += 8 + (l + 7) // 8 * 8
print('autoclear', struct.unpack('>Q', d[88:96])[0])
if ext:
    n, _, _, at = ext
    for _ in range(n):
        to, ts, fl, ty, gb, ns, es = struct.unpack('>QIIBBHI', d[at:at + 24])
        name = d[at + 24 + es:at + 24 + es + ns].decode()
        at += (24 + es + ns + 7) // 8 * 8
        g, data = 1 << gb, b''
        for j in range(ts):
            e = struct.unpack('>Q', d[to + 8 * j:to + 8 * j + 8])[0] & 0x00fffffffffffe00
            data += d[e:e + cs] if e else bytes(cs)
        runs, start, nbits = [], None, (size + g - 1) // g
        for b in range(nbits + 1):
            on = b < nbits and data[b // 8] >> (b % 8) & 1
            if on and start is None:
                start = b
            if not on and start is not None:
                runs.append('%d-%d' % (start * g, min(b * g, size)))
                start = None
        print(name, g, ' '.join(runs))
PY
}

# mkbase OPTS...: base.qcow2 with bitmaps a (64k), c (4k, disabled), big (1M), dirtied by QEMU.
mkbase() {
    qemu-img create -q -f qcow2 "$@" base.qcow2 64M
    qemu-img bitmap --add base.qcow2 a
    qemu-img bitmap --add -g 4k --disable base.qcow2 c
    qemu-io -c 'write 0 1M' -c 'write 40M 100k' base.qcow2 >/dev/null
    qemu-img bitmap --add -g 1M base.qcow2 big
    qemu-io -c 'write 10M 4k' -c 'write 63M 1M' base.qcow2 >/dev/null
    qemu-img bitmap --disable base.qcow2 a
}

# same BITMAP ARGS...: the action list on copies of base.qcow2 (q.qcow2, v.qcow2).
same() {
    local bm=$1 what; shift
    what="bitmap $* $bm"
    cp base.qcow2 "$TESTDIR/q.qcow2"
    cp base.qcow2 "$TESTDIR/v.qcow2"
    (cd "$TESTDIR" && qemu-img bitmap "$@" q.qcow2 "$bm" >q.raw 2>&1; echo "exit=$?" >>q.raw)
    (cd "$TESTDIR" && "$VIMG" bitmap "$@" v.qcow2 "$bm" >v.raw 2>&1; echo "exit=$?" >>v.raw)
    # QEMU names the node ('#block145'), vimg the file.
    norm q.raw | sed "s/q\.qcow2/IMG/g; s/'#block[0-9]*'/'IMG'/" >q.out
    norm v.raw | sed 's/v\.qcow2/IMG/g' >v.out
    expect_same q.out v.out "messages of $what"
    qemu-img info --output=json q.qcow2 | grep -v '"filename"\|actual-size' >q.info
    qemu-img info --output=json v.qcow2 | grep -v '"filename"\|actual-size' >v.info
    expect_same q.info v.info "info after $what"
    dump q.qcow2 >q.dump
    dump v.qcow2 >v.dump
    expect_same q.dump v.dump "bitmap data after $what"
    qemu-img check -q v.qcow2 || fail "check after vimg $what"
}

cd "$TESTDIR" || fail "no scratch directory"
for opts in "" "-o cluster_size=4k,refcount_bits=8" "-o extended_l2=on"; do
    mkbase $opts
    qemu-img create -q -f qcow2 other.qcow2 64M
    qemu-img bitmap --add -g 512 other.qcow2 o
    qemu-io -c 'write 20M 3k' other.qcow2 >/dev/null
    qemu-img create -q -f qcow2 small.qcow2 32M
    qemu-img bitmap --add small.qcow2 s
    qemu-img create -q -f raw r.raw 64M

    same a --clear
    same a --remove
    same c --merge a
    same big --merge c
    same c --merge a --merge big --enable
    same new --add -g 512 --merge big --merge a
    same new --add --disable
    same new --add -g 2G
    same a --remove --add --merge big
    same a --enable --disable --enable
    same a --clear --remove
    same c --merge o -b other.qcow2
    same a --merge o -b other.qcow2 -F qcow2
    same c --merge a -b base.qcow2
    # Errors: the actions before the failing one stay done.
    same c --merge nx
    same nx --merge a
    same a --add
    same x --add --add
    same c --enable --remove --clear
    same x --add -g 1000
    same x --add -g 256
    same x --add -g 4G
    same c --merge s -b small.qcow2
    same c --merge a -b r.raw -F raw
    same c --merge a -b missing.qcow2
    # 1024-character name: vimg's one-line error (512 bytes) cannot hold QEMU's whole text.
    cp base.qcow2 v.qcow2
    "$VIMG" bitmap --add v.qcow2 "$(printf 'n%.0s' $(seq 1024))" 2>v.raw && fail "long name"
    grep -q "^vimg: Operation add on bitmap nnnn*nnnn failed: Can't make bitmap 'nnnn" v.raw ||
        fail "long name message: $(cat v.raw)"
    cmp -s <(dump base.qcow2) <(dump v.qcow2) || fail "long name changed the bitmaps"

    # Removing every bitmap drops the extension and the autoclear bit.
    cp base.qcow2 q.qcow2
    cp base.qcow2 v.qcow2
    for bm in a c big; do
        qemu-img bitmap --remove q.qcow2 $bm || fail "qemu-img remove $bm"
        "$VIMG" bitmap --remove v.qcow2 $bm || fail "vimg remove $bm"
    done
    cmp -s <(dump q.qcow2) <(dump v.qcow2) || fail "empty directory differs ($opts)"
    qemu-img info --output=json v.qcow2 | grep -q bitmaps && fail "bitmaps left ($opts)"
    qemu-img check -q v.qcow2 || fail "check after removing all ($opts)"

    # Each tool on the other's bitmaps; QEMU tracks writes in vimg's enabled bitmaps.
    cp base.qcow2 q.qcow2
    cp base.qcow2 v.qcow2
    "$VIMG" bitmap --add -g 128k v.qcow2 n --merge a -b q.qcow2 || fail "vimg add n"
    qemu-img bitmap --add -g 128k q.qcow2 n --merge a || fail "qemu-img add n"
    qemu-io -c 'write 30M 64k' q.qcow2 >/dev/null
    qemu-io -c 'write 30M 64k' v.qcow2 >/dev/null
    qemu-img bitmap --merge big v.qcow2 c --remove || fail "qemu-img on vimg's image"
    "$VIMG" bitmap --merge big q.qcow2 c --remove || fail "vimg on qemu-img's image"
    cmp -s <(dump q.qcow2) <(dump v.qcow2) || fail "round trip differs ($opts)"
    qemu-img check -q q.qcow2 || fail "check after round trip ($opts)"
    qemu-img check -q v.qcow2 || fail "check after round trip ($opts)"
done

# Version 2 images cannot store bitmaps.
qemu-img create -q -f qcow2 -o compat=0.10 base.qcow2 1M
same b --add
same b --remove
pass
