#!/bin/bash
# Proves: vimg reads cloop V2.0 images (the testdata samples and images
# create_compressed_fs makes here with several block sizes, a source that is
# not a multiple of the block size, stored and 7zip-compressed blocks) as
# MANIFEST.tsv and qemu-img read them; `info` matches qemu-img; corrupt
# headers and offset tables and read-write opens fail with qemu-img's
# message and exit code.
source "$(dirname "$0")/lib.sh"
need qemu-img python3 create_compressed_fs

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

# same_read IMG: vimg and qemu-img convert it to the same raw bytes (or fail alike).
same_read() {
    local v q
    "$VIMG" convert -O raw "$1" "$1.v.raw" 2>/dev/null; v=$?
    qemu-img convert -O raw "$1" "$1.q.raw" 2>/dev/null; q=$?
    [ "$v" = "$q" ] || fail "$1: convert exit $v, qemu-img $q"
    [ "$v" != 0 ] || cmp "$1.v.raw" "$1.q.raw" || fail "$1: vimg and qemu-img read differently"
}

check_sample() {  # FILE.bz2
    local img expect note
    img=$(basename "$(testdata "$1")") || exit 1
    expect=$(manifest "$1" 6)
    check_info "$img"
    check_info --output=json "$img"
    check_info -f cloop "$img"
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

for f in $(awk -F'\t' '$2 == "cloop" { print $1 }' "$SHARED/testdata/MANIFEST.tsv"); do
    check_sample "$f"
done

python3 - <<'PY'
import random
r = random.Random(9)
b = bytearray(3 * 1024 * 1024 + 12345)      # not a multiple of any block size
for i in range(0, len(b), 8192):
    k = r.randrange(4)
    if k == 1:
        b[i:i + 8192] = r.randbytes(8192)
    elif k == 2:
        b[i:i + 8192] = bytes([r.randrange(256)]) * 8192
open("src.raw", "wb").write(b)
PY
for args in "-B 512" "-B 4096" "-B 65536" "-B 131072 -L 0" "-B 262144 -L 1" "-B 16384 -L -1"; do
    img="b${args// /}.cloop"
    create_compressed_fs -q $args src.raw "$img" >/dev/null 2>&1 ||
        fail "create_compressed_fs $args"
    check_info --output=json "$img"
    same_read "$img"
    head -c "$(stat -c %s src.raw)" "$img.v.raw" | cmp - src.raw || fail "$img: differs from source"
done

# Corrupt headers and offset tables, one named field each.
cp "$(testdata simple-pattern.cloop.bz2)" base.cloop
corrupt() {  # NAME FIELD-OFFSET VALUE [be32|be64]
    cp base.cloop "$1.cloop"
    "poke_${4:-be32}" "$1.cloop" "$2" "$3"
    check_info -f cloop "$1.cloop"
    same_read "$1.cloop"
}
corrupt bs-max 128 0x4000000            # block_size
corrupt bs-big 128 0x4000200
corrupt bs-odd 128 1000
corrupt nb-zero 132 0                   # n_blocks
corrupt nb-one 132 1
corrupt nb-17 132 17
corrupt nb-toomany 132 67108864
corrupt nb-manyok 132 67108863
corrupt nb-wrap 132 536870911
corrupt nb-limit 132 536870912
corrupt off0-back 136 0x1000 be64       # offsets[0] after offsets[1]
corrupt off1-back 144 0x100 be64
corrupt off1-huge 144 0x20000000 be64   # compressed block larger than 128 MiB
corrupt off1-max 144 $((0x110 + 0x8000000)) be64
corrupt off-last 264 0xffffffffffffffff be64
corrupt off-eof 264 0x6a0 be64          # last block ends past the end of the file
truncate -s 200 short.cloop; dd if=base.cloop of=short.cloop conv=notrunc status=none count=200 bs=1
check_info -f cloop short.cloop
cp base.cloop trunc.cloop; truncate -s 1000 trunc.cloop
check_info -f cloop trunc.cloop
same_read trunc.cloop
check_info -f cloop "$(basename "$(testdata grub_mbr.raw.bz2)")"

# Read-only format: read-write opens fail as in qemu-img.
run_both rw resize -f cloop base.cloop 2M
expect_same rw.q rw.v "resize"
pass
