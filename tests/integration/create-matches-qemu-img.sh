#!/bin/bash
# Proves: `vimg create` for raw prints the same lines, makes files of the same
# size and allocation, and fails with the same messages and exit codes as
# `qemu-img create`, over valid and invalid sizes and options.
source "$(dirname "$0")/lib.sh"
need qemu-img

i=0
check_create() {  # args after "create"
    i=$((i + 1))
    rm -f q.img v.img
    # Each tool writes its own file name: substitute IMG.
    local qargs=() vargs=() a
    for a in "$@"; do qargs+=("${a//IMG/q.img}"); vargs+=("${a//IMG/v.img}"); done
    qemu-img create "${qargs[@]}" >"c$i.q" 2>&1; echo "exit=$?" >>"c$i.q"
    "$VIMG" create "${vargs[@]}" >"c$i.v" 2>&1; echo "exit=$?" >>"c$i.v"
    sed -i 's/q\.img/IMG/g; s/^qemu-img:/TOOL:/; s/qemu-img --help/TOOL --help/' "c$i.q"
    sed -i 's/v\.img/IMG/g; s/^vimg:/TOOL:/; s/vimg --help/TOOL --help/' "c$i.v"
    expect_same "c$i.q" "c$i.v" "create $*"
    if [ -e q.img ] || [ -e v.img ]; then
        [ "$(stat -c %s q.img)" = "$(stat -c %s v.img)" ] || fail "size differs for create $*"
        qemu-img compare -q -f raw q.img -F raw v.img || fail "content differs for create $*"
    fi
}

for size in 0 1 512 513 1000 1023 1k 1K 1.5k 1M 1.5M 1G 1.5G 1T 0x100000 010 1b 1B +1M \
            1. 1.5 0.5 1e3 1x 1kB 16E 9E 8E 1.5.5k "" " 1M" "1M "; do
    check_create -f raw IMG "$size"
done
check_create IMG 1M
check_create -f raw -o size=2M IMG
check_create -f raw -o size=2M IMG 1M
check_create -f raw -o preallocation=falloc IMG 1M
check_create -f raw -o preallocation=full IMG 1M
check_create -f raw -o preallocation=foo IMG 1M
check_create -f raw -o nocow=on,preallocation=falloc IMG 1M
check_create -f raw -o nocow=maybe IMG 1M
check_create -f raw -o foo=bar IMG 1M
check_create -f raw -o size=12x IMG
check_create -f foo IMG 1M
check_create -f raw IMG
check_create -f raw IMG 1M extra
check_create -f raw -o help
check_create -f raw IMG -o help
check_create -q -f raw IMG 1M
check_create -f raw -b base IMG 1M
check_create -f
check_create
check_create -z IMG

# Allocation: a fresh raw image has its first block allocated, like qemu-img's.
rm -f q.img v.img
qemu-img create -q -f raw q.img 64M; "$VIMG" create -q -f raw v.img 64M
[ "$(stat -c %b q.img)" = "$(stat -c %b v.img)" ] || fail "allocation differs"
pass
