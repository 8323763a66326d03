#!/bin/bash
# Proves: vimg reads the vmdk testdata samples (hosted sparse, streamOptimized
# version 3 with an embedded descriptor naming another extent, the AFL image
# that must fail with "L1 size too big") with their manifest sha256, and
# images qemu-img writes in every subformat (descriptor files, split and flat
# extents, backing files) as qemu-img does: info (human and JSON), map, data.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

manifest() {  # FILE.bz2 COLUMN
    awk -F'\t' -v f="$1" -v c="$2" '$1 == f { print $c }' "$SHARED/testdata/MANIFEST.tsv"
}

n=0
check() {  # CMD ARGS...: vimg and qemu-img print the same
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

for f in $(awk -F'\t' '$2 == "vmdk" { print $1 }' "$SHARED/testdata/MANIFEST.tsv"); do
    img=$(basename "$(testdata "$f")") || exit 1
    check info "$img"
    check info --output=json "$img"
    if [ "$(manifest "$f" 6)" != ok ]; then
        note=$(manifest "$f" 7)
        msg=${note#*]: }
        grep -qxF "TOOL: ${msg%% (*}" "c$n.v" || fail "$img: message is not '${msg%% (*}'"
        continue
    fi
    check map --output=json "$img"
    "$VIMG" convert -O raw "$img" "$img.raw" || fail "convert $img"
    [ "$(stat -c %s "$img.raw")" = "$(manifest "$f" 4)" ] || fail "$img: size differs"
    if [ "$(manifest "$f" 4)" -gt $((1 << 30)) ]; then
        # 16 GiB of mostly holes: compare the data ranges qemu-img reads.
        qemu-img convert -O raw "$img" "$img.q.raw"
        cmp <(qemu-img map --output=json -f raw "$img.raw") \
            <(qemu-img map --output=json -f raw "$img.q.raw") || fail "$img: layout differs"
        for off in $(seq 0 655872 65587200); do
            cmp -n 512 -i "$off:$off" "$img.raw" "$img.q.raw" || fail "$img: data at $off"
        done
        rm -f "$img.q.raw"
    else
        [ "$(sha256sum < "$img.raw" | cut -d' ' -f1)" = "$(manifest "$f" 5)" ] ||
            fail "$img: content differs"
    fi
    rm -f "$img.raw"
done

head -c 6M /dev/urandom > src.raw
for s in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized; do
    qemu-img create -q -f vmdk -o subformat=$s "e-$s.vmdk" 3G
    check info "e-$s.vmdk"
    check info --output=json "e-$s.vmdk"
    qemu-img convert -O vmdk -o subformat=$s src.raw "d-$s.vmdk"
    check map --output=json "d-$s.vmdk"
    "$VIMG" convert -O raw "d-$s.vmdk" "d-$s.raw" && cmp "d-$s.raw" src.raw ||
        fail "d-$s.vmdk reads differently"
done

qemu-img create -q -f vmdk -o backing_file=d-monolithicSparse.vmdk,backing_fmt=vmdk,zeroed_grain=on \
    top.vmdk 6M
qemu-io -c 'write -P 0x55 1000k 3k' -c 'write -z 3M 64k' top.vmdk >/dev/null
check info --backing-chain --output=json top.vmdk
check map --output=json top.vmdk
check compare top.vmdk d-monolithicSparse.vmdk
qemu-img convert -O raw top.vmdk top.q.raw
"$VIMG" convert -O raw top.vmdk top.v.raw && cmp top.q.raw top.v.raw || fail "top.vmdk reads differently"
pass
