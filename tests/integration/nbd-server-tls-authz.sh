#!/bin/bash
# Proves: vimg-nbd --tls-authz with --object authz-simple / authz-list lets in
# or refuses x509 clients by their certificate's distinguished name exactly as
# qemu-nbd 7.2 does (same DN form "C=GB,O=Acme Ltd,CN=client", same
# "option negotiation failed: TLS x509 authz check for ... is denied" on the
# server's stderr, exact and glob rules, list policies, an unknown authz id,
# no check without peer verification or with PSK); authz option errors print
# as qemu-nbd's. And vimg-nbd -L --tls-creds lists the exports of TLS servers
# (x509 over a unix socket and TCP, PSK) as qemu-nbd -L --tls-creds does,
# errors included.
source "$(dirname "$0")/lib.sh"
source "$LIB_DIR/nbd-lib.sh"
need qemu-img qemu-nbd certtool
[ -x "$VIMG_NBD" ] || fail "vimg-nbd not built"

# The client's DN: C=GB,O=Acme Ltd,CN=client.
mkpki pki 'organization = Acme Ltd\ncountry = GB\n'
mkpki other 'organization = Acme Ltd\ncountry = GB\n'
mkpsk psk
qemu-img create -q -f raw img.raw 1M
X509="tls-creds-x509,id=tls0,dir=$TESTDIR/pki/server,endpoint=server"
CLI=(--object "tls-creds-x509,id=c0,dir=$TESTDIR/pki/client,endpoint=client")

# authz CREDS AUTHZ: a client with the CA's client certificate (x509) or alice's key
# (psk) opens the export of each server; whether it got in and the server's stderr match.
authz() {
    local creds=$1 obj=$2 s tool cli opts opts_h=
    for s in q v; do
        tool=qemu-nbd; [ $s = v ] && tool=$VIMG_NBD
        start $s "$tool" --object "$creds" --object "$obj" --tls-creds tls0 --tls-authz auth0 \
            -f raw img.raw
        if [[ $creds == tls-creds-psk* ]]; then
            cli=(--object "tls-creds-psk,id=c0,dir=$TESTDIR/psk,endpoint=client,username=alice")
        else
            cli=("${CLI[@]}")
            opts_h=",tls-hostname=localhost"
        fi
        opts="driver=nbd,server.type=unix,server.path=$TESTDIR/$s.sock,tls-creds=c0$opts_h"
        if qemu-img info "${cli[@]}" --image-opts "$opts" >info.$s 2>&1; then
            echo "let in" >out.$s
        else
            echo "refused" >out.$s
        fi
        stop $s
        sed 's/^qemu-nbd:/TOOL:/; s/^vimg-nbd:/TOOL:/' $s.log >>out.$s
    done
    expect_same out.q out.v "--tls-authz with $obj"
}
DN="C=GB,,O=Acme Ltd,,CN=client"
authz "$X509" "authz-simple,id=auth0,identity=$DN"
grep -q "let in" out.v || fail "the right DN was refused: $(cat info.v)"
authz "$X509" "authz-simple,id=auth0,identity=CN=client,,O=Acme Ltd,,C=GB"
grep -q "TLS x509 authz check for C=GB,O=Acme Ltd,CN=client is denied" out.v ||
    fail "a DN in the other order was not refused: $(cat out.v)"
authz "$X509" "authz-list,id=auth0,rules.0.match=*CN=client,rules.0.policy=allow,rules.0.format=glob"
grep -q "let in" out.v || fail "a glob allow rule did not let the client in"
authz "$X509" "authz-list,id=auth0,policy=allow,rules.0.match=C=GB*,rules.0.policy=deny,rules.0.format=glob,rules.1.match=$DN,rules.1.policy=allow"
grep -q "refused" out.v || fail "the first matching rule did not decide"
authz "$X509" "authz-list,id=auth0,policy=deny,rules.0.match=C=GB*,rules.0.policy=allow"
grep -q "refused" out.v || fail "an exact rule matched as a glob"
authz "$X509" "authz-list,id=auth0,policy=allow"
grep -q "let in" out.v || fail "policy=allow without rules refused"
authz "$X509" "authz-list,id=auth0"
grep -q "refused" out.v || fail "an empty list let the client in"
authz "$X509" "authz-simple,id=nosuch,identity=x"
grep -q "Cannot find QAuthZ object ID auth0" out.v || fail "unknown authz id not reported"
# Without peer verification, and with PSK, QEMU checks no identity.
authz "$X509,verify-peer=off" "authz-simple,id=auth0,identity=nobody"
grep -q "let in" out.v || fail "verify-peer=off refused"
authz "tls-creds-psk,id=tls0,dir=$TESTDIR/psk,endpoint=server" "authz-simple,id=auth0,identity=nobody"
grep -q "let in" out.v || fail "psk refused"

