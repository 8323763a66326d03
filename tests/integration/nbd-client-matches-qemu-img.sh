#!/bin/bash
# Proves: vimg's nbd client opens the same URIs and --image-opts as qemu-img
# (nbd://, nbd+unix://, legacy nbd:host:port and nbd:unix:path, server.*),
# prints the same `info` (human and JSON, image: line included) and `map`,
# fails with qemu-img's messages when the server or export is missing, and
# reads the same bytes, from nbdkit (memory, sparse-random) and qemu-nbd
# serving raw and qcow2; creates, resizes and converts onto an export
# (raw and qcow2) as qemu-img's fallback for protocols without a create does.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdkit

# wait_sock PATH: waits until a server listens on PATH.
wait_sock() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
    fail "no server on $1"
}
# same ARGS...: qemu-img and vimg print the same and exit alike.
same() { run_both out "$@"; expect_same out.q out.v "$*"; }

nbdkit -U "$TESTDIR/mem.sock" -P "$TESTDIR/mem.pid" memory 64M
on_exit 'kill $(cat "$TESTDIR/mem.pid")'
nbdkit -U "$TESTDIR/rnd.sock" -P "$TESTDIR/rnd.pid" sparse-random 32M seed=7 percent=30
on_exit 'kill $(cat "$TESTDIR/rnd.pid")'
qemu-img create -q -f raw r.raw 16M
qemu-io -f raw -c 'write -P 0x5a 1M 1M' -c 'write -P 0x11 9M 64k' r.raw >/dev/null
qemu-img create -q -f qcow2 c.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x77 2M 3M' c.qcow2 >/dev/null
qemu-nbd -t -k "$TESTDIR/raw.sock" -f raw -x exp -r r.raw & raw_pid=$!
on_exit "kill $raw_pid"
qemu-nbd -t -k "$TESTDIR/qc.sock" -f qcow2 -r c.qcow2 & qc_pid=$!
on_exit "kill $qc_pid"
wait_sock mem.sock; wait_sock rnd.sock; wait_sock raw.sock; wait_sock qc.sock

MEM="nbd+unix:///?socket=$TESTDIR/mem.sock"
RAW="nbd+unix:///exp?socket=$TESTDIR/raw.sock"
QC="nbd+unix:///?socket=$TESTDIR/qc.sock"
RND="nbd+unix:///?socket=$TESTDIR/rnd.sock"

# info, human and JSON, through every spelling of the address.
for uri in "$MEM" "$RAW" "$QC" "$RND" "nbd:unix:$TESTDIR/mem.sock" \
           "nbd:unix:$TESTDIR/raw.sock:exportname=exp" "nbd+unix:///anything?socket=$TESTDIR/mem.sock"; do
    same info "$uri"
    same info --output=json "$uri"
    same info -f raw "$uri"
done
for opts in "driver=nbd,server.type=unix,server.path=$TESTDIR/mem.sock" \
            "driver=nbd,server.type=unix,server.path=$TESTDIR/raw.sock,export=exp" \
            "driver=nbd,path=$TESTDIR/mem.sock,reconnect-delay=3" \
            "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$TESTDIR/qc.sock"; do
    same info --image-opts "$opts"
    same info --output=json --image-opts "$opts"
done
same info "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$TESTDIR/mem.sock\"}}"

# Errors: no server, no export, bad addresses and options.
same info "nbd+unix:///?socket=$TESTDIR/none.sock"
same info "nbd:unix:$TESTDIR/none.sock"
same info "nbd+unix:///bad?socket=$TESTDIR/raw.sock"
for uri in "nbd:" "nbd://" "nbd+unix:///" "nbd+tls://127.0.0.1/" "nbd://127.0.0.1:99999/" \
           "nbd://127.0.0.1/?x=y" "nbd+unix://host/?socket=x" "nbd:127.0.0.1" \
           "nbd://127.0.0.1:1/" "nbd:127.0.0.1:1:exportname=x" "nbd:127.0.0.1:10809:exportname="; do
    same info "$uri"
