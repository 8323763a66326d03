#!/bin/bash
# Benchmark: `vimg convert` against `qemu-img convert` of a 1 GiB image
# (SIZE) to remote targets: ssh (an sshd started here on a free loopback
# port, key held by an own ssh-agent), gluster (a one-node glusterd and
# volume started here, brick in the scratch directory), nbd (qemu-nbd on a
# unix socket serving a sparse raw file) and iscsi (tgtd on a free loopback
# port, a sparse file as LUN), as raw and as qcow2. Both tools convert into
# the nbd and iscsi exports with -n (vimg does not create on them; qemu-img
# would), a qcow2 made there (untimed) before each of those runs.
# The source is a local qcow2 with DATA of random data spread over it and
# holes between. The tools take turns, RUNS runs each (the machine's load
# changes less between neighbouring runs). Reports the best and the median
# wall time for each tool, the ratio of the bests vimg/qemu-img, and the
# 1-minute load average when the row was done. Goal: ratio <= 1.0 everywhere.
#
# Every libgfapi client spends about 10 s in glfs_fini when it exits
# (glusterfs issue #2606); the gluster times include that, for both tools.
#
# Usage: bench/remote-convert.sh [BUILD_DIR]   (default: build)
# Environment: TMPDIR (scratch, ~3 GiB), RUNS (default 2), SIZE (default 1G),
#              DATA (MiB of random data, default 512),
#              TARGETS (default "ssh gluster nbd iscsi").
set -u
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC_ROOT/build}
VIMG=$BUILD/tools/vimg
RUNS=${RUNS:-2}
SIZE=${SIZE:-1G}
DATA=${DATA:-512}
TARGETS=${TARGETS:-ssh gluster nbd iscsi}
command -v qemu-img >/dev/null || { echo "missing qemu-img" >&2; exit 1; }
[ -x "$VIMG" ] || { echo "vimg not built at $VIMG" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/vimg-bench.XXXXXX")
cleanup_cmds=()
cleanup() {
    local i
    for ((i = ${#cleanup_cmds[@]} - 1; i >= 0; i--)); do eval "${cleanup_cmds[$i]}" >/dev/null 2>&1; done
    rm -rf "$DIR"
}
trap cleanup EXIT

# The source: DATA MiB of random data in 4 MiB runs, one run every 8 MiB.
SRC=$DIR/src.qcow2
qemu-img create -q -f qcow2 "$SRC" "$SIZE"
head -c "${DATA}M" /dev/urandom >"$DIR/data.raw"
runs=$((DATA / 4))
cmds=()
for ((i = 0; i < runs; i++)); do
    cmds+=(-c "write -s $DIR/data.raw $((i * 8))M 4M")
done
# qemu-io -s reads its pattern from offset 0 of the file: good enough, the bytes are random.
qemu-io -f qcow2 "${cmds[@]}" "$SRC" >/dev/null || { echo "could not fill the source" >&2; exit 1; }
rm -f "$DIR/data.raw"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

setup_ssh() {
    [ -x /usr/sbin/sshd ] || { echo "sshd missing: no ssh figures" >&2; return 1; }
    local port
    port=$(free_port)
    ssh-keygen -q -t ed25519 -N '' -f "$DIR/hostkey"
    ssh-keygen -q -t ed25519 -N '' -f "$DIR/userkey"
    cp "$DIR/userkey.pub" "$DIR/authorized_keys"
    mkdir -p /run/sshd "$DIR/ssh"
    /usr/sbin/sshd -D -p "$port" -o ListenAddress=127.0.0.1 -h "$DIR/hostkey" -o UsePAM=no \
        -o StrictModes=no -o AuthorizedKeysFile="$DIR/authorized_keys" -E "$DIR/sshd.log" &
    cleanup_cmds+=("kill $!")
    ssh-agent -a "$DIR/agent.sock" >"$DIR/agent.env"
    cleanup_cmds+=("kill $(sed -n 's/^SSH_AGENT_PID=\([0-9]*\);.*/\1/p' "$DIR/agent.env")")
    export SSH_AUTH_SOCK=$DIR/agent.sock
    ssh-add -q "$DIR/userkey" 2>/dev/null
    sleep 1
    SSH_BASE="ssh://127.0.0.1:$port$DIR/ssh"
}

setup_gluster() {
    command -v glusterd >/dev/null || { echo "glusterd missing: no gluster figures" >&2; return 1; }
    (exec 3<>/dev/tcp/127.0.0.1/24007) 2>/dev/null &&
        { echo "a glusterd already runs: no gluster figures" >&2; return 1; }
    local vol=vimgbench$$
    glusterd -N --log-file="$DIR/glusterd.log" >/dev/null 2>&1 &
    cleanup_cmds+=("kill $!")
    for _ in $(seq 100); do gluster --mode=script volume list >/dev/null 2>&1 && break; sleep 0.1; done
    mkdir "$DIR/brick"
    gluster --mode=script volume create $vol "$(hostname):$DIR/brick" force >/dev/null 2>&1 || return 1
    cleanup_cmds+=("gluster --mode=script volume delete $vol")
    gluster --mode=script volume start $vol >/dev/null 2>&1 || return 1
    cleanup_cmds+=("gluster --mode=script volume stop $vol force")
    GLUSTER_BASE="gluster://127.0.0.1/$vol"
}

setup_nbd() {
    command -v qemu-nbd >/dev/null || { echo "qemu-nbd missing: no nbd figures" >&2; return 1; }
    truncate -s "$SIZE" "$DIR/nbd.img"
    truncate -s +1G "$DIR/nbd.img"      # room for qcow2 metadata
    qemu-nbd -f raw -t -k "$DIR/nbd.sock" "$DIR/nbd.img" &
    cleanup_cmds+=("kill $!")
    for _ in $(seq 100); do [ -S "$DIR/nbd.sock" ] && break; sleep 0.1; done
    NBD_URI="nbd+unix:///?socket=$DIR/nbd.sock"
}

setup_iscsi() {
    command -v tgtd >/dev/null || { echo "tgtd missing: no iscsi figures" >&2; return 1; }
    [ "$(id -u)" = 0 ] || { echo "tgtd needs root: no iscsi figures" >&2; return 1; }
    local port cp iqn=iqn.2026-11.org.vimg.bench:disk
    port=$(free_port)
    cp=$((20000 + RANDOM % 10000))      # tgtd takes at most 32767
    # From a subshell, so that this shell does not report its death.
    (tgtd -f -C "$cp" --iscsi portal="127.0.0.1:$port" >"$DIR/tgtd.log" 2>&1 &
     echo $! >"$DIR/tgtd.pid")
    cleanup_cmds+=("rm -f /var/run/tgtd/socket.$cp /var/run/tgtd/socket.$cp.lock"
                   "kill -9 $(cat "$DIR/tgtd.pid")")
    for _ in $(seq 100); do
        tgtadm -C "$cp" --lld iscsi --op show --mode target >/dev/null 2>&1 && break
        sleep 0.1
    done
    truncate -s "$SIZE" "$DIR/lun.img"
    truncate -s +1G "$DIR/lun.img"      # room for qcow2 metadata
    tgtadm -C "$cp" --lld iscsi --op new --mode target --tid 1 -T $iqn &&
        tgtadm -C "$cp" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$DIR/lun.img" &&
        tgtadm -C "$cp" --lld iscsi --op bind --mode target --tid 1 -I ALL || return 1
    ISCSI_URI="iscsi://127.0.0.1:$port/$iqn/1"
}

# secs TOOL ARGS...: the wall time of one run, "nan" if it failed.
secs() {
    local s e
    [ -z "$PREP" ] || eval "$PREP" >/dev/null 2>&1 || { echo "failed: $PREP" >&2; echo nan; return; }
    s=$(date +%s.%N)
    "$@" >/dev/null 2>"$DIR/err" || { echo "failed: $* ($(grep -v '^\[20' "$DIR/err" | head -1))" >&2; echo nan; return; }
    e=$(date +%s.%N)
    awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }'
}

# best and median of the numbers on stdin
stats() { sort -g | awk '{ v[NR] = $1 } END { printf "%s %s", v[1], v[int((NR + 1) / 2)] }'; }

# row TARGET FMT QEMU_DEST VIMG_DEST [-n]: RUNS runs of each tool, taking turns.
row() {
    local target=$1 fmt=$2 dq=$3 dv=$4 n=${5:-} i tq=() tv=() bq mq bv mv
    for ((i = 0; i < RUNS; i++)); do
        tq+=("$(secs qemu-img convert $n -O "$fmt" "$SRC" "$dq")")
        tv+=("$(secs "$VIMG" convert $n -O "$fmt" "$SRC" "$dv")")
    done
    read -r bq mq < <(printf '%s\n' "${tq[@]}" | stats)
    read -r bv mv < <(printf '%s\n' "${tv[@]}" | stats)
    printf '%-8s %-6s %9s %9s %9s %9s %7s %5s\n' "$target" "$fmt" "$bq" "$mq" "$bv" "$mv" \
        "$(awk -v a="$bv" -v b="$bq" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')" \
        "$(cut -d' ' -f1 /proc/loadavg)"
}

printf '%-8s %-6s %9s %9s %9s %9s %7s %5s\n' target fmt q-best q-median v-best v-median ratio load
for target in $TARGETS; do
    case $target in
        ssh|gluster)
            if [ $target = ssh ]; then
                setup_ssh || continue; base=$SSH_BASE; q="?host_key_check=no"
            else
                setup_gluster || continue; base=$GLUSTER_BASE; q=""
            fi
            PREP=""
            for fmt in raw qcow2; do
                row $target $fmt "$base/q.$fmt$q" "$base/v.$fmt$q"
            done ;;
        nbd|iscsi)
            if [ $target = nbd ]; then setup_nbd || continue; uri=$NBD_URI
            else setup_iscsi || continue; uri=$ISCSI_URI; fi
            PREP=""
            row $target raw "$uri" "$uri" -n
            PREP="qemu-img create -q -f qcow2 '$uri' $SIZE"
            row $target qcow2 "$uri" "$uri" -n ;;
        *) echo "unknown target $target" >&2 ;;
    esac
done
