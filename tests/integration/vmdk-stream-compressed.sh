#!/bin/bash
# Proves: vimg writes streamOptimized VMDK images that qemu-img, libvmdk
# (vmdkinfo, pyvmdk) and a walk of the grain markers accept: every grain is
# a marker (LBA, size) followed by a zlib (deflate) stream that inflates to
# the source's grain, and the grain table points at it; the output is at
# most 1.02x the size of qemu-img's. convert (with and without -c, which a
# stream target implies as in qemu-img) keeps content; -c into
# monolithicSparse writes plain grains as qemu-img does; a rewrite of a
# written grain fails as in qemu-io; images qemu-img writes read the same in
# vimg; `check` matches qemu-img, also on a grain table pointing past EOF.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io vmdkinfo /usr/bin/python3

n=0
check() {  # ARGS...: vimg and qemu-img print the same and exit alike
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

# 40 MiB: compressible text, random bytes, holes, a lone sector (partial grain).
truncate -s 40M src.raw
head -c 6M /usr/bin/qemu-img | dd of=src.raw conv=notrunc status=none
head -c 3M /dev/urandom | dd of=src.raw bs=1M seek=10 conv=notrunc status=none
qemu-io -f raw -c 'write -P 7 20M 512' -c 'write -P 9 39M 1M' src.raw >/dev/null

"$VIMG" convert -O vmdk -o subformat=streamOptimized src.raw v.vmdk || fail "convert"
qemu-img convert -O vmdk -o subformat=streamOptimized src.raw q.vmdk || fail "qemu-img convert"
qemu-img compare -q src.raw v.vmdk || fail "content"
qemu-img check -q v.vmdk || fail "qemu-img check"
sv=$(stat -c %s v.vmdk); sq=$(stat -c %s q.vmdk)
[ $((sv * 100)) -le $((sq * 102)) ] || fail "size $sv > 1.02 x $sq"
vmdkinfo v.vmdk >vi || fail "vmdkinfo"
grep -q 'Stream optimized' vi || fail "vmdkinfo: not stream optimized"
/usr/bin/python3 - v.vmdk src.raw <<'PY' || fail "grain walk"
import struct, sys, zlib, hashlib, pyvmdk
img = open(sys.argv[1], 'rb').read(); src = open(sys.argv[2], 'rb').read()
(magic, version, flags, capacity, grain, desc_off, desc_size, n_gtes, rgd, gd,
 overhead) = struct.unpack_from('<IIIQQQQIQQQ', img, 0)
assert magic == 0x564d444b and version == 3 and flags & 0x30000 == 0x30000, hex(flags)
assert struct.unpack_from('<H', img, 77)[0] == 1            # deflate
gs = grain * 512
n_grains = 0
for t in range((capacity // grain + n_gtes - 1) // n_gtes):
    gt = struct.unpack_from('<I', img, gd * 512 + 4 * t)[0]
    for k in range(n_gtes):
        sec = struct.unpack_from('<I', img, gt * 512 + 4 * k)[0]
        g = t * n_gtes + k
        if g >= capacity // grain:
            break
        if sec == 0:
            assert src[g * gs:(g + 1) * gs].count(0) == gs, "grain %d missing" % g
            continue
        lba, size = struct.unpack_from('<QI', img, sec * 512)
        assert lba == g * grain, (g, lba)
        data = zlib.decompress(img[sec * 512 + 12:sec * 512 + 12 + size])
        assert data == src[g * gs:(g + 1) * gs], "grain %d differs" % g
        n_grains += 1
h = pyvmdk.handle(); h.open(sys.argv[1]); h.open_extent_data_files()
assert h.read_buffer_at_offset(len(src), 0) == src, "libvmdk reads differently"
print(n_grains, "grains checked")
PY

# -c: implied for a stream target; monolithicSparse takes plain grains.
"$VIMG" convert -c -O vmdk -o subformat=streamOptimized src.raw vc.vmdk || fail "convert -c"
qemu-img compare -q src.raw vc.vmdk || fail "convert -c content"
"$VIMG" convert -c -O vmdk src.raw vs.vmdk && qemu-img convert -c -O vmdk src.raw qs.vmdk ||
    fail "convert -c monolithicSparse"
qemu-img compare -q src.raw vs.vmdk || fail "convert -c monolithicSparse content"
[ "$(stat -c %s vs.vmdk)" = "$(stat -c %s qs.vmdk)" ] || fail "monolithicSparse -c size"

# qemu-img's stream image reads the same; writes into written grains fail alike.
"$VIMG" compare -q src.raw q.vmdk || fail "vimg reads qemu-img's stream image"
cp v.vmdk w.vmdk; cp v.vmdk wq.vmdk
("$VIMG_IO" -c 'write -P 1 0 64k' w.vmdk; echo "exit=$?") 2>&1 | sed 's/^vimg-io:/TOOL:/' | sort >wv
(qemu-io -c 'write -P 1 0 64k' wq.vmdk; echo "exit=$?") 2>&1 | sed 's/^qemu-io:/TOOL:/' | sort >wq
expect_same wq wv "rewrite of a written grain"
# A hole's grain takes a write, in vimg as in qemu-io.
"$VIMG_IO" -c 'write -P 5 30M 64k' w.vmdk >/dev/null || fail "write into a hole"
qemu-io -r -c 'read -P 5 30M 64k' w.vmdk | grep -q '^read' || fail "qemu-io reads the new grain"

# check, clean and with a grain table entry past the end of the file.
check check v.vmdk
check check --output=json v.vmdk
qemu-img create -q -f vmdk m.vmdk 10M
qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 1M 64k' m.vmdk >/dev/null
check check m.vmdk
gd=$(od -An -tu8 -j56 -N8 m.vmdk | tr -d ' ')
gt=$(od -An -tu4 -j$((gd * 512)) -N4 m.vmdk | tr -d ' ')
poke_le32 m.vmdk $((gt * 512 + 16 * 4)) $((0x100000))     # grain 16 past EOF
check check m.vmdk
check check --output=json m.vmdk
for sub in monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat; do
    "$VIMG" create -q -f vmdk -o subformat=$sub s-$sub.vmdk 10M
    "$VIMG_IO" -c 'write -P 3 1M 1M' s-$sub.vmdk >/dev/null
    check check s-$sub.vmdk
done
pass
