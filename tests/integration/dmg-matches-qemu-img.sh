#!/bin/bash
# Proves: vimg reads Apple UDIF images (the testdata sample, and images built
# here with zlib, bzip2, stored, zero-fill and ignore chunks, block tables in
# the XML plist or in a binary resource fork, the trailer not at the end) as
# MANIFEST.tsv and qemu-img read them; `info` matches qemu-img; corrupt
# trailers, plists and chunk tables and read-write opens fail with qemu-img's
# message and exit code; an LZFSE chunk fails with a message naming it.
source "$(dirname "$0")/lib.sh"
need qemu-img python3

manifest() {  # FILE.bz2 COLUMN
    awk -F'\t' -v f="$1" -v c="$2" '$1 == f { print $c }' "$SHARED/testdata/MANIFEST.tsv"
}

# Debian's qemu-img warns about its missing dmg-bz2/dmg-lzfse modules on every run.
qemu_img() { qemu-img "$@" 2> >(grep -v '^qemu: module block-block-dmg' >&2); }

n=0
check_info() {
    n=$((n + 1))
    (qemu-img info "$@" 2>&1; echo "exit=$?") | grep -v '^qemu: module block-block-dmg' |
        norm >"i$n.q"
    ("$VIMG" info "$@" 2>&1; echo "exit=$?") | norm >"i$n.v"
    expect_same "i$n.q" "i$n.v" "info $*"
}

# same_read IMG: vimg and qemu-img convert it to the same raw bytes (or both fail).
same_read() {
    local v q
    "$VIMG" convert -O raw "$1" "$1.v.raw" 2>/dev/null; v=$?
    qemu_img convert -O raw "$1" "$1.q.raw" 2>/dev/null; q=$?
    [ "$q" -lt 128 ] || q=1     # qemu-img 7.2 crashes on some of these; vimg must fail cleanly
    [ "$v" = "$q" ] || fail "$1: convert exit $v, qemu-img $q"
    [ "$v" != 0 ] || cmp "$1.v.raw" "$1.q.raw" || fail "$1: vimg and qemu-img read differently"
}

img=$(basename "$(testdata simple-dmg.dmg.bz2)")
check_info "$img"
check_info --output=json "$img"
check_info -f dmg "$img"
"$VIMG" convert -O raw "$img" s.raw || fail "convert $img"
[ "$(sha256sum <s.raw | cut -d' ' -f1)" = "$(manifest simple-dmg.dmg.bz2 5)" ] ||
    fail "$img: content differs"
cp "$img" nodmg; check_info nodmg       # probed by the .dmg suffix only, as qemu-img does
check_info "$(basename "$(testdata grub_mbr.raw.bz2)")"
check_info -f dmg grub_mbr.raw

