#!/bin/bash
# Proves: vimg reads Parallels images (the testdata samples, v1 and v2 headers,
# the dirty-bitmap Format Extension, images qemu-img writes here) as
# MANIFEST.tsv and qemu-img read them; `info` and `map` match qemu-img;
# corrupt headers, BATs and Format Extensions fail with qemu-img's message
# and exit code.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

hash_raw() {  # FILE: sha256 of a sparse file, hashing holes as zeros without reading them
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

manifest() {  # FILE.bz2 COLUMN
    awk -F'\t' -v f="$1" -v c="$2" '$1 == f { print $c }' "$SHARED/testdata/MANIFEST.tsv"
}

n=0
check_info() {
    n=$((n + 1))
    run_both "i$n" info "$@"
    expect_same "i$n.q" "i$n.v" "info $*"
}

check_map() {
    n=$((n + 1))
    run_both "m$n" map "$@"
    expect_same "m$n.q" "m$n.v" "map $*"
}

# same_read IMG: vimg and qemu-img convert it to the same raw bytes (or both fail).
same_read() {
    local v q
    "$VIMG" convert -O raw "$1" "$1.v.raw" 2>/dev/null; v=$?
    qemu-img convert -O raw "$1" "$1.q.raw" 2>/dev/null; q=$?
    [ "$v" = "$q" ] || fail "$1: convert exit $v, qemu-img $q"
    [ "$v" != 0 ] || cmp "$1.v.raw" "$1.q.raw" || fail "$1: vimg and qemu-img read differently"
    rm -f "$1.v.raw" "$1.q.raw"
}

check_sample() {  # FILE.bz2
    local img expect note
    img=$(basename "$(testdata "$1")") || exit 1
    expect=$(manifest "$1" 6)
    check_info "$img"
    check_info --output=json "$img"
    check_info -f parallels "$img"
    if [ "$expect" = ok ]; then
        check_map "$img"
        check_map --output=json "$img"
        "$VIMG" convert -O raw "$img" "$img.raw" || fail "convert $img"
        if [ "$(manifest "$1" 4)" -gt $((4 << 30)) ]; then
            # Hashing 64 GiB takes a minute: the manifest says this one is all zeros,
            # so check that the copy has the size and only zeros in its few data
            # extents (convert writes the first block even when it is zero).
            [ "$(stat -c %s "$img.raw")" = "$(manifest "$1" 4)" ] || fail "$img: size differs"
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
            [ "$(hash_raw "$img.raw")" = "$(manifest "$1" 5)" ] || fail "$img: content differs"
        fi
        rm -f "$img.raw"
    else
        note=$(manifest "$1" 7)
        grep -qxF "TOOL: ${note#*]: }" "i$n.v" || fail "$img: message is not '${note#*]: }'"
        grep -q '^exit=1$' "i$n.v" || fail "$img: exit code is not 1"
    fi
}

for f in $(awk -F'\t' '$2 == "parallels" { print $1 }' "$SHARED/testdata/MANIFEST.tsv"); do
    check_sample "$f"
done

# Images qemu-img writes, with clusters allocated out of guest order, and the
# same image turned into a v1 one (BAT in sectors). Every write starts a
# cluster: qemu-img does not look for holes in the file under an allocated
# parallels cluster, and vimg's core does where a run starts in one.
qemu-img create -q -f parallels -o cluster_size=64k w.hds 5M
qemu-io -f parallels -c 'write -P 0x11 3M 100k' -c 'write -P 0x22 0 64k' \
    -c 'write -P 0x33 4608k 512' -c 'write -P 0x44 1M 1M' w.hds >/dev/null
check_info --output=json w.hds
check_map --output=json w.hds
check_map w.hds
same_read w.hds
python3 - <<'PY'
import struct
d = bytearray(open("w.hds", "rb").read())
tracks, n = struct.unpack_from("<II", d, 28)
d[0:16] = b"WithoutFreeSpace"
for i in range(n):
    e, = struct.unpack_from("<I", d, 64 + 4 * i)
    struct.pack_into("<I", d, 64 + 4 * i, e * tracks)
open("v1.hds", "wb").write(d)
PY
check_map --output=json v1.hds
same_read v1.hds
"$VIMG" convert -O raw v1.hds v1.raw && "$VIMG" convert -O raw w.hds w.raw &&
    cmp v1.raw w.raw || fail "v1.hds reads differently from w.hds"

# Corrupt headers and BATs, one named field each.
cp "$(testdata parallels-v2.bz2)" base.hds
corrupt() {  # NAME FIELD-OFFSET VALUE [le32|le64] [BASE]
    cp "${5:-base.hds}" "$1.hds"
    "poke_${4:-le32}" "$1.hds" "$2" "$3"
    check_info -f parallels "$1.hds"
    [ -n "${NO_READ:-}" ] || same_read "$1.hds"
}
corrupt version 16 1
corrupt tracks-0 28 0
corrupt tracks-max 28 4186127
corrupt tracks-big 28 4186128
corrupt bat-max 32 0x1fffffff
corrupt bat-big 32 0x20000000
corrupt bat-eio 32 536870769
corrupt bat-past-eof 32 0x100000
corrupt bat-zero 32 0
NO_READ=1 corrupt sectors-2t 36 0x100000000 le64
NO_READ=1 corrupt sectors-max 36 0x3fffffffe00000 le64
corrupt sectors-big 36 0x3fffffffe00001 le64
corrupt sectors-odd 36 0x1001 le64
corrupt inuse 44 0x746f6e59
corrupt data-off 48 0xffffffff
corrupt flags-empty 52 1
corrupt ext-data 56 0x100 le64
corrupt ext-eof 56 0xffffffff le64
corrupt bat-eof 64 0xffffffff
corrupt bat-far 64 1000
corrupt bat-dup 64 4

# The Format Extension, changed one field at a time with its checksum redone.
cp "$(testdata parallels-with-bitmap.bz2)" bm.hds
e=0
ext() {  # OFFSET-IN-EXTENSION FORMAT VALUE ...
    e=$((e + 1))
    python3 - "$@" <<'PY'
import hashlib, struct, sys
d = bytearray(open("bm.hds", "rb").read()); base = 0x200000; size = 0x100000
a = sys.argv[1:]
for i in range(0, len(a), 3):
    b = struct.pack(a[i + 1], int(a[i + 2], 0)); o = base + int(a[i], 0); d[o:o + len(b)] = b
d[base + 8:base + 24] = hashlib.md5(d[base + 24:base + size]).digest()
open("ext.hds", "wb").write(d)
PY
    mv ext.hds "ext$e.hds"
    check_info -f parallels "ext$e.hds"
}
ext 24 '<Q' 0x1234                      # unknown feature
ext 24 '<Q' 0x1234 32 '<Q' 1            # flags
ext 40 '<I' 0x100000                    # data_size past the cluster
ext 40 '<I' 0                           # bitmap feature too small
ext 48 '<Q' 0                           # bitmap size
ext 76 '<I' 1000                        # l1 table past data_size
ext 76 '<I' 0                           # l1_size
ext 80 '<Q' 0x1234567                   # l1 entry: not read
ext 24 '<Q' 0                           # end of features at once
cp bm.hds sum.hds; poke_le64 sum.hds $((0x200000 + 8)) 0   # checksum
check_info -f parallels sum.hds
pass
