#!/bin/bash
# Proves: vimg opens VMware SESparse extents (createType="seSparse",
# "RW N SESPARSE" extent lines) read-only as qemu-img 7.2 does. Images come
# from tests/helpers/mk-sesparse.py (no tool here writes the format) with
# data, zero, unmapped and unallocated grains, grains placed past cluster
# 4095 (the shuffled cluster bits), a partial last grain and a vmdk parent
# named by parentFileNameHint. For each: vimg's raw conversion equals
# qemu-img's and the content the generator meant; info (human, JSON,
# backing chain), map and check print the same. Malformed headers and
# tables get qemu-img's refusals (one line, same exit code), and every
# write-mode open is refused with qemu-img's message, the extent untouched.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

GEN="python3 $SRC_ROOT/tests/helpers/mk-sesparse.py"
n=0
check() {  # CMD ARGS...: vimg and qemu-img print the same
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}
converts_to() {  # IMAGE EXPECTED: both tools convert IMAGE to EXPECTED
    qemu-img convert -O raw "$1" "$1.q.raw" || fail "qemu-img convert $1"
    "$VIMG" convert -O raw "$1" "$1.v.raw" || fail "vimg convert $1"
    cmp "$1.q.raw" "$2" || fail "$1: qemu-img does not read what the generator wrote"
    cmp "$1.v.raw" "$2" || fail "$1: vimg reads differently from qemu-img"
    rm -f "$1.q.raw" "$1.v.raw"
}

# 1. All grain kinds; grains at clusters 5000 and 4096 exercise the high bits.
$GEN . a $((40 << 20)) --grain 0:data --grain 1:zero --grain 2:unmapped --grain 3:unalloc \
    --grain 5:data:0 --grain 4095:data --grain 4096:zero --grain 4097:data \
    --grain 9000:data --cluster 9000:5000 --grain 9001:data --cluster 9001:4096 \
    --grain 10239:data --expect a.exp || fail "generator"
converts_to a.vmdk a.exp
for c in "info" "info --output=json" "map --output=json" "map" "check" "check --output=json"; do
    # shellcheck disable=SC2086
    check $c a.vmdk
done
check compare a.vmdk a.exp
"$VIMG-io" -r -c 'read -P 0x41 8 4088' -c 'read -P 0 4096 8192' -c 'read -P 0 12288 4096' a.vmdk \
    >/dev/null || fail "vimg-io reads of a.vmdk"

# 2. A size that ends inside a grain (three sectors of grain 2560), descriptor
#    sectors that disagree with the header's capacity (qemu-img takes the header's).
$GEN . odd $((10 << 20 | 1536)) --grain 2560:data:0x77 --grain 1:data --desc-sectors 7 \
    --expect odd.exp || fail "generator"
converts_to odd.vmdk odd.exp
check info --output=json odd.vmdk
check map --output=json odd.vmdk

# 2b. Two SESparse extents in one descriptor, one after the other.
$GEN . m1 $((20 << 20)) --grain 0:data --grain 3:zero --grain 5119:data --expect m1.exp ||
    fail "generator"
$GEN . m2 $((8 << 20)) --grain 0:data --grain 5:unmapped --grain 2047:data --expect m2.exp ||
    fail "generator"
{ sed -n '1,/^# Extent/p' m1.vmdk; grep '^RW' m1.vmdk m2.vmdk | cut -d: -f2; } > multi.vmdk
[ "$(grep -c SESPARSE multi.vmdk)" = 2 ] || fail "multi.vmdk has not two extents"
cat m1.exp m2.exp > multi.exp
converts_to multi.vmdk multi.exp
check info --output=json multi.vmdk
check map --output=json multi.vmdk
check check multi.vmdk

# 3. A parent named by parentFileNameHint: unallocated grains read the parent's
#    data, zero and unmapped grains read zeros over it.
head -c $((40 << 20)) /dev/urandom > parent.raw
qemu-img convert -O vmdk parent.raw parent.vmdk
cid=$(qemu-img info --output=json parent.vmdk |
      python3 -c 'import json, sys; print("%x" % json.load(sys.stdin)["format-specific"]["data"]["cid"])')
