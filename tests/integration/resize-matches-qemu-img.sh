#!/bin/bash
# Proves: `vimg resize` grows, shrinks and preallocates raw images exactly as
# `qemu-img resize` does: absolute and +/- relative sizes, --shrink, the
# --preallocation modes, raw offset/size windows, -q, and every refusal
# (shrink without --shrink, sizes that are not positive, bad arguments) with
# qemu-img's messages and exit codes. Each run starts from the same image;
# the resulting file size, allocation and contents must match too.
source "$(dirname "$0")/lib.sh"
need qemu-img

head -c 300000 /dev/urandom >seed.data
n=0
# check INITIAL_SIZE ARGS... (IMG in ARGS stands for the image)
check() {
    local init=$1 q v
    shift
    n=$((n + 1))
    q=q$n.raw v=v$n.raw
    truncate -s "$init" "$q"
    dd if=seed.data of="$q" conv=notrunc status=none
    truncate -s "$init" "$q"
    cp --sparse=always "$q" "$v"
    qemu-img "${@//IMG/$q}" >"o$n.q.raw" 2>&1; echo "exit=$?" >>"o$n.q.raw"
    "$VIMG" "${@//IMG/$v}" >"o$n.v.raw" 2>&1; echo "exit=$?" >>"o$n.v.raw"
    norm "o$n.q.raw" | sed "s/$q/IMG/g" >"o$n.q"
    norm "o$n.v.raw" | sed "s/$v/IMG/g" >"o$n.v"
    stat -c 'size=%s blocks=%b' "$q" >>"o$n.q"
    stat -c 'size=%s blocks=%b' "$v" >>"o$n.v"
    expect_same "o$n.q" "o$n.v" "resize $*"
    cmp -s "$q" "$v" || fail "resize $*: contents differ"
}

for size in 2M +1M -512k 1M 1000 1025 1.5k 0x100000 1024b +0 -0 0 -10M -2M 8E 9E +8E 7E \
            20E +20E -20E +1.5 + - +-5 abc ' 5'; do
    check 1M resize -f raw IMG "$size"
    check 1M resize -f raw --shrink IMG "$size"
done
check 1000 resize -f raw IMG 1000
check 1000 resize -f raw IMG +1000
check 1000 resize -f raw --shrink IMG 1000
check 1M resize IMG 2M
check 1M resize IMG 512k
check 1M resize -q -f raw IMG 2M
check 1M resize -q -f raw IMG 512k
check 1M resize -f raw IMG -- -512k
check 1M resize -f raw --shrink IMG -- -512k
check 1M resize -f raw IMG -512k --shrink
for prealloc in off falloc full metadata bogus; do
    for size in 4M 512k 1M +1k; do
        check 1M resize -f raw --preallocation=$prealloc IMG $size
        check 1M resize --shrink -f raw --preallocation=$prealloc IMG $size
    done
done
check 1000 resize -f raw --preallocation=full IMG 1000
check 1000 resize -f raw --preallocation=full IMG 1025
check 1000 resize -f raw --preallocation=falloc IMG 1025
# Raw windows: an offset moves the file's end, a fixed size refuses.
check 1M resize --image-opts driver=raw,offset=4096,file.filename=IMG 2M
check 1M resize --image-opts --shrink driver=raw,offset=4096,file.filename=IMG 512k
check 1M resize --image-opts driver=raw,offset=2M,file.filename=IMG 2M
check 1M resize --image-opts driver=raw,size=4096,file.filename=IMG 2M
check 1M resize 'json:{"driver":"raw","size":4096,"file":{"filename":"IMG"}}' 4096
check 1M resize --image-opts driver=file,filename=IMG +1M
check 1M resize -f file IMG +1M
check 1M resize --object secret,id=s0,data=x -f raw IMG 2M
# Bad arguments.
check 1M resize
check 1M resize IMG
check 1M resize -q
check 1M resize -q IMG
check 1M resize -f
check 1M resize IMG 1M 2M
check 1M resize IMG 1M -f
check 1M resize --bogus IMG 1M
check 1M resize -U IMG 2M
check 1M resize -qx IMG 2M
check 1M resize --preallocation IMG 1M
check 1M resize --preallocation=bogus nonexistent.raw 4M
check 1M resize -f raw nonexistent.raw abc
check 1M resize -f raw nonexistent.raw 2M
check 1M resize -f foo IMG 2M
check 1M resize --image-opts -f raw driver=raw,file.filename=IMG 2M
pass
