#!/bin/bash
# Proves: vmdk children refuse to read their parent, as qemu-img 7.2 does,
# when the parent is not vmdk or the first "CID" of its descriptor is not the
# child's parentCID: reads that reach an unallocated grain fail with EINVAL
# (convert, compare, dd, qemu-io read; same words, same exit codes), as do
# writes that allocate a grain, while info, map and check still work and
# allocated or zero grains still read.
# Children: monolithicSparse (qemu-img create -b, the parent then rewritten
# by qemu-io, which changes its CID), a descriptor naming a COWD extent, an
# SESparse image from mk-sesparse.py, a twoGbMaxExtentSparse child of a
# monolithicFlat parent whose descriptor puts parentCID before CID, and
# raw/qcow2 parents given with json:. Also: `map --output=json` prints the
# same partial stdout as qemu-img when a later block-status lookup fails, and
# `info` leaves out "dirty-flag" for exactly the extent mixes qemu-img does.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

GEN="python3 $SRC_ROOT/tests/helpers/mk-sesparse.py"
n=0
check() {  # CMD ARGS...: vimg and qemu-img print the same (stdout+stderr, exit code)
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}
fails_as_qemu() {  # CMD ARGS...: as check, and both fail with "Invalid argument"
    check "$@"
    grep -q "Invalid argument" "c$n.q" || fail "qemu-img $* did not fail with EINVAL"
    grep -q "^exit=0" "c$n.q" && fail "qemu-img $* succeeded"
    return 0
}
io_same() {  # IMAGE CMD...: qemu-io and vimg-io print the same (timings dropped)
    local img=$1; shift
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    n=$((n + 1))
    qemu-io -r "${args[@]}" "$img" >"io$n.q" 2>&1; echo "exit=$?" >>"io$n.q"
    "$VIMG_IO" -r "${args[@]}" "$img" >"io$n.v" 2>&1; echo "exit=$?" >>"io$n.v"
    sed -i -e 's/^qemu-io: /TOOL: /; s/^vimg-io: /TOOL: /; /ops;/d' "io$n.q" "io$n.v"
    expect_same "io$n.q" "io$n.v" "io $img $*"
}
desc() {  # OUT CREATETYPE PARENTCID PARENTHINT EXTENT_LINE...: a descriptor file
    local out=$1 type=$2 pcid=$3 hint=$4; shift 4
    {
        printf '# Disk DescriptorFile\nversion=1\nCID=2468ace0\nparentCID=%s\n' "$pcid"
        printf 'createType="%s"\n' "$type"
        [ -n "$hint" ] && printf 'parentFileNameHint="%s"\n' "$hint"
        printf '\n# Extent description\n'
        printf '%s\n' "$@"
    } >"$out"
}
cid_of() { grep -a -m1 '^CID=' "$1" | cut -d= -f2; }

# 1. monolithicSparse child of a monolithicSparse parent.
qemu-img create -q -f vmdk p.vmdk 4M || fail "create p.vmdk"
qemu-io -c 'write -P 0x11 0 2M' p.vmdk >/dev/null || fail "write p.vmdk"
qemu-img create -q -f vmdk -o zeroed_grain=on -b p.vmdk -F vmdk c.vmdk || fail "create c.vmdk"
qemu-io -c 'write -P 0x22 1M 64k' -c 'write -z 512k 64k' c.vmdk >/dev/null || fail "write c.vmdk"
[ "$(grep -a -m1 '^parentCID=' c.vmdk | cut -d= -f2)" = "$(cid_of p.vmdk)" ] ||
    fail "qemu-img did not record the parent's CID"
check convert -O raw c.vmdk ok.raw
check compare c.vmdk p.vmdk
io_same c.vmdk 'read -P 0x11 0 64k' 'read -P 0 512k 64k' 'read -P 0x22 1M 64k'
old_cid=$(cid_of p.vmdk)
qemu-io -c 'write -P 0x33 3M 64k' p.vmdk >/dev/null || fail "rewrite p.vmdk"
[ "$(cid_of p.vmdk)" != "$old_cid" ] || fail "qemu-io did not change the parent's CID"
for c in "info" "info --output=json --backing-chain" "map" "map --output=json" "check"; do
    # shellcheck disable=SC2086
    check $c c.vmdk
done
fails_as_qemu convert -m 1 -O raw c.vmdk bad.raw
fails_as_qemu convert -m 1 -O qcow2 c.vmdk bad.qcow2
fails_as_qemu compare c.vmdk p.vmdk
fails_as_qemu compare p.vmdk c.vmdk
fails_as_qemu dd if=c.vmdk of=bad.raw bs=64k
# Allocated and zero grains still read; every read that reaches the parent fails.
io_same c.vmdk 'read -P 0x22 1M 64k' 'read -P 0 512k 64k' 'read 0 512' 'read 960k 128k' \
    'read -P 0x22 1M 64k'
