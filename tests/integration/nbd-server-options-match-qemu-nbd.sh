#!/bin/bash
# Proves: vimg-nbd takes qemu-nbd's options with qemu-nbd's messages and exit
# codes for bad values; options it does not implement yet fail with one line
# naming them; -o serves the image from an offset; --fork returns once the
# server runs and --pid-file names it; and the image locks are qemu-nbd's
# (writers and resizers are kept out the same way).
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd
[ -x "$VIMG_NBD" ] || fail "vimg-nbd not built"

wait_sock() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
    fail "no server on $1"
}
nbd_norm() { sed -e 's/^qemu-nbd:/TOOL:/; s/^vimg-nbd:/TOOL:/; s/`[a-z-]* --help/`TOOL --help/'; }
# same ARGS...: qemu-nbd and vimg-nbd fail alike (output and exit code); 5 s at most.
same() {
    (timeout 5 qemu-nbd "$@" 2>&1; echo "exit=$?") | nbd_norm >o.q
    (timeout 5 "$VIMG_NBD" "$@" 2>&1; echo "exit=$?") | nbd_norm >o.v
    expect_same o.q o.v "qemu-nbd $*"
}

qemu-img create -q -f raw img.raw 16M
qemu-io -f raw -c 'write -P 0x42 1M 1M' -c 'write -P 0x43 3M 64k' img.raw >/dev/null
S="$TESTDIR/x.sock"

same
same --bogus
same -z img.raw
same -p
same --port
same img.raw other.raw
same -k "$S" -e abc img.raw
same -k "$S" -o abc img.raw
same -k "$S" -o 2M img.raw
same -k "$S" --cache=foo img.raw
same -k "$S" --aio=foo img.raw
same -k "$S" --aio=native -f raw img.raw
same -k "$S" --discard=foo img.raw
same -k "$S" --detect-zeroes=unmap img.raw
same -k "$S" --detect-zeroes=foo img.raw
same -k "$S" -f raw --image-opts img.raw
same -k "$S" -f raw missing.raw
same -k "$S" -f qcow2 img.raw
same -L -k "$S" img.raw
same -L -k "$TESTDIR/none.sock"
same -k "$S" --tls-authz=a -f raw img.raw
same -k "$TESTDIR/no/such/dir.sock" -f raw img.raw
"$VIMG_NBD" --version | grep -q "^vimg-nbd version" || fail "--version"
"$VIMG_NBD" --help | grep -q -- "--allocation-depth" || fail "--help"

# Not implemented yet: one line naming the option, exit 1, nothing served.
for opt in "-T nbd_*" "--selinux-label=x"; do
    name=${opt%%[ =]*}
    "$VIMG_NBD" -k "$S" $opt -f raw img.raw >o.v 2>&1 && fail "$opt accepted"
    [ "$(wc -l <o.v)" -eq 1 ] || { cat o.v >&2; fail "$opt: not one line"; }
    grep -q -- "$name" o.v || { cat o.v >&2; fail "$opt: option not named"; }
done
[ -e "$S" ] && fail "a socket was left by a refused option"

# -o: the export starts at the offset, as with qemu-nbd.
"$VIMG_NBD" -t -r -o 1048576 -k "$TESTDIR/v.sock" -f raw img.raw & vpid=$!
on_exit "kill $vpid"
qemu-nbd -t -r -o 1048576 -k "$TESTDIR/q.sock" -f raw img.raw & qpid=$!
on_exit "kill $qpid"
wait_sock v.sock; wait_sock q.sock
for s in q v; do qemu-img info --output=json "nbd+unix:///?socket=$TESTDIR/$s.sock" |
                 grep virtual-size >size.$s; done
expect_same size.q size.v "size with -o"
qemu-img compare -f raw "nbd+unix:///?socket=$TESTDIR/q.sock" \
    "nbd+unix:///?socket=$TESTDIR/v.sock" >o 2>&1 || { cat o >&2; fail "-o content"; }
kill $vpid $qpid; wait $vpid $qpid 2>/dev/null

# --fork and --pid-file: the parent returns once clients can connect.
"$VIMG_NBD" --fork --pid-file="$TESTDIR/nbd.pid" -t -k "$TESTDIR/f.sock" -f raw img.raw ||
    fail "--fork failed"
on_exit 'kill $(cat "$TESTDIR/nbd.pid")'
[ -S f.sock ] || fail "--fork returned before the socket existed"
qemu-io -r -f raw -c 'read -P 0x42 1M 1M' "nbd+unix:///?socket=$TESTDIR/f.sock" >o 2>&1 ||
    { cat o >&2; fail "forked server does not serve"; }
kill "$(cat nbd.pid)"
for _ in $(seq 100); do [ -S f.sock ] || break; sleep 0.05; done
[ -S f.sock ] && fail "forked server did not stop"

# Locks: with either server holding the image writable, the same outsiders fail the same way.
lock_probe() {
    qemu-io -f raw -c 'write 0 512' img.raw 2>&1 | head -1
    qemu-img resize -f raw img.raw 32M 2>&1 | head -1
    qemu-io -r -f raw -c 'read 0 512' img.raw 2>&1 | head -1
    timeout 5 qemu-nbd -k "$TESTDIR/other.sock" -f raw img.raw 2>&1 | head -1
}
for tool in qemu-nbd "$VIMG_NBD"; do
    "$tool" -t -k "$TESTDIR/l.sock" -f raw img.raw & lpid=$!
    wait_sock l.sock
    lock_probe >"locks.$(basename "$tool")"
    kill $lpid; wait $lpid 2>/dev/null
    rm -f l.sock
done
expect_same locks.qemu-nbd locks.vimg-nbd "what a served image lets others do"
# And vimg-nbd refuses an image qemu-nbd serves, in qemu-nbd's words.
qemu-nbd -t -k "$TESTDIR/l.sock" -f raw img.raw & lpid=$!
on_exit "kill $lpid"
wait_sock l.sock
same -k "$S" -f raw img.raw
kill $lpid
pass
