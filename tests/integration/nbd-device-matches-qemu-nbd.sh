#!/bin/bash
# vimg-nbd -c DEV / -d DEV (kernel NBD device) against qemu-nbd: the same
# messages and exit codes where the device is missing or is not an NBD
# device (the latter only after a full client handshake with our own
# server), -d, and option conflicts. Where /dev/nbd0 exists (nbd module
# loaded), the device is connected for real and read through.
. "$(dirname "$0")/lib.sh"
need qemu-nbd qemu-img
cd "$TESTDIR"

qemu-img create -q -f qcow2 disk.qcow2 4M
qemu-io -f qcow2 -c "write -P 0x5a 0 1M" disk.qcow2 >/dev/null
touch notdev

# both OUT ARGS...: runs qemu-nbd and vimg-nbd; saves normalised output and exit code.
both() {
    local p=$1; shift
    timeout 20 qemu-nbd "$@" >"$p.q.raw" 2>&1; echo "exit=$?" >>"$p.q.raw"
    timeout 20 "$VIMG_NBD" "$@" >"$p.v.raw" 2>&1; echo "exit=$?" >>"$p.v.raw"
    sed -e 's/^qemu-nbd:/TOOL:/; s/qemu-nbd --help/TOOL --help/' "$p.q.raw" >"$p.q"
    sed -e 's/^vimg-nbd:/TOOL:/; s/vimg-nbd --help/TOOL --help/' "$p.v.raw" >"$p.v"
    expect_same "$p.q" "$p.v" "qemu-nbd vs vimg-nbd $*"
}

both missing-dev -c "$TESTDIR/nbd-missing" -f qcow2 disk.qcow2
grep -q "Failed to open $TESTDIR/nbd-missing: No such file or directory" missing-dev.v ||
    fail "message: $(cat missing-dev.v)"
# Not a device: the handshake with the server succeeds, the first ioctl fails.
both not-a-device -c "$TESTDIR/notdev" -f qcow2 disk.qcow2
grep -q "Failed to set NBD socket" not-a-device.v || fail "message: $(cat not-a-device.v)"
both not-a-device-ro -c "$TESTDIR/notdev" -r -f qcow2 disk.qcow2
# (qemu-nbd 7.2 -c asks its own server for export "" even with -x NAME and so
# fails with "export '' not present"; vimg-nbd asks for NAME. Not compared.)
both bad-image -c "$TESTDIR/notdev" -f qcow2 missing.qcow2
both disconnect-file -d "$TESTDIR/notdev"
grep -q "notdev disconnected" disconnect-file.v || fail "message: $(cat disconnect-file.v)"
both disconnect-missing -d "$TESTDIR/nbd-missing"
both disconnect-two-args -d "$TESTDIR/notdev" disk.qcow2
both list-device -L -c "$TESTDIR/notdev"
# The image is untouched by all of this and not left locked.
qemu-img check -q -f qcow2 disk.qcow2 || fail "image damaged"
qemu-io -f qcow2 -c "read -P 0x5a 0 1M" disk.qcow2 | grep -q "read 1048576" || fail "image data"

# A real kernel device, where this machine has one.
if [ -b /dev/nbd0 ] && [ "$(id -u)" = 0 ] && ! grep -q '^/dev/nbd0 ' /proc/mounts; then
    "$VIMG_NBD" -c /dev/nbd0 -f qcow2 disk.qcow2 2>dev.err &
    pid=$!
    on_exit "$VIMG_NBD -d /dev/nbd0; kill $pid"
    for ((i = 0; i < 100; i++)); do
        [ "$(blockdev --getsize64 /dev/nbd0 2>/dev/null)" = 4194304 ] && break
        sleep 0.1
    done
    [ "$(blockdev --getsize64 /dev/nbd0)" = 4194304 ] || fail "device size: $(cat dev.err)"
    qemu-img convert -f qcow2 -O raw disk.qcow2 ref.raw 2>/dev/null ||
        qemu-img convert -U -f qcow2 -O raw disk.qcow2 ref.raw
    cmp ref.raw /dev/nbd0 || fail "/dev/nbd0 differs from the image"
    "$VIMG_NBD" -d /dev/nbd0 | grep -q "/dev/nbd0 disconnected" || fail "-d output"
    wait $pid || fail "vimg-nbd -c exited with $?"
else
    echo "note: no usable /dev/nbd0 here; connected-device part not run"
fi
pass
