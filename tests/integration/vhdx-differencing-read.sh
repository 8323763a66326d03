#!/bin/bash
# Proves: differencing VHDX images (HAS_PARENT) read with their parent, which
# qemu-img 7.2 refuses. A child is crafted per MS-VHDX (the Python generator
# below: headers and region table with CRC32C, metadata with a VHDX parent
# locator, BAT with payload and sector bitmap entries) over a parent made by
# qemu-img and written by qemu-io, with NOT_PRESENT, FULLY_PRESENT, ZERO and
# PARTIALLY_PRESENT blocks. libvhdi (pyvhdi, with set_parent) reads the
# chain: its content is the expected result, and agrees with the generator's
# own model. vimg convert gives the same bytes; compare agrees; info names the
# parent; map separates this layer from the parent's; absolute_win32_path is
# used when relative_path is stale; a missing parent, a child naming itself
# and locator entries outside the item fail with a one-line message; writes
# are refused and leave the child unchanged; a plain VHDX maps as before.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io vhdiinfo
PY=/usr/bin/python3
[ -x $PY ] && $PY -c 'import pyvhdi' 2>/dev/null || { echo "SKIP: pyvhdi missing"; exit 77; }
cd "$TESTDIR" || exit 1
[ -n "${KEEP:-}" ] && on_exit "rm -rf $KEEP; cp -r $TESTDIR $KEEP"

qemu-img create -q -f vhdx -o block_size=1M parent.vhdx 16M || fail "qemu-img create"
qemu-io -f vhdx -c 'write -P 0x11 0 5M' -c 'write -P 0x22 6M 3M' \
    -c 'write -P 0x33 12M 1M' parent.vhdx >/dev/null || fail "qemu-io write parent"
qemu-img convert -f vhdx -O raw parent.vhdx parent.raw || fail "qemu-img convert parent"

cat >gen.py <<'PYEOF'
import os, struct, sys, uuid

KIB, MIB = 1024, 1 << 20
BLOCK = MIB
SECTOR = 512
CHUNK = (1 << 23) * SECTOR // BLOCK   # payload blocks per sector bitmap block

def crc32c(data):
    if not hasattr(crc32c, 't'):
        t = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82f63b78 if c & 1 else c >> 1
            t.append(c)
        crc32c.t = t
    t, c = crc32c.t, 0xffffffff
    for b in data:
        c = t[(c ^ b) & 0xff] ^ (c >> 8)
    return c ^ 0xffffffff

def with_crc(buf, off=4):
    buf[off:off + 4] = b'\0' * 4
    buf[off:off + 4] = struct.pack('<I', crc32c(bytes(buf)))
    return buf

def guid(text):
    return uuid.UUID(text).bytes_le

def parent_data_guid(parent):
    with open(parent, 'rb') as f:
        best = None
        for off in (64 * KIB, 128 * KIB):
            f.seek(off); h = f.read(4096)
            if h[:4] == b'head':
                seq = struct.unpack('<Q', h[8:16])[0]
                if best is None or seq > best[0]:
                    best = (seq, h[32:48])
    return best[1]

def rnd(n, seed):
    return bytes(((i * 7 + seed * 31 + (i >> 9)) & 0xff for i in range(n)))

