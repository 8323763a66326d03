#!/bin/bash
# Proves: vimg creates VHDX images as qemu-img does for every creation
# option (same "Formatting" line, errors, `info --output=json`, sizes), and
# what vimg writes is read back identically by qemu-img/qemu-io and by the
# independent reader libvhdi; what qemu-io writes, vimg reads (`convert` is
# in hv-convert-matrix.sh); `check` reports truncated and overlapping BAT
# entries as qemu-img does, and a plain open refuses such an image as
# qemu-img does.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io /usr/bin/python3
/usr/bin/python3 -c 'import pyvhdi' 2>/dev/null || { echo "SKIP: python3-libvhdi"; exit 77; }

n=0
check() {  # ARGS...: vimg and qemu-img print the same and exit alike
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}
yal_sha() {  # FILE: size and sha256 of the guest content as libvhdi reads it
    /usr/bin/python3 - "$1" <<'PY'
import sys, hashlib, pyvhdi
f = pyvhdi.file(); f.open(sys.argv[1])
size = f.get_media_size(); h = hashlib.sha256(); off = 0
while off < size:
    n = min(1 << 20, size - off); h.update(f.read_buffer_at_offset(n, off)); off += n
print(size, h.hexdigest())
PY
}
raw_sha() { echo "$(stat -c %s "$1") $(sha256sum <"$1" | cut -d' ' -f1)"; }
info_json() { qemu-img info --output=json "$1" | grep -v '"filename"'; }

writes=(-c 'write -P 0x11 0 64k' -c 'write -P 0x22 1000k 100k' -c 'write -P 0x33 9M 4M'
        -c 'write -z 20M 1M' -c 'write -P 0x44 99M 1M')
reads=(-c 'read -P 0x11 0 64k' -c 'read -P 0x22 1000k 100k' -c 'read -P 0x33 9M 4M'
       -c 'read -P 0 20M 1M' -c 'read -P 0x44 99M 1M' -c 'read -P 0 64k 936k'
       -c 'read -P 0 13M 7M')
truncate -s 100M ref.raw
qemu-io -f raw "${writes[@]}" ref.raw >/dev/null || fail "raw reference"

for o in "" subformat=fixed block_state_zero=off subformat=fixed,block_state_zero=off \
         block_size=1M block_size=1500K block_size=512M block_size=32M,log_size=1500K; do
    opt=${o:+-o $o}
    check create -f vhdx $opt x.vhdx 100M
    "$VIMG" create -q -f vhdx $opt v.vhdx 100M || fail "create $o"
    qemu-img create -q -f vhdx $opt q.vhdx 100M || fail "qemu-img create $o"
    info_json v.vhdx >iv; info_json q.vhdx >iq
    expect_same iq iv "info of an empty image ($o)"
    [ "$(stat -c %s v.vhdx)" = "$(stat -c %s q.vhdx)" ] || fail "file size ($o)"
    qemu-img check -q v.vhdx || fail "qemu-img check of a new image ($o)"
    # vimg writes; qemu-io, libvhdi and qemu-img compare read it back.
    "$VIMG_IO" "${writes[@]}" v.vhdx >/dev/null || fail "vimg-io write ($o)"
    qemu-io -r "${reads[@]}" v.vhdx >r 2>&1 && ! grep -q 'fail' r ||
        { cat r >&2; fail "qemu-io ($o)"; }
    qemu-img check -q v.vhdx || fail "qemu-img check after writes ($o)"
    qemu-img compare -q ref.raw v.vhdx || fail "compare ($o)"
    [ "$(yal_sha v.vhdx)" = "$(raw_sha ref.raw)" ] || fail "libvhdi reads differently ($o)"
    # qemu-io writes; vimg reads.
    qemu-io "${writes[@]}" q.vhdx >/dev/null || fail "qemu-io write ($o)"
    "$VIMG_IO" -r "${reads[@]}" q.vhdx >r 2>&1 && ! grep -q 'fail' r ||
        { cat r >&2; fail "vimg-io ($o)"; }
    "$VIMG" compare -q ref.raw q.vhdx || fail "vimg compare ($o)"
    check check v.vhdx
done

# Creation errors and sizes.
check create -f vhdx -o block_size=3M x.vhdx 1G
check create -f vhdx -o subformat=foo x.vhdx 1G
check create -f vhdx -o block_state_zero=foo x.vhdx 1G
check create -f vhdx x.vhdx 65T
for size in 1000 1G 1025M 100G 101G 32T 33T; do
    "$VIMG" create -q -f vhdx v.vhdx $size && qemu-img create -q -f vhdx q.vhdx $size ||
        fail "create $size"
    info_json v.vhdx >iv; info_json q.vhdx >iq
    expect_same iq iv "info at size $size (auto block size)"
done
rm -f v.vhdx q.vhdx x.vhdx

# check and open of a BAT that points past the end of the file or into metadata.
"$VIMG" create -q -f vhdx -o block_size=8M t.vhdx 100M
"$VIMG_IO" -c 'write -P 1 16M 4k' -c 'write -P 2 0 4k' -c 'write -P 3 32M 4k' t.vhdx >/dev/null
truncate -s 20M t.vhdx
check check t.vhdx
check check --output=json t.vhdx
check info t.vhdx
cp t.vhdx u.vhdx; truncate -s 40M u.vhdx
poke_le64 u.vhdx $((2 << 20)) $(((3 << 20) | 6))    # block 0 over the metadata region
check check u.vhdx
check info u.vhdx
pass
