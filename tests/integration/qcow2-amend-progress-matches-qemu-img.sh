#!/bin/bash
# Proves: `vimg amend -p` prints the progress figures `qemu-img amend -p`
# prints, byte for byte (every "(NN.NN/100%)\r" line and the final newline),
# and the same messages and exit codes: upgrades, downgrades (with zero
# clusters, 4k clusters, snapshots), refcount width changes (512 B, 4k and
# 64k clusters, 64 MiB and 1 GiB images), operations combined (the total
# projected from the ones done), a key slot change beside a refcount change
# (it counts, reporting nothing), changes that report nothing (lazy
# refcounts, size), -q, -o help with and without -f, and refusals (bad key,
# bad width, downgrade refused).
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

n=0
# case SIZE CREATE-OPTS WRITE SNAPSHOT(yes/no) AMEND-ARGS...
case_() {
    local size=$1 copts=$2 write=$3 snap=$4 t
    shift 4
    n=$((n + 1))
    for t in q v; do
        rm -rf "$t" && mkdir "$t" || exit 1
        (cd "$t" && qemu-img create -q -f qcow2 ${copts:+-o "$copts"} i.qcow2 "$size" &&
            { [ -z "$write" ] || qemu-io -c "$write" i.qcow2 >/dev/null; } &&
            { [ "$snap" = no ] || { qemu-img snapshot -c s1 i.qcow2 &&
                qemu-io -c 'write -z 0 1M' i.qcow2 >/dev/null; }; }) || fail "setup $n"
    done
    (cd q && qemu-img amend "$@" i.qcow2 >../q.out 2>../q.err; echo "exit=$?" >>../q.out)
    (cd v && "$VIMG" amend "$@" i.qcow2 >../v.out 2>../v.err; echo "exit=$?" >>../v.out)
    norm q.err >q.errn
    norm v.err >v.errn
    cmp -s q.out v.out || { diff <(tr '\r' '\n' <q.out) <(tr '\r' '\n' <v.out) >&2;
                            fail "progress of amend $* ($copts, $size)"; }
    expect_same q.errn v.errn "messages of amend $* ($copts, $size)"
    cmp -s q/i.qcow2 v/i.qcow2 || qemu-img compare -q q/i.qcow2 v/i.qcow2 ||
        fail "amend $* ($copts, $size): contents differ"
}

case_ 64M "" "write -P 1 0 10M" no -p -o refcount_bits=1
case_ 64M "" "write -P 1 0 10M" no -p -o refcount_bits=64
case_ 64M "" "write -z 0 1M" no -p -o compat=0.10
case_ 64M compat=0.10 "write -P 1 0 10M" no -p -o compat=1.1
case_ 64M compat=0.10 "write -P 1 0 10M" no -p -o compat=1.1,refcount_bits=4
case_ 64M refcount_bits=4 "write -P 1 0 10M" no -p -o compat=0.10,refcount_bits=16
case_ 64M cluster_size=512 "write -P 1 0 10M" no -p -o refcount_bits=2
case_ 64M cluster_size=512 "write -P 1 0 10M" no -p -o refcount_bits=64
case_ 64M cluster_size=4k "write -P 1 0 10M" no -p -o compat=0.10
case_ 1G "" "write -P 1 0 100M" no -p -o refcount_bits=64
case_ 1G cluster_size=4k "write -P 1 0 100M" no -p -o refcount_bits=64
case_ 64M "" "write -P 1 0 10M" yes -p -o compat=0.10
case_ 64M cluster_size=4k,refcount_bits=8 "write -P 1 0 10M" yes -p -o refcount_bits=16,compat=0.10
case_ 64M "" "" no -p -o lazy_refcounts=on
case_ 64M "" "" no -p -o size=128M
case_ 64M "" "" no -p -q -o refcount_bits=8
case_ 64M "" "" no -p -o help
case_ 64M "" "" no -p -f qcow2 -o help
case_ 64M "" "" no -p -o bogus=1
case_ 64M "" "" no -p -o refcount_bits=3
case_ 64M cluster_size=4k,refcount_bits=8 "" no -p -o compat=0.10

# A key slot change with a refcount change: two operations, one silent.
for t in q v; do
    rm -rf "$t" && mkdir "$t" || exit 1
    for i in 1 2 3 4 5; do  # qemu-img's PBKDF calibration fails now and then
        (cd "$t" && qemu-img create -q -f qcow2 --object secret,id=s0,data=pw \
            -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 i.qcow2 64M \
            2>/dev/null) && break
    done
    [ -f "$t/i.qcow2" ] || fail "could not create an encrypted image"
done
args=(-p --object secret,id=s0,data=pw --object secret,id=s1,data=pw2
      -o encrypt.state=active,encrypt.new-secret=s1,encrypt.keyslot=1,encrypt.iter-time=10,refcount_bits=8
      --image-opts driver=qcow2,file.filename=i.qcow2,encrypt.key-secret=s0)
for i in 1 2 3 4 5; do
    cp q/i.qcow2 q/try.qcow2
    (cd q && qemu-img amend "${args[@]/i.qcow2/try.qcow2}" >../q.out 2>../q.err)
    qemu_pbkdf_flaked q.err || break
done
(cd v && "$VIMG" amend "${args[@]}" >../v.out 2>../v.err) || fail "key slot amend: $(cat v.err)"
cmp -s q.out v.out || { diff <(tr '\r' '\n' <q.out) <(tr '\r' '\n' <v.out) >&2;
                        fail "progress of a key slot and refcount amend"; }
[ "$n" = 21 ] || fail "ran $n of 21 cases"
pass
