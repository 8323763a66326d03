#!/bin/bash
# Proves: `vimg create -f qcow2` prints qemu-img's option help, "Formatting"
# line and errors, and writes images byte-identical to qemu-img's (or, where
# the layout may differ, images `qemu-img check` finds clean with the same info).
source "$(dirname "$0")/lib.sh"
need qemu-img

run_both help create -f qcow2 -o help
expect_same help.q help.v "create -o help"
qemu-img create -q -f qcow2 base.qcow2 32M
mkdir q v
n=0
for args in "" "-o compat=0.10" "-o compat=v3" "-o cluster_size=512" "-o cluster_size=4k" \
            "-o cluster_size=2M" "-o refcount_bits=1" "-o refcount_bits=8" "-o refcount_bits=64" \
            "-o lazy_refcounts=on" "-o extended_l2=on" "-o compression_type=zstd" \
            "-o preallocation=metadata" "-o preallocation=off" "-o data_file=d.raw" \
            "-o data_file=d.raw,data_file_raw=on" "-o cluster_size=512,refcount_bits=16" \
            "-b ../base.qcow2 -F qcow2" "-o compat=0.10 -b ../base.qcow2 -F qcow2" \
            "-o cluster_size=512 -b ../base.qcow2 -F qcow2" \
            "-o extended_l2=on,preallocation=metadata -b ../base.qcow2 -F qcow2"; do
    n=$((n + 1))
    for t in q v; do
        rm -f $t/*
        tool=qemu-img; [ $t = v ] && tool=$VIMG
        (cd $t && $tool create -f qcow2 $args img.qcow2 100M >out 2>&1; echo "exit=$?" >>out)
        sed -i 's/^qemu-img:/TOOL:/; s/^vimg:/TOOL:/' $t/out
    done
    expect_same q/out v/out "create $args"
    cmp q/img.qcow2 v/img.qcow2 || fail "image differs: create $args"
    if [ -f q/d.raw ]; then cmp q/d.raw v/d.raw || fail "data file differs: create $args"; fi
    (cd v && qemu-img check -q img.qcow2) || fail "qemu-img check: create $args"
done
# Layouts that may differ from QEMU's: the result must still be clean and alike.
for args in "-o preallocation=falloc" "-o preallocation=full" \
            "-o cluster_size=512,preallocation=metadata"; do
    for t in q v; do
        tool=qemu-img; [ $t = v ] && tool=$VIMG
        rm -f $t/*
        (cd $t && $tool create -q -f qcow2 $args img.qcow2 20M) || fail "create $args ($t)"
    done
    (cd v && qemu-img check -q img.qcow2) || fail "qemu-img check: create $args"
    qemu-img compare -q q/img.qcow2 v/img.qcow2 || fail "content differs: create $args"
    for t in q v; do qemu-img info --output=json $t/img.qcow2 | grep -v actual-size | sed "s|$t/||" >$t/info; done
    expect_same q/info v/info "info after create $args"
done
# Errors, each checked against qemu-img's text and exit code.
for args in "-o compat=0.10,lazy_refcounts=on" "-o compat=0.10,extended_l2=on" \
            "-o compat=0.10,refcount_bits=8" "-o refcount_bits=3" "-o refcount_bits=128" \
            "-o cluster_size=1000" "-o cluster_size=256" "-o cluster_size=4M" \
            "-o extended_l2=on,cluster_size=4k" "-o compat=1.2" "-o compression_type=lzo" \
            "-o compat=0.10,compression_type=zstd" "-o preallocation=foo" \
            "-o data_file_raw=on" "-o data_file=dd.raw,compat=0.10" \
            "-o data_file=dd.raw,data_file_raw=on -b base.qcow2 -F qcow2" \
            "-o backing_fmt=qcow2" "-o preallocation=metadata -b base.qcow2 -F qcow2" \
            "-o encryption=on" "-o encrypt.format=luks"; do
    n=$((n + 1))
    run_both "e$n" create -f qcow2 $args err.qcow2 1M
    expect_same "e$n.q" "e$n.v" "create $args"
    rm -f err.qcow2
done
pass
