#!/bin/bash
# Proves: vimg's nbd client works against the two other server
# implementations the issue names beside qemu-nbd: nbd-server (the reference
# NBD server) and nbdkit's file plugin. info/map print what qemu-img prints,
# bytes read equal qemu-img's, and writes by vimg-io land in the exported
# file (read back by qemu-io through the same server and by cmp).
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io nbd-server nbdkit python3
cd "$TESTDIR"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    fail "no server on port $1"
}
same() { run_both out "$@"; expect_same out.q out.v "$*"; }

qemu-img create -q -f raw ns.raw 8M
qemu-io -f raw -c 'write -P 0x33 1M 1M' -c 'write -P 0x5a 7M 4k' ns.raw >/dev/null
cp ns.raw kit.raw
truncate -s 16M kit.raw

# nbd-server (forks into the background, writes its pid file).
port=$(free_port)
cat >ns.conf <<CONF
[generic]
    port = $port
    listenaddr = 127.0.0.1
[exp]
    exportname = $TESTDIR/ns.raw
CONF
nbd-server -C "$TESTDIR/ns.conf" -p "$TESTDIR/ns.pid" 2>ns.log || fail "nbd-server: $(cat ns.log)"
on_exit 'kill $(cat "$TESTDIR/ns.pid")'
wait_port "$port"
NS="nbd://127.0.0.1:$port/exp"

# nbdkit file plugin (sparse file: holes show in map).
nbdkit -U "$TESTDIR/kit.sock" -P "$TESTDIR/kit.pid" file "$TESTDIR/kit.raw"
on_exit 'kill $(cat "$TESTDIR/kit.pid")'
for _ in $(seq 100); do [ -S kit.sock ] && break; sleep 0.05; done
KIT="nbd+unix:///?socket=$TESTDIR/kit.sock"

for uri in "$NS" "nbd:127.0.0.1:$port:exportname=exp" "$KIT"; do
    same info "$uri"
    same info --output=json "$uri"
    same map --output=json -f raw "$uri"
    same compare -f raw -F raw "$uri" ns.raw
done
same info --image-opts "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$port,export=exp"
# A name nbd-server does not export.
same info "nbd://127.0.0.1:$port/nosuch"

# Bytes: vimg convert of each export equals qemu-img's.
for uri in "$NS" "$KIT"; do
    qemu-img convert -f raw -O raw "$uri" q.raw
    "$VIMG" convert -f raw -O raw "$uri" v.raw
    cmp q.raw v.raw || fail "convert from $uri differs"
done

# Writes through each server land in the exported file.
"$VIMG_IO" -f raw -c 'write -P 0x44 4M 64k' -c 'write -z 1M 64k' -c flush "$NS" >/dev/null ||
    fail "vimg-io write to nbd-server"
qemu-io -f raw -c 'read -P 0x44 4M 64k' -c 'read -P 0 1M 64k' -c 'read -P 0x33 1088k 64k' "$NS" >io.out
grep -q "Pattern verification failed" io.out && fail "nbd-server readback: $(cat io.out)"
"$VIMG_IO" -f raw -c 'write -P 0x66 12M 128k' -c 'discard 1M 1M' -c flush "$KIT" >/dev/null ||
    fail "vimg-io write to nbdkit"
qemu-io -f raw -c 'read -P 0x66 12M 128k' -c 'read -P 0x5a 7M 4k' "$KIT" >io.out
grep -q "Pattern verification failed" io.out && fail "nbdkit readback: $(cat io.out)"
cmp -n 131072 -i 12582912:0 kit.raw <(head -c 131072 /dev/zero | tr '\0' '\146') ||
    fail "vimg-io write did not reach the file behind nbdkit"
pass
