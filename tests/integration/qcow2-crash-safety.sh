#!/bin/bash
# Proves: the qcow2 write path orders its metadata updates so that a crash
# loses nothing that was flushed and corrupts nothing. vimg-io runs a long
# stream of allocating writes (unique offsets, unaligned sizes, each with its
# own pattern) with a `flush` + `length` after every few, and is killed with
# SIGKILL at a random moment. Then: the image opens, `qemu-img check` finds
# no corruption (leaked clusters are allowed), and every write that came
# before the last completed flush reads back with its pattern (qemu-io
# "read -P"). Run on small clusters with 64-bit refcounts (so refcount
# blocks and the refcount table itself grow during the run), on 64 KiB
# clusters, with every cluster shared with a snapshot (copy-on-write and
# dropped references), and with lazy_refcounts=on (then a read-write open
# must leave a clean image too). RANDOM is seeded (printed) so a failure can be replayed.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io stdbuf
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"

seed=${CRASH_SEED:-$(( $(date +%s) % 32768 ))}
echo "seed $seed"
RANDOM=$seed
SLOT=65536
N_SLOTS=512            # a 32 MiB image: every write has its own 64 KiB slot

# gen_script FILE: writes "write -P PAT OFF LEN" lines, with "flush" and
# "length" after every 1..4 writes; WRITES.txt gets "EPOCH PAT OFF LEN" per write.
gen_script() {
    local i=0 epoch=0 left=$((RANDOM % 4 + 1)) slot off len pat
    local -a slots
    mapfile -t slots < <(seq 0 $((N_SLOTS - 1)) | shuf --random-source=<(yes "$RANDOM"))
    : >"$1"; : >writes.txt
    for slot in "${slots[@]}"; do
        case $((RANDOM % 4)) in
        0) len=512 ;; 1) len=4096 ;; 2) len=$(( (RANDOM % 100 + 1) * 512 )) ;; *) len=65536 ;;
        esac
        off=$(( slot * SLOT + (RANDOM % ((SLOT - len) / 512 + 1)) * 512 ))
        pat=$(( i % 254 + 1 ))
        echo "write -P $pat $off $len" >>"$1"
        echo "$epoch $pat $off $len" >>writes.txt
        i=$((i + 1)); left=$((left - 1))
        if [ $left = 0 ]; then
            printf 'flush\nlength\n' >>"$1"
            epoch=$((epoch + 1)); left=$((RANDOM % 4 + 1))
        fi
    done
}

# verify IMAGE N_FLUSHED: writes of epochs below N_FLUSHED read back.
verify() {
    local img=$1 flushed=$2 epoch pat off len
    : >verify.txt
    while read -r epoch pat off len; do
        [ "$epoch" -lt "$flushed" ] && echo "read -P $pat $off $len" >>verify.txt
    done <writes.txt
    [ -s verify.txt ] || return 0
    qemu-io -r -f qcow2 "$img" <verify.txt >verify.out 2>&1
    if grep -q "Pattern verification failed\|error\|Error" verify.out; then
        grep -m5 -B1 "Pattern verification failed\|error\|Error" verify.out >&2
        return 1
    fi
}

total_flushed=0 runs=0
crash_run() {  # CREATE_OPTS [snapshot]
    local opts=$1 delay flushed out
    qemu-img create -q -f qcow2 -o "$opts" c.qcow2 $((N_SLOTS * SLOT))
    if [ "${2:-}" = snapshot ]; then
        # Every cluster shared with a snapshot: the writes copy them and drop references.
        qemu-io -c "write -P 238 0 $((N_SLOTS * SLOT))" c.qcow2 >/dev/null
        qemu-img snapshot -c base c.qcow2
    fi
    gen_script script.txt
    delay=$(printf '0.%03d' $((RANDOM % 400 + 20)))
    # Line-buffered output: what was printed before the kill is in io.out (an ASan
    # build accepts stdbuf's preload only without the link order check).
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
        stdbuf -oL "$VIMG_IO" c.qcow2 <script.txt >io.out 2>&1 &
    local pid=$!
    sleep "$delay"
    kill -KILL $pid 2>/dev/null
    wait $pid 2>/dev/null
    flushed=$(grep -c "MiB$" io.out)
    runs=$((runs + 1)); total_flushed=$((total_flushed + flushed))
    if grep -q "Error\|error\|failed" io.out; then
        grep -m3 "Error\|error\|failed" io.out >&2
        fail "vimg-io reported an error before the kill ($opts, seed $seed)"
    fi
    qemu-img info c.qcow2 >/dev/null 2>info.err || { cat info.err >&2;
        fail "image does not open after kill ($opts, $flushed flushes, seed $seed)"; }
    qemu-img check c.qcow2 >check.out 2>&1
    case $? in
    0|3) ;;
    *) cat check.out >&2
       fail "qemu-img check finds corruption after kill ($opts, $flushed flushes, seed $seed)" ;;
    esac
    if grep -q "^ERROR" check.out; then
        cat check.out >&2; fail "check reports errors ($opts, seed $seed)"
    fi
    verify c.qcow2 "$flushed" ||
        fail "flushed writes lost ($opts, $flushed flushes, delay $delay, seed $seed)"
    if [[ $opts == *lazy_refcounts=on* ]]; then
        # A read-write open (repair if dirty) leaves an image with no corruption.
        "$VIMG_IO" -c "read 0 512" c.qcow2 >/dev/null 2>&1 ||
            fail "rw open after kill failed ($opts, seed $seed)"
        qemu-img check c.qcow2 >check.out 2>&1
        case $? in 0|3) ;; *) cat check.out >&2; fail "lazy image unclean after rw open" ;; esac
        verify c.qcow2 "$flushed" || fail "flushed writes lost after rw open ($opts)"
    fi
}

for i in 1 2 3 4 5; do
    crash_run "cluster_size=512,refcount_bits=64,lazy_refcounts=off"
    crash_run "cluster_size=512,refcount_bits=64,lazy_refcounts=on"
    crash_run "cluster_size=65536,lazy_refcounts=off"
    crash_run "cluster_size=4096,refcount_bits=1,lazy_refcounts=on"
    crash_run "cluster_size=4096,lazy_refcounts=off" snapshot
done
echo "$runs kills, $total_flushed flushes acknowledged before them"
[ "$total_flushed" -gt 0 ] || fail "no flush completed before any kill: the test proved nothing"
pass
