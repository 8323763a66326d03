#!/bin/bash
# Proves: vimg's gluster protocol driver, against a one-node glusterd and a
# volume with its brick in TESTDIR, creates qcow2 files identical to
# qemu-img's and raw files of the right size, converts in and out (qemu-img
# reads what vimg wrote on the volume and vimg reads what qemu-img wrote),
# writes, zeroes, discards and maps like qemu-img on the same file, grows a
# file, takes the URI forms (gluster://, gluster+tcp://, gluster+unix://
# ?socket=) and the JSON / dotted forms with a server list whose first entry
# is dead, honours debug and logfile, and fails like qemu-img on bad URIs
# and unreachable servers.
#
# Every qemu-img spends about 10 s shutting its libgfapi connection down
# (glusterfs issue #2606; vimg leaves that to process exit), so independent
# steps run side by side.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io glusterd gluster
qemu-img --help | grep -q ' gluster' || { echo "SKIP: qemu-img lacks gluster"; exit 77; }
(exec 3<>/dev/tcp/127.0.0.1/24007) 2>/dev/null &&
    { echo "SKIP: a glusterd already listens on 24007"; exit 77; }

# libglusterfs keeps parts of its context after glfs_fini of a connection that
# failed (glusterfs_ctx_new, xlator memory accounting): not vimg's to free.
printf 'leak:libglusterfs.so\nleak:libgfapi.so\nleak:libgfrpc.so\n' >"$TESTDIR/lsan.supp"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$TESTDIR/lsan.supp:print_suppressions=0"

VOL=vimgtest$$
glusterd -N --log-file="$TESTDIR/glusterd.log" >/dev/null 2>&1 & gd_pid=$!
on_exit "kill $gd_pid; wait $gd_pid"
for _ in $(seq 100); do gluster --mode=script volume list >/dev/null 2>&1 && break; sleep 0.1; done
mkdir "$TESTDIR/brick"
gluster --mode=script volume create $VOL "$(hostname):$TESTDIR/brick" force >/dev/null 2>&1 ||
    fail "volume create"
on_exit "gluster --mode=script volume delete $VOL"
gluster --mode=script volume start $VOL >/dev/null 2>&1 || fail "volume start"
on_exit "gluster --mode=script volume stop $VOL force"
B=$TESTDIR/brick
G=gluster://127.0.0.1/$VOL

# gfapi's log lines go to stderr as qemu-img lets them; drop them before comparing.
nolog() { grep -v '^\[20[0-9-]* [0-9:.]* +0000\] [A-Z] ' "$@"; }
# qemu-img 7.2 itself dies of a signal now and then at exit with libgfapi
# (glfs_fini; vimg avoids it): its runs, never vimg's, are retried then.
qemu_died() { grep -q '^exit=1[3-9][0-9]$' "$1"; }
same() {
    local i
    for i in 1 2 3; do
        run_both out "$@"
        qemu_died out.q || break
    done
    nolog out.q >out.q.f; nolog out.v >out.v.f
    expect_same out.q.f out.v.f "$*"
}
# bg_vimg NAME ARGS...: runs vimg in the background, output in NAME.out, exit code in NAME.rc.
pids=()
bg_vimg() { local n=$1; shift; ( "$VIMG" "$@" >"$n.out" 2>&1; echo $? >"$n.rc" ) & pids+=($!); }
bg_qemu() {
    local n=$1; shift
    (
        for i in 1 2 3; do
            "$@" >"$n.out" 2>&1
            rc=$?
            # Only qemu's own tools are retried when a signal killed them.
            case $1 in qemu-img|qemu-io) [ $rc -ge 128 ] || break;; *) break;; esac
        done
        echo $rc >"$n.rc"
    ) & pids+=($!)
}
join() { wait "${pids[@]}"; pids=(); }
ok() { [ "$(cat "$1.rc")" = 0 ] || fail "$1: $(nolog "$1.out" | head -3)"; }

# Bad URIs and unreachable servers: no volume needed, both tools answer at once.
for u in "gluster://127.0.0.1/$VOL" "gluster+tcp://127.0.0.1/$VOL/a.raw?socket=/x" \
         "gluster+unix://127.0.0.1/$VOL/a.raw?socket=/x" "gluster+unix:///$VOL/a.raw" \
         "gluster+foo://127.0.0.1/$VOL/a.raw" "gluster://127.0.0.1:1/$VOL/a.raw"; do
    same info "$u"
    grep -q '^exit=0$' out.v && fail "vimg accepted $u"
done
same info --image-opts "driver=raw,file.driver=gluster,file.volume=$VOL,file.path=a.raw"
same info --image-opts "driver=raw,file.driver=gluster,file.volume=$VOL,file.path=a.raw,file.server.0.type=tcp,file.server.0.host=127.0.0.1"
same create -f raw "$G/x.raw" 1M -o help

qemu-img create -q -f qcow2 src.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x5a 1M 3M' -c 'write -P 0x11 9M 64k' -c 'write -P 0xee 14M 1M' \
    src.qcow2 >/dev/null