grep -q "Invalid argument" "io$n.q" || fail "qemu-io read of c.vmdk did not fail"
# Writes that allocate a grain (over an unallocated or a zeroed one) fail too and
# leave the image as it was; a write into an allocated grain goes through.
for w in 'write -P 0x44 1M 512' 'write -P 0x44 516k 512' 'write -P 0x44 4k 512' \
    'write -P 0x44 2M 64k' 'write -z 3M 4k'; do
    n=$((n + 1))
    cp c.vmdk wq.vmdk || fail "copy c.vmdk"
    cp c.vmdk wv.vmdk || fail "copy c.vmdk"
    qemu-io -c "$w" wq.vmdk >"w$n.q" 2>&1; echo "exit=$?" >>"w$n.q"
    "$VIMG_IO" -c "$w" wv.vmdk >"w$n.v" 2>&1; echo "exit=$?" >>"w$n.v"
    sed -i '/ops;/d' "w$n.q" "w$n.v"
    expect_same "w$n.q" "w$n.v" "$w on c.vmdk"
    if grep -q "Invalid argument" "w$n.q"; then
        cmp -s c.vmdk wq.vmdk || fail "qemu-io changed c.vmdk with a failed $w"
        cmp -s c.vmdk wv.vmdk || fail "vimg-io changed c.vmdk with a failed $w"
    fi
done
[ "$(cat w*.q | grep -c "Invalid argument")" = 4 ] || fail "qemu-io no longer refuses 4 writes"

# 2. A descriptor naming a COWD extent, its parentCID right and then wrong.
python3 - <<'EOF' || fail "COWD generator"
import struct
cap, grain = 8192, 128                        # 4 MiB, 64 KiB grains
h = bytearray(512)
struct.pack_into("<4sIIIIII", h, 0, b"COWD", 1, 3, cap, grain, 1, 1)
gd = struct.pack("<I", 2).ljust(512, b"\0")   # one grain table, at sector 2
gt = bytearray(4096 * 4)
struct.pack_into("<I", gt, 4 * 16, 34)        # grain 16 (1 MiB) at sector 34
data = b"\x44" * (grain * 512)
open("cw-ext.vmdk", "wb").write(bytes(h) + gd + bytes(gt) + data)
EOF
desc cw.vmdk vmfsSparse "$(cid_of p.vmdk)" p.vmdk 'RW 8192 SPARSE "cw-ext.vmdk"'
check info --output=json cw.vmdk
check convert -O raw cw.vmdk cw.raw
qemu-img convert -O raw p.vmdk p.raw || fail "convert p.vmdk"
cmp -n $((1 << 20)) cw.raw p.raw || fail "cw.vmdk does not read its parent"
desc cw.vmdk vmfsSparse "$old_cid" p.vmdk 'RW 8192 SPARSE "cw-ext.vmdk"'
fails_as_qemu convert -m 1 -O raw cw.vmdk bad.raw
io_same cw.vmdk 'read -P 0x44 1M 64k' 'read 0 4k'

# 3. SESparse child.
$GEN . se $((4 << 20)) --grain 0:data --grain 1:zero --grain 2:unmapped --parent p.vmdk \
    --parent-cid "$(cid_of p.vmdk)" || fail "generator"
check convert -O raw se.vmdk se.raw
check compare se.vmdk p.vmdk
$GEN . se $((4 << 20)) --grain 0:data --grain 1:zero --grain 2:unmapped --parent p.vmdk \
    --parent-cid "$old_cid" || fail "generator"
check map --output=json se.vmdk
fails_as_qemu convert -m 1 -O raw se.vmdk bad.raw
io_same se.vmdk 'read 0 12k' 'read 12k 4k' 'read 0 16k'

# 4. A split child of a monolithicFlat parent; qemu-img takes the first "CID" of the
#    parent's descriptor, which here is the one inside "parentCID".
qemu-img create -q -f vmdk -o subformat=monolithicFlat fp.vmdk 4M || fail "create fp.vmdk"
qemu-io -f raw -c 'write -P 0x55 0 4M' fp-flat.vmdk >/dev/null || fail "write fp-flat.vmdk"
qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse -b fp.vmdk -F vmdk fc.vmdk ||
    fail "create fc.vmdk"
check convert -O raw fc.vmdk fc.raw
sed -i -e '/^parentCID=/d' -e 's/^CID=.*/parentCID=0badc0de\n&/' fp.vmdk
sed -i 's/^parentCID=.*/parentCID=0badc0de/' fc.vmdk
check info fp.vmdk
check convert -O raw fc.vmdk fc.raw
cmp fc.raw fp-flat.vmdk || fail "fc.vmdk does not read its parent"
sed -i "s/^parentCID=.*/parentCID=$(cid_of fp.vmdk)/" fc.vmdk
fails_as_qemu convert -m 1 -O raw fc.vmdk bad.raw

