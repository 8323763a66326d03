#!/bin/bash
# Proves: `vimg bench -w --flush-interval=N` flushes as often as `qemu-img
# bench` does: after the first DEPTH requests, whenever the number of
# requests left is a multiple of N (draining the queue first), plus the
# flush on close. Counts fsync/fdatasync calls of both tools under strace.
# With --no-drain qemu merges concurrent flushes, so only "at least one" is
# checked there.
source "$(dirname "$0")/lib.sh"
need qemu-img strace

qemu-img create -q -f raw img.raw 4M
# LeakSanitizer cannot run under ptrace; the other sanitizers can.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
count_syncs() {
    strace -f -e trace=fdatasync,fsync -o trace.txt "$@" >/dev/null 2>&1 || fail "$* failed"
    grep -c 'sync(' trace.txt
}
for args in "-c 100 -d 4 --flush-interval=10" "-c 100 -d 4 --flush-interval=7" \
            "-c 100 -d 4" "-c 50 -d 1 --flush-interval=1" "-c 64 -d 8 --flush-interval=8" \
            "-c 30 -d 16 --flush-interval=64" "-c 100 -d 4 --flush-interval=10 -t unsafe" \
            "-c 100 -d 4 --flush-interval=0"; do
    # shellcheck disable=SC2086
    q=$(count_syncs qemu-img bench -w $args -f raw img.raw)
    # shellcheck disable=SC2086
    v=$(count_syncs "$VIMG" bench -w $args -f raw img.raw)
    [ "$q" = "$v" ] || fail "bench -w $args: qemu-img flushed $q times, vimg $v"
done
v=$(count_syncs "$VIMG" bench -w -c 100 -d 4 --flush-interval=10 --no-drain -f raw img.raw)
[ "$v" -ge 1 ] || fail "--no-drain: no flush"
pass
