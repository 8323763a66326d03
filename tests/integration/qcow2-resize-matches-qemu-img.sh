#!/bin/bash
# qcow2 resize matches qemu-img/qemu-io on copies: sizes not a multiple of 512
# fail, shrinking drops the cut clusters (also with snapshots) and cuts the
# file, growing over a longer backing file reads zeros, a v2 image with
# snapshots refuses, and zero writes/discards that end the image cover its
# partial last cluster. Compared: output, exit codes, check, map (no host
# offsets), info, compare and the file size.
# Growing with --preallocation=falloc|full|metadata lays the image out as
# QEMU does (refcount area at the old end, data, then L2 tables; metadata:
# per L2 table the table then one run, a new refcount block after its run),
# and resizing an image with persistent dirty bitmaps resizes them as QEMU
# does (stored anew at close, dirty bits kept, the grown part clean): the
# files are byte-identical (cmp), so map with host offsets, check, info and
# the bitmaps' dirty ranges are the same too.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

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

# bitmaps IMG: per bitmap: name, flags, granularity, dirty byte ranges.
bitmaps() {
    python3 - "$1" <<'PY'
import struct, sys
d = open(sys.argv[1], 'rb').read()
cs = 1 << struct.unpack('>I', d[20:24])[0]
size = struct.unpack('>Q', d[24:32])[0]
at, ext = struct.unpack('>I', d[100:104])[0], None
while at + 8 <= cs:
    t, l = struct.unpack('>II', d[at:at + 8])
    if t == 0:
        break
    if t == 0x23852875:
        ext = struct.unpack('>IIQQ', d[at + 8:at + 32])
    at += 8 + (l + 7) // 8 * 8
if ext:
    n, _, _, at = ext
    for _ in range(n):
        to, ts, fl, ty, gb, ns, es = struct.unpack('>QIIBBHI', d[at:at + 24])
        name = d[at + 24 + es:at + 24 + es + ns].decode()
        at += (24 + es + ns + 7) // 8 * 8
        g, data = 1 << gb, b''
        for j in range(ts):
            e = struct.unpack('>Q', d[to + 8 * j:to + 8 * j + 8])[0] & 0x00fffffffffffe00
            data += d[e:e + cs] if e else bytes(cs)
        runs, start, nbits = [], None, (size + g - 1) // g
        for b in range(nbits + 1):
            on = b < nbits and data[b // 8] >> (b % 8) & 1
            if on and start is None:
                start = b
            if not on and start is not None:
                runs.append('%d-%d' % (start * g, min(b * g, size)))
                start = None
        print(name, fl, g, ' '.join(runs))
PY
}

# same NAME: q/NAME and v/NAME are byte-identical and read the same to qemu-img.
same() {
    local f=$1 t
    for t in q v; do
        (cd $t && { qemu-img check "$f" 2>&1; echo "rc=$?"
                    qemu-img map --output=json "$f"
                    qemu-img info "$f" | grep -v "disk size"
                    bitmaps "$f"; }) >$t/$f.state 2>&1
    done
    expect_same q/$f.state v/$f.state "state of $f"
    cmp q/$f v/$f || fail "$f differs from qemu-img's"
}

# grow OPTS SIZE DATA NEWSIZE MODE: each tool resizes its copy of one image.
n=0
grow() {
    n=$((n + 1))
    rm -f q/p$n.qcow2
    qemu-img create -q -f qcow2 -o "$1" q/p$n.qcow2 "$2"
    [ -z "$3" ] || qemu-io -c "write -P 5 $3" q/p$n.qcow2 >/dev/null
    cp q/p$n.qcow2 v/p$n.qcow2
    qemu-img resize --preallocation="$5" q/p$n.qcow2 "$4" >q/p$n.out 2>&1
    "$VIMG" resize --preallocation="$5" v/p$n.qcow2 "$4" >v/p$n.out 2>&1
    expect_same q/p$n.out v/p$n.out "resize --preallocation=$5 $*"
    same p$n.qcow2
}
grow cluster_size=64k 1M "0 1M" 5M falloc
grow cluster_size=64k 1M "0 1M" 5M full
grow cluster_size=4k 1M "0 1M" 10M falloc           # new refcount block, L1 and L2 tables
grow cluster_size=4k 1049088 "0 1049088" 3M full     # the partial last cluster moves
grow cluster_size=4k 1049088 "" 3M falloc
grow cluster_size=512 1M "0 1M" 16M falloc          # refcount table of two clusters
grow cluster_size=512,refcount_bits=64 1M "0 64k" 20M full
grow cluster_size=4k,refcount_bits=1 1M "0 64k" 40M falloc
grow extended_l2=on 1M "" 3M falloc
grow cluster_size=4k 1M "0 1M" 10M metadata         # a refcount block after a run
grow cluster_size=4k 1M "0 64k" 100M metadata
grow cluster_size=4k 1049088 "0 1049088" 3M metadata
grow extended_l2=on 1M "0 64k" 300M metadata

# Persistent dirty bitmaps: enabled, other granularity, disabled (a merged copy).
# bm OPTS SIZE WRITE NEWSIZE RESIZE-ARGS WRITE-AFTER
bm() {
    local t
    n=$((n + 1))
    for t in q v; do
        qemu-img create -q -f qcow2 $1 $t/b$n.qcow2 "$2"
        qemu-img bitmap --add $t/b$n.qcow2 b1
        qemu-img bitmap --add -g 128k $t/b$n.qcow2 b2
        qemu-io -c "write 0 64k" -c "write $3 64k" $t/b$n.qcow2 >/dev/null
        qemu-img bitmap --add --disable $t/b$n.qcow2 b3
        qemu-img bitmap --merge b1 $t/b$n.qcow2 b3
    done
    qemu-img resize $5 q/b$n.qcow2 "$4" >q/b$n.out 2>&1
    "$VIMG" resize $5 v/b$n.qcow2 "$4" >v/b$n.out 2>&1
    expect_same q/b$n.out v/b$n.out "resize $5 with bitmaps $*"
    same b$n.qcow2
    for t in q v; do qemu-io -c "write $6 64k" $t/b$n.qcow2 >/dev/null; done
    same b$n.qcow2
}
bm "" 1M 960k 3M "" 2M
bm "" 3M 2M 1M --shrink 960k
bm "-o cluster_size=4k" 3M 2M 1M --shrink 960k
bm "-o cluster_size=4k" 3M 2M 1000k --shrink 960k
bm "-o cluster_size=512" 1M 960k 300M "" 200M        # bitmap tables grow
bm "-o cluster_size=512" 3M 2M 100k --shrink 60k
# The grown image's bitmaps: old dirty bits kept, the write after recorded, b3 disabled.
grep -q "^b1 2 65536 0-65536 983040-1048576 2097152-2162688$" q/b$((n - 5)).qcow2.state &&
    grep -q "^b3 0 65536 0-65536 983040-1048576$" q/b$((n - 5)).qcow2.state ||
    fail "the grown image's bitmaps are not as expected"
# Writes, a truncate and writes in one qemu-io session; a preallocated growth.
for t in q v; do
    qemu-img create -q -f qcow2 $t/w.qcow2 1M
    qemu-img bitmap --add $t/w.qcow2 b1
    qemu-img bitmap --add -g 4k --disable $t/w.qcow2 b2
    cp $t/w.qcow2 $t/f.qcow2
done
qemu-io -c "write 0 64k" -c "truncate 3M" -c "write 2M 4k" q/w.qcow2 >/dev/null
"$VIMG_IO" -c "write 0 64k" -c "truncate 3M" -c "write 2M 4k" v/w.qcow2 >/dev/null
qemu-img resize --preallocation=falloc q/f.qcow2 5M >/dev/null
"$VIMG" resize --preallocation=falloc v/f.qcow2 5M >/dev/null
same w.qcow2
same f.qcow2
pass
