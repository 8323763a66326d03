#!/bin/bash
# Proves: --object tls-creds-x509 checks its certificates when it is created
# as qemu-nbd/qemu-img 7.2 do (sanity-check=on), with the same messages and
# exit codes: our own certificate (dates, not a CA, critical key usage and
# purpose), then the CA (dates, a CA), then our certificate against the CA;
# a server's ca-crl.pem must load, and the server refuses a client
# certificate it revokes ("has been revoked"); a client ignores ca-crl.pem,
# as qemu-img does. sanity-check=off skips the checks. Good certificates
# still serve and read.
# Regression: vimg-nbd served an expired certificate and vimg sent one.
source "$(dirname "$0")/lib.sh"
source "$LIB_DIR/nbd-lib.sh"
need qemu-img qemu-nbd certtool openssl
[ -x "$VIMG_NBD" ] || fail "vimg-nbd not built"
cd "$TESTDIR"

OLD='activation_date = "2020-01-01 00:00:00 UTC"\nexpiration_date = "2021-01-01 00:00:00 UTC"\n'
NEW='activation_date = "2040-01-01 00:00:00 UTC"\nexpiration_date = "2041-01-01 00:00:00 UTC"\n'
SRV='cn = localhost\ndns_name = localhost\ntls_www_server\nsigning_key\n'
CLI='cn = client\ntls_www_client\nsigning_key\n'
DAYS='expiration_days = 2\n'
key() { certtool --generate-privkey --key-type=ecdsa --outfile "$1" 2>/dev/null; }
# ca NAME FIELDS: NAME-cert.pem, a self-signed CA.
ca() {
    key "$1-key.pem"
    printf "%b" "$2" >"$1.info"
    certtool --generate-self-signed --load-privkey "$1-key.pem" --template "$1.info" \
        --outfile "$1-cert.pem" 2>/dev/null
    [ -s "$1-cert.pem" ] || fail "certtool made no CA $1"
}
# leaf DIR WHO CA FIELDS: DIR/WHO-{cert,key}.pem signed by CA.
leaf() {
    mkdir -p "$1"
    key "$1/$2-key.pem"
    printf "%b" "$4" >"$1.$2.info"
    certtool --generate-certificate --load-ca-certificate "$3-cert.pem" --load-ca-privkey "$3-key.pem" \
        --load-privkey "$1/$2-key.pem" --template "$1.$2.info" --outfile "$1/$2-cert.pem" 2>/dev/null
    [ -s "$1/$2-cert.pem" ] || fail "certtool made no certificate $1/$2"
}
# mk DIR CA SERVER_FIELDS CLIENT_FIELDS: a credentials directory.
mk() { leaf "$1" server "$2" "$3"; leaf "$1" client "$2" "$4"; cp "$2-cert.pem" "$1/ca-cert.pem"; }
# oleaf DIR WHO EXT: DIR/WHO-cert.pem made by openssl with extensions EXT (certtool cannot
# mark a key purpose critical), signed by ca.
oleaf() {
    mkdir -p "$1"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1/$2-key.pem" 2>/dev/null
    openssl req -new -key "$1/$2-key.pem" -subj "/CN=localhost" -out "$1/$2.csr" 2>/dev/null
    printf "%b\nbasicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost\n" "$3" >"$1/$2.ext"
    openssl x509 -req -in "$1/$2.csr" -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
        -extfile "$1/$2.ext" -out "$1/$2-cert.pem" 2>/dev/null
    [ -s "$1/$2-cert.pem" ] || fail "openssl made no certificate $1/$2"
    cp ca-cert.pem "$1/"
}

