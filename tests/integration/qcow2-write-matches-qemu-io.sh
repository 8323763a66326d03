#!/bin/bash
# Proves: writes, zero writes (with and without unmap) and discards made by
# vimg leave a qcow2 image that `qemu-img check` finds clean and that reads
# the same as the image qemu-io makes from the same requests; concurrent
# writers into the same clusters never allocate a cluster twice.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
RW=$VIMG_BUILD/tests/helpers/vimg-rw
[ -x "$RW" ] || fail "vimg-rw not built"

size=4194304
qemu-img create -q -f qcow2 base.qcow2 $size
qemu-io -c "write -P 0xbb 0 $size" base.qcow2 >/dev/null

run() {     # create-options seed [back]
    local opts=$1 seed=$2 back=${3:-} b="" qargs=() vargs=() i op off len byte
    rm -f q.qcow2 v.qcow2 dq.raw dv.raw
    [ -n "$back" ] && b="-b base.qcow2 -F qcow2"
    qemu-img create -q -f qcow2 ${opts:+-o ${opts//DF/dq.raw}} $b q.qcow2 $size
    qemu-img create -q -f qcow2 ${opts:+-o ${opts//DF/dv.raw}} $b v.qcow2 $size
    case $opts in *DF*) ;; *)
        qemu-io -c "write -c -P 0x77 0 64k" q.qcow2 >/dev/null
        qemu-io -c "write -c -P 0x77 0 64k" v.qcow2 >/dev/null;;
    esac
    RANDOM=$seed
    for i in $(seq 1 60); do
        op=$((RANDOM % 10)); off=$(( (RANDOM * 32768 + RANDOM) % size ))
        len=$(( RANDOM % 200000 + 1 ))
        if [ $((RANDOM % 3)) = 0 ]; then
            off=$((off / 65536 * 65536)); len=$(( (len / 65536 + 1) * 65536 ))
        fi
        [ $((off + len)) -gt $size ] && len=$((size - off))
        [ $len -le 0 ] && continue
        byte=$((RANDOM % 255 + 1))
        case $op in
        [0-5]) qargs+=(-c "write -P $byte $off $len"); vargs+=("w:$off:$len:$byte");;
        6) qargs+=(-c "write -z $off $len"); vargs+=("z:$off:$len");;
        7) qargs+=(-c "write -z -u $off $len"); vargs+=("zu:$off:$len");;
        *) qargs+=(-c "discard $off $len"); vargs+=("d:$off:$len");;
        esac
    done
    qemu-io "${qargs[@]}" q.qcow2 >/dev/null || fail "qemu-io failed ($opts $seed)"
    "$RW" v.qcow2 "${vargs[@]}" || fail "vimg-rw failed ($opts $seed)"
    qemu-img check -q v.qcow2 || fail "qemu-img check ($opts $seed $back)"
    qemu-img compare -q q.qcow2 v.qcow2 || fail "content differs ($opts $seed $back)"
}

seed=1
for opts in "" compat=0.10 extended_l2=on cluster_size=512 refcount_bits=1,cluster_size=4k \
            compression_type=zstd lazy_refcounts=on data_file=DF \
            data_file=DF,data_file_raw=on cluster_size=2M; do
    run "$opts" $seed
    case $opts in *raw=on*) ;; *) run "$opts" $((seed + 100)) back;; esac
    seed=$((seed + 1))
done
# 512-byte clusters over 64 MiB: the refcount table has to grow.
size=67108864
run cluster_size=512 42

# Concurrent writers interleaving 512-byte chunks over the same clusters.
for o in "" extended_l2=on cluster_size=4k; do
    rm -f p.qcow2
    qemu-img create -q -f qcow2 ${o:+-o $o} p.qcow2 16M
    "$RW" p.qcow2 par:8:4194304 || fail "parallel writes ($o)"
    qemu-img check -q p.qcow2 || fail "qemu-img check after parallel writes ($o)"
    "$RW" p.qcow2 t:33554432 || fail "grow ($o)"
    qemu-img check -q p.qcow2 || fail "qemu-img check after growing ($o)"
    [ "$(qemu-img info --output=json p.qcow2 | grep '"virtual-size"')" = '    "virtual-size": 33554432,' ] ||
        fail "size after growing ($o)"
done
pass