# Round 1, side by side: create qcow2 with both tools, raw with vimg, convert to the volume.
bg_qemu qc qemu-img create -q -f qcow2 "$G/q.qcow2" 16M
bg_vimg vc create -q -f qcow2 "$G/v.qcow2" 16M
bg_vimg vr create -q -f raw "$G/v.raw" 16M
bg_vimg cv convert -O qcow2 src.qcow2 "$G/conv.qcow2"
bg_vimg cr convert -O raw src.qcow2 "$G/conv.raw"
join
for n in qc vc vr cv cr; do ok $n; done
cmp "$B/q.qcow2" "$B/v.qcow2" || fail "qcow2 created on gluster differs from qemu-img's"
[ "$(stat -c %s "$B/v.raw")" = 16777216 ] || fail "raw created with the wrong size"
cmp -n 16777216 "$B/v.raw" /dev/zero || fail "new raw file is not zero"
qemu-img check -q -f qcow2 "$B/conv.qcow2" || fail "qemu-img check of converted qcow2"
qemu-img compare -q -f qcow2 -F qcow2 src.qcow2 "$B/conv.qcow2" || fail "converted qcow2 differs"
qemu-img compare -q -f qcow2 -F raw src.qcow2 "$B/conv.raw" || fail "converted raw differs"

# Round 2: qemu-img reads vimg's image through gluster; qemu-io writes into qemu-img's;
# vimg-io writes, zeroes and discards; the dead-first server list and gluster+unix.
DEAD="{\"type\":\"tcp\",\"host\":\"127.0.0.1\",\"port\":\"1\"}"
LIVE="{\"type\":\"tcp\",\"host\":\"127.0.0.1\",\"port\":\"24007\"}"
UNIX="{\"type\":\"unix\",\"socket\":\"/var/run/glusterd.socket\"}"
JS="json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"gluster\",\"volume\":\"$VOL\",\"path\":\"conv.qcow2\",\"server\":[$DEAD,$LIVE,$UNIX]}}"
bg_qemu qcmp qemu-img compare -f qcow2 -F qcow2 src.qcow2 "$G/conv.qcow2"
bg_qemu qio qemu-io -f qcow2 -c 'write -P 0x33 2M 2M' -c 'write -P 0x44 12M 512k' "$G/q.qcow2"
bg_qemu vio "$VIMG_IO" -f raw -c 'write -P 0x77 0 4M' -c 'write -z 1M 1M' -c 'discard 2M 1M' \
    -c 'write -P 0x88 8M 64k' -c flush "$G/v.raw"
bg_vimg dead convert -O raw "$JS" dead.raw
bg_vimg unix info --image-opts "driver=qcow2,file.driver=gluster,file.filename=gluster+unix:///$VOL/conv.qcow2?socket=/var/run/glusterd.socket,file.debug=9,file.logfile=$TESTDIR/gfapi.log"
bg_vimg grow resize -q -f raw "gluster+tcp://127.0.0.1:24007/$VOL/conv.raw" 20M
join
for n in qcmp qio vio dead unix grow; do ok $n; done
grep -q 'Images are identical' qcmp.out || fail "qemu-img compare through gluster: $(cat qcmp.out)"
qemu-img compare -q -f raw -F qcow2 dead.raw src.qcow2 || fail "read through dead-first server list"
grep -q '^virtual size: 16 MiB' unix.out || fail "gluster+unix info: $(nolog unix.out)"
grep -q '\] T \[' "$TESTDIR/gfapi.log" || fail "debug=9 did not reach the logfile"
[ "$(stat -c %s "$B/conv.raw")" = 20971520 ] || fail "resize on gluster"
qemu-io -f raw -c 'read -P 0x77 0 1M' -c 'read -P 0 1M 2M' -c 'read -P 0x77 3M 1M' \
    -c 'read -P 0x88 8M 64k' "$B/v.raw" | grep -c '^read' | grep -q '^4$' ||
    fail "vimg-io's writes, zeroes and discards are not where qemu-io reads them"

# Round 3: vimg reads what qemu-io wrote; info and map match qemu-img's.
bg_vimg back convert -O raw "$G/q.qcow2" back.raw
bg_vimg vmap map --output=json -f raw "$G/v.raw"
bg_qemu qmap qemu-img map --output=json -f raw "$G/v.raw"
bg_vimg vinfo info "$G/conv.qcow2"
bg_qemu qinfo qemu-img info "$G/conv.qcow2"
join
for n in back vmap qmap vinfo qinfo; do ok $n; done
qemu-img compare -q -f raw -F qcow2 back.raw "$B/q.qcow2" || fail "vimg read qemu-io's writes wrong"
nolog vmap.out >vmap.f; nolog qmap.out >qmap.f; expect_same qmap.f vmap.f "map on gluster"
nolog vinfo.out >vinfo.f; nolog qinfo.out >qinfo.f; expect_same qinfo.f vinfo.f "info on gluster"
pass
