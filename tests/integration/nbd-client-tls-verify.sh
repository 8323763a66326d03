#!/bin/bash
# Proves: vimg's nbd client checks an x509 server certificate as qemu-img 7.2
# does, with the same messages and exit codes: the CA first (unknown issuer,
# expired), then the name: tls-hostname if given, else the TCP host, else
# (unix socket) none, which fails. Over unix sockets and TCP, against
# qemu-nbd, vimg-nbd and nbdkit, for info and convert, with certificates
# (certtool) for the right name, a wrong name, an IP address, an expired
# one and another CA; verify-peer=off skips the checks; a server without
# TLS refuses STARTTLS in qemu-img's words. vimg-nbd -L checks as qemu-nbd -L.
# Regression: libnbd 1.14 checked no name on a socket it was handed, so vimg
# accepted any certificate from the CA over a unix socket or with tls-hostname.
source "$(dirname "$0")/lib.sh"
source "$LIB_DIR/nbd-lib.sh"
need qemu-img qemu-nbd certtool nbdkit
[ -x "$VIMG_NBD" ] || fail "vimg-nbd not built"
cd "$TESTDIR"

# sign NAME FIELDS: pki/NAME/server-*.pem, a server certificate from pki's CA with FIELDS.
sign() {
    mkdir -p "pki/$1"
    printf "%btls_www_server\nencryption_key\nsigning_key\n" "$2" >"pki/$1.info"
    certtool --generate-privkey --key-type=ecdsa --outfile "pki/$1/server-key.pem" 2>/dev/null
    certtool --generate-certificate --load-ca-certificate pki/ca-cert.pem \
        --load-ca-privkey pki/ca-key.pem --load-privkey "pki/$1/server-key.pem" \
        --template "pki/$1.info" --outfile "pki/$1/server-cert.pem" 2>/dev/null
    cp pki/ca-cert.pem "pki/$1/"
    [ -s "pki/$1/server-cert.pem" ] || fail "certtool made no certificate for $1"
}

free_port() {
    local p
    for p in $(shuf -i 20000-60000 -n 20); do
        ss -ltn | grep -q ":$p " || { echo "$p"; return; }
    done
    fail "no free TCP port"
}

wait_port() {
    for _ in $(seq 200); do ss -ltn | grep -q "127.0.0.1:$1 " && return 0; sleep 0.05; done
    fail "no server on port $1"
}

mkpki pki
mkpki other
sign wrong 'cn = wrong.example\ndns_name = wrong.example\nexpiration_days = 2\n'
sign ip 'cn = 127.0.0.1\nip_address = 127.0.0.1\nexpiration_days = 2\n'
sign expired 'cn = localhost\ndns_name = localhost\nactivation_date = "2020-01-01 00:00:00 UTC"\nexpiration_date = "2021-01-01 00:00:00 UTC"\n'
qemu-img create -q -f raw img.raw 4M
qemu-io -f raw -c 'write -P 0x5a 64k 1M' img.raw >/dev/null

srv() { echo "--object tls-creds-x509,id=s0,dir=$TESTDIR/pki/$1,endpoint=server --tls-creds s0 -f raw -r"; }
start q qemu-nbd $(srv server) img.raw
start v "$VIMG_NBD" $(srv server) img.raw
start qw qemu-nbd $(srv wrong) img.raw
start vw "$VIMG_NBD" $(srv wrong) img.raw
start plain qemu-nbd -f raw -r img.raw
# qemu-nbd and vimg-nbd refuse to serve an expired certificate: nbdkit does not.
rm -f ke.sock
nbdkit -f -U "$TESTDIR/ke.sock" --tls=require --tls-certificates="$TESTDIR/pki/expired" \
    file img.raw 2>ke.log &
on_exit "kill $!"
wait_sock "$TESTDIR/ke.sock" ke.log
PQ=$(free_port)
qemu-nbd -t -b 127.0.0.1 -p "$PQ" $(srv server) img.raw 2>tq.log &
on_exit "kill $!"
PV=$(free_port)
"$VIMG_NBD" -t -b 127.0.0.1 -p "$PV" $(srv ip) img.raw 2>tv.log &
on_exit "kill $!"
wait_port "$PQ"
wait_port "$PV"

n=0
# check CREDS SERVER [EXTRA_JSON] [CREDS_OPTS]: qemu-img and vimg info and convert print
# the same and exit alike; a converted image holds the export's bytes.
check() {
    local creds=$1 server=$2 extra=${3:-} copts=${4:-} j o
    j="json:{\"driver\":\"nbd\",\"server\":$server,\"tls-creds\":\"c0\"$extra}"
    o="tls-creds-x509,id=c0,endpoint=client,dir=$TESTDIR/$creds/client$copts"
    n=$((n + 1))
    run_both "i$n" info --object "$o" "$j"
    expect_same "i$n.q" "i$n.v" "info $creds $server $extra $copts"
    run_both "c$n" convert --object "$o" -O raw "$j" "c$n.out"
    sed -i "s/c$n.out/OUT/" "c$n.q" "c$n.v"
    expect_same "c$n.q" "c$n.v" "convert $creds $server $extra $copts"
    if grep -q "exit=0" "c$n.v"; then
        cmp -s img.raw "c$n.out" || fail "convert through $server copied other bytes"
    fi
    rm -f "c$n.out"
}
unix() { echo "{\"type\":\"unix\",\"path\":\"$TESTDIR/$1.sock\"}"; }
inet() { echo "{\"type\":\"inet\",\"host\":\"$1\",\"port\":\"$2\"}"; }

