# Sourced after lib.sh by the NBD server tests that run qemu-nbd and vimg-nbd
# side by side. Provides:
#   mkpki DIR [CLIENT_FIELDS]  with certtool: a CA (DIR/ca-cert.pem), a server certificate
#                              for localhost in DIR/server and a client certificate (cn =
#                              client) in DIR/client, each with the CA certificate beside
#                              it; CLIENT_FIELDS ('organization = X\n...', printf %b)
#                              go into the client's template (its DN)
#   mkpsk DIR                  DIR/keys.psk: a random 32-byte key for user alice
#   wait_sock PATH [LOG]       waits (up to 10 s) for a server socket at PATH, else prints
#                              LOG (the server's stderr) and fails
#   start NAME TOOL ARGS...    TOOL -t -k $TESTDIR/NAME.sock ARGS... in the background,
#                              stderr in NAME.log (shown if it never listens), pid in
#                              NAME_pid, killed on exit; returns once the socket is there
#   stop NAME                  stops what `start NAME` started and waits for it

mkpki() {
    local d=$1 client_fields=${2:-}
    mkdir -p "$d/server" "$d/client"
    certtool --generate-privkey --key-type=ecdsa --outfile "$d/ca-key.pem" 2>/dev/null
    printf 'cn = Test CA\nca\ncert_signing_key\nexpiration_days = 2\n' >"$d/ca.info"
    certtool --generate-self-signed --load-privkey "$d/ca-key.pem" --template "$d/ca.info" \
        --outfile "$d/ca-cert.pem" 2>/dev/null
    printf 'cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' \
        >"$d/server.info"
    printf 'cn = client\n%btls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n' \
        "$client_fields" >"$d/client.info"
    for who in server client; do
        certtool --generate-privkey --key-type=ecdsa --outfile "$d/$who/$who-key.pem" 2>/dev/null
        certtool --generate-certificate --load-ca-certificate "$d/ca-cert.pem" \
            --load-ca-privkey "$d/ca-key.pem" --load-privkey "$d/$who/$who-key.pem" \
            --template "$d/$who.info" --outfile "$d/$who/$who-cert.pem" 2>/dev/null
        cp "$d/ca-cert.pem" "$d/$who/"
    done
    [ -s "$d/client/client-cert.pem" ] || fail "certtool made no certificates"
}

mkpsk() {
    mkdir -p "$1"
    echo "alice:$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$1/keys.psk"
}

wait_sock() {
    for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
    [ -n "${2:-}" ] && cat "$2" >&2
    fail "no server on $1"
}

start() {
    local name=$1 tool=$2; shift 2
    rm -f "$TESTDIR/$name.sock"
    "$tool" -t -k "$TESTDIR/$name.sock" "$@" 2>"$name.log" & eval "${name}_pid=$!"
    on_exit "kill $! 2>/dev/null"
    wait_sock "$TESTDIR/$name.sock" "$name.log"
}

stop() { eval "kill \$${1}_pid; wait \$${1}_pid 2>/dev/null"; }
