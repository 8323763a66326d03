#!/bin/bash
# Proves: a VHDX image survives SIGKILL of vimg-io in the middle of
# allocating writes and flushes. BAT changes go through the log, so after
# the kill the image opens read-write (replaying the log), `qemu-img check`
# finds no error, and every write that a completed flush covered reads back
# with qemu-io and vimg-io; the same holds when qemu-img replays the log
# (`check -r all`). Each flush logs one BAT entry, so the later rounds also
# cover a log that has wrapped around its end.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io stdbuf

n_writes=400
script() {  # write i, flush, write i+1, ...: each block of 1 MiB allocated once
    local i
    for ((i = 0; i < n_writes; i++)); do
        echo "write -P $((i % 250 + 1)) $(((i * 7919 % n_writes) << 20)) 64k"
        echo "flush"
    done
}
script >cmds

for round in 1 2 3 4 5; do
    rm -f img.vhdx out
    "$VIMG" create -q -f vhdx -o block_size=1M,log_size=1M img.vhdx $((n_writes))M ||
        fail "create"
    : >out
    # stdbuf preloads a library: let an ASan build start behind it.
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
        stdbuf -o0 "$VIMG_IO" img.vhdx <cmds >out 2>&1 &
    pid=$!
    # Kill once a different number of writes has gone through in each round.
    want=$((round * 35 - 20))   # past 128 entries, the log (1 MiB) wraps
    for ((t = 0; t < 400; t++)); do
        [ "$(grep -o 'wrote' out | wc -l)" -ge "$want" ] && break
        kill -0 $pid 2>/dev/null || break
        sleep 0.05
    done
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    # A write is flushed when the write after it (which follows its flush) started.
    done_writes=$(grep -o 'wrote' out | wc -l)
    flushed=$((done_writes > 0 ? done_writes - 1 : 0))
    [ "$flushed" -gt 0 ] || fail "round $round: killed before any flush"
    cp img.vhdx q.vhdx
    # vimg replays at a read-write open; qemu-img then sees a clean image.
    "$VIMG_IO" -c 'flush' img.vhdx >/dev/null || fail "round $round: vimg cannot open"
    qemu-img check img.vhdx >chk 2>&1 || { cat chk >&2; fail "round $round: check"; }
    # qemu-img replays the copy itself.
    qemu-img check -r all q.vhdx >chkq 2>&1 || { cat chkq >&2; fail "round $round: check -r"; }
    : >reads
    for ((i = 0; i < flushed; i++)); do
        echo "read -P $((i % 250 + 1)) $(((i * 7919 % n_writes) << 20)) 64k" >>reads
    done
    for img in img.vhdx q.vhdx; do
        qemu-io -r "$img" <reads >r.q 2>&1
        grep -q 'Pattern verification failed\|error' r.q &&
            { head r.q >&2; fail "round $round: flushed data lost in $img (qemu-io)"; }
        [ "$(grep -o 'read [0-9]*/' r.q | wc -l)" -eq "$flushed" ] ||
            fail "round $round: qemu-io reads"
        "$VIMG_IO" -r "$img" <reads >r.v 2>&1
        [ "$(grep -o 'read [0-9]*/' r.v | wc -l)" -eq "$flushed" ] ||
            { head r.v >&2; fail "round $round: flushed data lost in $img (vimg-io)"; }
    done
    grep -q 'repaired' chkq && replayed=" (qemu-img replayed a log)" || replayed=""
    echo "round $round: $flushed of $n_writes writes flushed before the kill, all intact$replayed"
done
pass
