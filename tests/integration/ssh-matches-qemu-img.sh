#!/bin/bash
# Proves: vimg's ssh protocol driver, against a real sshd started here on a
# free loopback port (own host key, user key held by an own ssh-agent,
# authorized_keys in TESTDIR), opens the same URIs and --image-opts as
# qemu-img (ssh://, user/host/port/path/host_key_check, server.host/port,
# host-key-check.mode/type/hash), accepts and refuses the same host keys
# (known_hosts, no, md5/sha1/sha256 fingerprints with and without colons)
# with qemu-img's messages, fails alike on a wrong user, a key the server
# does not know and a refused connection, creates qcow2 and raw images that
# qemu-img reads back, converts to and from ssh with the same bytes as
# qemu-img, grows but will not shrink files, and exits with a clean error
# (no hang) when the server goes away in the middle of a convert.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io ssh-keygen ssh-agent ssh-add python3
[ -x /usr/sbin/sshd ] || { echo "SKIP: sshd not installed"; exit 77; }
qemu-img --help | grep -q ' ssh' || { echo "SKIP: qemu-img lacks ssh (qemu-block-extra)"; exit 77; }

same() { run_both out "$@"; expect_same out.q out.v "$*"; }
# fails_same ARGS...: both fail, with the same message.
fails_same() {
    same "$@"
    grep -q '^exit=0$' out.v && fail "vimg accepted: $*"
    return 0
}

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ssh-keygen -q -t ed25519 -N '' -f "$TESTDIR/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$TESTDIR/userkey"
ssh-keygen -q -t ed25519 -N '' -f "$TESTDIR/otherkey"
ssh-keygen -q -t ecdsa -N '' -f "$TESTDIR/ecdsakey"
cp "$TESTDIR/userkey.pub" "$TESTDIR/authorized_keys"
mkdir -p /run/sshd

start_sshd() {
    /usr/sbin/sshd -D -p "$port" -o ListenAddress=127.0.0.1 -h "$TESTDIR/hostkey" \
        -o PidFile="$TESTDIR/sshd.pid" -o StrictModes=no -o UsePAM=no \
        -o AuthorizedKeysFile="$TESTDIR/authorized_keys" -E "$TESTDIR/sshd.log" &
    sshd_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.05
    done
    fail "sshd did not start"
}
# Stops sshd and every connection it serves: the per-connection processes are its children.
stop_sshd() {
    local kids
    kids=$(ps -o pid= --ppid "$sshd_pid" 2>/dev/null)
    kill -9 "$sshd_pid" $kids 2>/dev/null
    wait "$sshd_pid" 2>/dev/null
}
start_sshd
on_exit 'stop_sshd'

ssh-agent -a "$TESTDIR/agent.sock" >"$TESTDIR/agent.env"
agent_pid=$(sed -n 's/^SSH_AGENT_PID=\([0-9]*\);.*/\1/p' "$TESTDIR/agent.env")
on_exit "kill $agent_pid"
export SSH_AUTH_SOCK=$TESTDIR/agent.sock
ssh-add -q "$TESTDIR/userkey" 2>/dev/null

# known_hosts is ~/.ssh/known_hosts for both tools: add one marked line, remove it on exit.
marker="vimg-test-$$-$port"
[ -d ~/.ssh ] || { mkdir -m 700 ~/.ssh; on_exit 'rmdir ~/.ssh'; }
known=~/.ssh/known_hosts
[ -e "$known" ] || { touch "$known"; on_exit "[ -s $known ] || rm -f $known"; }
on_exit "sed -i '/ $marker\$/d' $known"
set_known() {  # set_known PUBKEY_FILE | none
    sed -i "/ $marker\$/d" "$known"
    [ "$1" = none ] || echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$1") $marker" >>"$known"
}

D=$TESTDIR
BASE="ssh://127.0.0.1:$port$D"
NO="host_key_check=no"
qemu-img create -q -f raw "$D/d.raw" 4M
qemu-io -f raw -c 'write -P 0x5a 1M 1M' "$D/d.raw" >/dev/null

