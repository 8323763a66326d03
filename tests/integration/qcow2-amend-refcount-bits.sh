#!/bin/bash
# Proves: `vimg amend -o refcount_bits=N` rebuilds the refcount structures as
# `qemu-img amend` does (same output and exit code, same header sector, file
# size and `info --output=json`, a clean `qemu-img check`, unchanged data),
# for every width from 1 to 64, with snapshots, bitmaps, lazy refcounts and
# compat changes in the same call, and refuses what qemu-img refuses
# (widths that are no power of two, a refcount too large for the new width,
# widths other than 16 with compat=0.10). Also proves the compat=0.10
# downgrade of images with snapshots, bitmaps, zstd compression, extended L2
# or a data file: the same acceptance or refusal and message as qemu-img,
# a clean check afterwards, and snapshots that still read as before the
# downgrade. Two deliberate differences, where qemu-img 7.2 damages the
# image: it leaves a downgraded image's bitmaps behind as leaked clusters
# (vimg removes them), it writes the zeros of a zero cluster into a host
# cluster a snapshot still maps (vimg gives them a cluster of their own), and
# it downgrades a zstd image whose snapshots hold compressed clusters, which
# then cannot be read (vimg refuses, with qemu-img's text for the active layer).
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# mkimg DIR CREATE_OPTS PREP: data, a compressed cluster and a zero cluster,
# then the shell commands PREP, in DIR/i.qcow2.
mkimg() {
    local compressed=(-c 'write -c -P 2 2M 64k')
    case $2 in *data_file*) compressed=() ;; esac   # no compressed clusters with a data file
    mkdir -p "$1"
    (cd "$1" && qemu-img create -q -f qcow2 -o "cluster_size=64k${2:+,$2}" i.qcow2 8M &&
     qemu-io -c 'write -P 1 0 1M' "${compressed[@]}" -c 'write -z 4M 64k' \
         i.qcow2 >/dev/null && eval "$3") || fail "making the image ($2; $3)"
}
# snapshots DIR: the content of every snapshot of DIR/i.qcow2, as raw files
snapshots() {
    local sn
    for sn in $(cd "$1" && qemu-img snapshot -l i.qcow2 | awk 'NR > 2 { print $2 }'); do
        qemu-img convert -l "$sn" -O raw "$1/i.qcow2" "$1/snap-$sn.raw" || fail "reading $sn"
    done
}

# amend_case NAME CREATE_OPTS PREP AMEND_OPTS [same|own]: amends copies with
# both tools; "same" (default) also wants the same header sector and size.
amend_case() {
    local name=$1 copts=$2 prep=$3 aopts=$4 layout=${5:-same} t tool f
    rm -rf "$name"
    mkimg "$name/orig" "$copts" "$prep"
    snapshots "$name/orig"
    for t in q v; do
        tool=qemu-img; [ $t = v ] && tool=$VIMG
        cp -r "$name/orig" "$name/$t"
        (cd "$name/$t" && "$tool" amend -o "$aopts" i.qcow2 >out.raw 2>&1
         echo "exit=$?" >>out.raw; norm out.raw >out)
    done
    expect_same "$name/q/out" "$name/v/out" "$name: amend -o $aopts"
    # from inside the directories: a data file's name is relative to them
    (cd "$name/v" && qemu-img check i.qcow2 >check 2>&1) ||
        { cat "$name/v/check" >&2; fail "$name: not clean after vimg amend -o $aopts"; }
    (cd "$name/v" && qemu-img compare -q ../orig/i.qcow2 i.qcow2 2>/dev/null) ||
        fail "$name: amend -o $aopts changed the content"
    for f in "$name"/orig/snap-*.raw; do
        [ -e "$f" ] || continue
        qemu-img convert -l "$(basename "$f" .raw | sed 's/^snap-//')" -O raw \
            "$name/v/i.qcow2" "$name/v/check.raw" && cmp -s "$f" "$name/v/check.raw" ||
            fail "$name: snapshot $(basename "$f") changed"
    done
    [ "$layout" = same ] || return 0
    for t in q v; do
        (cd "$name/$t" && qemu-img info --output=json i.qcow2 2>/dev/null |
            grep -v -e '"actual-size"' -e '"date-' >info
         head -c 512 i.qcow2 | od -A x -t x1 >hdr
         stat -c %s i.qcow2 >size
         qemu-img check i.qcow2 >check 2>&1)
    done
    for f in info hdr size check; do
        expect_same "$name/q/$f" "$name/v/$f" "$name: $f after amend -o $aopts"
    done
}

