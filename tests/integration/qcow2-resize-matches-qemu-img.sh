#!/bin/bash
# qcow2 resize matches qemu-img/qemu-io on copies: sizes not a multiple of 512
# fail, shrinking drops the cut clusters (also with snapshots) and cuts the
# file, growing over a longer backing file reads zeros, a v2 image with
# snapshots refuses, and zero writes/discards that end the image cover its
# partial last cluster. Compared: output, exit codes, check, map (no host
# offsets), info, compare and the file size.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

qemu-img create -f qcow2 base.qcow2 2M >/dev/null
qemu-io -c "write -P 7 0 2M" base.qcow2 >/dev/null

# scenario: runs in the directory $1 with I=image tool, IO=io tool.
scenario() {
    local I=$2 IO=$3 o
    mkdir "$1" && cd "$1" || exit 1
    {
        $I create -f qcow2 a.qcow2 1M; $IO -c "write -P 1 0 1M" a.qcow2
        $I resize a.qcow2 1000; echo "rc=$?"
        $IO -c "truncate 1000" a.qcow2; echo "rc=$?"
        $I resize --shrink a.qcow2 300k; echo "rc=$?"
        $I snapshot -c s1 a.qcow2
        $I resize --shrink a.qcow2 100k; echo "rc=$?"
        $I resize a.qcow2 3M; echo "rc=$?"
        $IO -c "write -P 3 2M 64k" -c "truncate 1536" -c "read -P 1 0 1536" a.qcow2
        echo "rc=$?"
        for o in compat=0.10 compat=1.1 extended_l2=on cluster_size=4k; do
            $I create -f qcow2 -o $o -b ../base.qcow2 -F qcow2 "g-$o.qcow2" 100352
            $IO -c "write -P 1 0 512" "g-$o.qcow2"
            $I resize "g-$o.qcow2" 1500160; echo "rc=$?"
            $IO -c "truncate 1800192" -c "read -P 0 1500160 300032" "g-$o.qcow2"
        done
        $I create -f qcow2 -o compat=0.10 v2.qcow2 1M; $I snapshot -c s v2.qcow2
        $I resize v2.qcow2 2M; echo "rc=$?"
        $I create -f qcow2 -o data_file=d.raw d.qcow2 1M; $IO -c "write -P 1 0 1M" d.qcow2
        $I resize --shrink d.qcow2 300k; stat -c %s d.raw
        $I create -f qcow2 t1.qcow2 1000; $IO -c "write 0 512" -c "write -z 0 1024" t1.qcow2
        $I create -f qcow2 t2.qcow2 1000; $IO -c "write 0 1024" -c "discard 0 1024" t2.qcow2
        $I create -f qcow2 -o extended_l2=on t3.qcow2 1000
        $IO -c "write 0 1024" -c "write -z 512 512" t3.qcow2
        $I create -f qcow2 t4.qcow2 100000
        $IO -c "write 0 100352" -c "discard 512 99840" t4.qcow2
        $I resize --preallocation=metadata p.qcow2 3M 2>&1; $I create -f qcow2 p.qcow2 100k
        $IO -c "write -P 1 0 100k" p.qcow2; $I resize --preallocation=metadata p.qcow2 3M
    } 2>&1 | sed -E '/ops\/sec/d; s/^(qemu-img|vimg|qemu-io|vimg-io):/TOOL:/' >out.txt
    for f in *.qcow2; do
        echo "== $f $(stat -c %s "$f")"
        qemu-img check "$f" 2>&1
        qemu-img map --output=json "$f" | sed 's/, "offset": [0-9]*//'
        qemu-img info "$f" | grep -v "disk size" | sed -E 's/[0-9-]+ [0-9:]+ 00:00/DATE/'
    done >state.txt 2>&1
    cd ..
}
scenario q qemu-img qemu-io
scenario v "$VIMG" "$VIMG_IO"
expect_same q/out.txt v/out.txt "tool output"
expect_same q/state.txt v/state.txt "image state"
for f in q/*.qcow2; do
    (cd q && qemu-img compare "${f#q/}" "../v/${f#q/}") >/dev/null || fail "contents differ: $f"
done
pass