for s in q v; do
    check pki "$(unix $s)"
    grep -q "No hostname for certificate validation" "i$n.v" || fail "unix without a name: $(cat i$n.v)"
    grep -q "exit=1" "i$n.v" || fail "unix without a name did not fail"
    check pki "$(unix $s)" ',"tls-hostname":"localhost"'
    grep -q "exit=0" "i$n.v" || fail "matching name refused: $(cat i$n.v)"
    check pki "$(unix $s)" ',"tls-hostname":"LOCALHOST"'
    check pki "$(unix $s)" ',"tls-hostname":"other.example"'
    grep -q "Certificate does not match the hostname other.example" "i$n.v" ||
        fail "wrong name accepted: $(cat i$n.v)"
    check other "$(unix $s)" ',"tls-hostname":"localhost"'
    grep -q "The certificate hasn't got a known issuer" "i$n.v" ||
        fail "other CA accepted: $(cat i$n.v)"
    check pki "$(unix $s)" '' ',verify-peer=off'
    grep -q "exit=0" "i$n.v" || fail "verify-peer=off still checked: $(cat i$n.v)"
    check pki "$(unix ${s}w)" ',"tls-hostname":"wrong.example"'
    grep -q "exit=0" "i$n.v" || fail "wrong.example refused: $(cat i$n.v)"
    check pki "$(unix ${s}w)" ',"tls-hostname":"localhost"'
    grep -q "exit=1" "i$n.v" || fail "localhost accepted for wrong.example"
done
check pki "$(unix ke)" ',"tls-hostname":"localhost"'
grep -q "The certificate is not trusted" "i$n.v" || fail "expired accepted: $(cat i$n.v)"
check pki "$(unix plain)" ',"tls-hostname":"localhost"'
grep -q "Denied by server for option 5 (starttls)" "i$n.v" || fail "plain server: $(cat i$n.v)"

# TCP: the host is the name unless tls-hostname overrides it.
check pki "$(inet localhost "$PQ")"
grep -q "exit=0" "i$n.v" || fail "TCP localhost refused: $(cat i$n.v)"
check pki "$(inet 127.0.0.1 "$PQ")"
grep -q "Certificate does not match the hostname 127.0.0.1" "i$n.v" || fail "TCP IP accepted"
check pki "$(inet 127.0.0.1 "$PQ")" ',"tls-hostname":"localhost"'
grep -q "exit=0" "i$n.v" || fail "TCP override refused: $(cat i$n.v)"
check pki "$(inet localhost "$PQ")" ',"tls-hostname":"foo"'
grep -q "exit=1" "i$n.v" || fail "TCP override foo accepted"
check pki "$(inet 127.0.0.1 "$PV")"
grep -q "exit=0" "i$n.v" || fail "IP certificate refused: $(cat i$n.v)"
check pki "$(inet localhost "$PV")"
check pki "$(inet localhost "$PV")" ',"tls-hostname":"127.0.0.1"'

# Writes go through the relay too: vimg-io writes to vimg-nbd, qemu-io reads back.
rm -f w.sock
cp img.raw rw.raw
"$VIMG_NBD" -t -k "$TESTDIR/w.sock" --object "tls-creds-x509,id=s0,dir=$TESTDIR/pki/server,endpoint=server" \
    --tls-creds s0 -f raw rw.raw 2>w.log &
on_exit "kill $!"
wait_sock "$TESTDIR/w.sock" w.log
CLI=(--object "tls-creds-x509,id=c0,endpoint=client,dir=$TESTDIR/pki/client")
OPTS="driver=nbd,server.type=unix,server.path=$TESTDIR/w.sock,tls-creds=c0,tls-hostname=localhost"
"$VIMG_IO" "${CLI[@]}" --image-opts "$OPTS" -c 'write -P 0x77 1M 2M' >out 2>&1 ||
    { cat out >&2; fail "vimg-io write over TLS"; }
qemu-io "${CLI[@]}" -r --image-opts "$OPTS" -c 'read -P 0x77 1M 2M' -c 'read -P 0x5a 64k 960k' \
    >out 2>&1 || { cat out >&2; fail "qemu-io read back over TLS"; }
grep -q "verification failed" out && fail "vimg-io's writes did not land"

# vimg-nbd -L checks the name as qemu-nbd -L does.
for a in "-k $TESTDIR/q.sock" "-k $TESTDIR/q.sock --tls-hostname localhost" \
         "-k $TESTDIR/qw.sock --tls-hostname localhost" "-b 127.0.0.1 -p $PQ" \
         "-b 127.0.0.1 -p $PQ --tls-hostname localhost" "-k $TESTDIR/plain.sock"; do
    qemu-nbd -L "${CLI[@]}" --tls-creds c0 $a >l.q 2>&1; echo "exit=$?" >>l.q
    "$VIMG_NBD" -L "${CLI[@]}" --tls-creds c0 $a >l.v 2>&1; echo "exit=$?" >>l.v
    sed -i 's/^qemu-nbd:/TOOL:/; s/^vimg-nbd:/TOOL:/' l.q l.v
    expect_same l.q l.v "-L $a"
done
pass
