#!/bin/bash
# Proves: `vimg resize` asks for the resize permission through QEMU's lock
# bytes: while qemu-nbd serves the image (sharing no resize), vimg resize is
# refused with qemu-img's message and leaves the file alone; once the server
# is gone the same command succeeds.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-nbd

truncate -s 1M img.raw
qemu-nbd -f raw -k "$TESTDIR/nbd.sock" img.raw &
nbd_pid=$!
on_exit "kill $nbd_pid"
for _ in $(seq 50); do [ -S nbd.sock ] && break; sleep 0.1; done
[ -S nbd.sock ] || fail "qemu-nbd did not start"

run_both busy resize -f raw img.raw 2M
expect_same busy.q busy.v "resize of a busy image"
grep -q 'Failed to get "resize" lock' busy.v || fail "no resize lock error: $(cat busy.v)"
[ "$(stat -c %s img.raw)" = 1048576 ] || fail "busy image was resized"

kill "$nbd_pid"
wait "$nbd_pid" 2>/dev/null
"$VIMG" resize -f raw img.raw 2M >out 2>&1 || fail "resize after release: $(cat out)"
[ "$(stat -c %s img.raw)" = 2097152 ] || fail "image not resized"
pass
