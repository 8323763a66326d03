#!/bin/bash
# Proves: the commands whose effect is on the process rather than on the
# output behave as qemu-io's: abort dies of SIGABRT without flushing stdout,
# sigraise raises the signal after flushing stdout (signals qemu-io handles,
# such as SIGUSR1, SIGPIPE and SIGALRM, do not end it), and sleep waits the
# given number of milliseconds (octal and hex accepted, suffixes refused).
source "$(dirname "$0")/lib.sh"
need qemu-io
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"

truncate -s 1M q.img
truncate -s 1M v.img
status() {  # TOOL IMG ARGS...: prints the exit status and the stdout line count
    local tool=$1 img=$2; shift 2
    "$tool" -f raw "$@" "$img" >out.txt 2>/dev/null
    echo "$? $(grep -c . out.txt)"
}
for sig in 0 1 2 3 10 12 13 14 15 17 23 28 29 34 64 65 66 99; do
    q=$(status qemu-io q.img -c "write 0 1" -c "sigraise $sig" -c length)
    v=$(status "$VIMG_IO" v.img -c "write 0 1" -c "sigraise $sig" -c length)
    [ "$q" = "$v" ] || fail "sigraise $sig: qemu-io '$q', vimg-io '$v'"
done
q=$(status qemu-io q.img -c "write 0 1" -c abort)
v=$(status "$VIMG_IO" v.img -c "write 0 1" -c abort)
[ "$q" = "$v" ] || fail "abort: qemu-io '$q', vimg-io '$v'"
[ "${v%% *}" = 134 ] || fail "abort: exit status ${v%% *}, expected 134"

elapsed_ms() {  # ARGS...: milliseconds vimg-io takes
    local t0 t1
    t0=$(date +%s%N)
    "$VIMG_IO" "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
}
ms=$(elapsed_ms -c "sleep 300")
[ "$ms" -ge 300 ] || fail "sleep 300 took ${ms} ms"
ms=$(elapsed_ms -c "sleep 0x80" -c "sleep 0200")
[ "$ms" -ge 256 ] || fail "sleep 0x80 + sleep 0200 took ${ms} ms"
ms=$(elapsed_ms -c "sleep 99999999999999999999")
[ "$ms" -lt 5000 ] || fail "an overflowing sleep waited ${ms} ms"
for arg in 1k -1 1.5 x; do
    q=$(qemu-io -c "sleep $arg" 2>&1; echo "exit=$?")
    v=$("$VIMG_IO" -c "sleep $arg" 2>&1; echo "exit=$?")
    [ "$q" = "$v" ] || fail "sleep $arg: qemu-io '$q', vimg-io '$v'"
done
pass
