#!/bin/bash
# Proves: `vimg amend` changes qcow2 images as `qemu-img amend` does: for
# lazy_refcounts, size, compat=1.1 upgrades and compat=0.10 downgrades (zero
# clusters written out, over a backing file or not) both tools print the same
# text and exit code, leave the same header cluster and `info --output=json`,
# the images check clean and still read as before; options that may not change
# give qemu-img's texts.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

mkimg() {  # IMG CREATE_OPTS: data, a zero cluster with a host cluster, one without
    qemu-img create -q -f qcow2 -o "$2" "$1" 8M
    qemu-io -c 'write -P 1 0 1M' -c 'write -z 512k 64k' -c 'write -z -u 2M 128k' \
        -c 'write -P 3 3M 64k' -c 'write -z 4M 64k' "$1" >/dev/null
}
# info without the file's size, which depends on where clusters landed
info() { qemu-img info --output=json "$1" | grep -v '"actual-size"'; }

# amend_both BASE OPTS: amends copies of BASE with both tools and compares.
amend_both() {
    local base=$1 opts=$2 t tool
    for t in q v; do
        tool=qemu-img; [ $t = v ] && tool=$VIMG
        mkdir -p "$TESTDIR/$t" && cp "$base" "$TESTDIR/$t/img.qcow2"
        [ -e "$TESTDIR/base.qcow2" ] && cp "$TESTDIR/base.qcow2" "$TESTDIR/$t/"
        (cd "$TESTDIR/$t" && "$tool" amend -o "$opts" img.qcow2 >out.raw 2>&1
         echo "exit=$?" >>out.raw; norm out.raw >out)
    done
    expect_same "$TESTDIR/q/out" "$TESTDIR/v/out" "amend -o $opts output"
    grep -q '^exit=0$' "$TESTDIR/v/out" || return 0
    for t in q v; do
        (cd "$TESTDIR/$t" && info img.qcow2 >info && qemu-img check img.qcow2 >check 2>&1 &&
         head -c 65536 img.qcow2 >hdr) || fail "check after $t amend -o $opts"
        qemu-img compare -q "$base" "$TESTDIR/$t/img.qcow2" ||
            fail "$t amend -o $opts changed the content"
    done
    expect_same "$TESTDIR/q/info" "$TESTDIR/v/info" "info after amend -o $opts"
    cmp "$TESTDIR/q/hdr" "$TESTDIR/v/hdr" || fail "header cluster after amend -o $opts"
}

cd "$TESTDIR"
qemu-img create -q -f qcow2 base.qcow2 8M
qemu-io -c 'write -P 9 0 8M' base.qcow2 >/dev/null
for create in compat=1.1 compat=0.10 compat=1.1,lazy_refcounts=on cluster_size=4k \
              cluster_size=4k,compat=0.10 compat=1.1,extended_l2=on refcount_bits=8 \
              "compat=1.1,backing_file=base.qcow2,backing_fmt=qcow2" \
              "compat=0.10,backing_file=base.qcow2,backing_fmt=qcow2"; do
    mkimg orig.qcow2 "$create"
    for opts in lazy_refcounts=on lazy_refcounts=off compat=1.1 compat=v3 compat=0.10 \
                compat=v2 compat=foo compat=1.1,lazy_refcounts=on compat=0.10,lazy_refcounts=on \
                lazy_refcounts=on,compat=0.10 lazy_refcounts=foo refcount_bits=16 \
                refcount_bits=3 compat=0.10,refcount_bits=8 size=8M size=16M size=100 \
                size=16M,compat=0.10 cluster_size=4k cluster_size=64k encryption=on \
                preallocation=metadata extended_l2=off compression_type=zlib \
                backing_file=x backing_fmt=raw data_file=x data_file_raw=on; do
        amend_both orig.qcow2 "$opts"
    done
done
pass