# Option errors.
same_err() {
    qemu-nbd "$@" -k "$TESTDIR/e.sock" img.raw >e.q 2>&1; echo "exit=$?" >>e.q
    "$VIMG_NBD" "$@" -k "$TESTDIR/e.sock" img.raw >e.v 2>&1; echo "exit=$?" >>e.v
    sed -i 's/^qemu-nbd:/TOOL:/; s/^vimg-nbd:/TOOL:/' e.q e.v
    expect_same e.q e.v "vimg-nbd $*"
}
for o in authz-simple,id=a authz-simple,identity=x authz-simple,id=a,identity=x,foo=1 \
         authz-list,id=a,policy=foo authz-list,id=a,rules=x \
         authz-list,id=a,rules.0.match=x,rules.0.policy=allow,rules.0.format=foo \
         authz-list,id=a,rules.0.policy=allow authz-list,id=a,rules.0.match=x \
         authz-list,id=a,rules.1.match=x authz-list,id=a,rules.0.match=x,rules.0.policy=maybe \
         authz-list,id=a,rules.0.match=x,rules.0.policy=allow,rules.0.bar=1 \
         authz-listfile,id=a authz-listfile,id=a,filename=$TESTDIR/acl authz-pam,id=a; do
    same_err --object "$o" --tls-authz a
done
same_err --object authz-simple,id=a,identity=x --object authz-simple,id=a,identity=y
same_err --tls-authz a -f raw
same_err -L "${CLI[@]}" --tls-creds c0 --tls-authz a
for tool in qemu-nbd "$VIMG_NBD"; do
    "$tool" -L "${CLI[@]}" --tls-creds c0 --tls-authz a -k "$TESTDIR/e.sock" >e.out 2>&1
    echo "exit=$?" >>e.out
    sed 's/^qemu-nbd:/TOOL:/; s/^vimg-nbd:/TOOL:/' e.out >e.$(basename "$tool")
done
expect_same e.qemu-nbd e.vimg-nbd "-L --tls-authz"

# -L over TLS: vimg-nbd -L prints what qemu-nbd -L prints.
PORT=$((20000 + RANDOM % 20000))
start t qemu-nbd --object "$X509" --tls-creds tls0 -f raw -x foo -D "a desc" img.raw
start p qemu-nbd -f raw img.raw
start k qemu-nbd --object "tls-creds-psk,id=tls0,dir=$TESTDIR/psk,endpoint=server" \
    --tls-creds tls0 -f raw img.raw
start w "$VIMG_NBD" --object "$X509" --tls-creds tls0 -f raw -x bar -A img.raw
qemu-nbd -t -p $PORT -b localhost --object "$X509" --tls-creds tls0 -f raw img.raw 2>/dev/null &
on_exit "kill $! 2>/dev/null"
for _ in $(seq 100); do ss -ltn 2>/dev/null | grep -q ":$PORT " && break; sleep 0.05; done
list() {
    local tool
    for tool in qemu-nbd "$VIMG_NBD"; do
        "$tool" -L "$@" >l.out 2>&1; echo "exit=$?" >>l.out
        sed 's/^qemu-nbd:/TOOL:/; s/^vimg-nbd:/TOOL:/' l.out >l.$(basename "$tool")
    done
    expect_same l.qemu-nbd l.vimg-nbd "-L $*"
}
list "${CLI[@]}" --tls-creds c0 --tls-hostname localhost -k "$TESTDIR/t.sock"
grep -q "description: a desc" l.vimg-nbd || fail "-L over TLS listed nothing"
list "${CLI[@]}" --tls-creds c0 --tls-hostname localhost -k "$TESTDIR/w.sock"
grep -q "qemu:allocation-depth" l.vimg-nbd || fail "-L of vimg-nbd over TLS listed nothing"
list "${CLI[@]}" --tls-creds c0 -k "$TESTDIR/t.sock"
list -k "$TESTDIR/t.sock"
list "${CLI[@]}" --tls-creds c0 --tls-hostname localhost -k "$TESTDIR/p.sock"
list --object "tls-creds-psk,id=c2,dir=$TESTDIR/psk,endpoint=client,username=alice" \
    --tls-creds c2 -k "$TESTDIR/k.sock"
grep -q "exports available: 1" l.vimg-nbd || fail "-L with PSK listed nothing"
list --object "tls-creds-psk,id=c2,dir=$TESTDIR/psk,endpoint=client" --tls-creds c2 \
    -k "$TESTDIR/k.sock"
list "${CLI[@]}" --tls-creds c0 -b localhost -p $PORT
grep -q "exports available: 1" l.vimg-nbd || fail "-L over TCP with TLS listed nothing"
list "${CLI[@]}" --tls-creds c0 -b 127.0.0.1 -p $PORT --tls-hostname localhost
# A client certificate from another CA: refused.
"$VIMG_NBD" -L --object "tls-creds-x509,id=c1,dir=$TESTDIR/other/client,endpoint=client" \
    --tls-creds c1 --tls-hostname localhost -k "$TESTDIR/t.sock" >/dev/null 2>&1 &&
    fail "-L with a certificate from another CA got in"
pass
