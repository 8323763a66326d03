#!/bin/bash
# Benchmark: `vimg convert -O raw` against `qemu-img convert -O raw` reading a
# 1 GiB image with mixed data (a quarter zeros, a quarter random, half
# compressible text-like blocks) in each of the formats qed, qcow, vdi,
# parallels (written by qemu-img), bochs (bximage -func=convert), cloop
# (create_compressed_fs, 64 KiB blocks) and dmg (a UDIF image with 1 MiB
# zlib chunks, zero chunks and raw chunks, written here: Debian has no dmg
# writer). Reports each tool's best wall and CPU time over RUNS interleaved
# runs and the ratio vimg/qemu-img. Goals: <= 1.0x for every format,
# <= 0.6x for dmg and cloop, whose chunks vimg decompresses in parallel.
#
# Usage: bench/readonly-formats.sh [BUILD_DIR] [FORMAT...]   (default: build, all)
# Environment: TMPDIR (about 3 GiB of scratch files), RUNS (default 3).
# Timings are warm-cache: each image is read once before the first run.
set -eu
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC_ROOT/build}
[ $# -gt 0 ] && shift
FORMATS=("$@")
[ ${#FORMATS[@]} -gt 0 ] || FORMATS=(qed qcow vdi parallels bochs cloop dmg)
VIMG=$BUILD/tools/vimg
RUNS=${RUNS:-3}
for tool in qemu-img python3 bximage create_compressed_fs; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$VIMG" ] || { echo "vimg not built at $VIMG" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/vimg-bench.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
SRC=$DIR/src.raw

python3 - "$SRC" <<'EOF'
import os, random, sys
MiB = 1 << 20
rng = random.Random(7)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
         for _ in range(4096)]
text = bytearray()
while len(text) < MiB:
    text += rng.choice(words) + b" "
text = bytes(text[:MiB])
with open(sys.argv[1], "wb") as f:
    for i in range(1024):
        kind = i % 4
        if kind == 0:
            f.write(bytes(MiB))
        elif kind == 1:
            f.write(os.urandom(MiB))
        else:
            k = (i * 7919) % MiB
            f.write(text[k:] + text[:k])
EOF

# A UDIF image: data fork of chunks, XML plist with one mish table, koly trailer.
make_dmg() {
    python3 - "$1" "$2" <<'EOF'
import base64, struct, sys, zlib
src, dst = sys.argv[1], sys.argv[2]
SECT, CHUNK = 512, 1 << 20
entries, data_off = [], 0
with open(src, "rb") as f, open(dst, "wb") as out:
    i = 0
    while True:
        block = f.read(CHUNK)
        if not block:
            break
        n = len(block) // SECT
        if block.count(0) == len(block):
            entries.append((0, i * 2048, n, data_off, 0))
        else:
            z = zlib.compress(block, 6)
            kind, payload = (0x80000005, z) if len(z) < len(block) else (1, block)
            out.write(payload)
            entries.append((kind, i * 2048, n, data_off, len(payload)))
            data_off += len(payload)
        i += 1
    sectors = sum(e[2] for e in entries)
    mish = bytearray(b"mish" + struct.pack(">IQQQII", 1, 0, sectors, 0, 2048, 0))
    mish += bytes(24) + struct.pack(">II", 2, 32) + bytes(128) + struct.pack(">I", len(entries) + 1)
    for kind, start, n, off, length in entries:
        mish += struct.pack(">IIQQQQ", kind, 0, start, n, off, length)
    mish += struct.pack(">IIQQQQ", 0xffffffff, 0, sectors, 0, data_off, 0)
    plist = (b'<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0">\n<dict>\n'
             b"<key>resource-fork</key>\n<dict>\n<key>blkx</key>\n<array>\n<dict>\n"
             b"<key>Data</key>\n<data>\n" + base64.encodebytes(bytes(mish)) +
             b"</data>\n<key>Name</key>\n<string>whole disk</string>\n</dict>\n"
             b"</array>\n</dict>\n</dict>\n</plist>\n")
    xml_off = data_off
    out.write(plist)
    koly = bytearray(512)
    koly[0:4] = b"koly"
    struct.pack_into(">II", koly, 4, 4, 512)
    struct.pack_into(">QQQ", koly, 24, 0, data_off, 0)
    struct.pack_into(">QQ", koly, 216, xml_off, len(plist))
    struct.pack_into(">IQ", koly, 488, 1, sectors)
    out.write(koly)
EOF
}

make_image() {  # FORMAT PATH
    case $1 in
    bochs) bximage -func=convert -imgmode=growing -q "$SRC" "$2" >/dev/null 2>&1 ;;
    cloop) create_compressed_fs -B 65536 -L 6 -q "$SRC" "$2" >/dev/null 2>&1 ;;
    dmg) make_dmg "$SRC" "$2" ;;
    *) qemu-img convert -f raw -O "$1" "$SRC" "$2" ;;
    esac
}

min() { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a < b) ? a : b }'; }

printf '%-10s %10s %10s %10s %10s %8s %8s\n' format qemu-wall vimg-wall qemu-cpu vimg-cpu \
    wall-x cpu-x
for fmt in "${FORMATS[@]}"; do
    img=$DIR/img.$fmt
    make_image "$fmt" "$img"
    cat "$img" >/dev/null
    qemu-img convert -f "$fmt" -O raw "$img" "$DIR/q.raw"
    "$VIMG" convert -f "$fmt" -O raw "$img" "$DIR/v.raw"
    cmp "$DIR/q.raw" "$DIR/v.raw" || { echo "$fmt: vimg and qemu-img read differently" >&2; exit 1; }
    declare -A WALL=() CPU=()
    for ((round = 0; round < RUNS; round++)); do
        for tool in qemu-img "$VIMG"; do
            rm -f "$DIR/out.raw"
            /usr/bin/time -f "%e %U %S" -o "$DIR/time" "$tool" convert -f "$fmt" -O raw "$img" \
                "$DIR/out.raw" >/dev/null 2>&1 || { echo "$tool failed on $fmt" >&2; exit 1; }
            read -r wall user sys <"$DIR/time"
            key=$(basename "$tool")
            WALL[$key]=$(min "$wall" "${WALL[$key]:-}")
            CPU[$key]=$(min "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" "${CPU[$key]:-}")
        done
    done
    awk -v f="$fmt" -v qw="${WALL[qemu-img]}" -v vw="${WALL[vimg]}" -v qc="${CPU[qemu-img]}" \
        -v vc="${CPU[vimg]}" 'BEGIN {
            printf "%-10s %10.2f %10.2f %10.2f %10.2f %7.2fx %7.2fx\n", f, qw, vw, qc, vc,
                   (qw > 0 ? vw / qw : 0), (qc > 0 ? vc / qc : 0) }'
    rm -f "$img" "$DIR"/*.raw.tmp "$DIR/q.raw" "$DIR/v.raw" "$DIR/out.raw"
done
