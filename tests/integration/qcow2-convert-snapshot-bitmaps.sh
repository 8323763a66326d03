#!/bin/bash
# Proves: `vimg convert -l` (and the old -s) reads an internal snapshot of a
# qcow2 source, and
# `vimg convert --bitmaps [--skip-broken-bitmaps]` copies its persistent
# bitmaps, as `qemu-img convert` does: same messages and exit codes for every
# refusal (snapshot not found, raw source, several sources, source or target
# without bitmap support, inconsistent bitmaps, name clash and size mismatch
# with -n), the same data (`qemu-img compare`) and the same bitmaps: names,
# granularity, flags and bits, as read by an independent parser of the
# bitmap directory. Also proves that writes through vimg-io keep the bitmaps
# of an image valid (the autoclear bit stays set) and set the bits of the
# enabled ones as qemu-io's writes do, and that every image checks clean.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

cat >bmdump.py <<'PY'
# Prints the autoclear bit and each bitmap: name, granularity, flags, set ranges.
import struct, sys
f = open(sys.argv[1], 'rb')
h = f.read(112)
cluster = 1 << struct.unpack('>I', h[20:24])[0]
size = struct.unpack('>Q', h[24:32])[0]
autoclear = struct.unpack('>Q', h[88:96])[0]
hlen = struct.unpack('>I', h[100:104])[0]
f.seek(hlen)
ext = None
while True:
    t, l = struct.unpack('>II', f.read(8))
    if t == 0:
        break
    d = f.read((l + 7) & ~7)
    if t == 0x23852875:
        ext = struct.unpack('>IIQQ', d[:24])
