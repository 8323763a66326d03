#!/bin/bash
# Proves: vimg's iscsi driver, against a real target (tgtd on a free loopback
# port, started and killed here), opens the same URLs and --image-opts as
# qemu-img and prints the same `info` (image: json:{...} included), `map` and
# `check`; creates qcow2 and raw images on LUNs and converts to and from them
# with the bytes qemu-img sees; takes CHAP credentials from the URL, from
# LIBISCSI_CHAP_* and from the VIMG_ISCSI_CONFIG file ([iscsi] and
# [iscsi "target"] sections) and fails a wrong password with qemu-img's
# message; logs in under the initiator-name given (an initiator ACL lets only
# that name in); negotiates CRC32C header digests; reads CD-ROM (MMC) LUNs
# whose writes the target refuses; and ends with a clean error, not a hang,
# when the LUN is deleted or the target killed under it, or with timeout= when
# the target stops answering.
source "$(dirname "$0")/lib.sh"
# libiscsi keeps a reconnect's login PDUs when the target vanishes under it
# (seen once under ASan in the killed-target step): not vimg's to free.
printf 'leak:libiscsi.so\n' >"$TESTDIR/lsan.supp"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$TESTDIR/lsan.supp:print_suppressions=0"
need tgtd tgtadm qemu-img qemu-io python3
[ "$(id -u)" = 0 ] || { echo "SKIP: tgtd needs root"; exit 77; }
"$VIMG" --help | grep -qw iscsi || { echo "SKIP: vimg built without libiscsi"; exit 77; }
qemu-img --help | grep -qw iscsi || { echo "SKIP: qemu-img without iscsi (qemu-block-extra)"; exit 77; }

