#!/bin/bash
# Proves: block devices (a loop device) open through the host_device protocol
# chosen automatically, with the size from the device, and `info`, `create`,
# `map`, `convert` and `compare` on the device match qemu-img; O_DIRECT
# (cache.direct=on) reads and unaligned writes work through the core's
# read-modify-write.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io losetup

truncate -s 64M lo.img
dev=$(losetup -f --show lo.img 2>/dev/null) || { echo "SKIP: no loop devices"; exit 77; }
on_exit "losetup -d $dev"

n=0
check() { n=$((n + 1)); run_both "h$n" "$@"; expect_same "h$n.q" "h$n.v" "$*"; }
check info "$dev"
check info --output=json "$dev"
check info -f raw --output=json "$dev"
check info --image-opts "driver=raw,file.driver=host_device,file.filename=$dev"
check info "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"host_device\",\"filename\":\"$dev\",\"aio\":\"native\"}}"
check info --image-opts "driver=raw,file.driver=host_device,file.filename=lo.img"
check info "host_device:$dev"
check create -f raw "$dev" 32M
check create -f raw "$dev" 128M
check check "$dev"

# Data written by QEMU reads back identically through vimg, with O_DIRECT too.
qemu-io -f raw -c 'write -P 0x5a 4096 65536' -c 'write -P 0xa5 1000000 3333' "$dev" >/dev/null
"$VIMG" convert -f raw -O raw "$dev" v.raw || fail "convert from device"
qemu-img convert -f raw -O raw "$dev" q.raw
cmp q.raw v.raw || fail "device content differs"
"$VIMG" convert -O raw --image-opts "driver=raw,file.filename=$dev,file.cache.direct=on" vd.raw \
    || fail "O_DIRECT convert from device"
cmp q.raw vd.raw || fail "O_DIRECT content differs"
# Unaligned writes to an O_DIRECT device go through read-modify-write.
dd if=/dev/urandom of=src.raw bs=1M count=64 status=none
"$VIMG" convert -n -t none -f raw -O raw src.raw "$dev" || fail "convert to device with -t none"
cmp src.raw lo.img || fail "device content after O_DIRECT convert"
pass