$GEN . child $((40 << 20)) --grain 0:data --grain 1:zero --grain 2:unmapped --grain 3:unalloc \
    --grain 4097:data --grain 8000:zero --parent parent.vmdk --parent-cid "$cid" \
    --parent-raw parent.raw --expect child.exp || fail "generator"
converts_to child.vmdk child.exp
check info --backing-chain --output=json child.vmdk
check info child.vmdk
check map --output=json child.vmdk
check compare child.vmdk child.exp

# 4. Malformed headers: qemu-img's refusal, word for word, as one line.
bad=(
    "--set magic=0x1234" "--set version=0x100000001" "--set grain_size=16"
    "--set grain_table_size=32" "--set flags=1" "--set reserved3=5" "--const-pad 1"
    "--vset magic=7" "--vset replay_journal=1" "--volatile-pad 3"
    "--set volatile_header_offset=999999" "--set volatile_header_offset=0x100000000000000"
    "--set volatile_header_offset=0x40000000000000" "--set grain_dir_size=0x100000"
    "--set grain_dir_offset=0x40000000000000"
)
i=0
for b in "${bad[@]}"; do
    i=$((i + 1))
    # shellcheck disable=SC2086
    $GEN . "bad$i" $((40 << 20)) --grain 0:data $b || fail "generator $b"
    cp "bad$i-sesparse.vmdk" "bad$i.orig"
    check info "bad$i.vmdk"
    grep -q '^exit=1$' "c$n.v" || fail "bad$i ($b): not refused"
    [ "$(wc -l < "c$n.v")" = 2 ] || fail "bad$i ($b): not one line"
    check convert -O raw "bad$i.vmdk" "bad$i.raw"
    cmp "bad$i-sesparse.vmdk" "bad$i.orig" || fail "bad$i: extent changed"
done

# 5. Tables that open but fail where they are read: the same errors at the
#    same offsets for convert, the same check report, the same map up to the error.
tables=(
    "--gd 1=0x1000000100000000" "--gd 1=0x2000000000000000" "--gte 4098=5"
    "--gte 4098=0x4000000000000000" "--set grain_dir_size=0"
    "--set grain_dir_offset=0x100000000000000" "--set grains_offset=0x0080000000000000"
    "--set grain_tables_offset=0xffffff00"
)
for b in "${tables[@]}"; do
    i=$((i + 1))
    # shellcheck disable=SC2086
    $GEN . "bad$i" $((40 << 20)) --grain 0:data --grain 4097:data --grain 4098:zero $b ||
        fail "generator $b"
    check info --output=json "bad$i.vmdk"
    check convert -O raw "bad$i.vmdk" "bad$i.raw"
    check check "bad$i.vmdk"
    qemu-img map --output=json "bad$i.vmdk" 2>map.q >/dev/null
    "$VIMG" map --output=json "bad$i.vmdk" 2>map.v >/dev/null
    expect_same <(norm map.q) <(norm map.v) "map of bad$i ($b)"
done

# 6. A grain past the end of the extent file: check reports it as qemu-img.
$GEN . eof $((40 << 20)) --grain 0:data --grain 4097:data --cluster 4097:900000 || fail "generator"
truncate -s 200000 eof-sesparse.vmdk
check check eof.vmdk

# 7. Writes: every read-write open is refused, and the extent stays as it was.
cp a-sesparse.vmdk a.orig
head -c 1M /dev/zero > src.raw
for c in "commit a.vmdk" "resize a.vmdk 50M" "snapshot -c s a.vmdk" "check -r all a.vmdk" \
         "amend -o size=50M a.vmdk" "convert -n -O vmdk src.raw a.vmdk" "bitmap --add a.vmdk b"; do
    # shellcheck disable=SC2086
    check $c
    grep -q "No write support for seSparse images available" "c$n.v" || fail "$c: not refused"
done
qemu-io -c 'write 0 4k' a.vmdk >io.q 2>&1; echo "exit=$?" >>io.q
"$VIMG_IO" -c 'write 0 4k' a.vmdk >io.v 2>&1; echo "exit=$?" >>io.v
expect_same <(sed 's/^qemu-io:/TOOL:/' io.q) <(sed 's/^vimg-io:/TOOL:/' io.v) "qemu-io write"
cmp a-sesparse.vmdk a.orig || fail "a refused write changed the extent"
pass
