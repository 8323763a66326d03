#!/bin/bash
# Proves: `vimg map --start-offset/--max-length` select the same part of the
# image as qemu-img map: unaligned starts, lengths ending inside a run, zero
# lengths, ranges at and beyond the end, suffixed and invalid numbers.
source "$(dirname "$0")/lib.sh"
need qemu-img

truncate -s 10M a.raw
dd if=/dev/urandom of=a.raw bs=64k count=2 seek=3 conv=notrunc status=none
dd if=/dev/urandom of=a.raw bs=4k count=1 seek=1000 conv=notrunc status=none
head -c 1000 /dev/urandom >odd.raw

n=0
check() {
    n=$((n + 1))
    run_both "r$n" map "$@"
    expect_same "r$n.q" "r$n.v" "map $*"
}
for out in human json; do
    for range in "--start-offset=0" "--start-offset=196608" "--start-offset=1000" \
                 "--start-offset=10485759" "--start-offset=10485760" "--start-offset=20M" \
                 "--start-offset=8E" "--max-length=0" "--max-length=1" \
                 "--max-length=200000" "--max-length=100G" "--max-length=8E" \
                 "--start-offset=100 --max-length=300000" \
                 "--start-offset=4096000 --max-length=4096" \
                 "--start-offset=327680 --max-length=0" "--start-offset=1k --max-length=1M"; do
        # shellcheck disable=SC2086
        check --output=$out $range a.raw
    done
    check --output=$out --start-offset=999 odd.raw
    check --output=$out --start-offset=1000 odd.raw
    check --output=$out --start-offset=1024 odd.raw
    check --output=$out --max-length=1000 odd.raw
done
for bad in -1 abc 1x 1.5.5 "" 9E 20E; do
    check --start-offset="$bad" a.raw
    check --max-length="$bad" a.raw
done
check --start-offset a.raw
check a.raw --max-length
pass
