#!/bin/bash
# Proves: vimg-nbd serves over TLS as qemu-nbd does, with x509 certificates
# (made here by certtool) and with a pre-shared key. With the same
# --object tls-creds-x509/psk and --tls-creds, qemu-img info, qemu-io and
# nbdinfo (nbds+unix URIs) read through both servers and print the same;
# clients without TLS are refused with qemu-nbd's words (NBD_REP_ERR_TLS_REQD);
# a client with a certificate from another CA is refused; and vimg's nbd
# driver (tls-creds=ID) reads from qemu-nbd and vimg-nbd over TLS; option
# errors, among them -c DEV with --tls-creds ("TLS is not supported with a
# host device", checked before the credentials and needing no /dev/nbd*),
# match qemu-nbd's words, order and exit code.
source "$(dirname "$0")/lib.sh"
source "$LIB_DIR/nbd-lib.sh"
need qemu-img qemu-io qemu-nbd nbdinfo certtool
[ -x "$VIMG_NBD" ] || fail "vimg-nbd not built"

# both CMD...: CMD with @S replaced by each server's socket prints the same.
both() {
    local a=() b=() x
    for x in "$@"; do a+=("${x//@S/$TESTDIR/q.sock}"); b+=("${x//@S/$TESTDIR/v.sock}"); done
    "${a[@]}" 2>&1 | sed "s|$TESTDIR/q.sock|SOCK|g; s/^qemu-io:/TOOL:/; /ops\/sec/d" >out.q
    "${b[@]}" 2>&1 | sed "s|$TESTDIR/v.sock|SOCK|g; s/^qemu-io:/TOOL:/; /ops\/sec/d" >out.v
    expect_same out.q out.v "$*"
}

mkpki pki
mkpki other
mkpsk psk
qemu-img create -q -f raw img.raw 4M
qemu-io -f raw -c 'write -P 0x5a 64k 1M' img.raw >/dev/null

# 1. x509, peer verification on (the default): clients need a certificate from the CA.
SRV=(--object "tls-creds-x509,id=tls0,dir=$TESTDIR/pki/server,endpoint=server" --tls-creds tls0
     -f raw -r)
start q qemu-nbd "${SRV[@]}" img.raw
start v "$VIMG_NBD" "${SRV[@]}" img.raw
CLI="--object tls-creds-x509,id=c0,dir=$TESTDIR/pki/client,endpoint=client"
OPTS="driver=nbd,server.type=unix,server.path=@S,tls-creds=c0,tls-hostname=localhost"
both qemu-img info $CLI --image-opts "$OPTS"
both qemu-io $CLI -r --image-opts "$OPTS" -c 'read -P 0x5a 64k 1M' -c 'read -P 0 2M 1M'
grep -q "read 1048576/1048576" out.v || fail "qemu-io read nothing through TLS"
both nbdinfo "nbds+unix:///?socket=@S&tls-certificates=$TESTDIR/pki/client"
grep -q "with TLS" out.v || fail "nbdinfo saw no TLS"
both nbdinfo --map "nbds+unix:///?socket=@S&tls-certificates=$TESTDIR/pki/client"
# Without TLS: refused before any option but STARTTLS.
both qemu-io -r --image-opts "driver=nbd,server.type=unix,server.path=@S" -c 'read 0 512'
grep -q "TLS negotiation required" out.v || fail "plain client not refused: $(cat out.v)"
both nbdinfo --list "nbd+unix:///?socket=@S"
# A certificate from another CA: the handshake fails on both.
qemu-io --object "tls-creds-x509,id=c1,dir=$TESTDIR/other/client,endpoint=client" -r \
    --image-opts "driver=nbd,server.type=unix,server.path=$TESTDIR/v.sock,tls-creds=c1,tls-hostname=localhost" \
    -c 'read 0 512' >out 2>&1 && fail "vimg-nbd accepted a client certificate from another CA"
# vimg's client, through both servers.
for s in q v; do
    "$VIMG_IO" $CLI -r --image-opts "driver=nbd,server.type=unix,server.path=$TESTDIR/$s.sock,tls-creds=c0,tls-hostname=localhost" \
        -c 'read -P 0x5a 64k 1M' >out 2>&1 || { cat out >&2; fail "vimg-io over TLS from $s"; }
    grep -q "read 1048576/1048576" out || fail "vimg-io read nothing from $s"
    "$VIMG" compare -f raw img.raw --object "tls-creds-x509,id=c0,dir=$TESTDIR/pki/client,endpoint=client" \
        "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$TESTDIR/$s.sock\"},\"tls-creds\":\"c0\",\"tls-hostname\":\"localhost\"}" \
        >out 2>&1 || { cat out >&2; fail "vimg compare over TLS from $s"; }