snap='qemu-img snapshot -c s i.qcow2'
for bits in 1 4 8 64; do
    amend_case "rb$bits" "" "" "refcount_bits=$bits"
done
amend_case rb64-to-1 refcount_bits=64 "" refcount_bits=1
amend_case rb1-to-64-4k "refcount_bits=1,cluster_size=4k" "" refcount_bits=64
amend_case rb-3 "" "" refcount_bits=3
amend_case rb-128 "" "" refcount_bits=128
amend_case rb1-snapshot "" "$snap" refcount_bits=1
amend_case rb2-snapshot "" "$snap" refcount_bits=2
amend_case rb2-bitmap "" "qemu-img bitmap --add i.qcow2 b" refcount_bits=2
amend_case rb8-lazy lazy_refcounts=on "" refcount_bits=8,lazy_refcounts=off
amend_case rb8-size "" "" refcount_bits=4,size=100M
amend_case rb8-v2 compat=0.10 "" refcount_bits=8
amend_case rb8-upgrade compat=0.10 "" compat=1.1,refcount_bits=8
amend_case rb8-downgrade refcount_bits=8 "" compat=0.10
amend_case rb8-downgrade-16 refcount_bits=8 "" compat=0.10,refcount_bits=16

# compat=0.10 with what version 2 lacks
amend_case down-snapshot "" "$snap" compat=0.10
amend_case down-zero-in-snapshots "" "$snap; qemu-io -c 'write -z 0 128k' -c 'write -P 9 6M 64k' i.qcow2 >/dev/null; qemu-img snapshot -c t i.qcow2" compat=0.10 own
amend_case down-zero-over-backing "" "qemu-img create -q -f qcow2 b.qcow2 8M; qemu-io -c 'write -P 7 0 8M' b.qcow2 >/dev/null; qemu-img rebase -u -b b.qcow2 -F qcow2 i.qcow2; $snap; qemu-io -c 'write -z 0 128k' -c 'write -z 5M 64k' i.qcow2 >/dev/null; qemu-img snapshot -c t i.qcow2" compat=0.10 own
amend_case down-bitmap "" "qemu-img bitmap --add i.qcow2 b" compat=0.10 own
grep -q '"bitmaps"' down-bitmap/v/info 2>/dev/null && fail "down-bitmap: bitmaps left behind"
[ "$(qemu-img info --output=json down-bitmap/v/i.qcow2 | grep -c '"compat": "0.10"')" = 1 ] ||
    fail "down-bitmap: not version 2"
amend_case down-zstd compression_type=zstd "" compat=0.10
amend_case down-zstd-unused compression_type=zstd "qemu-io -c 'write 2M 64k' i.qcow2 >/dev/null" compat=0.10
# qemu-img downgrades this one, leaving the snapshot's zstd cluster unreadable; vimg refuses.
mkimg zstd-snap compression_type=zstd "$snap; qemu-io -c 'write 2M 64k' i.qcow2 >/dev/null"
cp zstd-snap/i.qcow2 zstd-snap/before.qcow2
"$VIMG" amend -o compat=0.10 zstd-snap/i.qcow2 >zstd-snap/out 2>&1 &&
    fail "down-zstd-in-snapshot: vimg downgraded an image whose snapshot has zstd clusters"
grep -q "^vimg: Cannot downgrade an image with zstd compression type and existing compressed clusters$" \
    zstd-snap/out || fail "down-zstd-in-snapshot: $(cat zstd-snap/out)"
cmp -s zstd-snap/before.qcow2 zstd-snap/i.qcow2 || fail "down-zstd-in-snapshot: image changed"
amend_case down-extended-l2 extended_l2=on "" compat=0.10
amend_case down-data-file "data_file=d.raw" "" compat=0.10
pass