# 5. Parents that are not vmdk, given as json: (the hint would be opened as vmdk).
#    convert skips what the whole chain leaves unallocated, so the empty qcow2 parent
#    reads fine at first; qemu-io reads through the vmdk driver and fails at once.
qemu-img create -q -f raw r.raw 4M || fail "create r.raw"
qemu-img create -q -f qcow2 r.qcow2 4M || fail "create r.qcow2"
j='json:{"driver":"vmdk","file":{"driver":"file","filename":"c.vmdk"},'
j+='"backing":{"driver":"qcow2","file":{"driver":"file","filename":"r.qcow2"}}}'
check convert -m 1 -O raw "$j" empty.raw
io_same "$j" 'read 0 64k' 'read -P 0x22 1M 64k'
qemu-io -c 'write -P 0x66 0 64k' r.qcow2 >/dev/null || fail "write r.qcow2"
for par in "raw:r.raw" "qcow2:r.qcow2"; do
    j='json:{"driver":"vmdk","file":{"driver":"file","filename":"c.vmdk"},'
    j+="\"backing\":{\"driver\":\"${par%%:*}\",\"file\":{\"driver\":\"file\",\"filename\":\"${par#*:}\"}}}"
    fails_as_qemu convert -m 1 -O raw "$j" bad.raw
    check map "$j"
done

# 6. map --output=json when a later lookup fails: the same "[", entries and ",\n"
#    on stdout, the same error on stderr.
$GEN . bad $((40 << 20)) --grain 0:data --grain 2:zero --grain 4098:data \
    --gd 1=0x2000000000000000 || fail "generator"
$GEN . bad0 $((40 << 20)) --grain 4098:data --gd 1=0x2000000000000000 || fail "generator"
for img in bad.vmdk bad0.vmdk; do
    for o in json human; do
        qemu-img map --output=$o $img >m.q.out 2>m.q.err; echo "exit=$?" >>m.q.err
        "$VIMG" map --output=$o $img >m.v.out 2>m.v.err; echo "exit=$?" >>m.v.err
        cmp m.q.out m.v.out || fail "map --output=$o $img: stdout differs"
        expect_same <(norm m.q.err) <(norm m.v.err) "map --output=$o $img stderr"
        grep -q "exit=1" m.q.err || fail "qemu-img map $img did not fail"
    done
done
qemu-img map --output=json bad.vmdk 2>/dev/null | tail -c 3 | grep -q '^},$' ||
    fail "qemu-img no longer ends its partial map with the separator"
[ "$(qemu-img map --output=json bad0.vmdk 2>/dev/null)" = "[" ] ||
    fail "qemu-img no longer opens the list before the first lookup"

# 7. "dirty-flag": qemu-img leaves it out when an extent differs from the first in
#    kind (sparse/flat), compression or grain size.
qemu-img create -q -f vmdk -o subformat=monolithicFlat mf.vmdk 1M || fail "create mf"
qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse ms.vmdk 2M || fail "create ms"
qemu-img create -q -f vmdk -o subformat=streamOptimized mc.vmdk 1M || fail "create mc"
$GEN . s4 $((1 << 20)) --grain 0:data || fail "generator"
s='RW 4096 SPARSE "ms-s001.vmdk"'
f='RW 2048 FLAT "mf-flat.vmdk" 0'
c='RW 2048 SPARSE "mc.vmdk"'
e='RW 2048 SESPARSE "s4-sesparse.vmdk"'
desc x1.vmdk twoGbMaxExtentSparse ffffffff "" "$s" "$f"
desc x2.vmdk monolithicFlat ffffffff "" "$f" "$s"
desc x3.vmdk twoGbMaxExtentSparse ffffffff "" "$s" "$s"
desc x4.vmdk monolithicFlat ffffffff "" "$f" "$f" 'RW 2048 ZERO "mf-flat.vmdk"'
desc x5.vmdk seSparse ffffffff "" "$e" "$f"
desc x6.vmdk seSparse ffffffff "" "$e" "$s"
desc x7.vmdk seSparse ffffffff "" "$e" "$e"
desc x8.vmdk twoGbMaxExtentSparse ffffffff "" "$s" 'RDONLY 2048 FLAT "mf-flat.vmdk" 0' \
    'RW 0 FLAT "mf-flat.vmdk" 0' 'RW 2048 FOO "mf-flat.vmdk"'
desc x9.vmdk twoGbMaxExtentSparse ffffffff "" "$c" "$c"
desc x10.vmdk twoGbMaxExtentSparse ffffffff "" "$s" "$c"
for i in 1 2 3 4 5 6 7 8 9 10; do
    check info --output=json x$i.vmdk
    cp "c$n.q" "x$i.json"
    check info x$i.vmdk
done
for i in 1 2 5 6 10; do
    grep -q dirty-flag "x$i.json" && fail "x$i.vmdk: qemu-img shows dirty-flag"
done
for i in 3 4 7 8 9; do
    grep -q dirty-flag "x$i.json" || fail "x$i.vmdk: qemu-img leaves dirty-flag out"
done
pass
