#!/bin/bash
# Proves: vimg's image locks use the same bytes and meaning as QEMU's file
# driver, so that vimg and QEMU exclude each other: vimg refuses what QEMU
# holds (with QEMU's messages) and QEMU refuses what vimg holds; -U and
# locking=off bypass the locks.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd
HOLD=$VIMG_BUILD/tests/helpers/vimg-hold

qemu-img create -q -f qcow2 c.qcow2 64M
qemu-img create -q -f raw a.raw 64M

# start_hold NAME CMD...: runs a holder with stdin on a fifo; waits until it is ready.
start_hold() {
    local name=$1; shift
    mkfifo "$name.in"
    "$@" <"$name.in" >"$name.out" 2>&1 &
    eval "${name}_pid=$!"
    exec {fd}>"$name.in"
    eval "${name}_fd=$fd"
    on_exit "kill $(eval echo \$${name}_pid)"
    for _ in $(seq 100); do grep -q ready "$name.out" 2>/dev/null && return 0; sleep 0.05; done
    cat "$name.out" >&2; fail "holder $name did not start"
}
stop_hold() {
    local name=$1 fd pid
    fd=$(eval echo \$${name}_fd); pid=$(eval echo \$${name}_pid)
    exec {fd}>&-
    wait "$pid" || fail "holder $name failed"
}
# expect_fail MSG CMD...: CMD must fail and print MSG.
expect_fail() {
    local msg=$1; shift
    if "$@" >out 2>&1; then cat out >&2; fail "expected failure: $*"; fi
    grep -qF -- "$msg" out || { cat out >&2; fail "expected '$msg' from: $*"; }
}
expect_ok() { "$@" >out 2>&1 || { cat out >&2; fail "expected success: $*"; }; }

# 1. QEMU holds (qemu-nbd serving a qcow2 writable: perm read/write/resize, shares no write/resize).
qemu-nbd -k "$TESTDIR/nbd.sock" -f qcow2 c.qcow2 &
nbd_pid=$!
on_exit "kill $nbd_pid"
for _ in $(seq 100); do [ -S nbd.sock ] && break; sleep 0.05; done
[ -S nbd.sock ] || fail "qemu-nbd did not start"

# Same verdicts as qemu-img for read-only opens through raw (raw shares everything).
run_both l1 info -f raw c.qcow2; expect_same l1.q l1.v "info -f raw of a served image"
run_both l2 info -U -f raw c.qcow2; expect_same l2.q l2.v "info -U of a served image"
# Writing needs "write", which the server does not share: QEMU's words.
qemu-io -f raw -c quit c.qcow2 >q.err 2>&1 && fail "qemu-io unexpectedly opened"
expect_fail 'Failed to get "write" lock' "$HOLD" -w -f raw c.qcow2 </dev/null
grep -q 'Is another process using the image \[c.qcow2\]?' out || fail "no hint line"
grep -qF 'Failed to get "write" lock' q.err || fail "reference message changed"
# Refusing to share "write" conflicts with the server's write permission.
expect_fail 'Failed to get shared "write" lock' "$HOLD" -n -f raw c.qcow2 </dev/null
# Force-share and locking=off bypass the locks.
expect_ok "$HOLD" -U -n -f raw c.qcow2 </dev/null
expect_ok "$HOLD" -w -n \
    'json:{"driver":"raw","file":{"driver":"file","filename":"c.qcow2","locking":"off"}}' </dev/null
kill $nbd_pid; wait $nbd_pid 2>/dev/null

# 2. vimg holds a.raw writable, sharing neither write nor resize.
start_hold h1 "$HOLD" -w -n -f raw a.raw
expect_fail 'Failed to get "write" lock' qemu-io -f raw -c quit a.raw
expect_ok qemu-io -r -f raw -c 'read 0 512' a.raw
expect_ok qemu-img info a.raw
expect_fail 'Failed to get "write" lock' qemu-img resize -f raw a.raw 128M
stop_hold h1

# 3. vimg holds with the resize permission: qemu-nbd (which refuses to share resize) must fail.
start_hold h2 "$HOLD" -w -r -f raw a.raw
expect_fail 'Failed to get shared "resize" lock' qemu-nbd -k "$TESTDIR/nbd2.sock" -f raw a.raw
stop_hold h2

# 4. The same holder without resize: qemu-nbd may serve it, and both write.
start_hold h3 "$HOLD" -w -f raw a.raw
expect_ok qemu-io -f raw -c 'write 0 512' a.raw
stop_hold h3

# 5. Both directions leave no lock behind.
expect_ok qemu-io -f raw -c quit a.raw
expect_ok "$HOLD" -w -n -r -f raw a.raw </dev/null
pass
