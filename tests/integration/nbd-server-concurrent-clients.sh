#!/bin/bash
# Proves: vimg-nbd serves several clients at once (-e) with many requests in
# flight each: parallel qemu-io writers on disjoint ranges and nbdcopy
# readers all see their own data, the image ends up as a plain file written
# the same way, and with -e 1 a second client waits its turn instead of
# being refused. Without -t the server exits when its last client leaves.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io nbdcopy
[ -x "$VIMG_NBD" ] || fail "vimg-nbd not built"

wait_sock() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
    fail "no server on $1"
}
URI="nbd+unix:///?socket=$TESTDIR/s.sock"

qemu-img create -q -f raw img.raw 64M
qemu-img create -q -f raw ref.raw 64M
"$VIMG_NBD" -t -e 8 -k "$TESTDIR/s.sock" -f raw img.raw & pid=$!
on_exit "kill $pid"
wait_sock s.sock

# Eight writers at once, each its own 8 MiB range in 64 KiB requests (aio: many in flight).
pids=()
for i in $(seq 0 7); do
    cmds=()
    for k in $(seq 0 127); do
        cmds+=(-c "aio_write -P $((i + 1)) $((i * 8388608 + k * 65536)) 65536")
    done
    qemu-io -f raw "${cmds[@]}" -c aio_flush "$URI" >w$i.out 2>&1 & pids+=($!)
    qemu-io -f raw -c "write -P $((i + 1)) $((i * 8))M 8M" ref.raw >/dev/null
done
for p in "${pids[@]}"; do wait "$p" || fail "a writer failed"; done
grep -l "error\|failed" w*.out && fail "writer reported errors"
# Four readers at once, each a whole copy.
pids=()
for i in 1 2 3 4; do nbdcopy "$URI" copy$i.raw & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || fail "a reader failed"; done
for i in 1 2 3 4; do cmp copy$i.raw ref.raw || fail "reader $i saw other bytes"; done
kill $pid; wait $pid
cmp img.raw ref.raw || fail "image differs from the reference"

# -e 1 -t: the second client waits for the first instead of being refused.
"$VIMG_NBD" -t -k "$TESTDIR/one.sock" -f raw img.raw & pid=$!
on_exit "kill $pid"
wait_sock one.sock
ONE="nbd+unix:///?socket=$TESTDIR/one.sock"
qemu-io -r -f raw -c 'sleep 500' -c 'read -P 1 0 64k' "$ONE" >a.out 2>&1 & a=$!
sleep 0.2
qemu-io -r -f raw -c 'read -P 8 60M 64k' "$ONE" >b.out 2>&1 & b=$!
wait $a || { cat a.out >&2; fail "first client"; }
wait $b || { cat b.out >&2; fail "second client"; }
grep -q "verification failed" a.out b.out && fail "pattern mismatch"
kill $pid; wait $pid

# Without -t the server exits when its last client leaves (as qemu-nbd, which then
# resets clients still queued), and removes its socket.
"$VIMG_NBD" -k "$TESTDIR/last.sock" -f raw img.raw & pid=$!
on_exit "kill $pid"
wait_sock last.sock
qemu-io -r -f raw -c 'read -P 1 0 64k' "nbd+unix:///?socket=$TESTDIR/last.sock" >c.out 2>&1 ||
    { cat c.out >&2; fail "client of a non-persistent server"; }
for _ in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done
kill -0 $pid 2>/dev/null && fail "server without -t still running after its client left"
wait $pid || fail "server exit status"
[ -e last.sock ] && fail "socket left behind"
pass