cat >mkdmg.py <<'PY'
# mkdmg.py SRC OUT MODE(xml|rsrc) TYPES: writes a UDIF image of SRC (size a multiple of 512)
# whose chunks cycle through TYPES (comma list of zlib,bzip2,raw,zero,ignore; zero/ignore
# only where the source is all zeros).
import base64, bz2, struct, sys, zlib
src, out, mode, types = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(',')
data = open(src, 'rb').read()
assert len(data) % 512 == 0
CH = 64 * 512
body = bytearray(); tables = []
n_sect = len(data) // 512
for t_i, start in enumerate(range(0, len(data), 4 * CH)):
    part = data[start:start + 4 * CH]
    ents = []
    for k, off in enumerate(range(0, len(part), CH)):
        blk = part[off:off + CH]; ty = types[(t_i * 4 + k) % len(types)]
        if ty in ('zero', 'ignore') and any(blk): ty = 'zlib'
        if ty == 'zlib': payload, code = zlib.compress(blk, 9), 0x80000005
        elif ty == 'bzip2': payload, code = bz2.compress(blk), 0x80000006
        elif ty == 'raw': payload, code = blk, 1
        elif ty == 'zero': payload, code = b'', 0
        else: payload, code = b'', 2
        ents.append(struct.pack('>IIQQQQ', code, 0, off // 512, len(blk) // 512, len(body),
                                len(payload)))
        body += payload
    ents.append(struct.pack('>IIQQQQ', 0x7ffffffe, 0, len(part) // 512, 0, len(body), 0))
    ents.append(struct.pack('>IIQQQQ', 0xffffffff, 0, len(part) // 512, 0, 0, 0))
    hdr = b'mish' + struct.pack('>IQQQII', 1, start // 512, len(part) // 512, 0, 0, len(ents))
    hdr = hdr.ljust(200, b'\0') + struct.pack('>I', len(ents))
    tables.append(hdr + b''.join(ents))
koly = bytearray(512); koly[0:4] = b'koly'
struct.pack_into('>III', koly, 4, 4, 512, 1)
struct.pack_into('>QQ', koly, 24, 0, len(body))
if mode == 'xml':
    x = ['<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0">\n<dict>\n'
         '<key>resource-fork</key>\n<dict>\n<key>blkx</key>\n<array>\n']
    for i, t in enumerate(tables):
        b64 = base64.b64encode(t).decode()
        lines = '\n'.join('\t\t\t' + b64[j:j + 52] for j in range(0, len(b64), 52))
        x.append('<dict>\n<key>Name</key>\n<string>part %d</string>\n'
                 '<key>Data</key>\n<data>\n%s\n</data>\n</dict>\n' % (i, lines))
    x.append('</array>\n</dict>\n</dict>\n</plist>\n')
    xml = ''.join(x).encode()
    struct.pack_into('>QQ', koly, 216, len(body), len(xml))
    tail = xml
else:
    res = b''.join(struct.pack('>I', len(t)) + t for t in tables)
    rmap = bytes(30)
    fork = struct.pack('>IIII', 256, 256 + len(res), len(res), len(rmap)).ljust(256, b'\0')
    fork += res + rmap
    struct.pack_into('>QQ', koly, 40, len(body), len(fork))
    tail = fork
struct.pack_into('>Q', koly, 492, n_sect)
open(out, 'wb').write(bytes(body) + tail + bytes(koly))
PY
python3 - <<'PY'
import random
r = random.Random(11)
b = bytearray(3 * 1024 * 1024 + 7 * 512)
for i in range(0, len(b), 4096):
    if (i // 65536) % 3:
        b[i:i + 100] = r.randbytes(100)
open("src.raw", "wb").write(b)
PY
for mode in xml rsrc; do
    python3 mkdmg.py src.raw "$mode.dmg" "$mode" zlib,raw,zero,ignore,zlib
    check_info "$mode.dmg"
    same_read "$mode.dmg"
    cmp "$mode.dmg.v.raw" src.raw || fail "$mode.dmg: differs from the source"
done
# Debian's qemu-img has no bzip2 module: compare with the source instead.
python3 mkdmg.py src.raw bz.dmg xml bzip2,raw,zero
"$VIMG" convert -O raw bz.dmg bz.raw || fail "convert bz.dmg"
cmp bz.raw src.raw || fail "bz.dmg: differs from the source"

# Chunk tables, trailer and plist made bad one field at a time (dmgmod.py
# rewrites the plist of a copy of xml.dmg).
cat >dmgmod.py <<'PY'
import base64, re, struct, sys
src, dst, expr = sys.argv[1:4]
d = bytearray(open(src, "rb").read()); k = bytearray(d[-512:])
xo, xl = struct.unpack(">QQ", k[216:232])
x = bytes(d[xo:xo + xl])
tabs = [bytearray(base64.b64decode(m.group(1)))
        for m in re.finditer(rb"<data>(.*?)</data>", x, re.S)]
def ent(t, i): return list(struct.unpack(">IIQQQQ", t[204 + 40 * i:244 + 40 * i]))
def setent(t, i, e): t[204 + 40 * i:244 + 40 * i] = struct.pack(">IIQQQQ", *e)
def field(t, i, col, v): e = ent(t, i); e[col] = v; setent(t, i, e)
exec(expr)
it = iter(tabs)
x = re.sub(rb"<data>(.*?)</data>",
           lambda m: b"<data>" + base64.b64encode(next(it)) + b"</data>", x, flags=re.S)
k[224:232] = struct.pack(">Q", len(x))
a = sys.argv[4:]
for i in range(0, len(a), 3):
    b = struct.pack(a[i + 1], int(a[i + 2], 0)); k[int(a[i]):int(a[i]) + len(b)] = b
open(dst, "wb").write(d[:xo] + x + k)
PY
m=0
bad() {  # EXPR [KOLY-OFFSET FORMAT VALUE]...
    m=$((m + 1))
    python3 dmgmod.py xml.dmg "m$m.dmg" "$@"
    check_info "m$m.dmg"
    same_read "m$m.dmg"
}
bad pass
bad 'field(tabs[0], 0, 3, 131073)'              # zlib chunk sector count above the limit
bad 'field(tabs[0], 0, 5, 1 << 40)'             # chunk length above the limit
bad 'field(tabs[0], 2, 3, 1 << 40)'             # zero chunk: no sector count limit
bad 'field(tabs[0], 1, 3, 131073)'              # raw chunk sector count
bad 'field(tabs[1], 0, 0, 0x80000004)'          # ADC: warned, unreadable
bad 'field(tabs[1], 0, 0, 3); field(tabs[1], 1, 0, 9)'
bad 'field(tabs[0], 1, 0, 0x7ffffffe)'          # a comment leaves a gap
bad 'field(tabs[0], 0, 4, (1 << 64) - 1)'       # offset overflow
bad 'field(tabs[0], 0, 2, (1 << 64) - 1)'       # sector overflow
bad 'tabs[0][0:4] = b"xish"'                    # not a block table
bad 'tabs[0][200:204] = b"\xff\xff\xff\xff"'    # entry count is ignored
bad 'del tabs[0][300:]'                         # short table
bad 'pass' 492 '>Q' 100                         # sector count
bad 'pass' 492 '>Q' 0x3fffffffe00000
bad 'pass' 492 '>Q' 0x40000000000000
bad 'pass' 492 '>Q' 10000                       # past the last chunk
bad 'pass' 24 '>Q' 1000000000                   # data fork offset
bad 'pass' 216 '>Q' 100000000                   # plist offset
bad 'pass' 224 '>Q' 0                           # plist length
bad 'pass' 224 '>Q' 100                         # truncated plist
bad 'pass' 40 '>Q' 0 48 '>Q' 1                  # resource fork too short
# The trailer need not end the file: qemu-img looks in the last 1024 bytes.
for pad in 1 300 489 490 1000; do
    cp xml.dmg "pad$pad.dmg"; head -c "$pad" /dev/zero >>"pad$pad.dmg"
    check_info "pad$pad.dmg"
done
for size in 0 1 511 512; do
    head -c "$size" /dev/zero >"z$size.dmg"
    check_info "z$size.dmg"
done

# LZFSE chunks fail when read, naming the chunk type.
python3 dmgmod.py xml.dmg lz.dmg 'field(tabs[0], 0, 0, 0x80000007)'
"$VIMG" info lz.dmg >/dev/null || fail "lz.dmg does not open"
if "$VIMG" convert -O raw lz.dmg lz.raw 2>lz.err; then fail "lz.dmg read"; fi
grep -q 'LZFSE' lz.err || fail "lz.dmg: message does not name LZFSE: $(cat lz.err)"

# Read-only format: read-write opens fail as in qemu-img.
run_both rw resize -f dmg xml.dmg 2M
expect_same rw.q rw.v "resize"
pass
