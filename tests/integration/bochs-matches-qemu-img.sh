#!/bin/bash
# Proves: vimg reads Bochs growing images (the testdata samples, version 1 and
# 2 headers, and images bximage makes here) with the content MANIFEST.tsv
# records and qemu-img reads; `info` matches qemu-img; corrupt headers and
# read-write opens fail with qemu-img's message and exit code.
source "$(dirname "$0")/lib.sh"
need qemu-img python3 bximage

# hash_raw FILE: sha256 of a sparse file, hashing holes as zeros without reading them.
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
        n = min(data - pos, len(zeros)); h.update(zeros[:n]); pos += n
    if pos >= size:
        break
    hole = os.lseek(fd, pos, os.SEEK_HOLE)
    os.lseek(fd, pos, os.SEEK_SET)
    while pos < hole:
        b = os.read(fd, min(hole - pos, 1 << 20)); h.update(b); pos += len(b)
print(h.hexdigest())
PY
}

# manifest FILE.bz2 COLUMN: one field of the sample's MANIFEST.tsv row.
manifest() {
    awk -F'\t' -v f="$1" -v c="$2" '$1 == f { print $c }' "$SHARED/testdata/MANIFEST.tsv"
}

n=0
check_info() {
    n=$((n + 1))
    run_both "i$n" info "$@"
    expect_same "i$n.q" "i$n.v" "info $*"
}

# check_sample FILE.bz2: content hash and info for an ok sample, message and exit code otherwise.
check_sample() {
    local img expect note
    img=$(testdata "$1") || exit 1
    img=$(basename "$img")
    expect=$(manifest "$1" 6)
    check_info "$img"
    check_info --output=json "$img"
    check_info -f bochs "$img"
    if [ "$expect" = ok ]; then
        "$VIMG" convert -O raw "$img" "$img.raw" || fail "convert $img"
        [ "$(hash_raw "$img.raw")" = "$(manifest "$1" 5)" ] || fail "$img: content differs"
        rm -f "$img.raw"
    else
        note=$(manifest "$1" 7)
        grep -qxF "TOOL: ${note#*]: }" "i$n.v" || fail "$img: message is not '${note#*]: }'"
        grep -q '^exit=1$' "i$n.v" || fail "$img: exit code is not 1"
    fi
}

for f in $(awk -F'\t' '$2 == "bochs" { print $1 }' "$SHARED/testdata/MANIFEST.tsv"); do
    check_sample "$f"
done

# Images bximage writes here, from sources with data, zero extents and
# partly written extents; read through both tools and compared.
python3 - <<'PY'
import random
r = random.Random(7)
for name, size in (("s1", 4 << 20), ("s2", 10 << 20), ("s3", 33 << 20)):
    b = bytearray(size)
    for i in range(0, size, 512):
        k = r.randrange(10)
        if k < 3:
            b[i:i + 512] = bytes([r.randrange(1, 256)]) * 512
        elif k == 3:
            b[i:i + 512] = r.randbytes(512)
    b[size - 512:] = b"END" * 170 + b"!!"
    open(name + ".src", "wb").write(b)
PY
for s in s1 s2 s3; do
    bximage -q -func=convert -imgmode=growing "$s.src" "$s.bochs" >/dev/null 2>&1 ||
        fail "bximage $s"
    check_info "$s.bochs"
    "$VIMG" convert -O raw "$s.bochs" "$s.v.raw" || fail "convert $s"
    qemu-img convert -O raw "$s.bochs" "$s.q.raw"
    cmp "$s.v.raw" "$s.q.raw" || fail "$s: vimg and qemu-img read differently"
    cmp "$s.v.raw" "$s.src" || fail "$s: content differs from the source"
done
bximage -q -func=create -hd=10M -imgmode=growing e.bochs >/dev/null 2>&1 || fail "bximage create"
check_info --output=json e.bochs

# The version 1 header: the disk size sits where version 2 keeps a timestamp.
python3 - <<'PY'
d = bytearray(open("s1.bochs", "rb").read())
d[64:68] = (0x10000).to_bytes(4, "little")
d[84:92] = d[88:96]
open("v1.bochs", "wb").write(d)
PY
check_info v1.bochs
"$VIMG" convert -O raw v1.bochs v1.raw || fail "convert v1"
cmp v1.raw s1.src || fail "v1: content differs from the source"

# Corrupt headers, one named field each.
cp "$(testdata empty.bochs.bz2)" base.bochs
corrupt() {  # NAME POKE-ARGS...
    local name=$1; shift
    cp base.bochs "$name.bochs"
    "$@" "$name.bochs"
    check_info "$name.bochs"
    check_info -f bochs "$name.bochs"
}
poke_catalog() { poke_le32 "$2" 72 "$1"; }
poke_extent() { poke_le32 "$2" 80 "$1"; }
poke_disk() { poke_le64 "$2" 88 "$1"; }
corrupt cat-max poke_catalog 0x100000
corrupt cat-big poke_catalog 0x100001
corrupt cat-zero poke_catalog 0
corrupt ext-0 poke_extent 0
corrupt ext-511 poke_extent 511
corrupt ext-odd poke_extent 513
corrupt ext-max poke_extent 0x800000
corrupt ext-big poke_extent 0x1000000
corrupt disk-big poke_disk 0x100000000000
corrupt disk-odd poke_disk 1032193
cp base.bochs bad-magic.bochs; _poke bad-magic.bochs 0 'X'
check_info -f bochs bad-magic.bochs
cp base.bochs bad-version.bochs; poke_le32 bad-version.bochs 64 0x30000
check_info -f bochs bad-version.bochs
check_info -f bochs "$(testdata grub_mbr.raw.bz2 | xargs basename)"

# A catalog entry and a bitmap that point past the end of the file read as zeros.
cp s1.bochs far.bochs; poke_le32 far.bochs 512 0x7fffffff
"$VIMG" convert -O raw far.bochs far.v.raw || fail "convert far"
qemu-img convert -O raw far.bochs far.q.raw
cmp far.v.raw far.q.raw || fail "far: vimg and qemu-img read differently"

# Read-only format: read-write opens fail as in qemu-img.
run_both rw resize -f bochs base.bochs 2M
expect_same rw.q rw.v "resize"
pass