done
"$VIMG_IO" -r --image-opts "driver=nbd,server.type=unix,server.path=$TESTDIR/q.sock" \
    -c 'read 0 512' >out 2>&1 && fail "vimg-io read from a TLS server without TLS"
grep -q "Did you forget a valid tls-creds" out || fail "vimg-io TLS refusal: $(cat out)"
stop q; stop v

# 2. PSK, writable: qemu-io writes through vimg-nbd and reads back through qemu-nbd.
SRV=(--object "tls-creds-psk,id=tls0,dir=$TESTDIR/psk,endpoint=server" --tls-creds tls0 -f raw)
start v "$VIMG_NBD" "${SRV[@]}" img.raw
CLI="--object tls-creds-psk,id=c0,dir=$TESTDIR/psk,endpoint=client,username=alice"
qemu-io $CLI --image-opts "driver=nbd,server.type=unix,server.path=$TESTDIR/v.sock,tls-creds=c0" \
    -c 'write -P 0x77 3M 128k' >out 2>&1 || { cat out >&2; fail "qemu-io write over PSK"; }
nbdinfo "nbds+unix://alice@/?socket=$TESTDIR/v.sock&tls-psk-file=$TESTDIR/psk/keys.psk" >out 2>&1 ||
    { cat out >&2; fail "nbdinfo over PSK"; }
grep -q "with TLS" out || fail "nbdinfo saw no TLS over PSK"
"$VIMG_IO" $CLI --image-opts "driver=nbd,server.type=unix,server.path=$TESTDIR/v.sock,tls-creds=c0" \
    -c 'read -P 0x77 3M 128k' >out 2>&1 || { cat out >&2; fail "vimg-io over PSK"; }
grep -q "verification failed" out && fail "vimg-io read other bytes over PSK"
stop v
qemu-io -f raw -r -c 'read -P 0x77 3M 128k' -c 'read -P 0x5a 64k 1M' img.raw >out 2>&1
grep -q "verification failed" out && fail "PSK writes did not land in the image"
start q qemu-nbd "${SRV[@]}" img.raw
"$VIMG_IO" $CLI -r --image-opts "driver=nbd,server.type=unix,server.path=$TESTDIR/q.sock,tls-creds=c0" \
    -c 'read -P 0x77 3M 128k' >out 2>&1 || { cat out >&2; fail "vimg-io over PSK from qemu-nbd"; }
stop q

# 3. Option errors as qemu-nbd words them.
for args in "--tls-creds nosuch" "--tls-hostname h" \
            "--object tls-creds-x509,id=t,dir=$TESTDIR/pki/client,endpoint=server --tls-creds t" \
            "--object tls-creds-x509,id=t,dir=$TESTDIR/pki/server,endpoint=client --tls-creds t" \
            "--object tls-creds-psk,id=t,dir=$TESTDIR/nosuch,endpoint=server --tls-creds t" \
            "--object tls-creds-x509,id=t,endpoint=server --tls-creds t" \
            "--object tls-creds-x509,id=t,dir=/,endpoint=nowhere --tls-creds t" \
            "-c /dev/nbd0 --tls-creds nosuch" "-c /dev/nbd0 -L --tls-creds nosuch" \
            "-c /dev/nbd0 --object tls-creds-x509,id=t,dir=$TESTDIR/pki/server,endpoint=server --tls-creds t --tls-authz a" \
            "-c /dev/nbd0 --tls-creds nosuch --detect-zeroes=unmap" \
            "-c /dev/nbd0 --tls-creds nosuch --image-opts -f raw" \
            "--tls-creds nosuch --image-opts -f raw" "-d --tls-creds nosuch"; do
    qemu-nbd $args -k "$TESTDIR/e.sock" img.raw >e.q 2>&1; echo "exit=$?" >>e.q
    "$VIMG_NBD" $args -k "$TESTDIR/e.sock" img.raw >e.v 2>&1; echo "exit=$?" >>e.v
    sed -i 's/^qemu-nbd:/TOOL:/; s/^vimg-nbd:/TOOL:/' e.q e.v
    expect_same e.q e.v "vimg-nbd $args"
done
pass
