#!/bin/bash
# Proves: `vimg rebase` matches `qemu-img rebase`: safe mode copies into the
# image exactly the ranges where the old and new backing chains differ (new
# backing smaller or larger than the image, none at all with -b "", a new
# backing from inside the old chain, another format), -u only rewrites the
# recorded name and format, -p prints the same figures, and every refusal
# (missing -b or -F, unopenable backing, bad cache modes, raw images, bad
# options) has qemu-img's message and exit code (-c, which qemu-img 7.2 lacks,
# is tested in rebase-compressed.sh). Each case runs on copies
# of the same images; the results must have the same contents, map and info,
# and pass `qemu-img check`. In the map, data runs are compared without their
# "zero" flag: whether
# qcow2 zero-fills a cluster's copied-on-write part in the host file is the
# write path's business, not rebase's.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# Merges data runs that differ only in "zero" (host zero-fill).
map_norm() {
    python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    if e["data"]:
        e.pop("zero")
    p = out[-1] if out else None
    if p and e["data"] and p["data"] and p["depth"] == e["depth"] and \
            p.get("offset", -1) + p["length"] == e.get("offset", -2):
        p["length"] += e["length"]
        continue
    out.append(e)
for e in out:
    print(e)
'
}
qio() { qemu-io -f qcow2 "$@" >/dev/null || fail "qemu-io $*"; }

# A chain old2 <- old1 <- top, and new backing files to move to.
make_images() {
    rm -rf "$1" && mkdir -p "$1" && cd "$1" || exit 1
    qemu-img create -q -f qcow2 old2.qcow2 4M
    qio -c 'write -P 1 0 1M' -c 'write -P 7 3M 64k' old2.qcow2
    qemu-img create -q -f qcow2 -b old2.qcow2 -F qcow2 old1.qcow2
    qio -c 'write -P 2 2M 64k' -c 'write -z 3M 64k' -c 'write -P 5 512k 4k' old1.qcow2
    qemu-img create -q -f qcow2 -b old1.qcow2 -F qcow2 top.qcow2 5M
    qio -c 'write -P 9 128k 64k' -c 'write -P 9 2100k 1k' -c 'write -P 8 4M 8k' top.qcow2
    qemu-img create -q -f qcow2 new.qcow2 4M
    qio -c 'write -P 1 0 512k' -c 'write -P 3 3M 4k' -c 'write -P 2 2M 32k' new.qcow2
    qemu-img create -q -f qcow2 small.qcow2 1M
    qio -c 'write -P 4 0 1M' small.qcow2
    qemu-img create -q -f qcow2 big.qcow2 9M
    qio -c 'write -P 6 4M 2M' big.qcow2
    qemu-img create -q -f qcow2 -o compat=0.10 -b old1.qcow2 -F qcow2 v2.qcow2
    qio -c 'write -P 3 0 64k' v2.qcow2
    truncate -s 4M new.raw
    printf 'raw data' | dd of=new.raw bs=1 seek=1000 conv=notrunc status=none
    truncate -s 1M plain.raw
    cd "$TESTDIR" || exit 1
}
make_images "$TESTDIR/ref"

n=0
# check ARGS... : runs both tools on fresh copies (the image names are relative to them).
check() {
    n=$((n + 1))
    rm -rf q v && cp -a ref q && cp -a ref v
    (cd q && qemu-img "$@" >../o$n.q.raw 2>&1; echo "exit=$?" >>../o$n.q.raw)
    (cd v && "$VIMG" "$@" >../o$n.v.raw 2>&1; echo "exit=$?" >>../o$n.v.raw)
    norm o$n.q.raw >o$n.q
    norm o$n.v.raw >o$n.v
    expect_same o$n.q o$n.v "rebase $* (output)"
    for img in top.qcow2 v2.qcow2 plain.raw; do
        (cd q && qemu-img info -U "$img" && qemu-img map -U --output=json "$img" | map_norm) >i.q 2>&1
        (cd v && qemu-img info -U "$img" && qemu-img map -U --output=json "$img" | map_norm) >i.v 2>&1
        sed -i '/^disk size:/d' i.q i.v
        expect_same i.q i.v "rebase $* (info/map of $img)"
        case $img in *.qcow2)
            (cd v && qemu-img check -q "json:{\"driver\":\"qcow2\",\"backing\":null,
                \"file\":{\"driver\":\"file\",\"filename\":\"$img\"}}") ||
                fail "rebase $*: check $img";;
        esac
        if qemu-img map -U "q/$img" >/dev/null 2>&1; then
            qemu-img compare -q -U "q/$img" "v/$img" || fail "rebase $*: $img contents differ"
        fi
    done
}

check rebase -b new.qcow2 -F qcow2 top.qcow2
check rebase -p -b new.qcow2 -F qcow2 top.qcow2
check rebase -b small.qcow2 -F qcow2 -p top.qcow2
check rebase -b big.qcow2 -F qcow2 -p top.qcow2
check rebase -b "" -p top.qcow2
check rebase -b "" -F qcow2 top.qcow2
check rebase -b old2.qcow2 -F qcow2 -p top.qcow2
check rebase -b new.raw -F raw -p top.qcow2
check rebase -b new.qcow2 -F raw top.qcow2
check rebase -q -p -b new.qcow2 -F qcow2 top.qcow2
check rebase -U -b new.qcow2 -F qcow2 top.qcow2
check rebase -t none -T writeback -b new.qcow2 -F qcow2 top.qcow2
check rebase -f qcow2 -b new.qcow2 -F qcow2 v2.qcow2
check rebase --image-opts -b new.qcow2 -F qcow2 driver=qcow2,file.filename=top.qcow2
check rebase --object secret,id=s0,data=x -b new.qcow2 -F qcow2 top.qcow2
# Unsafe: names only.
check rebase -u -b new.qcow2 -F qcow2 top.qcow2
check rebase -u -b nothere -F qcow2 top.qcow2
check rebase -u -b "" top.qcow2
check rebase -u top.qcow2
check rebase -u -p -b new.qcow2 -F qcow2 top.qcow2
check rebase -u -b a-much-longer-backing-file-name-than-before.qcow2 -F qcow2 v2.qcow2
# Refusals.
check rebase -b new.qcow2 top.qcow2
check rebase -u -b new.qcow2 top.qcow2
check rebase top.qcow2
check rebase
check rebase -b new.qcow2 -F qcow2
check rebase -b new.qcow2 -F qcow2 top.qcow2 extra
check rebase -b nothere -F qcow2 top.qcow2
check rebase -b new.qcow2 -F bogus top.qcow2
check rebase -b new.qcow2 -F qcow2 -f bogus top.qcow2
check rebase -t bogus -b new.qcow2 -F qcow2 top.qcow2
check rebase -T bogus -b new.qcow2 -F qcow2 top.qcow2
check rebase -x -b new.qcow2 -F qcow2 top.qcow2
check rebase -b new.qcow2 -F qcow2 nothere.qcow2
check rebase -f raw -b new.qcow2 -F qcow2 plain.raw
check rebase -u -f raw -b new.qcow2 -F qcow2 plain.raw
check rebase -b
check rebase --bogus top.qcow2
pass