def gen(parent, child, rel, absolute, mode, model_in, model_out, hostile):
    size = 16 * MIB
    n_payload = size // BLOCK
    f = bytearray(4 * MIB)
    f[0:8] = b'vhdxfile'
    # headers
    for i, off in enumerate((64 * KIB, 128 * KIB)):
        h = bytearray(4096)
        h[0:4] = b'head'
        h[8:16] = struct.pack('<Q', 10 + i)
        h[16:32] = uuid.uuid4().bytes
        h[32:48] = uuid.uuid4().bytes
        h[64:66] = struct.pack('<H', 0)
        h[66:68] = struct.pack('<H', 1)
        h[68:72] = struct.pack('<I', MIB)
        h[72:80] = struct.pack('<Q', MIB)
        f[off:off + 4096] = with_crc(h)
    # region table: BAT at 3 MiB, metadata at 2 MiB
    rt = bytearray(64 * KIB)
    rt[0:4] = b'regi'
    rt[8:12] = struct.pack('<I', 2)
    rt[16:48] = guid('2dc27766-f623-4200-9d64-115e9bfd4a08') + struct.pack('<QII', 3 * MIB, MIB, 1)
    rt[48:80] = guid('8b7ca206-4790-4b9a-b8fe-575f050f886e') + struct.pack('<QII', 2 * MIB, MIB, 1)
    with_crc(rt)
    f[192 * KIB:256 * KIB] = rt
    f[256 * KIB:320 * KIB] = rt
    # metadata
    md = bytearray(MIB)
    md[0:8] = b'metadata'
    items = []
    items.append(('caa16737-fa36-4d43-b3b6-33f0aa44e76b', struct.pack('<II', BLOCK, 2), 4))
    items.append(('2fa54224-cd1b-4876-b211-5dbed83bf4b8', struct.pack('<Q', size), 6))
    items.append(('beca12ab-b2e6-4523-93ef-c309e000c746', uuid.uuid4().bytes, 6))
    items.append(('8141bf1d-a96f-4709-ba47-f233a8faab5f', struct.pack('<I', SECTOR), 6))
    items.append(('cda348c7-445d-4471-9cc9-e9885251c556', struct.pack('<I', SECTOR), 6))
    kv = [('parent_linkage', '{%s}' % uuid.UUID(bytes_le=parent_data_guid(parent)))]
    if rel is not None:
        kv.append(('relative_path', rel))
    if absolute is not None:
        kv.append(('absolute_win32_path', absolute))
    pl = bytearray(guid('b04aefb7-d19e-4a81-b789-25b8e9445913') + struct.pack('<HH', 0, len(kv)))
    entries, blob = [], bytearray()
    base = 20 + 12 * len(kv)
    for k, v in kv:
        kb, vb = k.encode('utf-16-le'), v.encode('utf-16-le')
        ko = base + len(blob); blob += kb
        vo = base + len(blob); blob += vb
        if hostile == 'entry' and k == 'relative_path':
            vo = 0x7ffffff0
        entries.append(struct.pack('<IIHH', ko, vo, len(kb), len(vb)))
    pl += b''.join(entries) + blob
    items.append(('a8d35f2d-b30b-454d-abf7-d3d84834ab0c', bytes(pl), 4))
    md[10:12] = struct.pack('<H', len(items))
    off = 64 * KIB
    for i, (g, data, flags) in enumerate(items):
        e = 32 + 32 * i
        md[e:e + 16] = guid(g)
        md[e + 16:e + 28] = struct.pack('<III', off, len(data), flags)
        md[off:off + len(data)] = data
        off += len(data)
    f[2 * MIB:3 * MIB] = md
    # BAT, payload blocks and the sector bitmap block
    bat = [0] * (CHUNK + 1)
    # "sym": for the libvhdi comparison. libvhdi 20210425 reads a ZERO block
    # of a differencing image from the parent; MS-VHDX says reads MUST return
    # zeros (vimg does): ZERO blocks are checked against the model only.
    if mode == 'sym':
        plan = {1: 'full', 2: [s for s in range(2048) if (s // 96) % 3 == 1], 3: [],
                5: [s for s in range(2048) if (s // 8) % 2 == 0]}
    else:
        plan = {1: 'full', 2: [s for s in range(2048) if (s // 100) % 3 == 1], 3: [],
                4: 'zero', 5: range(1, 2048, 2), 6: [0, 2047]}
    sbm = bytearray(MIB)
    pos = len(f)
    data = {}
    for b, p in sorted(plan.items()):
        if p == 'zero':
            bat[b] = 2
            continue
        data[b] = rnd(BLOCK, b)
        f += data[b]
        bat[b] = pos | (6 if p == 'full' else 7)
        if p != 'full':
            for s in p:     # LSB first: bit 0 of byte 0 is the chunk's sector 0
                k = b * (BLOCK // SECTOR) + s
                sbm[k // 8] |= 1 << (k % 8)
        pos += BLOCK
    bat[CHUNK] = pos | 6
    f += sbm
    for i, e in enumerate(bat):
        f[3 * MIB + 8 * i:3 * MIB + 8 * i + 8] = struct.pack('<Q', e)
    open(child, 'wb').write(f)
    if model_in:
        raw = bytearray(open(model_in, 'rb').read())
        for b, p in plan.items():
            o = b * BLOCK
            if p == 'zero':
                raw[o:o + BLOCK] = bytes(BLOCK)
            elif p == 'full':
                raw[o:o + BLOCK] = data[b]
            else:
                for s in p:
                    raw[o + s * SECTOR:o + (s + 1) * SECTOR] = data[b][s * SECTOR:(s + 1) * SECTOR]
        open(model_out, 'wb').write(raw)

def libvhdi_read(child, parent, raw):
    import pyvhdi
    f = pyvhdi.file(); f.open(child)
    p = pyvhdi.file(); p.open(parent)
    f.set_parent(p)
    size = f.get_media_size()
    with open(raw, 'wb') as o:
        pos = 0
        while pos < size:
            n = min(MIB, size - pos)
            o.write(f.read_buffer_at_offset(n, pos))
            pos += n

a = sys.argv
if a[1] == 'gen':
    gen(a[2], a[3], a[4] or None, a[5] or None, a[6], a[7] or None, a[8] or None,
        a[9] if len(a) > 9 else None)
else:
    libvhdi_read(a[2], a[3], a[4])
PYEOF

abs_win='\\?\C:'$(echo "$TESTDIR/parent.vhdx" | tr / '\\')
$PY gen.py gen parent.vhdx child.vhdx '.\parent.vhdx' "$abs_win" sym parent.raw model.raw ||
    fail "generator"
vhdiinfo child.vhdx >info.x 2>&1 || { cat info.x; fail "vhdiinfo rejects the child"; }
grep -qi "differential" info.x || { cat info.x; fail "vhdiinfo: not differencing"; }
$PY gen.py read child.vhdx parent.vhdx expected.raw || fail "libvhdi cannot read the chain"
cmp expected.raw model.raw || fail "libvhdi's read differs from the generator's model"
cmp -s expected.raw parent.raw && fail "libvhdi read the parent only"

"$VIMG" convert -O raw child.vhdx out.raw || fail "vimg convert child"
cmp expected.raw out.raw || fail "vimg's chain read differs from libvhdi's"
"$VIMG" compare -f vhdx -F raw child.vhdx expected.raw >cmp.out || { cat cmp.out; fail "compare"; }
grep -q "Images are identical" cmp.out || fail "compare: $(cat cmp.out)"
# single sectors in the bitmaps, checked against the model
$PY gen.py gen parent.vhdx asym.vhdx '.\parent.vhdx' '' asym parent.raw asym-model.raw ||
    fail "generator (asym)"
"$VIMG" convert -O raw asym.vhdx asym.raw || fail "vimg convert asym"
cmp asym-model.raw asym.raw || fail "single-sector bitmaps read wrongly"
for spec in "2M 512" "$((2 * 1024 * 1024 + 96 * 512 - 512)) 1024" "5M 1M" "0 16M"; do
    set -- $spec
    "$VIMG_IO" -f vhdx -r -c "read -v $1 $2" child.vhdx | sed -n '$!p' >io.v
    qemu-io -f raw -r -c "read -v $1 $2" expected.raw | sed -n '$!p' >io.q
    cmp -s io.v io.q || fail "vimg-io read $1 $2 differs"
done

"$VIMG" info child.vhdx >info.out || fail "info"
grep -q "^backing file: parent.vhdx$" info.out || { cat info.out; fail "info: backing file"; }
grep -q "^backing file format: vhdx$" info.out || { cat info.out; fail "info: backing format"; }
# qemu-img refuses the image (we go beyond it)
qemu-img info child.vhdx >/dev/null 2>&1 && echo "note: qemu-img now opens differencing VHDX"

"$VIMG" map --output=json child.vhdx >map.json || fail "map"
$PY - map.json <<'PYEOF' || fail "map does not match the layout"
import json, sys
m = json.load(open(sys.argv[1]))
B = 1 << 20
def at(off):
    for e in m:
        if e["start"] <= off < e["start"] + e["length"]:
            return e["depth"]
    raise SystemExit("no entry for %d" % off)
assert at(0) == 1 and at(B) == 0 and at(2 * B) == 1 and at(2 * B + 96 * 512) == 0
assert at(3 * B) == 1 and at(4 * B) == 1 and at(5 * B) == 0 and at(5 * B + 8 * 512) == 1
assert at(7 * B) == 1
assert all(a["start"] + a["length"] == b["start"] for a, b in zip(m, m[1:]))
assert m[-1]["start"] + m[-1]["length"] == 16 << 20
PYEOF
"$VIMG" convert -O qcow2 child.vhdx flat.qcow2 || fail "convert to qcow2"
qemu-img compare -f qcow2 -F raw flat.qcow2 expected.raw >/dev/null ||
    fail "qemu-img: flat copy differs"

cp child.vhdx child.before
"$VIMG_IO" -f vhdx -c 'write -P 0x55 0 512' child.vhdx >w.out 2>&1 && fail "write succeeded"
grep -q "write failed: Operation not supported" w.out ||
    { cat w.out; fail "write refusal (vimg-io)"; }
"$VIMG" convert -n -f raw -O vhdx parent.raw child.vhdx >w.out 2>&1 &&
    fail "convert -n into a child"
grep -q "differencing VHDX images are read-only" w.out ||
    { cat w.out; fail "write refusal message"; }
cmp -s child.vhdx child.before || fail "refused write changed the child"

mkdir sub && cp child.vhdx sub/moved.vhdx
"$VIMG" convert -O raw sub/moved.vhdx moved.raw || fail "absolute_win32_path not used"
cmp expected.raw moved.raw || fail "absolute path read differs"

mv parent.vhdx parent.gone
"$VIMG" convert -O raw child.vhdx miss.raw >miss.out 2>&1 && fail "opened without its parent"
[ "$(wc -l <miss.out)" = 1 ] && grep -q "parent.vhdx': No such file" miss.out ||
    { cat miss.out; fail "missing parent message"; }
mv parent.gone parent.vhdx

$PY gen.py gen parent.vhdx self.vhdx '.\self.vhdx' '' sym '' '' || fail "generator (self)"
"$VIMG" info self.vhdx >self.out 2>&1 && fail "self-naming child opened"
[ "$(wc -l <self.out)" = 1 ] && grep -q "itself" self.out || { cat self.out; fail "self message"; }
$PY gen.py gen parent.vhdx bad.vhdx '.\parent.vhdx' '' sym '' '' entry || fail "generator (bad)"
"$VIMG" info bad.vhdx >bad.out 2>&1 && fail "bad locator entry accepted"
[ "$(wc -l <bad.out)" = 1 ] && grep -q "lies outside the locator" bad.out ||
    { cat bad.out; fail "bad locator message"; }

# a plain VHDX: no backing file, map as qemu-img's
"$VIMG" info parent.vhdx | grep -q "^backing file" && fail "plain VHDX shows a backing file"
"$VIMG" map --output=json parent.vhdx >pm.v && qemu-img map --output=json parent.vhdx >pm.q
expect_same pm.q pm.v "map of a plain VHDX"
pass