ca ca "cn = CA\nca\ncert_signing_key\n$DAYS"
ca other "cn = Other\nca\ncert_signing_key\n$DAYS"
ca oldca "cn = OldCA\nca\ncert_signing_key\n$OLD"
ca newca "cn = NewCA\nca\ncert_signing_key\n$NEW"
ca noca "cn = NotCA\ncert_signing_key\n$DAYS"
mk good ca "$SRV$DAYS" "$CLI$DAYS"
mk oldca oldca "$SRV$DAYS" "$CLI$DAYS"
mk newca newca "$SRV$DAYS" "$CLI$DAYS"
mk noca noca "$SRV$DAYS" "$CLI$DAYS"
mk old ca "$SRV$OLD" "$CLI$OLD"
mk new ca "$SRV$NEW" "$CLI$NEW"
mk isca ca "${SRV}ca\n$DAYS" "${CLI}ca\n$DAYS"
mk foreign other "$SRV$DAYS" "$CLI$DAYS"
cp ca-cert.pem foreign/ca-cert.pem
mk both ca "$SRV$OLD" "$CLI$OLD"          # expired certificates and an expired CA:
cp oldca-cert.pem both/ca-cert.pem         # our own certificate is reported first
oleaf purpose server 'extendedKeyUsage=critical,clientAuth'
oleaf purpose client 'extendedKeyUsage=critical,serverAuth'
oleaf purposeok server 'extendedKeyUsage=clientAuth'     # not critical: passes
oleaf purposeok client 'extendedKeyUsage=serverAuth'
oleaf usage server 'keyUsage=critical,keyCertSign'
oleaf usage client 'keyUsage=critical,keyCertSign'
# revoked: a CRL from ca revoking good's server and client certificates; badcrl: not a CRL.
mkdir revoked badcrl
cp good/* revoked/
cp good/* badcrl/
printf 'crl_next_update = 2\ncrl_number = 1\n' >crl.info
cat good/server-cert.pem good/client-cert.pem >revoke.pem
certtool --generate-crl --load-ca-privkey ca-key.pem --load-ca-certificate ca-cert.pem \
    --load-certificate revoke.pem --template crl.info --outfile revoked/ca-crl.pem 2>/dev/null
[ -s revoked/ca-crl.pem ] || fail "certtool made no CRL"
echo garbage >badcrl/ca-crl.pem
# files that are not certificates
for f in ca server client; do mkdir "bad$f"; cp good/* "bad$f/"; echo garbage >"bad$f/$f-cert.pem"; done
qemu-img create -q -f raw img.raw 1M
qemu-io -f raw -c 'write -P 0x5a 0 64k' img.raw >/dev/null

# srv NAME DIR [OPTS]: qemu-nbd and vimg-nbd started with DIR's server credentials;
# both must stop by themselves (a refused object), printing the same and exiting alike.
srv() {
    local name=$1 dir=$2 opts=${3:-} t
    for t in qemu-nbd "$VIMG_NBD"; do
        rm -f "$name.sock"
        timeout 10 "$t" --object "tls-creds-x509,id=s0,endpoint=server,dir=$TESTDIR/$dir$opts" \
            --tls-creds s0 -f raw -r -k "$TESTDIR/$name.sock" img.raw >"$name.out" 2>&1
        echo "exit=$?" >>"$name.out"
        sed -e 's/^vimg-nbd:/qemu-nbd:/' "$name.out" >"$name.$(basename "$t")"
    done
    expect_same "$name.qemu-nbd" "$name.vimg-nbd" "server credentials $dir$opts"
    grep -q "exit=1" "$name.vimg-nbd" || fail "vimg-nbd served with $dir$opts: $(cat "$name.vimg-nbd")"
}
# cli NAME DIR SOCK [OPTS]: qemu-img and vimg info over SOCK with DIR's client credentials.
cli() {
    local name=$1 dir=$2 sock=$3 opts=${4:-}
    run_both "$name" info --object "tls-creds-x509,id=c0,endpoint=client,dir=$TESTDIR/$dir$opts" \
        "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$TESTDIR/$sock.sock\"},\"tls-creds\":\"c0\",\"tls-hostname\":\"localhost\"}"
    expect_same "$name.q" "$name.v" "client credentials $dir$opts over $sock"
}
# says NAME TEXT: vimg's output for NAME holds TEXT and it failed.
says() {
    grep -qF "$2" "$1" || fail "$1: expected '$2', got: $(cat "$1")"
    grep -q "exit=1" "$1" || fail "$1: did not fail"
}

# Server side: every bad directory is refused at start, in qemu-nbd's words.
srv s1 oldca;    says s1.vimg-nbd "The CA certificate $TESTDIR/oldca/ca-cert.pem has expired"
srv s2 newca;    says s2.vimg-nbd "The CA certificate $TESTDIR/newca/ca-cert.pem is not yet active"
srv s3 noca;     says s3.vimg-nbd "basic constraints do not show a CA"
srv s4 old;      says s4.vimg-nbd "The server certificate $TESTDIR/old/server-cert.pem has expired"
srv s5 new;      says s5.vimg-nbd "The server certificate $TESTDIR/new/server-cert.pem is not yet active"
srv s6 isca;     says s6.vimg-nbd "basic constraints show a CA, but we need one for a server"
srv s7 foreign;  says s7.vimg-nbd "failed validation against $TESTDIR/foreign/ca-cert.pem: The certificate hasn't got a known issuer"
srv s8 both;     says s8.vimg-nbd "The server certificate $TESTDIR/both/server-cert.pem has expired"
srv s9 purpose;  says s9.vimg-nbd "purpose does not allow use with a TLS server"
srv s10 usage;   says s10.vimg-nbd "usage does not permit digital signature"
srv s11 badcrl;  says s11.vimg-nbd "Cannot load CRL '$TESTDIR/badcrl/ca-crl.pem'"
srv s13 badca;   says s13.vimg-nbd "Unable to import CA certificate list $TESTDIR/badca/ca-cert.pem"
srv s14 badserver; says s14.vimg-nbd "Unable to import server certificate $TESTDIR/badserver/server-cert.pem: "
srv s12 old ",sanity-check=off,dir=$TESTDIR/badcrl"
says s12.vimg-nbd "Cannot load CRL"

# Servers with good credentials; and ones whose CRL revokes their own certificate
# (qemu-nbd serves it) and the client's (refused at negotiation).
start qr qemu-nbd --object "tls-creds-x509,id=s0,endpoint=server,dir=$TESTDIR/revoked" --tls-creds s0 -f raw -r img.raw
start q qemu-nbd --object "tls-creds-x509,id=s0,endpoint=server,dir=$TESTDIR/good" --tls-creds s0 -f raw -r img.raw
start v "$VIMG_NBD" --object "tls-creds-x509,id=s0,endpoint=server,dir=$TESTDIR/good" --tls-creds s0 -f raw -r img.raw
start vr "$VIMG_NBD" --object "tls-creds-x509,id=s0,endpoint=server,dir=$TESTDIR/revoked" --tls-creds s0 -f raw -r img.raw
start vp "$VIMG_NBD" --object "tls-creds-x509,id=s0,endpoint=server,dir=$TESTDIR/purposeok" --tls-creds s0 -f raw -r img.raw

# Client side.
for s in q v; do
    cli "c1$s" oldca "$s";   says "c1$s.v" "The CA certificate $TESTDIR/oldca/ca-cert.pem has expired"
    cli "c2$s" newca "$s";   says "c2$s.v" "is not yet active"
    cli "c3$s" old "$s";     says "c3$s.v" "The client certificate $TESTDIR/old/client-cert.pem has expired"
    cli "c4$s" new "$s";     says "c4$s.v" "The client certificate $TESTDIR/new/client-cert.pem is not yet active"
    cli "c5$s" isca "$s";    says "c5$s.v" "basic constraints show a CA, but we need one for a client"
    cli "c6$s" foreign "$s"; says "c6$s.v" "Our own certificate $TESTDIR/foreign/client-cert.pem failed validation"
    cli "c7$s" purpose "$s"; says "c7$s.v" "purpose does not allow use with a TLS client"
    cli "c8$s" usage "$s";   says "c8$s.v" "usage does not permit digital signature"
    cli "c15$s" badca "$s";  says "c15$s.v" "Unable to import CA certificate list"
    cli "c16$s" badclient "$s"; says "c16$s.v" "Unable to import client certificate $TESTDIR/badclient/client-cert.pem: "
    cli "c9$s" revoked "$s"      # the client ignores ca-crl.pem
    grep -q "exit=0" "c9$s.v" || fail "client with a CRL refused: $(cat "c9$s.v")"
    cli "c10$s" good "$s"
    grep -q "exit=0" "c10$s.v" || fail "good credentials refused: $(cat "c10$s.v")"
    # sanity-check=off: the object is made; the server then refuses the expired
    # certificate (a timing-dependent text, so only the outcome is compared).
    run_both "c11$s" info --object "tls-creds-x509,id=c0,endpoint=client,dir=$TESTDIR/old,sanity-check=off" \
        "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$TESTDIR/$s.sock\"},\"tls-creds\":\"c0\",\"tls-hostname\":\"localhost\"}"
    grep -q "exit=1" "c11$s.q" && grep -q "exit=1" "c11$s.v" || fail "sanity-check=off: $(cat "c11$s.v")"
    grep -q "TLS channel" "c11$s.v" || fail "sanity-check=off still checked: $(cat "c11$s.v")"
done
# A non-critical purpose passes the checks on both sides.
cli c12 purposeok vp
grep -q "exit=0" c12.v || fail "non-critical purpose refused: $(cat c12.v)"
# Servers whose CRL revokes the client's certificate: the same failure for the client
# (one of two timing-dependent texts, so only the exit code is compared), and the
# servers say why.
for s in qr vr; do
    run_both "c13$s" info --object "tls-creds-x509,id=c0,endpoint=client,dir=$TESTDIR/good" \
        "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$TESTDIR/$s.sock\"},\"tls-creds\":\"c0\",\"tls-hostname\":\"localhost\"}"
    grep -q "exit=1" "c13$s.q" || fail "qemu-img read from a server revoking it"
    grep -q "exit=1" "c13$s.v" || fail "vimg read from a server revoking it: $(cat "c13$s.v")"
done
sleep 0.3
grep -q "qemu-nbd: option negotiation failed: The certificate has been revoked" qr.log ||
    fail "qemu-nbd: $(cat qr.log)"
grep -q "vimg-nbd: option negotiation failed: The certificate has been revoked" vr.log ||
    fail "vimg-nbd accepted a revoked client certificate: $(cat vr.log)"
# vimg reads the good server's bytes.
"$VIMG" convert --object "tls-creds-x509,id=c0,endpoint=client,dir=$TESTDIR/good" -O raw \
    "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$TESTDIR/q.sock\"},\"tls-creds\":\"c0\",\"tls-hostname\":\"localhost\"}" out.raw \
    || fail "convert with good credentials failed"
cmp -s img.raw out.raw || fail "convert copied other bytes"
pass
