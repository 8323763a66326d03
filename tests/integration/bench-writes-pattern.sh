#!/bin/bash
# Proves: `vimg bench -w` writes the --pattern byte at the same offsets as
# `qemu-img bench -w`: the offset advances by the step size and wraps modulo
# the image size, at every depth. Both tools write into identical blank
# images and the results must be byte-identical; qemu-io then reads the
# pattern back from the written ranges and zeros from the rest.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

n=0
# check IMAGE_SIZE ARGS...
check() {
    local size=$1
    shift
    n=$((n + 1))
    qemu-img create -q -f raw "q$n.raw" "$size"
    qemu-img create -q -f raw "v$n.raw" "$size"
    qemu-img bench -w -f raw "$@" "q$n.raw" >/dev/null 2>&1 || fail "qemu-img bench $* failed"
    "$VIMG" bench -w -f raw "$@" "v$n.raw" >"out$n" 2>&1 || fail "vimg bench $*: $(cat "out$n")"
    cmp "q$n.raw" "v$n.raw" >&2 || fail "bench -w $*: images differ"
}
check 64k -c 7 -d 3 -s 4k -S 12k --pattern=0x41
check 64k -c 16 -d 1 -s 4k -S 12k --pattern=0x42
check 64k -c 40 -d 8 -s 1k -S 5k --pattern=255 -o 3k
check 1M -c 500 -d 32 -s 512 -S 7k --pattern=077
check 1M -c 300 -d 16 -s 4k -S 36k --pattern=0x5a -t none
check 1M -c 64 -d 4 -s 4k -S 0 --pattern=0x11 --flush-interval=8
check 1M -c 64 -d 4 -s 4k -S 8k --pattern=0x12 --flush-interval=8 --no-drain
check 100k -c 10 -d 2 -s 1000 -S 3000 --pattern=0x77 -o 10000

# Read back the first image's layout: pattern at 0, 12k, 24k, 36k, 48k, 60k, 8k (wrapped).
for off in 0 8k 12k 24k 36k 48k 60k; do
    out=$(qemu-io -f raw -c "read -P 0x41 $off 4k" v1.raw) || fail "qemu-io read $off"
    case $out in *"read 4096/4096"*) ;; *) fail "pattern 0x41 missing at $off: $out" ;; esac
done
for off in 4k 16k 28k 40k 52k; do
    out=$(qemu-io -f raw -c "read -P 0 $off 4k" v1.raw) || fail "qemu-io read $off"
    case $out in *"read 4096/4096"*) ;; *) fail "zeros missing at $off: $out" ;; esac
done
pass