print('autoclear-bitmaps', autoclear & 1)
if ext:
    n, _, dsize, doff = ext
    f.seek(doff)
    dirb = f.read(dsize)
    at = 0
    for i in range(n):
        toff, tsize, flags, typ, gbits, nsize, xsize = struct.unpack('>QIIBBHI', dirb[at:at + 24])
        name = dirb[at + 24 + xsize:at + 24 + xsize + nsize].decode()
        at += (24 + xsize + nsize + 7) & ~7
        f.seek(toff)
        table = struct.unpack('>%dQ' % tsize, f.read(8 * tsize))
        data = b''
        for e in table:
            if e & 0x00fffffffffffe00:
                f.seek(e & 0x00fffffffffffe00)
                data += f.read(cluster)
            else:
                data += (b'\xff' if e & 1 else b'\0') * cluster
        g = 1 << gbits
        nbits = (size + g - 1) // g
        runs, start = [], None
        for b in range(nbits + 1):
            on = b < nbits and (data[b // 8] >> (b % 8)) & 1
            if on and start is None:
                start = b
            elif not on and start is not None:
                runs.append('%d+%d' % (start * g, (b - start) * g))
                start = None
        fl = ','.join(x for x, bit in (('in-use', 1), ('auto', 2)) if flags & bit)
        print(name, g, fl or '-', ' '.join(runs) or 'empty')
PY
bmdump() { python3 "$TESTDIR/bmdump.py" "$1"; }
infobm() {
    qemu-img info --output=json "$1" | python3 -c \
        'import json,sys; print(json.load(sys.stdin).get("format-specific",{}).get("data",{}).get("bitmaps"))'
}

# A source with two snapshots and, in its active layer, an enabled bitmap b0
# and a disabled one b1 (128 KiB granularity) with different bits.
qemu-img create -q -f qcow2 src.qcow2 64M
qemu-io -c 'write -P 1 0 1M' src.qcow2 >/dev/null
qemu-img snapshot -c s1 src.qcow2
qemu-io -c 'write -P 2 0 512k' -c 'write -P 3 10M 1M' src.qcow2 >/dev/null
qemu-img snapshot -c s2 src.qcow2
qemu-io -c 'write -P 4 20M 64k' src.qcow2 >/dev/null
qemu-img bitmap --add src.qcow2 b0
qemu-img bitmap --add -g 128k src.qcow2 b1
qemu-io -c 'write -P 5 0 64k' -c 'write -P 6 5M 1M' src.qcow2 >/dev/null
qemu-img bitmap --disable src.qcow2 b1
qemu-io -c 'write -P 7 30M 64k' src.qcow2 >/dev/null
qemu-img create -q -f raw raw.img 1M
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 64M
# in-use.qcow2: b0 marked in use (flags of the first directory entry)
cp src.qcow2 in-use.qcow2
python3 - in-use.qcow2 <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b')
h = f.read(4096)
off = struct.unpack('>I', h[100:104])[0]
while True:
    t, l = struct.unpack('>II', h[off:off + 8])
    if t == 0x23852875:
        doff = struct.unpack('>Q', h[off + 24:off + 32])[0]
        f.seek(doff + 12)
        flags = struct.unpack('>I', f.read(4))[0]
        f.seek(doff + 12)
        f.write(struct.pack('>I', flags | 1))
        break
    off += 8 + ((l + 7) & ~7)
PY

# convert_both NAME ARGS...: both tools convert to out.q / out.v; output, exit
# code, data, bitmaps and check compared.
convert_both() {
    local name=$1 t tool
    shift
    for t in q v; do
        tool=qemu-img; [ $t = v ] && tool=$VIMG
        rm -f "out.$t"
        "$tool" convert "$@" "out.$t" >"$name.$t.raw" 2>&1
        echo "exit=$?" >>"$name.$t.raw"
        norm "$name.$t.raw" | sed 's/use .vimg bitmap/use '"'"'qemu-img bitmap/' >"$name.$t"
    done
    expect_same "$name.q" "$name.v" "convert $*"
    [ -f out.q ] || { [ ! -f out.v ] || fail "convert $*: vimg left a target"; return 0; }
    grep -q '^exit=0$' "$name.q" || return 0
    qemu-img compare -q out.q out.v || fail "convert $*: targets differ"
    if [ "$(qemu-img info --output=json out.q | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')" = qcow2 ]; then
        qemu-img check -q out.v || fail "convert $*: target does not check clean"
        bmdump out.q >"$name.bm.q"; bmdump out.v >"$name.bm.v"
        expect_same "$name.bm.q" "$name.bm.v" "bitmaps after convert $*"
        infobm out.q >"$name.info.q"; infobm out.v >"$name.info.v"
        expect_same "$name.info.q" "$name.info.v" "info bitmaps after convert $*"
    fi
}

# -l: the forms of the option, and what is refused
i=0
for l in s1 1 s2 snapshot.name=s1 snapshot.id=2 snapshot.id=1,snapshot.name=s1 \
         snapshot.id=2,snapshot.name=s1 nope snapshot.id=9 snapshot.name=nope snapshot.x=1; do
    convert_both "l$((i++))" -O raw -l "$l" src.qcow2
    convert_both "l$((i++))" -O qcow2 -l "$l" src.qcow2
done
convert_both l-raw -O raw -l s1 raw.img
convert_both l-multi -O raw -l s1 src.qcow2 src.qcow2
convert_both l-multi-opts -O raw -l snapshot.id=1 src.qcow2 src.qcow2
# -s NAME (qemu-img before 3.0; 7.2 rejects it) is -l with a bare ID or name.
for sn in s1 2 nope; do
    qemu-img convert -O raw -l "$sn" src.qcow2 s.q >s.q.out 2>&1; echo "exit=$?" >>s.q.out
    "$VIMG" convert -O raw -s "$sn" src.qcow2 s.v >s.v.out 2>&1; echo "exit=$?" >>s.v.out
    norm s.q.out >s.q.txt; norm s.v.out >s.v.txt
    expect_same s.q.txt s.v.txt "convert -s $sn against qemu-img convert -l $sn"
    [ ! -f s.q ] || cmp -s s.q s.v || fail "convert -s $sn read other data than -l $sn"
    rm -f s.q s.v
done
# the snapshot really is read: s1 has pattern 1 where the active layer has 5
"$VIMG" convert -O raw -l s1 src.qcow2 snap.raw || fail "convert -l s1"
qemu-io -f raw -c 'read -P 1 0 1M' -c 'read -P 0 10M 1M' snap.raw | grep -q 'Pattern verification failed' &&
    fail "convert -l s1 did not read the snapshot"

# --bitmaps
convert_both b-qcow2 --bitmaps -O qcow2 src.qcow2
grep -q '^b1 131072 - ' b-qcow2.bm.v || fail "--bitmaps lost b1's granularity or state"
convert_both b-compressed --bitmaps -c -O qcow2 src.qcow2
convert_both b-snapshot --bitmaps -l s1 -O qcow2 src.qcow2
convert_both b-raw-target --bitmaps -O raw src.qcow2
convert_both b-v2-target --bitmaps -O qcow2 -o compat=0.10 src.qcow2
convert_both b-vmdk-target --bitmaps -O vmdk src.qcow2
convert_both b-raw-source --bitmaps -O qcow2 raw.img
convert_both b-v2-source --bitmaps -O qcow2 v2.qcow2
convert_both b-multi --bitmaps -O qcow2 src.qcow2 src.qcow2
convert_both b-in-use --bitmaps -O qcow2 in-use.qcow2
convert_both b-skip --bitmaps --skip-broken-bitmaps -O qcow2 in-use.qcow2
convert_both b-skip-only --skip-broken-bitmaps -O qcow2 src.qcow2
# -n into existing targets: a name clash, a size mismatch, a good one
for case in clash:64M bigger:128M good:64M; do
    for t in q v; do
        rm -f "n.$t"
        qemu-img create -q -f qcow2 "n.$t" "${case#*:}"
        [ "${case%:*}" = clash ] && qemu-img bitmap --add "n.$t" b1
        tool=qemu-img; [ $t = v ] && tool=$VIMG
        "$tool" convert -n --bitmaps -O qcow2 src.qcow2 "n.$t" >"n-$case.$t.raw" 2>&1
        echo "exit=$?" >>"n-$case.$t.raw"
        norm "n-$case.$t.raw" >"n-$case.$t"
        bmdump "n.$t" >>"n-$case.$t"
        qemu-img check -q "n.$t" || fail "convert -n --bitmaps ($case): $t target not clean"
    done
    expect_same "n-$case.q" "n-$case.v" "convert -n --bitmaps ($case)"
done

# Writes keep the bitmaps valid and set the enabled ones' bits, as qemu-io's do.
cp src.qcow2 w.q; cp src.qcow2 w.v
set -- -c 'write 1M 64k' -c 'write -z 30M 200k' -c 'discard 40M 64k' -c 'write 63M 1M'
qemu-io -f qcow2 "$@" w.q >/dev/null
"$VIMG_IO" -f qcow2 "$@" w.v >/dev/null
bmdump w.q >w.bm.q; bmdump w.v >w.bm.v
expect_same w.bm.q w.bm.v "bitmaps after writes"
grep -q '^autoclear-bitmaps 1$' w.bm.v || fail "vimg-io cleared the autoclear bitmaps bit"
qemu-img check -q w.v || fail "image with bitmaps not clean after vimg-io writes"
qemu-img compare -q w.q w.v || fail "writes differ"
infobm w.q >w.info.q; infobm w.v >w.info.v
expect_same w.info.q w.info.v "info bitmaps after writes"
# a writer killed before closing leaves the enabled bitmap in use, not wrong
cp src.qcow2 k.v
( "$VIMG_IO" -f qcow2 -c 'write 0 4k' -c 'sigraise 9' k.v >/dev/null 2>&1; true ) 2>/dev/null
bmdump k.v >k.bm
grep -q '^b0 65536 in-use,auto ' k.bm || fail "killed writer left b0 not in use"
pass
