#!/bin/bash
# Proves: `vimg snapshot` creates, lists, applies and deletes qcow2 internal
# snapshots as `qemu-img snapshot` does: the images come out byte-identical
# (dates aside), `qemu-img check` stays clean, each tool reads, applies and
# deletes the other's snapshots, `-l` and `info` (human and JSON) print the
# same table, and errors and argument checks give qemu-img's texts and codes.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# zero_dates IMG: clears date_sec/date_nsec of every entry (ids of 1 digit, names "sN").
zero_dates() {
    local off n i
    off=$(od -A n -t u8 --endian=big -j 64 -N 8 "$1" | tr -d ' ')
    n=$(od -A n -t u4 --endian=big -j 60 -N 4 "$1" | tr -d ' ')
    for ((i = 0; i < n; i++)); do
        poke_be64 "$1" $((off + i * 72 + 16)) 0   # date_sec, date_nsec
    done
}
mkimg() {  # IMG OPTS... SIZE; one compressed cluster (its writes run in parallel otherwise)
    local cs=64k
    case "$*" in *cluster_size=4k*) cs=4k ;; esac
    qemu-img create -q -f qcow2 "$@"
    qemu-io -c 'write -P 1 0 1M' -c "write -c -P 5 2M $cs" -c 'write -z 3M 64k' \
        "$1" >/dev/null
}
step() {  # TOOL IMG ARGS...: one snapshot command; then the image must check clean
    local tool=$1 img=$2; shift 2
    "$tool" snapshot "$@" "$img" || fail "$tool snapshot $* $img"
    qemu-img check -q "$img" || fail "check after $tool snapshot $*"
}

for opts in "" "-o compat=0.10" "-o refcount_bits=8,cluster_size=4k" "-o extended_l2=on"; do
    for t in q v; do
        tool=qemu-img; [ $t = v ] && tool=$VIMG
        mkimg $t.qcow2 $opts 4M
        qemu-img convert -O raw $t.qcow2 s1.raw
        step "$tool" $t.qcow2 -c s1
        qemu-io -c 'write -P 2 512k 1M' -c 'discard 0 64k' $t.qcow2 >/dev/null
        qemu-img convert -O raw $t.qcow2 s2.raw
        step "$tool" $t.qcow2 -c s2
        qemu-io -c 'write -P 3 0 4M' $t.qcow2 >/dev/null
        step "$tool" $t.qcow2 -a s1
        qemu-img compare -q s1.raw $t.qcow2 || fail "$opts: contents after $t -a s1"
        cp $t.qcow2 $t.mid
        step "$tool" $t.qcow2 -a 2
        qemu-img compare -q s2.raw $t.qcow2 || fail "$opts: contents after $t -a 2"
        step "$tool" $t.qcow2 -d s1
        step "$tool" $t.qcow2 -c s3
        step "$tool" $t.qcow2 -d s2
        qemu-img compare -q s2.raw $t.qcow2 || fail "$opts: contents after $t -d"
        zero_dates $t.mid
        zero_dates $t.qcow2
    done
    cmp q.mid v.mid || fail "$opts: images differ after create/apply"
    cmp q.qcow2 v.qcow2 || fail "$opts: images differ after delete"
    # Each tool takes the other's snapshots.
    for pair in "qemu-img $VIMG" "$VIMG qemu-img"; do
        set -- $pair
        mkimg x.qcow2 $opts 4M
        qemu-img convert -O raw x.qcow2 x1.raw
        step "$1" x.qcow2 -c s1
        qemu-io -c 'write -P 7 0 2M' x.qcow2 >/dev/null
        step "$2" x.qcow2 -c s2
        step "$2" x.qcow2 -a s1
        qemu-img compare -q x1.raw x.qcow2 || fail "$opts: $2 applying $1's snapshot"
        step "$2" x.qcow2 -d s1
        step "$1" x.qcow2 -d s2
        qemu-img compare -q x1.raw x.qcow2 || fail "$opts: contents after cross delete"
    done
done

# Listing: -l, info human and JSON, on an image with duplicate and empty names.
mkimg l.qcow2 1M
for name in s1 "a longer snapshot name here" s1 1 ""; do
    qemu-img snapshot -c "$name" l.qcow2
done
qemu-img snapshot -d 1 l.qcow2     # by name: removes the snapshot named "1"
n=0
check() {
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}
check snapshot -l l.qcow2
check snapshot -l -U l.qcow2
check snapshot -l --image-opts driver=qcow2,file.filename=l.qcow2
check info l.qcow2
check info --output=json l.qcow2
check info --output=json -U --backing-chain l.qcow2
qemu-img create -q -f qcow2 e.qcow2 1M
check snapshot -l e.qcow2
check info --output=json e.qcow2
# Errors, on copies so that both tools see the same image.
truncate -s 1M r.raw
for args in "-a nope" "-d nope" "-a 9" "-c x -f qcow2" "-l -c x" "-l -l" "-a" "-x" "-U -c x" \
            "-c" "--object secret,id=s0,data=x -l"; do
    cp l.qcow2 err.qcow2
    check snapshot $args err.qcow2
done
for args in "-l" "-c x" "-d x"; do   # -a: qemu-img warns twice (it reopens)
    check snapshot $args -q r.raw
done
check snapshot
check snapshot -l a b
check snapshot -l nonexistent.qcow2
mkimg one.qcow2 -o refcount_bits=1 1M    # a second reference cannot be counted
check snapshot -c s1 one.qcow2
pass
