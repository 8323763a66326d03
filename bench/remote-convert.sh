#!/bin/bash
# Benchmark: `vimg convert` against `qemu-img convert` of a 1 GiB image
# (SIZE) to remote targets: ssh (an sshd started here on a free loopback
# port, key held by an own ssh-agent) and gluster (a one-node glusterd and
# volume started here, brick in the scratch directory), as raw and as qcow2.
# The source is a local qcow2 with DATA of random data spread over it and
# holes between. Reports the best wall time of RUNS runs for each tool and
# the ratio vimg/qemu-img. Goal: ratio <= 1.0 everywhere.
#
# Every libgfapi client spends about 10 s in glfs_fini when it exits
# (glusterfs issue #2606); the gluster times include that, for both tools.
#
# Usage: bench/remote-convert.sh [BUILD_DIR]   (default: build)
# Environment: TMPDIR (scratch, ~3 GiB), RUNS (default 2), SIZE (default 1G),
#              DATA (MiB of random data, default 512), TARGETS (default "ssh gluster").
set -u
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC_ROOT/build}
VIMG=$BUILD/tools/vimg
RUNS=${RUNS:-2}
SIZE=${SIZE:-1G}
DATA=${DATA:-512}
TARGETS=${TARGETS:-ssh gluster}
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

# best_secs TOOL ARGS...: the best wall time over RUNS runs.
best_secs() {
    local best="" s e t i
    for ((i = 0; i < RUNS; i++)); do
        s=$(date +%s.%N)
        "$@" >/dev/null 2>"$DIR/err" || { echo "failed: $* ($(grep -v '^\[20' "$DIR/err" | head -1))" >&2; echo nan; return; }
        e=$(date +%s.%N)
        t=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }')
        if [ -z "$best" ] || awk -v t="$t" -v b="$best" 'BEGIN { exit !(t < b) }'; then best=$t; fi
    done
    echo "$best"
}

printf '%-8s %-6s %10s %10s %7s\n' target fmt qemu-img vimg ratio
for target in $TARGETS; do
    case $target in
        ssh) setup_ssh || continue; base=$SSH_BASE; q="?host_key_check=no" ;;
        gluster) setup_gluster || continue; base=$GLUSTER_BASE; q="" ;;
        *) echo "unknown target $target" >&2; continue ;;
    esac
    for fmt in raw qcow2; do
        tq=$(best_secs qemu-img convert -O $fmt "$SRC" "$base/q.$fmt$q")
        tv=$(best_secs "$VIMG" convert -O $fmt "$SRC" "$base/v.$fmt$q")
        printf '%-8s %-6s %10s %10s %7s\n' "$target" "$fmt" "$tq" "$tv" \
            "$(awk -v a="$tv" -v b="$tq" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')"
    done
done