same() { run_both out "$@"; expect_same out.q out.v "$*"; }
same_check_json() { same check --output=json "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_tgtd NAME: a tgtd on a free port with its own control port; sets
# ${NAME}_PORT, ${NAME}_CP and ${NAME}_PID.
start_tgtd() {
    local port cp pid
    port=$(free_port)
    cp=$((20000 + RANDOM % 10000))   # tgtd takes at most 32767
    # Started from a subshell, so that killing it later is no job of this shell.
    (tgtd -f -C "$cp" --iscsi portal="127.0.0.1:$port" >"$TESTDIR/$1.log" 2>&1 &
     echo $! >"$TESTDIR/$1.pid")
    pid=$(cat "$TESTDIR/$1.pid")
    on_exit "kill -9 $pid; sleep 0.2; rm -f /var/run/tgtd/socket.$cp /var/run/tgtd/socket.$cp.lock"
    for _ in $(seq 300); do
        tgtadm -C "$cp" --lld iscsi --op show --mode target >/dev/null 2>&1 && break
        sleep 0.05
    done
    tgtadm -C "$cp" --lld iscsi --op show --mode target >/dev/null 2>&1 ||
        fail "tgtd did not start: $(cat "$TESTDIR/$1.log")"
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
        sleep 0.05
    done
    eval "${1}_PORT=$port ${1}_CP=$cp ${1}_PID=$pid"
}

start_tgtd T
adm() { tgtadm -C "$T_CP" --lld iscsi "$@" || fail "tgtadm $*"; }
new_target() {  # TID IQN
    adm --op new --mode target --tid "$1" -T "$2"
}
new_lun() {     # TID LUN FILE [tgtadm options]
    local tid=$1 lun=$2 file=$3; shift 3
    adm --op new --mode logicalunit --tid "$tid" --lun "$lun" -b "$file" "$@"
}
bind_all() { adm --op bind --mode target --tid "$1" -I ALL; }

P="127.0.0.1:$T_PORT"
IQN=iqn.2026-11.org.vimg.test
truncate -s 64M thin.img
truncate -s 32M thick.img
truncate -s 16M chap.img
truncate -s 16M acl.img
truncate -s 32M digest.img
head -c 4M /dev/urandom >cd.iso
new_target 1 "$IQN:disk"
new_lun 1 1 "$TESTDIR/thin.img"
adm --op update --mode logicalunit --tid 1 --lun 1 --params thin_provisioning=1
new_lun 1 2 "$TESTDIR/thick.img"
bind_all 1
new_target 2 "$IQN:chap"
new_lun 2 1 "$TESTDIR/chap.img"
bind_all 2
adm --op new --mode account --user alice --password secret-pass1
adm --op bind --mode account --tid 2 --user alice
new_target 3 "$IQN:cd"
new_lun 3 1 "$TESTDIR/cd.iso" --device-type cd
bind_all 3
new_target 4 "$IQN:acl"
new_lun 4 1 "$TESTDIR/acl.img"
adm --op bind --mode target --tid 4 --initiator-name "$IQN:vimg-initiator"
new_target 5 "$IQN:digest"
new_lun 5 1 "$TESTDIR/digest.img"
bind_all 5
adm --op update --mode target --tid 5 --name HeaderDigest --value CRC32C

THIN="iscsi://$P/$IQN:disk/1"
THICK="iscsi://$P/$IQN:disk/2"
CHAP="iscsi://$P/$IQN:chap/1"
CD="iscsi://$P/$IQN:cd/1"
ACL="iscsi://$P/$IQN:acl/1"
DIGEST="iscsi://$P/$IQN:digest/1"

# A source image with data, a zero cluster and holes.
qemu-img create -q -f qcow2 src.qcow2 24M
qemu-io -f qcow2 -c 'write -P 0xab 0 3M' -c 'write -P 0x11 10M 5M' -c 'write -z 16M 1M' \
    -c 'write -P 0x22 23M 1M' src.qcow2 >/dev/null

# info, map on the raw LUNs; thin provisioning shows holes through GET LBA STATUS.
"$VIMG" convert -n -f qcow2 -O raw src.qcow2 "$THIN" || fail "convert to the thin LUN"
"$VIMG" convert -n -f qcow2 -O raw src.qcow2 "$THICK" || fail "convert to the thick LUN"
qemu-img compare -f qcow2 src.qcow2 -F raw "$THIN" >/dev/null || fail "thin LUN differs from the source"
qemu-img convert -f qcow2 -O raw src.qcow2 src.raw
cmp -n 24M thick.img src.raw || fail "thick LUN's backing file differs from the source"
for u in "$THIN" "$THICK"; do
    same info "$u"
    same info --output=json "$u"
    same info -f raw "$u"
    same map --output=json -f raw "$u"
    same map -f raw "$u"
    same check -f raw "$u"
done
qemu-img map --output=json -f raw "$THIN" | grep -q '"zero": true, "data": false' ||
    fail "the thin LUN has no hole after convert (WRITE SAME/UNMAP unused?)"

# Zero writes (WRITE SAME, with UNMAP when allowed) and discards (UNMAP) leave
# the thin LUN mapped as the same ops through qemu-io leave it.
IO_OPS=(-c 'write -P 0x61 0 8M' -c 'discard 1M 1M' -c 'write -z -u 3M 1M' -c 'write -z 5M 1M'
        -c 'discard 6M 100k' -c 'write -z -u 7M 4k' -c 'flush')
for tool in qemu-io "$VIMG_IO"; do
    qemu-io -f raw -c 'write -z -u 0 64M' "$THIN" >/dev/null
    "$tool" -f raw "${IO_OPS[@]}" "$THIN" >/dev/null || fail "$tool ${IO_OPS[*]}"
    qemu-img map --output=json -f raw "$THIN" >"map.$(basename "$tool")"
    qemu-img convert -f raw -O raw "$THIN" "data.$(basename "$tool")"
done
expect_same map.qemu-io map.vimg-io "map after zero writes and discards"
cmp data.qemu-io data.vimg-io || fail "data after zero writes and discards differs"
"$VIMG" convert -n -f qcow2 -O raw src.qcow2 "$THIN" || fail "convert to the thin LUN"

# A LUN cannot change size: qemu-img's answers.
same resize -f raw "$THICK" +1M
same resize -f raw "$THICK" 32M
same resize --shrink -f raw "$THICK" 16M

# The --image-opts form, and its errors.
OPTS="driver=raw,file.driver=iscsi,file.portal=$P,file.target=$IQN:disk"
for o in "file.transport=tcp,file.lun=1" "file.transport=tcp,file.lun=2,file.timeout=5" \
         "file.lun=1" "file.transport=udp,file.lun=1" \
         "file.transport=tcp,file.lun=1,file.header-digest=bogus" \
         "file.transport=tcp,file.lun=1,file.header-digest=none" \
         "file.transport=tcp,file.lun=1,file.header-digest=CRC32C" \
         "file.transport=tcp,file.lun=1,file.timeout=soon" "file.transport=tcp,file.lun=x" \
         "file.transport=tcp,file.lun=1,file.user=alice" \
         "file.transport=tcp,file.lun=1,file.user=a,file.password=b,file.password-secret=s" \
         "file.transport=tcp,file.lun=1,file.initiator-name=$IQN:other" \
         "file.transport=tcp,file.lun=1,file.bogus=1"; do
    same info --image-opts "$OPTS,$o"
done

# Opening what is not there: qemu-img's messages.
same info "iscsi://$P/$IQN:disk/7"
same info "iscsi://$P/$IQN:nosuch/1"
same info "iscsi://$P/$IQN:disk"
same info "iscsi://127.0.0.1:$(free_port)/$IQN:disk/1"

# create and convert with qcow2 on a LUN; qemu-img reads and checks it.
same create -f qcow2 "$THIN" 32M
"$VIMG" create -f qcow2 "$THIN" 32M >/dev/null || fail "create qcow2 on a LUN"
"$VIMG_IO" -f qcow2 -c 'write -P 0x5c 1M 2M' -c 'write -P 0x3d 30M 64k' "$THIN" >/dev/null ||
    fail "vimg-io write to qcow2 on a LUN"
qemu-io -f qcow2 -c 'read -P 0x5c 1M 2M' -c 'read -P 0x3d 30M 64k' -c 'read -P 0 0 1M' \
    "$THIN" | grep -q "^read 65536/65536" || fail "qemu-io does not read what vimg wrote"
same check -f qcow2 "$THIN"
same_check_json -f qcow2 "$THIN"
same info -f qcow2 "$THIN"
same map -f qcow2 --output=json "$THIN"
"$VIMG" convert -f qcow2 -O qcow2 src.qcow2 "$THIN" || fail "convert to qcow2 on a LUN"
qemu-img compare -f qcow2 src.qcow2 -F qcow2 "$THIN" >/dev/null || fail "qcow2 on the LUN differs"
same_check_json -f qcow2 "$THIN"
"$VIMG" convert -f qcow2 -O qcow2 "$THIN" back.qcow2 || fail "convert from qcow2 on a LUN"
qemu-img compare back.qcow2 src.qcow2 >/dev/null || fail "qcow2 read back from the LUN differs"
"$VIMG" convert -f raw -O raw "$THICK" back.raw || fail "convert from a raw LUN"
qemu-img compare -f raw back.raw -F raw "$THICK" >/dev/null || fail "raw LUN read back differs"
same create -f raw "$THICK" 64M
same create -f raw -o preallocation=full "$THICK" 16M
same create -f raw "iscsi://$P/$IQN:disk/7" 1M

# CHAP: URL, environment, config file; a wrong password fails as in qemu-img.
same info "iscsi://alice%secret-pass1@$P/$IQN:chap/1"
same info "iscsi://alice%wrong@$P/$IQN:chap/1"
same info "$CHAP"
LIBISCSI_CHAP_USERNAME=alice LIBISCSI_CHAP_PASSWORD=secret-pass1 run_both out info "$CHAP"
expect_same out.q out.v "CHAP from the environment"
grep -q "virtual size: 16 MiB" out.v || fail "CHAP from the environment did not log in"
same info --object secret,id=pw,data=secret-pass1 --image-opts \
    "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=$P,file.target=$IQN:chap,file.lun=1,file.user=alice,file.password-secret=pw"
cat >iscsi.conf <<EOF
# The manual's -readconfig format.
[iscsi]
  user = "alice"
  password = "not-this-one"
[iscsi "$IQN:chap"]
  user = "alice"
  password = "secret-pass1"
  header-digest = "NONE"
EOF
VIMG_ISCSI_CONFIG=iscsi.conf "$VIMG" info "$CHAP" >out.v 2>&1 ||
    fail "CHAP from the config file's target section: $(cat out.v)"
sed -i 's/^\[iscsi "/[iscsi "x/' iscsi.conf
VIMG_ISCSI_CONFIG=iscsi.conf "$VIMG" info "$CHAP" >out.v 2>&1 &&
    fail "the [iscsi] section's wrong password was not used"
grep -q "Authentication failure" out.v || fail "wrong CHAP: $(cat out.v)"
printf '[iscsi]\n  bogus = "1"\n' >bad.conf
VIMG_ISCSI_CONFIG=bad.conf "$VIMG" info "$THICK" >out.v 2>&1 && fail "bad config accepted"
grep -q "bad.conf:2: Invalid parameter 'bogus'" out.v || fail "bad config: $(cat out.v)"

# initiator-name: only the bound name gets in, from an option or the config file.
same info "$ACL"
same info --image-opts "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=$P,file.target=$IQN:acl,file.lun=1,file.initiator-name=$IQN:vimg-initiator"
printf '[iscsi]\n  initiator-name = "%s"\n' "$IQN:vimg-initiator" >init.conf
VIMG_ISCSI_CONFIG=init.conf "$VIMG" info "$ACL" >out.v 2>&1 ||
    fail "initiator-name from the config file: $(cat out.v)"

# Header digest on: the target answers CRC32C, and data crosses intact.
LIBISCSI_DEBUG=9 "$VIMG" info --image-opts \
    "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=$P,file.target=$IQN:digest,file.lun=1,file.header-digest=crc32c" \
    2>&1 | grep -q "HeaderDigest=CRC32C" || fail "CRC32C header digest not negotiated"
printf '[iscsi "%s"]\n  header-digest = "CRC32C"\n' "$IQN:digest" >digest.conf
LIBISCSI_DEBUG=9 VIMG_ISCSI_CONFIG=digest.conf "$VIMG" info "$DIGEST" 2>&1 |
    grep -q "HeaderDigest=CRC32C" || fail "header-digest from the config file not used"
VIMG_ISCSI_CONFIG=digest.conf "$VIMG" convert -n -f qcow2 -O raw src.qcow2 "$DIGEST" ||
    fail "convert over a digest session"
cmp -n 24M digest.img src.raw || fail "data written over a digest session differs"

# CD-ROM LUN: 2048-byte blocks, read-only at the target.
same info "$CD"
same info --output=json "$CD"
"$VIMG" convert -f raw -O raw "$CD" cd.out 2>/dev/null || fail "convert from a CD-ROM LUN"
cmp cd.out cd.iso || fail "CD-ROM LUN reads differ from the ISO"
# A read smaller than a block goes through the core's alignment.
qemu-io -f raw -c 'read -v 3000 100' "$CD" 2>/dev/null | grep '^[0-9a-f]*:' >out.q
"$VIMG_IO" -f raw -c 'read -v 3000 100' "$CD" 2>/dev/null | grep '^[0-9a-f]*:' >out.v
[ -s out.q ] || fail "qemu-io read nothing from the CD-ROM LUN"
expect_same out.q out.v "unaligned read from a CD-ROM LUN"
qemu-io -f raw -c 'write 0 512' "$CD" >out.q.raw 2>&1; echo "exit=$?" >>out.q.raw
"$VIMG_IO" -f raw -c 'write 0 512' "$CD" >out.v.raw 2>&1; echo "exit=$?" >>out.v.raw
sed 's/^qemu-io:/TOOL:/' out.q.raw >out.q; sed 's/^vimg-io:/TOOL:/' out.v.raw >out.v
expect_same out.q out.v "write to a CD-ROM LUN"
cmp cd.out cd.iso || fail "a refused write changed the CD-ROM"

# A LUN deleted under an open image: the next write fails as in qemu-io; the
# flush at close warns too, except with cache=unsafe (convert's target mode).
for cache in writeback unsafe; do
    for tool in qemu-io "$VIMG_IO"; do
        adm --op new --mode logicalunit --tid 1 --lun 3 -b "$TESTDIR/thick.img"
        ( sleep 1; tgtadm -C "$T_CP" --lld iscsi --op delete --mode logicalunit --tid 1 --lun 3 ) &
        rm_pid=$!
        timeout 60 "$tool" -t "$cache" -f raw -c 'write 0 64k' -c 'sleep 3000' \
            -c 'write 64k 64k' "iscsi://$P/$IQN:disk/3" >out.raw 2>&1
        echo "exit=$?" >>out.raw
        wait $rm_pid
        sed -e 's/^qemu-io:/TOOL:/; s/^vimg-io:/TOOL:/' -e '/ops; /d' out.raw >"out.$(basename "$tool")"
    done
    expect_same out.qemu-io out.vimg-io "write to a deleted LUN, cache=$cache"
    grep -q "LOGICAL_UNIT_NOT_SUPPORTED" out.vimg-io || fail "deleted LUN: $(cat out.vimg-io)"
done

# A target killed under a convert: an error within seconds, no hang (qemu-img hangs here).
start_tgtd K
tgtadm -C "$K_CP" --lld iscsi --op new --mode target --tid 1 -T "$IQN:kill" || fail "tgtadm"
truncate -s 64M kill.img
tgtadm -C "$K_CP" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$TESTDIR/kill.img" ||
    fail "tgtadm"
tgtadm -C "$K_CP" --lld iscsi --op bind --mode target --tid 1 -I ALL || fail "tgtadm"
# A target that stops answering: timeout=1 fails the write instead of waiting forever.
( sleep 1; kill -STOP "$K_PID" ) &
stop_pid=$!
start=$SECONDS
timeout 60 "$VIMG_IO" --image-opts -c 'write 0 64k' -c 'sleep 2000' -c 'write 64k 64k' \
    "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:$K_PORT,file.target=$IQN:kill,file.lun=1,file.timeout=1" \
    >out.v 2>&1
rc=$?
wait $stop_pid
kill -CONT "$K_PID"
[ $rc = 124 ] && fail "timeout=1 did not end a request to a stopped target"
grep -q "write failed: Connection timed out" out.v || fail "stopped target: $(cat out.v)"
[ $((SECONDS - start)) -lt 30 ] || fail "timeout=1 took $((SECONDS - start)) s"

( sleep 1; kill -9 "$K_PID" ) &
kill_pid=$!
start=$SECONDS
timeout 60 "$VIMG_IO" -f raw -c 'write 0 64k' -c 'sleep 3000' -c 'write 64k 64k' -c 'flush' \
    "iscsi://127.0.0.1:$K_PORT/$IQN:kill/1" >out.v 2>&1
rc=$?
wait $kill_pid
[ $rc = 124 ] && fail "vimg-io hangs when the target dies"
[ $rc = 1 ] || fail "write after the target died: exit $rc: $(cat out.v)"
grep -q "write failed: Input/output error" out.v || fail "dead target: $(cat out.v)"
[ $((SECONDS - start)) -lt 30 ] || fail "dead target noticed only after $((SECONDS - start)) s"

pass
