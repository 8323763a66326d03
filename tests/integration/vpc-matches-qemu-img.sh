#!/bin/bash
# Proves: vimg reads VHD (vpc) images as MANIFEST.tsv and qemu-img read them
# (Virtual PC, bximage, the must-fail fuzzer and corrupt samples); `info` and
# `map` match qemu-img, including the CHS/current_size rule per creator app
# and force_size_calc; corrupt footers, dynamic headers and BATs fail with
# qemu-img's messages; `create -f vpc` (dynamic/fixed, force_size, CHS
# rounding, size limits, help and errors) writes the same bytes as qemu-img
# except timestamp, UUID and checksums; writes through vimg-io and convert
# read back identically in qemu-img and in libvhdi's vhdiinfo.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3 vhdiinfo

manifest() {  # FILE.bz2 COLUMN
    awk -F'\t' -v f="$1" -v c="$2" '$1 == f { print $c }' "$SHARED/testdata/MANIFEST.tsv"
}

n=0
check() {  # ARGS...: vimg and qemu-img print the same and exit alike
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

# sha256 of a sparse file, hashing holes as zeros without reading them.
hash_raw() {
    python3 - "$1" <<'PY'
import hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size
h = hashlib.sha256(); pos = 0; zeros = bytes(1 << 20)
while pos < size:
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        data = size
    while pos < data:
        k = min(data - pos, len(zeros)); h.update(zeros[:k]); pos += k
    if pos >= size:
        break
    hole = os.lseek(fd, pos, os.SEEK_HOLE)
    os.lseek(fd, pos, os.SEEK_SET)
    while pos < hole:
        b = os.read(fd, min(hole - pos, 1 << 20)); h.update(b); pos += len(b)
print(h.hexdigest())
PY
}

# The samples: info, map and content as the manifest says.
for f in $(awk -F'\t' '$2 == "vpc" { print $1 }' "$SHARED/testdata/MANIFEST.tsv"); do
    img=$(basename "$(testdata "$f")") || exit 1
    check info "$img"
    check info --output=json "$img"
    check info -f vpc "$img"
    if [ "$(manifest "$f" 6)" = ok ]; then
        check map --output=json "$img"
        check map "$img"
        "$VIMG" convert -O raw "$img" "$img.raw" || fail "convert $img"
        if [ "$(manifest "$f" 4)" -gt $((4 << 30)) ]; then
            # Hashing 127 GiB of zeros takes minutes: this sample is empty (the
            # manifest says all zeros), so check the size and that the few data
            # extents of the copy hold only zeros.
            [ "$(stat -c %s "$img.raw")" = "$(manifest "$f" 4)" ] || fail "$img: size differs"
            python3 - "$img.raw" <<'PY' || fail "$img: content is not all zeros"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size; pos = 0; total = 0
while pos < size:
    try:
        pos = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    end = os.lseek(fd, pos, os.SEEK_HOLE); total += end - pos
    if total > 1 << 20 or any(os.pread(fd, end - pos, pos)):
        sys.exit(1)
    pos = end
PY
        else
            [ "$(hash_raw "$img.raw")" = "$(manifest "$f" 5)" ] || fail "$img: content differs"
        fi
        rm -f "$img.raw"
    else
        note=$(manifest "$f" 7)
        grep -qxF "TOOL: ${note#*]: }" "c$n.v" || fail "$img: message is not '${note#*]: }'"
    fi
done

# fix_footer FILE [OFFSET FORMAT VALUE]...: sets footer fields (both copies) and
# recomputes their checksums; FORMAT is a struct code or "s" for 4 chars.
fix_footer() {
    python3 - "$@" <<'PY'
import struct, sys
f = sys.argv[1]; d = bytearray(open(f, "rb").read()); a = sys.argv[2:]
for base in (0, len(d) - 512):
    if d[base:base + 8] != b"conectix":
        continue
    for i in range(0, len(a), 3):
        o = base + int(a[i], 0)
        b = a[i + 2].encode().ljust(4, b"\0") if a[i + 1] == "s" else \
            struct.pack(a[i + 1], int(a[i + 2], 0))
        d[o:o + len(b)] = b
    d[base + 64:base + 68] = bytes(4)
    d[base + 64:base + 68] = struct.pack(">I", ~sum(d[base:base + 512]) & 0xffffffff)
open(f, "wb").write(d)
PY
}

# Corrupt images from a fresh dynamic and a fixed one, one named field each.
qemu-img create -q -f vpc dyn.vhd 10M
qemu-img create -q -f vpc -o subformat=fixed fixed.vhd 10M
c=0
corrupt() {  # BASE POKE-COMMAND ARGS...
    c=$((c + 1))
    cp "$1.vhd" "k$c.vhd"
    shift
    "$@"
    check info -f vpc "k$c.vhd"
    check info --output=json -f vpc "k$c.vhd"
}
corrupt dyn poke_be32 "k$((c + 1)).vhd" 64 1                  # footer checksum
corrupt dyn poke_be32 "k$((c + 1)).vhd" $((0x220)) 3000       # block_size not a power of 2
corrupt dyn poke_be32 "k$((c + 1)).vhd" $((0x220)) 256        # block_size below a sector
corrupt dyn poke_be32 "k$((c + 1)).vhd" $((0x21c)) 1          # max_table_entries too small
corrupt dyn poke_be32 "k$((c + 1)).vhd" $((0x21c)) 0xffffffff # printed signed
corrupt dyn poke_be32 "k$((c + 1)).vhd" $((0x21c)) 0x20000000 # past INT_MAX / 4
corrupt dyn poke_be32 "k$((c + 1)).vhd" $((0x21c)) 0x1fffffff # BAT too large to read
corrupt dyn poke_be32 "k$((c + 1)).vhd" $((0x21c)) 0x100000   # BAT past the end of the file
corrupt dyn poke_be64 "k$((c + 1)).vhd" $((0x210)) 0x100000   # table_offset past the end
corrupt dyn poke_be64 "k$((c + 1)).vhd" $((0x200)) 0          # dynamic header cookie
corrupt dyn poke_be32 "k$((c + 1)).vhd" $((0x224)) 0          # header checksum: not checked
corrupt dyn poke_be32 "k$((c + 1)).vhd" $((0x600)) 4          # block past the end
corrupt dyn truncate -s 1000 "k$((c + 1)).vhd"
corrupt dyn truncate -s 100 "k$((c + 1)).vhd"
corrupt dyn truncate -s 0 "k$((c + 1)).vhd"
corrupt dyn fix_footer "k$((c + 1)).vhd" 16 '>Q' 0xffffffffffffffff   # data_offset
corrupt dyn fix_footer "k$((c + 1)).vhd" 16 '>Q' 0x100000
corrupt dyn fix_footer "k$((c + 1)).vhd" 48 '>Q' 0x100000             # current_size: unused
for app in 'win ' qem2 'd2v ' CTXS tap 'tap ' 'vpc ' qemu; do
    corrupt dyn fix_footer "k$((c + 1)).vhd" 28 s "$app" 48 '>Q' 0x100001
done
corrupt dyn fix_footer "k$((c + 1)).vhd" 28 s qem2 48 '>Q' 0x1000000   # page table too small
corrupt dyn fix_footer "k$((c + 1)).vhd" 56 '>H' 65535 58 B 16 59 B 255 48 '>Q' 0x100000
corrupt dyn fix_footer "k$((c + 1)).vhd" 56 '>H' 65535 58 B 16 59 B 255 48 '>Q' 0x1FE00000200
corrupt dyn fix_footer "k$((c + 1)).vhd" 56 '>H' 0
corrupt dyn fix_footer "k$((c + 1)).vhd" 60 '>I' 2                    # fixed type, dynamic file
corrupt dyn fix_footer "k$((c + 1)).vhd" 60 '>I' 4                    # differencing
corrupt fixed fix_footer "k$((c + 1)).vhd" 60 '>I' 3                  # dynamic type at the end
corrupt fixed poke_be32 "k$((c + 1)).vhd" $((10514432 + 64)) 5        # end footer checksum
corrupt fixed fix_footer "k$((c + 1)).vhd" 28 s 'win ' 48 '>Q' 0x1000000   # past the file
check map --output=json -f vpc "k$c.vhd"
cp dyn.vhd win.vhd
fix_footer win.vhd 28 s 'win ' 48 '>Q' 0x100000
check info --image-opts driver=vpc,file.filename=win.vhd,force_size_calc=chs
check info --image-opts driver=vpc,file.filename=dyn.vhd,force_size_calc=current_size
check info --image-opts driver=vpc,file.filename=dyn.vhd,force_size_calc=foo
check check dyn.vhd

# mask FILE: the file with timestamps, checksums and UUIDs of its footers zeroed.
mask() {
    python3 - "$1" <<'PY'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
for base in (0, len(d) - 512):
    if d[base:base + 8] == b"conectix":
        d[base + 24:base + 28] = bytes(4)
        d[base + 64:base + 84] = bytes(20)
sys.stdout.buffer.write(d)
PY
}

# Creation: the same bytes as qemu-img but for timestamps, UUIDs and checksums.
check create -f vpc -o help
check create -f vpc -o help x.vhd
for o in "" subformat=dynamic subformat=fixed force_size=on subformat=fixed,force_size=on; do
    for s in 0 512 1000 1M 100M 1G 127G 128G 2040G 2041G; do
        rm -f q.vhd v.vhd
        (qemu-img create -f vpc ${o:+-o "$o"} q.vhd "$s"; echo "exit=$?") 2>&1 |
            sed 's/q\.vhd/IMG/; s/^qemu-img:/TOOL:/' >cq
        ("$VIMG" create -f vpc ${o:+-o "$o"} v.vhd "$s"; echo "exit=$?") 2>&1 |
            sed 's/v\.vhd/IMG/; s/^vimg:/TOOL:/' >cv
        expect_same cq cv "create $o $s"
        [ -f q.vhd ] || continue
        [ "$(stat -c %s q.vhd)" = "$(stat -c %s v.vhd)" ] || fail "create $o $s: file size"
        [ "$(stat -c %s q.vhd)" -gt $((64 << 20)) ] && continue
        cmp <(mask q.vhd) <(mask v.vhd) || fail "create $o $s: bytes differ"
    done
done
check create -f vpc -o subformat=foo x.vhd 1M
check create -f vpc -o force_size=x x.vhd 1M
check create -f vpc x.vhd
# Geometry for sizes around each step of the CHS algorithm.
for s in 33030144 33030145 66060288 267386880 520224768 536870912 4127195136 4127195137 \
         34359738368 136365211648 136365219840 137436856320; do
    qemu-img create -q -f vpc q.vhd "$s"
    "$VIMG" create -q -f vpc v.vhd "$s"
    cmp <(mask q.vhd) <(mask v.vhd) || fail "geometry for $s differs"
done

# Writes: the same guest content and, written in the same order, the same file.
# Every block's first write starts it: qemu-img does not look for holes in the
# file under an allocated vpc block, and vimg's core does where a run starts in one.
qemu-img create -q -f vpc q.vhd 100M
"$VIMG" create -q -f vpc v.vhd 100M
ops=(-c 'write -P 0x11 3M 100k' -c 'write -P 0x22 0 64k' -c 'write -P 0x33 4608k 512'
     -c 'write -P 0x44 2M 4M' -c 'write -P 0x55 98M 1k' -c 'write -P 0x66 1000 3000')
qemu-io -f vpc "${ops[@]}" q.vhd >/dev/null || fail "qemu-io write"
"$VIMG_IO" -f vpc "${ops[@]}" v.vhd >/dev/null || fail "vimg-io write"
cmp <(mask q.vhd) <(mask v.vhd) || fail "written images differ"
qemu-img compare -f vpc -F vpc q.vhd v.vhd >/dev/null ||
    fail "qemu-img reads the writes differently"
check map --output=json v.vhd
"$VIMG_IO" -f vpc -c 'read -P 0x44 2M 4M' -c 'read -P 0 6M 1M' v.vhd >/dev/null ||
    fail "vimg-io reads back differently"
# A fixed image is its data and a footer.
qemu-img create -q -f vpc -o subformat=fixed qf.vhd 10M
"$VIMG" create -q -f vpc -o subformat=fixed vf.vhd 10M
qemu-io -f vpc "${ops[@]:0:6}" qf.vhd >/dev/null
"$VIMG_IO" -f vpc "${ops[@]:0:6}" vf.vhd >/dev/null
cmp <(mask qf.vhd) <(mask vf.vhd) || fail "written fixed images differ"
check map --output=json -f vpc vf.vhd

# convert into vpc: qemu-img and libvhdi read what vimg wrote.
python3 - <<'PY'
import os
with open("src.raw", "wb") as f:
    f.truncate(40 << 20)
    for off, b in ((0, 0x5a), (3 << 20, 0xa5), (17 << 20, 0x96), ((40 << 20) - 4096, 0x11)):
        f.seek(off); f.write(bytes([b]) * 70000)
    f.seek(9 << 20); f.write(os.urandom(1 << 20))
PY
for o in subformat=dynamic subformat=fixed force_size=on; do
    rm -f conv.vhd
    "$VIMG" convert -O vpc -o "$o" src.raw conv.vhd || fail "convert -o $o"
    qemu-img compare -f raw -F vpc src.raw conv.vhd >/dev/null ||
        fail "qemu-img reads converted ($o) image differently"
    vhdiinfo conv.vhd >vi.out 2>&1 || fail "vhdiinfo refuses converted ($o) image"
    size=$(qemu-img info -f vpc --output=json conv.vhd |
           sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
    grep -q "Media size.*: .*($size bytes)" vi.out || fail "vhdiinfo size differs ($o)"
done
pass
