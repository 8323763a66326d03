#!/bin/bash
# vimg-nbd --fuse: an image exported as one raw file through FUSE. Reads
# equal qemu-img's raw conversion, SEEK_DATA/SEEK_HOLE follow the image's
# allocation (as qemu-img map shows it), writes/punched holes land in the
# qcow2 so that qemu-img check is clean and qemu-io reads them, read-only
# exports refuse writes, and bad mount points fail with one line.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io fusermount3 python3
[ -c /dev/fuse ] || { echo "SKIP: no /dev/fuse"; exit 77; }
"$VIMG_NBD" --help | grep -q -- '--fuse=' || { echo "SKIP: built without fuse3"; exit 77; }
cd "$TESTDIR"

# mount_fuse MNT ARGS...: starts vimg-nbd --fuse, waits until MNT is the export.
mount_fuse() {
    local mnt=$1 i; shift
    "$VIMG_NBD" --fuse "$mnt" "$@" 2>fuse.err &
    FUSE_PID=$!
    on_exit "fusermount3 -u $TESTDIR/$mnt; kill $FUSE_PID"
    for ((i = 0; i < 100; i++)); do
        grep -q " $TESTDIR/$mnt fuse" /proc/mounts && return 0
        kill -0 $FUSE_PID 2>/dev/null || { cat fuse.err >&2; fail "vimg-nbd --fuse exited"; }
        sleep 0.05
    done
    fail "FUSE export on $mnt did not appear"
}
unmount_fuse() {
    fusermount3 -u "$TESTDIR/$1" || fail "fusermount3 -u $1"
    wait "$FUSE_PID" || fail "vimg-nbd --fuse exited with $? after unmount"
}

# Data and holes: a backing file with data, an overlay with more.
qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -f qcow2 -c "write -P 0x11 1M 1M" base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 a.qcow2
qemu-io -f qcow2 -c "write -P 0x22 10M 64k" -c "write -z 1536k 64k" a.qcow2 >/dev/null
touch mnt
mount_fuse mnt -f qcow2 a.qcow2

qemu-img convert -U -f qcow2 -O raw a.qcow2 ref.raw
cmp ref.raw mnt || fail "FUSE file differs from qemu-img's raw conversion"
[ "$(stat -c %s mnt)" = 67108864 ] || fail "FUSE file size $(stat -c %s mnt)"

# The data extents as SEEK_DATA/SEEK_HOLE walk them, and as qemu-img map has them.
python3 - mnt >seek.v <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
pos = 0
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    print(d, h - d)
    pos = h
EOF
qemu-img map -U --output=json -f qcow2 a.qcow2 | python3 -c '
import json, sys
runs = [(e["start"], e["length"]) for e in json.load(sys.stdin) if e["data"] and not e["zero"]]
merged = []
for s, l in runs:
    if merged and merged[-1][0] + merged[-1][1] == s:
        merged[-1] = (merged[-1][0], merged[-1][1] + l)
    else:
        merged.append((s, l))
for s, l in merged:
    print(s, l)' >seek.q
expect_same seek.q seek.v "SEEK_DATA/SEEK_HOLE vs qemu-img map"

# Writes, a punched hole and a zeroed range, then fsync.
head -c 196608 /dev/urandom >pat
dd if=pat of=mnt bs=64k seek=100 conv=notrunc,fsync status=none || fail "write through FUSE"
fallocate -p -o 1M -l 256k mnt || fail "punch hole through FUSE"
fallocate -z -o 10M -l 32k mnt || fail "zero range through FUSE"
cmp -n 196608 -i 0:6553600 pat mnt || fail "written data does not read back through FUSE"
# The size is fixed: truncation is refused and changes nothing.
truncate -s 1M mnt 2>/dev/null && fail "truncate of the export succeeded"
[ "$(stat -c %s mnt)" = 67108864 ] || fail "size changed"
unmount_fuse mnt

qemu-img check -q -f qcow2 a.qcow2 || fail "qemu-img check after FUSE writes"
qemu-io -f qcow2 -c "read -P 0 1M 256k" -c "read -P 0x11 1280k 256k" \
    -c "read -P 0 10M 32k" -c "read -P 0x22 10272k 32k" a.qcow2 >io.out ||
    fail "qemu-io read after FUSE writes: $(cat io.out)"
grep -q "Pattern verification failed" io.out && fail "pattern mismatch: $(cat io.out)"
qemu-img convert -f qcow2 -O raw a.qcow2 after.raw
cmp -n 196608 -i 6553600:0 after.raw pat || fail "qemu-img does not read the FUSE write"

# Read-only export: reads work, writes are refused.
mount_fuse mnt -r -f qcow2 a.qcow2
cmp after.raw mnt || fail "read-only FUSE file differs"
dd if=pat of=mnt bs=64k count=1 conv=notrunc status=none 2>/dev/null &&
    fail "write to a read-only FUSE export succeeded"
# While mounted read-write the image is locked like qemu-nbd's (read-only here: shared).
unmount_fuse mnt

# Stopping by SIGTERM unmounts.
mount_fuse mnt -f raw after.raw
kill -TERM $FUSE_PID
wait $FUSE_PID || fail "vimg-nbd --fuse exit code $? after SIGTERM"
grep -q " $TESTDIR/mnt fuse" /proc/mounts && fail "still mounted after SIGTERM"

# Bad mount points: one line, exit 1, image untouched.
sum=$(md5sum <after.raw)
mkdir dir
"$VIMG_NBD" --fuse dir -f raw after.raw 2>err && fail "directory mount point accepted"
[ "$(wc -l <err)" = 1 ] && grep -q "'dir' is not a regular file" err || fail "message: $(cat err)"
"$VIMG_NBD" --fuse missing -f raw after.raw 2>err && fail "missing mount point accepted"
grep -q "Failed to stat 'missing': No such file or directory" err || fail "message: $(cat err)"
[ "$(md5sum <after.raw)" = "$sum" ] || fail "image changed by failed mounts"
pass
