#!/bin/bash
# Proves that vimg checks a LUKS1 header as qemu-img does, with its texts,
# both for `info` (no key) and for opening with the passphrase: bad magic
# and version, unterminated names, a payload or key slots overlapping the
# header, each other or the payload, bad stripes, slot states and
# iteration counts, unknown cipher, mode, IV generator and hash names, an
# ESSIV hash too long for the cipher, and a file shorter than its payload
# offset. Each image is the cryptsetup sample with one named field poked.
. "$(dirname "$0")/lib.sh"
need qemu-img

sample=$(testdata luks1-cryptsetup-aes-xts.luks.bz2)
slot() { echo $((208 + 48 * $1 + $2)); }   # key slot i, field offset
poke_str() { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }

check() {
    local what=$1; shift
    cp "$sample" p.luks
    "$@"
    run_both "c" info p.luks
    expect_same c.q c.v "info: $what"
    run_both "k" convert --object secret,id=s0,data=imgtest-pass \
        --image-opts driver=luks,key-secret=s0,file.filename=p.luks -O raw x.raw
    expect_same k.q k.v "open: $what"
}

check "version 2"            poke_be16 p.luks 6 2                  # version
check "bad magic"            poke_u8 p.luks 5 0xbf                 # magic
check "payload in header"    poke_be32 p.luks 104 7                # payload_offset
check "payload past EOF"     poke_be32 p.luks 104 0x7fffffff
check "key bytes 0"          poke_be32 p.luks 108 0                # key_bytes
check "key bytes 1000"       poke_be32 p.luks 108 1000
check "key bytes 48"         poke_be32 p.luks 108 48
check "mk iterations 0"      poke_be32 p.luks 164 0                # mk_digest_iter
check "stripes 0"            poke_be32 p.luks "$(slot 0 44)" 0     # stripes
check "idle slot stripes"    poke_be32 p.luks "$(slot 3 44)" 1
check "slot iterations 0"    poke_be32 p.luks "$(slot 0 4)" 0      # iterations
check "slot state"           poke_be32 p.luks "$(slot 0 0)" 0x12345678   # active
check "slot in header"       poke_be32 p.luks "$(slot 0 40)" 7     # key_material_offset
check "slot past payload"    poke_be32 p.luks "$(slot 0 40)" 0x7fffff00
check "slots overlap"        poke_be32 p.luks "$(slot 7 40)" 8
check "cipher name"          poke_str p.luks 8 'foo\0'             # cipher_name
check "cipher unterminated"  poke_str p.luks 8 "$(printf 'a%.0s' {1..40})"
check "mode name"            poke_str p.luks 40 'foo-plain64\0'    # cipher_mode
check "mode without IV"      poke_str p.luks 40 'xts\0'
check "IV generator"         poke_str p.luks 40 'xts-foo\0'
check "IV hash"              poke_str p.luks 40 'xts-essiv:foo\0'
check "essiv without hash"   poke_str p.luks 40 'cbc-essiv\0'
check "essiv hash too long"  poke_str p.luks 40 'xts-essiv:sha512\0'
check "hash name"            poke_str p.luks 72 'foo\0'            # hash_spec
check "other hash"           poke_str p.luks 72 'sha1\0'
check "short file"           truncate -s 1M p.luks
check "short header"         truncate -s 400 p.luks
pass