done
for opts in "driver=nbd" "driver=nbd,server.type=inet,server.port=1" "driver=nbd,server.type=unix" \
            "driver=nbd,server.type=foo" "driver=nbd,server.host=x,server.port=1" \
            "driver=nbd,server.type=unix,server.path=$TESTDIR/mem.sock,bogus=1" \
            "driver=nbd,server.type=unix,server.path=$TESTDIR/mem.sock,server.host=x" \
            "driver=nbd,server.type=inet,server.host=127.0.0.1" \
            "driver=nbd,server.type=unix,server.path=x,path=y"; do
    same info --image-opts "$opts"
done
# TLS credentials that were never defined (TLS itself: nbd-server-tls.sh).
same info --image-opts "driver=nbd,server.type=unix,server.path=$TESTDIR/mem.sock,tls-creds=t"

# vimg-nbd -L lists exports as qemu-nbd -L does: without block sizes, with several
# exports and descriptions, and when nobody listens.
if [ -x "$VIMG_NBD" ]; then
    nbdkit -U "$TESTDIR/multi.sock" -P "$TESTDIR/multi.pid" --filter=exportname memory 1M \
        exportname=a exportname=b exportdesc=fixed:hello
    on_exit 'kill $(cat "$TESTDIR/multi.pid")'
    wait_sock multi.sock
    for sock in mem multi raw none; do
        qemu-nbd -L -k "$TESTDIR/$sock.sock" 2>&1 | sed 's/^qemu-nbd:/TOOL:/' >l.q
        "$VIMG_NBD" -L -k "$TESTDIR/$sock.sock" 2>&1 | sed 's/^vimg-nbd:/TOOL:/' >l.v
        expect_same l.q l.v "-L of $sock"
    done
fi

# map: holes and data as qemu-img sees them.
same map --output=json "$RAW"
same map --output=json "$QC"
same map "$RAW"

# Content: vimg reads what qemu-img reads.
for uri in "$RAW" "$QC" "$RND"; do
    qemu-img convert -f raw -O raw "$uri" q.img
    "$VIMG" convert -f raw -O raw "$uri" v.img || fail "vimg convert from $uri"
    cmp q.img v.img || fail "content differs for $uri"
    "$VIMG" compare -f raw "$uri" -F raw q.img >out 2>&1 || { cat out >&2; fail "compare $uri"; }
done

# Writes: vimg-io writes through nbdkit memory; qemu-io reads them back.
if [ -x "$VIMG_IO" ]; then
    "$VIMG_IO" -f raw -c 'write -P 0xc3 4M 1M' -c 'write -z 5M 64k' -c 'discard 6M 64k' \
        -c flush "$MEM" >out 2>&1 || { cat out >&2; fail "vimg-io write"; }
    qemu-io -f raw -c 'read -P 0xc3 4M 1M' -c 'read -P 0 5M 64k' "$MEM" >out 2>&1 ||
        { cat out >&2; fail "written data not seen"; }
    grep -q "Pattern verification failed" out && fail "pattern differs after vimg-io write"
    # A read-only export cannot be opened for writing, in qemu-io's words.
    run_io() { "$1" -f raw -c 'read 0 512' "$RAW" 2>&1 | sed 's/^[a-z-]*io:/TOOL:/'; }
    expect_same <(run_io qemu-io) <(run_io "$VIMG_IO") "read-only export opened rw"
