#!/bin/bash
# Proves: `vimg commit` matches `qemu-img commit`: the data and zeros the
# layers above the base hold reach the base (the backing file, or -b BASE
# further down the chain, found by recorded name or by path), the top is
# emptied to a fresh image unless -d or -b, and the refusals (no backing
# file, base not in the chain, bad -r/-t, argument errors) have qemu-img's
# messages and exit codes. Each case runs on copies of the same chain; every
# image must then have the same contents, map and info, and pass
# `qemu-img check`. -p prints block job progress in qemu-img, whose number
# of lines depends on timing, so only its last line is compared.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# Host offsets are left out: qemu-img's mirror job allocates in its own order.
no_offsets() {
    python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    e.pop("offset", None)
    p = out[-1] if out else None
    if p and all(p[k] == e[k] for k in ("depth", "present", "zero", "data")):
        p["length"] += e["length"]
        continue
    out.append(e)
for e in out:
    print(e)
'
}
qio() { qemu-io -f qcow2 "$@" >/dev/null || fail "qemu-io $*"; }

mkdir ref && cd ref || exit 1
qemu-img create -q -f qcow2 base.qcow2 4M
qio -c 'write -P 1 0 1M' -c 'write -P 6 3M 1M' base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qio -c 'write -P 2 512k 1M' -c 'write -z 3M 64k' mid.qcow2
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qio -c 'write -P 3 2M 64k' -c 'write -z 0 64k' -c 'write -P 4 3200k 4k' top.qcow2
qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 v2.qcow2
qio -c 'write -P 5 64k 128k' v2.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 grown.qcow2 4M
qio -c 'write -P 8 0 64k' grown.qcow2
qemu-img resize -q grown.qcow2 20G
qio -c 'write -P 8 19G 64k' grown.qcow2
qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 above.qcow2
truncate -s 1M plain.raw
cd "$TESTDIR" || exit 1

n=0
check() {
    n=$((n + 1))
    rm -rf q v && cp -a ref q && cp -a ref v
    (cd q && qemu-img "$@" 2>&1 | tr '\r' '\n' | tail -n 3 >../o$n.q.raw; echo "exit=${PIPESTATUS[0]}" >>../o$n.q.raw)
    (cd v && "$VIMG" "$@" 2>&1 | tr '\r' '\n' | tail -n 3 >../o$n.v.raw; echo "exit=${PIPESTATUS[0]}" >>../o$n.v.raw)
    norm o$n.q.raw >o$n.q
    norm o$n.v.raw >o$n.v
    expect_same o$n.q o$n.v "commit $* (output)"
    for img in base.qcow2 mid.qcow2 top.qcow2 v2.qcow2 grown.qcow2; do
        (cd q && qemu-img info -U "$img" && qemu-img map -U --output=json "$img" | no_offsets) >i.q 2>&1
        (cd v && qemu-img info -U "$img" && qemu-img map -U --output=json "$img" | no_offsets) >i.v 2>&1
        sed -i '/^disk size:/d' i.q i.v
        expect_same i.q i.v "commit $* (info/map of $img)"
        (cd v && qemu-img check -q "$img") || fail "commit $*: check $img"
        qemu-img compare -q -U "q/$img" "v/$img" || fail "commit $*: $img contents differ"
    done
}

check commit top.qcow2
check commit -p top.qcow2
check commit -q top.qcow2
check commit -d top.qcow2
check commit -b base.qcow2 top.qcow2
check commit -b ./base.qcow2 -p top.qcow2
check commit -b ../ref/base.qcow2 top.qcow2
check commit -b mid.qcow2 top.qcow2
check commit -f qcow2 -t none -r 1M mid.qcow2
check commit v2.qcow2
check commit grown.qcow2
check commit --image-opts driver=qcow2,file.filename=top.qcow2
check commit --object secret,id=s0,data=x top.qcow2
check commit base.qcow2
check commit -f raw plain.raw
check commit -b top.qcow2 top.qcow2
check commit -b nothere top.qcow2
check commit -b above.qcow2 top.qcow2
check commit -r 1x top.qcow2
check commit -r -5 top.qcow2
check commit -t bogus top.qcow2
check commit
check commit top.qcow2 extra
check commit nothere.qcow2
check commit --bogus top.qcow2

# Other formats (base contents compared, not layout): qcow's top is emptied as qemu-img empties it (L1 zeroed, file
# cut after it: byte-identical), formats that cannot empty an image (vmdk,
# qed) keep the top's data and still succeed, as qemu-img does.
for f in qcow vmdk qed; do
    for t in q v; do
        mkdir -p "$f.$t"
        (
            cd "$f.$t" || exit 1
            qemu-img create -q -f $f base.img 4M
            qemu-io -f $f -c "write -P 0x11 0 1M" base.img >/dev/null
            qemu-img create -q -f $f -b base.img -F $f top.img
            qemu-io -f $f -c "write -P 0x22 2M 64k" -c "write -P 0x33 3M 4k" top.img >/dev/null
            if [ $t = q ]; then qemu-img commit -f $f top.img; else "$VIMG" commit -f $f top.img; fi
            echo "exit=$?"
            qemu-img map -f $f --output=json top.img | no_offsets
            # Its statistics depend on the order qemu-img's commit job allocated in.
            qemu-img check -f $f base.img | grep -v "fragmented"
        ) >"$f.$t.out" 2>&1
    done
    sed -i 's/^vimg:/qemu-img:/' "$f.v.out"
    expect_same "$f.q.out" "$f.v.out" "commit of a $f image"
    qemu-img compare -f $f -F $f "$f.q/base.img" "$f.v/base.img" >/dev/null ||
        fail "$f base after commit differs"
    [ $f != qcow ] || cmp -s "$f.q/top.img" "$f.v/top.img" || fail "emptied qcow top differs"
done
pass