md5=$(ssh-keygen -l -E md5 -f "$D/hostkey.pub" | sed 's/^[0-9]* MD5:\([^ ]*\) .*/\1/')
md5_plain=${md5//:/}
sha256_b64=$(ssh-keygen -l -E sha256 -f "$D/hostkey.pub" | sed 's/^[0-9]* SHA256:\([^ ]*\) .*/\1/')
sha256=$(cut -d' ' -f2 "$D/hostkey.pub" | base64 -d | sha256sum | cut -d' ' -f1)
sha1=$(cut -d' ' -f2 "$D/hostkey.pub" | base64 -d | sha1sum | cut -d' ' -f1)

# Every host_key_check form that matches: the same info, image: line included.
set_known "$D/hostkey.pub"
for q in "" "?$NO" "?host_key_check=yes" "?host_key_check=md5:$md5" \
         "?host_key_check=md5:$md5_plain" "?host_key_check=md5:${md5_plain^^}" \
         "?host_key_check=sha1:$sha1" "?host_key_check=sha256:$sha256" "?$NO&other=1"; do
    same info "$BASE/d.raw$q"
    grep -q '^exit=0$' out.v || fail "vimg refused $q: $(head -1 out.v)"
done
same info --output=json "ssh://root@127.0.0.1:$port$D/d.raw?$NO"

# Fingerprints and known_hosts entries that do not match, and settings that mean nothing.
# The wrong sha256 differs in its first digit (a substitution such as a->b left
# the fingerprint valid for host keys whose hash has no "a").
[ "${sha256:0:1}" = 0 ] && wrong_sha256=1${sha256:1} || wrong_sha256=0${sha256:1}
for q in "host_key_check=md5:00:11" "host_key_check=sha1:${sha1:0:30}" \
         "host_key_check=sha256:$wrong_sha256" "host_key_check=sha256:$sha256_b64" \
         "host_key_check=foo" "host_key_check=foo:bar" "host_key_check=sha512:$sha256"; do
    fails_same info "$BASE/d.raw?$q"
done
set_known none
fails_same info "$BASE/d.raw"
set_known "$D/otherkey.pub"
fails_same info "$BASE/d.raw?host_key_check=yes"
grep -q 'does not match the one in known_hosts' out.v || fail "changed key not reported"
set_known "$D/ecdsakey.pub"
fails_same info "$BASE/d.raw"
set_known "$D/hostkey.pub"

# The property forms.
IO="driver=raw,file.driver=ssh,file.path=$D/d.raw"
for o in "file.host=127.0.0.1,file.port=$port,file.$NO" \
         "file.host=127.0.0.1,file.port=$port,file.user=root,file.host_key_check=md5:$md5" \
         "file.server.host=127.0.0.1,file.server.port=$port,file.host-key-check.mode=none" \
         "file.server.host=127.0.0.1,file.server.port=$port,file.host-key-check.mode=known_hosts" \
         "file.server.host=127.0.0.1,file.server.port=$port,file.host-key-check.mode=hash,file.host-key-check.type=sha1,file.host-key-check.hash=$sha1"; do
    same info --image-opts "$IO,$o"
    grep -q '^exit=0$' out.v || fail "vimg refused $o: $(head -1 out.v)"
done
for o in "file.server.host=127.0.0.1,file.host-key-check.mode=none" \
         "file.server.port=$port,file.host-key-check.mode=none" \
         "file.server.host=127.0.0.1,file.server.port=$port,file.host-key-check.mode=bogus" \
         "file.server.host=127.0.0.1,file.server.port=$port,file.host-key-check.mode=hash,file.host-key-check.type=sha1" \
         "file.server.host=127.0.0.1,file.server.port=$port,file.host-key-check.mode=hash,file.host-key-check.type=sha3,file.host-key-check.hash=00" \
         "file.server.host=127.0.0.1,file.server.port=$port,file.host-key-check.mode=hash,file.host-key-check.type=md5,file.host-key-check.hash=00"; do
    fails_same info --image-opts "$IO,$o"
done
same info "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"ssh\",\"server\":{\"host\":\"127.0.0.1\",\"port\":\"$port\"},\"path\":\"$D/d.raw\",\"host-key-check\":{\"mode\":\"none\"}}}"
fails_same info --image-opts "driver=raw,file.driver=ssh,file.server.host=127.0.0.1,file.server.port=$port,file.host-key-check.mode=none"
fails_same info --image-opts "$IO,file.host=127.0.0.1,file.port=$port,file.$NO,file.foo=1"
fails_same info --image-opts "$IO,file.server.host=127.0.0.1,file.server.port=$port,file.server.foo=1"

# Wrong user, a key the server does not know, no agent, refused connection, bad URIs.
fails_same info "ssh://nosuchuser@127.0.0.1:$port$D/d.raw?$NO"
ssh-add -q -D 2>/dev/null; ssh-add -q "$D/otherkey" 2>/dev/null
fails_same info "$BASE/d.raw?$NO"
ssh-add -q -D 2>/dev/null; ssh-add -q "$D/userkey" 2>/dev/null
SSH_AUTH_SOCK=$D/no-agent.sock fails_same info "$BASE/d.raw?$NO"
closed=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fails_same info "ssh://127.0.0.1:$closed$D/d.raw?$NO"
fails_same info "$BASE/missing.raw?$NO"
fails_same info "ssh://127.0.0.1:$port?$NO"
fails_same info "ssh:///tmp/x.raw"
fails_same create -f raw "ssh://127.0.0.1:$port/nonexistent-dir/x.raw?$NO" 1M

# create: the same files as qemu-img's, and qemu-img reads vimg's.
for fmt in raw qcow2; do
    qemu-img create -q -f $fmt "$BASE/q.$fmt?$NO" 8M
    "$VIMG" create -q -f $fmt "$BASE/v.$fmt?$NO" 8M || fail "create $fmt on ssh"
    cmp "$D/q.$fmt" "$D/v.$fmt" || fail "create -f $fmt differs from qemu-img's"
    same info "$BASE/v.$fmt?$NO"
done
qemu-img check -q -f qcow2 "$BASE/v.qcow2?$NO" || fail "qemu-img check of vimg's qcow2"

# convert to ssh (qcow2 and raw): qemu-img reads the same data back through ssh.
qemu-img create -q -f qcow2 src.qcow2 24M
qemu-io -f qcow2 -c 'write -P 0x5a 1M 3M' -c 'write -P 0x11 9M 64k' -c 'write -P 0xee 20M 2M' \
    src.qcow2 >/dev/null
head -c 6M /dev/urandom >rnd.raw
for fmt in qcow2 raw; do
    "$VIMG" convert -O $fmt src.qcow2 "$BASE/to.$fmt?$NO" 2>err.v || fail "convert to ssh: $(cat err.v)"
    [ -s err.v ] && fail "convert to ssh printed: $(cat err.v)"
    qemu-img compare -q -f qcow2 -F $fmt src.qcow2 "$BASE/to.$fmt?$NO" || fail "ssh $fmt differs"
    qemu-img convert -O $fmt src.qcow2 "$BASE/qto.$fmt?$NO"
    qemu-img compare -q -f $fmt -F $fmt "$D/to.$fmt" "$D/qto.$fmt" || fail "vimg and qemu-img $fmt differ"
done
qemu-img check -q -f qcow2 "$D/to.qcow2" || fail "qemu-img check of converted qcow2"
# One process logs in once: create, format create and convert share the connection.
logins() { grep -c '^Accepted publickey' "$TESTDIR/sshd.log"; }
n0=$(logins)
"$VIMG" convert -O qcow2 src.qcow2 "$BASE/once.qcow2?$NO" || fail "convert to ssh (once)"
[ $(($(logins) - n0)) = 1 ] || fail "convert -O qcow2 logged in $(($(logins) - n0)) times"
qemu-img compare -q -f qcow2 -F qcow2 src.qcow2 "$D/once.qcow2" || fail "once.qcow2 differs"
qemu-img check -q -f qcow2 "$D/once.qcow2" || fail "qemu-img check of once.qcow2"
same map --output=json -f qcow2 "$BASE/to.qcow2?$NO"
"$VIMG" convert -O raw rnd.raw "$BASE/rnd.raw?$NO" || fail "convert random data to ssh"
cmp rnd.raw "$D/rnd.raw" || fail "random data differs after convert to ssh"

# convert from ssh: what qemu-img wrote there, read by vimg.
for fmt in qcow2 raw; do
    "$VIMG" convert -O raw "$BASE/qto.$fmt?$NO" back.$fmt.raw || fail "convert from ssh $fmt"
    qemu-img compare -q -f raw -F qcow2 back.$fmt.raw src.qcow2 || fail "read from ssh $fmt differs"
done
"$VIMG" convert -O qcow2 "$BASE/rnd.raw?$NO" rnd.qcow2 || fail "convert random data from ssh"
qemu-img compare -q -f raw -F qcow2 rnd.raw rnd.qcow2 || fail "random data differs from ssh"
same compare "$BASE/to.qcow2?$NO" "$BASE/qto.raw?$NO"

# Writes through vimg-io land where qemu-io reads them.
"$VIMG_IO" -f raw -c 'write -P 0x42 100k 300k' -c flush "$BASE/d.raw?$NO" >/dev/null ||
    fail "vimg-io write to ssh"
qemu-io -f raw -c 'read -P 0x42 100k 300k' -c 'read -P 0x5a 1M 1M' "$D/d.raw" | grep -q '^read 1048576' ||
    fail "vimg-io's write is not where qemu-io reads it"

# resize: grow like qemu-img; shrinking and preallocation are refused alike.
qemu-img create -q -f raw "$D/r1.raw" 1M; qemu-img create -q -f raw "$D/r2.raw" 1M
qemu-img resize -q -f raw "$BASE/r1.raw?$NO" 3M
"$VIMG" resize -q -f raw "$BASE/r2.raw?$NO" 3M || fail "resize on ssh"
cmp "$D/r1.raw" "$D/r2.raw" || fail "resize differs"
fails_same resize -f raw --shrink "$BASE/r2.raw?$NO" 1M
fails_same resize -f raw --preallocation=full "$BASE/r2.raw?$NO" 4M
fails_same create -f raw "$BASE/p.raw?$NO" 1M -o preallocation=full

# Growing is lazy in vimg (the remote file gets its size at flush or close):
# the length, the zeros past the remote end, a write there and the file left
# behind are qemu-io's, with a flush and with cache=unsafe (close only).
for t in writeback unsafe; do
    qemu-img create -q -f raw "$D/g1.raw" 1M; qemu-img create -q -f raw "$D/g2.raw" 1M
    grow=(-t $t -f raw -c 'truncate 7M' -c length -c 'write -P 0x33 5M 4k' -c 'read -P 0 1M 4M'
          -c 'read -P 0x33 5M 4k' -c 'read -P 0 5124k 2044k' -c 'truncate 8000k' -c length)
    qemu-io "${grow[@]}" "$BASE/g1.raw?$NO" 2>&1 | grep -v ' ops; ' >out.q
    "$VIMG_IO" "${grow[@]}" "$BASE/g2.raw?$NO" 2>&1 | grep -v ' ops; ' >out.v
    expect_same out.q out.v "lazily grown file, cache=$t"
    grep -q '^read 2093056/2093056' out.v || fail "reads past the remote end failed: $(cat out.v)"
    cmp "$D/g1.raw" "$D/g2.raw" || fail "lazily grown file differs from qemu-io's (cache=$t)"
done
[ "$(stat -c %s "$D/g2.raw")" = 8192000 ] || fail "lazily grown file has size $(stat -c %s "$D/g2.raw")"

# The server goes away in the middle of a convert: a clean error, no hang.
# Create and convert share one login, so the data flows at once: stop the
# server as soon as some of it landed (allocated blocks, not the file size,
# which create sets first). The copy is not the source (the test runs in $D).
head -c 256M /dev/zero | tr '\0' '\132' >big.raw
timeout 60 "$VIMG" convert -O raw big.raw "$BASE/bigcopy.raw?$NO" 2>err.v & conv_pid=$!
for _ in $(seq 1000); do
    [ -e "$D/bigcopy.raw" ] && [ "$(du -k "$D/bigcopy.raw" | cut -f1)" -ge 1024 ] && break
    sleep 0.01
done
stop_sshd
wait $conv_pid; rc=$?
[ $rc = 124 ] && fail "vimg convert hung after the server went away"
[ $rc = 0 ] && fail "vimg convert succeeded with the server gone"
[ "$(wc -l <err.v)" = 1 ] && grep -q '^vimg: ' err.v || fail "unclean error: $(cat err.v)"
timeout 20 "$VIMG" info "$BASE/d.raw?$NO" 2>err.v && fail "info with no server"
grep -q "Connection refused" err.v || fail "no server: $(cat err.v)"
pass
