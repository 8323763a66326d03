#!/bin/bash
# Proves: `vimg bench` prints the same header and footer lines as
# `qemu-img bench` (only the timing differs) for reads and writes, counts,
# depths, sizes, steps, offsets, flush intervals, cache and aio modes, and
# fails like it on bad options, failed requests (offset past the end) and
# open errors, with the same messages and exit codes.
source "$(dirname "$0")/lib.sh"
need qemu-img

qemu-img create -q -f raw img.raw 16M
qemu-img create -q -f raw probe.raw 1M
n=0
check() {
    n=$((n + 1))
    run_both "b$n" bench "$@"
    sed -i 's/^Run completed in [0-9]*\.[0-9]\{3\} seconds\.$/Run completed in T seconds./' \
        "b$n.q" "b$n.v"
    expect_same "b$n.q" "b$n.v" "bench $*"
}
check -c 2000 -f raw img.raw
check -c 1000 -d 4 -s 4k -S 8k -f raw img.raw
check -c 1000 -d 1 -s 512 -S 0 -f raw img.raw
check -c 100 -s 0 -f raw img.raw
check -c 0 -f raw img.raw
check -c 0x10 -d 010 -f raw img.raw
check -c ' 5' -f raw img.raw
check -c 100 -o 1M -f raw img.raw
check -c 100 -o 1.5k -s 1.5k -f raw img.raw
check -c 100 -o 16380k -d 2 -S 16M -f raw img.raw
check -w -c 1000 -f raw img.raw
check -w -c 200 --pattern=0x41 -f raw img.raw
check -w -c 100 -d 4 --flush-interval=10 -f raw img.raw
check -w -c 100 -d 4 --flush-interval=10 --no-drain -f raw img.raw
check -w -c 10 --flush-interval=0 -f raw img.raw
check -w -c 10 -d 1 --flush-interval=0x40 -f raw img.raw
check -c 100 --no-drain -f raw img.raw
check -w -c 100 --no-drain -f raw img.raw
check -q -c 10 -f raw img.raw
check -U -c 10 -f raw img.raw
check -c 10 img.raw
check -w -c 1 probe.raw
for cache in none off writeback writethrough directsync unsafe; do
    check -w -c 50 -d 8 -t $cache -f raw img.raw
done
check -c 50 -t none -n -f raw img.raw
check -c 50 -t none -i native -f raw img.raw
check -c 50 -i io_uring -f raw img.raw
check -c 50 -i threads -f raw img.raw
check -c 10 -f file img.raw
check -c 10 --image-opts driver=raw,file.filename=img.raw
check -c 10 --image-opts driver=file,filename=img.raw -t none -n
check -c 10 -t none -i io_uring -n -f raw img.raw
# Failed requests and open errors.
check -c 10 -o 16M -f raw img.raw
check -c 10 -o 17M -f raw img.raw
check -w -c 6 -d 1 -s 4k -S 12k -o 12k -f raw probe.raw
check -n -c 10 -f raw img.raw
check -i native -c 10 -f raw img.raw
check -c 1 -n -i threads -f raw img.raw
check -c 1 -f file -n img.raw
check -c 1 --image-opts driver=file,filename=img.raw -n
check -c 1 --image-opts driver=raw,file.filename=img.raw,file.aio=native -i threads
check -c 1 --image-opts -f raw driver=raw,file.filename=img.raw
check -c 1 -U -w -f raw img.raw
check -c 1 -f raw nonexistent.raw
check -c 1 -f foo img.raw
# Bad options.
for bad in "-c abc" "-c -1" "-c 1k" "-c 2147483648" "-c ''" "-c '5 '" "-d abc" "-d -1" \
           "-d 2147483648" "-s abc" "-s 2G" "-s 20E" "-S abc" "-S 5G" "-o abc" "-o 8E" \
           "-o -1" "--pattern=256" "--pattern=abc" "--pattern=-1" "-t bogus" "-i bogus" \
           "--flush-interval=abc" "--flush-interval=-1" "--flush-interval=2147483648"; do
    eval "check $bad -w -d 1 -f raw img.raw"
done
check -c 100 --flush-interval=10 -f raw img.raw
check -c 100 -w --flush-interval=10 -f raw img.raw
check -c 100 -w --flush-interval=10 --no-drain -f raw img.raw
check --flush-interval=1 nonexistent.raw
check -w --flush-interval=1 nonexistent.raw
check -t bogus nonexistent.raw
check -c 1
check -c 1 a.raw b.raw
check -x img.raw
check --object secret,id=s0,data=x -c 1 -f raw img.raw
check -c
check img.raw -c

# Where qemu-img 7.2 hangs (depth 0) or divides by zero (empty image), vimg
# fails cleanly with one line.
"$VIMG" bench -d 0 -f raw img.raw >d0.out 2>&1 && fail "bench -d 0 succeeded"
[ "$(cat d0.out)" = "vimg: Invalid queue depth specified" ] || fail "bench -d 0: $(cat d0.out)"
: >empty.raw
"$VIMG" bench -c 3 -f raw empty.raw >e.out 2>e.err && fail "bench of an empty image succeeded"
[ "$(cat e.err)" = "vimg: Failed request: Input/output error" ] || fail "empty: $(cat e.err)"
pass
