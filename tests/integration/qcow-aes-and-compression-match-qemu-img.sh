#!/bin/bash
# Proves: `convert -c -O qcow` and `vimg-io write -c` write the same bytes
# as qemu-img / qemu-io (compressed clusters at the sector-rounded end of
# the file, incompressible clusters stored plain), which qemu-img reads back
# equal; legacy AES qcow images (encryption=on / encrypt.format=aes with
# encrypt.key-secret) that qemu-img makes read and convert identically in
# vimg, images vimg encrypts are the same bytes qemu-img writes and read back
# in qemu-img; passphrases longer than 16 bytes use their first 16 as
# qemu-img does; create, open-option and missing-secret errors match.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

n=0
check() {  # ARGS...: vimg and qemu-img print the same and exit alike
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

# Mixed data: zeros, compressible runs and random clusters, odd tail.
python3 - <<'EOF'
import os
b = bytearray()
for i in range(300):
    if i % 5 == 0:
        b += bytes(4096)
    elif i % 3 == 0:
        b += os.urandom(4096)
    else:
        b += bytes([i % 7 + 1]) * 2048 + os.urandom(16) * 128
open("src.raw", "wb").write(b + os.urandom(1000))
EOF

# Compressed writes.
qemu-img convert -c -O qcow src.raw q.qcow
"$VIMG" convert -c -O qcow src.raw v.qcow || fail "vimg convert -c -O qcow"
cmp q.qcow v.qcow || fail "convert -c wrote different files"
qemu-img compare -f raw -F qcow src.raw v.qcow >/dev/null || fail "compressed image differs"
check map --output=json v.qcow
qemu-img create -q -f qcow q2.qcow 1M
cp q2.qcow v2.qcow
wcmds=(-c 'write -c -P 0x11 0 4k' -c 'write -c -P 0x22 8k 4k' -c 'write -P 0x33 12k 100'
       -c 'write -c -P 0x44 64k 4k' -c 'write -P 0x55 8k 512')
qemu-io -f qcow "${wcmds[@]}" q2.qcow >/dev/null || fail "qemu-io write -c"
"$VIMG_IO" -f qcow "${wcmds[@]}" v2.qcow >/dev/null || fail "vimg-io write -c"
cmp q2.qcow v2.qcow || fail "write -c gave different files"

# AES: images made by qemu-img read alike, with the key and without it.
sec=(--object secret,id=s0,data=abc)
long=(--object secret,id=s1,data=0123456789abcdefTAIL)
qemu-img create -q -f qcow "${sec[@]}" -o encryption=on,encrypt.key-secret=s0 qa.qcow 2M
qemu-img convert -n "${sec[@]}" --target-image-opts src.raw \
    driver=qcow,file.filename=qa.qcow,encrypt.key-secret=s0 || fail "qemu-img fills AES image"
"$VIMG" convert "${sec[@]}" --image-opts driver=qcow,file.filename=qa.qcow,encrypt.key-secret=s0 \
    -O raw va.raw || fail "vimg reads qemu-img's AES image"
cmp -n "$(stat -c %s src.raw)" src.raw va.raw || fail "AES image read differently"
check info qa.qcow
check info --output=json qa.qcow
check convert -O raw qa.qcow x.raw
check convert "${sec[@]}" --image-opts driver=qcow,file.filename=qa.qcow,encrypt.key-secret=nope \
    -O raw x.raw
check convert "${sec[@]}" --image-opts driver=qcow,file.filename=qa.qcow,encrypt.format=luks \
    -O raw x.raw
check convert "${sec[@]}" --image-opts driver=qcow,file.filename=q2.qcow,encrypt.format=aes \
    -O raw x.raw

# AES: vimg creates and writes the bytes qemu-img does.
for o in encryption=on encrypt.format=aes; do
    run_both "cr-$o" create -f qcow "${sec[@]}" -o "$o,encrypt.key-secret=s0" e.qcow 2M
    expect_same "cr-$o.q" "cr-$o.v" "create $o"
done
qemu-img create -q -f qcow "${sec[@]}" -o encryption=on,encrypt.key-secret=s0 qe.qcow 2M
"$VIMG" create -q -f qcow "${sec[@]}" -o encrypt.format=aes,encrypt.key-secret=s0 ve.qcow 2M
cmp qe.qcow ve.qcow || fail "created AES headers differ"
wcmds=(-c 'write -P 0xaa 0 64k' -c 'write -P 0xbb 70000 1536' -c 'write -P 0xcc 1M 512')
qemu-io "${sec[@]}" --image-opts driver=qcow,file.filename=qe.qcow,encrypt.key-secret=s0 \
    "${wcmds[@]}" >/dev/null || fail "qemu-io AES writes"
"$VIMG_IO" "${sec[@]}" --image-opts driver=qcow,file.filename=ve.qcow,encrypt.key-secret=s0 \
    "${wcmds[@]}" >/dev/null || fail "vimg-io AES writes"
cmp qe.qcow ve.qcow || fail "AES writes gave different files"
"$VIMG" convert "${sec[@]}" -O qcow -o encryption=on,encrypt.key-secret=s0 src.raw vc.qcow ||
    fail "vimg convert to AES qcow"
qemu-img compare "${sec[@]}" --image-opts driver=raw,file.filename=src.raw \
    driver=qcow,file.filename=vc.qcow,encrypt.key-secret=s0 >/dev/null ||
    fail "qemu-img reads vimg's AES image differently"

# Passphrases past 16 bytes: only the first 16 count.
qemu-img create -q -f qcow "${long[@]}" -o encryption=on,encrypt.key-secret=s1 ql.qcow 1M
qemu-io "${long[@]}" --image-opts driver=qcow,file.filename=ql.qcow,encrypt.key-secret=s1 \
    -c 'write -P 0x77 0 8k' >/dev/null
"$VIMG_IO" --object secret,id=s2,data=0123456789abcdef \
    --image-opts driver=qcow,file.filename=ql.qcow,encrypt.key-secret=s2 \
    -c 'read -P 0x77 0 8k' >/dev/null || fail "16-byte key cut from a longer passphrase"

# Create errors: same messages and order.
check create -f qcow -o encryption=on,encrypt.key-secret=s0 e.qcow 1M
check create -f qcow "${sec[@]}" -o encrypt.format=luks,encrypt.key-secret=s0 e.qcow 1M
pass
