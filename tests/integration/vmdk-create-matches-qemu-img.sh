#!/bin/bash
# Proves: vimg creates vmdk images in every subformat laid out as qemu-img
# lays them out (same bytes but the random CID), with qemu-img's option help,
# "Formatting" line and errors; images vimg writes (sparse grain allocation
# over a backing file, streamOptimized compressed grains from convert) read
# identically in qemu-img, pass `qemu-img check` and open in vmdkinfo.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

n=0
check() {  # CMD ARGS...: vimg and qemu-img print the same
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

check create -f vmdk -o help
for s in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized; do
    opts="subformat=$s,adapter_type=lsilogic,toolsversion=7,hwversion=9"
    "$VIMG" create -f vmdk -o "$opts" "$s.vmdk" 3G > v.out || fail "create $s"
    mkdir -p q && (cd q && qemu-img create -f vmdk -o "$opts" "$s.vmdk" 3G > ../q.out)
    expect_same q.out v.out "create $s"
    for f in "$s"*.vmdk; do
        # Flat extents are holes of the disk size; their length is compared.
        if [ "$(stat -c %s "$f")" -ge $((1 << 20)) ]; then
            [ "$(stat -c %s "$f")" = "$(stat -c %s "q/$f")" ] || fail "$f: size differs"
            continue
        fi
        # The random CID is written without leading zeros, so its length (and with it
        # the zero padding after the embedded descriptor) varies: compare the rest.
        cmp <(sed 's/^CID=.*//' "$f" | tr -d '\0' | od -c) \
            <(sed 's/^CID=.*//' "q/$f" | tr -d '\0' | od -c) >/dev/null ||
            fail "$f differs from qemu-img's"
    done
    qemu-img check "$s.vmdk" >/dev/null 2>&1; q=$?
    [ $q = 0 ] || [ $q = 63 ] || fail "qemu-img check $s.vmdk exit $q"
done
check create -f vmdk -o compat6=on,hwversion=7 x.vmdk 1G
check create -f vmdk -o compat6=on y.vmdk 1G
check create -f vmdk -o subformat=bogus z.vmdk 1G

# Writes: partial grains over a backing file, and convert to each subformat.
head -c 6M /dev/urandom > src.raw
dd if=/dev/zero of=src.raw bs=1M seek=2 count=1 conv=notrunc 2>/dev/null
qemu-img convert -O vmdk src.raw base.vmdk
"$VIMG" create -q -f vmdk -o backing_file=base.vmdk,backing_fmt=vmdk w.vmdk 6M
cp w.vmdk wq.vmdk
cmds=(-c 'write -P 0x11 1000k 3k' -c 'write -P 0x22 65536 512' -c 'write -P 0x33 5M 1M')
"$VIMG_IO" "${cmds[@]}" w.vmdk >/dev/null || fail "vimg-io write"
qemu-io "${cmds[@]}" wq.vmdk >/dev/null
qemu-img compare w.vmdk wq.vmdk >/dev/null || fail "written images differ"
qemu-img check w.vmdk >/dev/null || fail "qemu-img check w.vmdk"
for s in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized; do
    "$VIMG" convert -O vmdk -o subformat=$s src.raw "o-$s.vmdk" || fail "convert $s"
    qemu-img compare src.raw "o-$s.vmdk" >/dev/null || fail "o-$s.vmdk differs in qemu-img"
    qemu-img check "o-$s.vmdk" >/dev/null || fail "qemu-img check o-$s.vmdk"
    if command -v vmdkinfo >/dev/null; then
        vmdkinfo "o-$s.vmdk" >/dev/null || fail "vmdkinfo o-$s.vmdk"
    fi
done
pass
