#!/bin/bash
# qcow2 runtime options are accepted and validated as qemu-io does it:
# lazy-refcounts, pass-discard-*, overlap-check(.template/.<kind>), the
# cache sizes and their conflicts, l2-cache-entry-size, cache-clean-interval,
# encrypt.* on an unencrypted image; a small L2 cache still reads right.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

qemu-img create -f qcow2 o.qcow2 4M >/dev/null
qemu-img create -f qcow2 -o compat=0.10 o2.qcow2 1M >/dev/null
qemu-io -c "write -P 5 0 4M" o.qcow2 >/dev/null
for o in lazy-refcounts=on lazy-refcounts=x pass-discard-request=on pass-discard-snapshot=off \
         pass-discard-other=x overlap-check=none overlap-check=foo overlap-check.template=all \
         overlap-check.template=bar overlap-check.main-header=off overlap-check.l2=x \
         cache-size=1M l2-cache-size=1M refcount-cache-size=64k \
         cache-size=1M,l2-cache-size=512k,refcount-cache-size=512k \
         cache-size=1M,l2-cache-size=2M cache-size=1M,refcount-cache-size=2M \
         l2-cache-entry-size=4k l2-cache-entry-size=100 l2-cache-size=100 \
         cache-clean-interval=10 cache-clean-interval=-1 cache-clean-interval=x \
         l2-cache-size=x refcount-cache-size=1 encrypt.format=aes encrypt.key-secret=x \
         discard-no-unref=on; do
    for img in o.qcow2 o2.qcow2; do
        args=(-c "read -P 5 0 64k" -c "write -P 6 1M 64k" --image-opts
              "driver=qcow2,file.filename=$img,$o")
        qemu-io "${args[@]}" 2>&1 | sed -E '/ops\/sec/d; s/^qemu-io:/TOOL:/' >q.txt
        "$VIMG_IO" "${args[@]}" 2>&1 | sed -E '/ops\/sec/d; s/^vimg-io:/TOOL:/' >v.txt
        expect_same q.txt v.txt "$img with $o"
    done
done
"$VIMG_IO" -c "read -P 6 1M 64k" -c "read -P 5 2M 2M" --image-opts \
    "driver=qcow2,file.filename=o.qcow2,l2-cache-size=1,refcount-cache-size=1" >v.txt 2>&1 ||
    fail "small caches: $(cat v.txt)"
qemu-img check o.qcow2 >/dev/null || fail "check after writes with options"
pass