fi
# Creating on an export, as qemu-img's fallback for protocols without their
# own create does: the export is opened, must be large enough, and its first
# 512 bytes are zeroed; -o takes only size and preallocation=off.
qemu-img create -q -f raw dst.raw 16M
qemu-nbd -t -k "$TESTDIR/dst.sock" -f raw dst.raw & dst_pid=$!
on_exit "kill $dst_pid"
qemu-img create -q -f raw big.raw 32M
wait_sock dst.sock
DST="nbd+unix:///?socket=$TESTDIR/dst.sock"
# fill: the whole export holds 0xee.
fill() { qemu-io -f raw -c 'write -P 0xee 0 16M' "$DST" >/dev/null || fail "fill $DST"; }
# vimv ARGS...: runs vimg alone (after fill, so that qemu-img's run proves nothing).
vimv() { "$VIMG" "$@" >out 2>&1 || { cat out >&2; fail "vimg $*"; }; }
same create -f raw "$DST" 8M
fill
vimv create -f raw "$DST" 8M
qemu-io -f raw -c 'read -P 0 0 512' -c 'read -P 0xee 512 1k' "$DST" >out 2>&1 ||
    { cat out >&2; fail "read after create"; }
grep -q "Pattern verification failed" out && { cat out >&2; fail "first sector after create"; }
fill
vimv create -f raw "$DST" 0
qemu-io -f raw -c 'read -P 0 0 512' "$DST" >out 2>&1
grep -q "Pattern verification failed" out && fail "first sector after create of size 0"
for args in "-f raw $DST 16M" "-f raw $DST 32M" "-f raw $DST" "-f raw -o size=4M $DST" \
            "-f raw -o preallocation=off $DST 8M" "-f raw -o preallocation=full $DST 8M" \
            "-f raw -o preallocation=falloc $DST 32M" "-f raw -o preallocation=bogus $DST 8M" \
            "-f raw -o foo=bar $DST 8M" "-f raw -o extent_size_hint=1M $DST 8M" \
            "-f raw -o size=x $DST" "-f raw -o help $DST" "-f qcow2 -o help $DST" \
            "-f qcow2 -o nocow=on $DST 8M" "-f raw -o preallocation=full nbd+unix:///?socket=$TESTDIR/none.sock 8M" \
            "-f raw nbd+unix:///?socket=$TESTDIR/none.sock 8M" "-f raw $RAW 1M"; do
    same create $args
done
# resize keeps the export's size: the same or (inexactly) less only.
for args in "$DST 16M" "$DST 32M" "$DST 8M" "--shrink $DST 8M" "--preallocation=full $DST 16M" \
            "--preallocation=full $DST 32M"; do
    same resize -f raw $args
done
# convert -O raw writes every byte, zeros included, over the old content.
same convert -O raw r.raw "$DST"
fill
vimv convert -O raw r.raw "$DST"
qemu-img compare -U -f raw r.raw -F raw dst.raw >out 2>&1 || { cat out >&2; fail "convert -O raw"; }
same convert -O raw big.raw "$DST"
same convert -O raw -o preallocation=full r.raw "$DST"
# convert -O qcow2 formats the export: qemu-img checks and compares it.
same convert -O qcow2 c.qcow2 "$DST"
fill
vimv convert -O qcow2 c.qcow2 "$DST"
qemu-img check -U -f qcow2 dst.raw >out 2>&1 || { cat out >&2; fail "check of qcow2 on export"; }
qemu-img compare -U -f qcow2 c.qcow2 -F qcow2 dst.raw >out 2>&1 || { cat out >&2; fail "convert -O qcow2"; }
same info "$DST"
same create -f qcow2 "$DST" 32M
fill
vimv create -f qcow2 "$DST" 32M
qemu-img check -U -f qcow2 dst.raw >out 2>&1 || { cat out >&2; fail "check after create -f qcow2"; }
# Preallocated qcow2 on an export long enough: the file "grows" without asking
# for an exact size, as in qemu-img (before, vimg said "Cannot resize NBD nodes").
for p in metadata falloc full; do
    same create -f qcow2 -o preallocation=$p "$DST" 8M
    fill
    vimv create -f qcow2 -o preallocation=$p "$DST" 8M
    qemu-img check -U -f qcow2 dst.raw >out 2>&1 ||
        { cat out >&2; fail "check after create -f qcow2 -o preallocation=$p"; }
    grep -q "Image end offset: 8716288" out || { cat out >&2; fail "preallocation=$p layout"; }
done
pass
