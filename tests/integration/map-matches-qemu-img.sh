#!/bin/bash
# Proves: `vimg map` prints what `qemu-img map` prints (human table and JSON,
# same merging of runs, same exit codes and messages) for raw images with
# holes, data, zeroed ranges, punched holes and sizes that are not a multiple
# of 512, opened by name, json: filename or --image-opts.
source "$(dirname "$0")/lib.sh"
need qemu-img

# sparse.raw: hole, 128 KiB data, hole with a zero-range extent, 4 KiB data,
# a punched hole inside data, data up to the very end.
truncate -s 10M sparse.raw
dd if=/dev/urandom of=sparse.raw bs=64k count=2 seek=3 conv=notrunc status=none
dd if=/dev/urandom of=sparse.raw bs=4k count=1 seek=1000 conv=notrunc status=none
fallocate -z -o 2M -l 1M sparse.raw 2>/dev/null || true
dd if=/dev/urandom of=sparse.raw bs=1M count=2 seek=6 conv=notrunc status=none
fallocate -p -o 6500k -l 100k sparse.raw 2>/dev/null || true
dd if=/dev/urandom of=sparse.raw bs=4k count=1 seek=2559 conv=notrunc status=none
truncate -s 1000 hole1000.raw
head -c 1000 /dev/urandom >data1000.raw
head -c 3000 /dev/urandom >data3000.raw
truncate -s 8192 data3000.raw
dd if=/dev/urandom of=full.raw bs=64k count=16 status=none
: >empty.raw

n=0
check() {
    n=$((n + 1))
    run_both "m$n" map "$@"
    expect_same "m$n.q" "m$n.v" "map $*"
}
for f in sparse.raw hole1000.raw data1000.raw data3000.raw full.raw empty.raw; do
    check "$f"
    check --output=json "$f"
    check -f raw --output=json "$f"
    check --output=human -U "$f"
done
check -f file --output=json sparse.raw
check 'json:{"driver":"raw","file":{"driver":"file","filename":"sparse.raw"}}'
check --output=json 'json:{"driver":"raw","offset":4096,"file":{"filename":"sparse.raw"}}'
check --image-opts driver=raw,file.filename=sparse.raw
check --image-opts --output=json driver=raw,offset=196608,size=1M,file.filename=sparse.raw
check --object secret,id=s0,data=x -f raw sparse.raw
# Errors: bad options, missing files, wrong formats.
check
check a.raw b.raw
check --bogus sparse.raw
check -x sparse.raw
check --output=xml sparse.raw
check --output
check -f foo sparse.raw
check nonexistent.raw
check -f qcow2 sparse.raw
check --object bogus sparse.raw
check --image-opts -f raw driver=raw,file.filename=sparse.raw
pass
