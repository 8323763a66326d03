#!/bin/bash
# Proves that vimg reads LUKS1 volumes as qemu-img does: the cryptsetup-made
# sample converts to the raw image of the manifest; volumes cryptsetup
# formats with several cipher, IV and hash choices (payload written by
# qemu-io) convert to the same bytes with both tools; `info` prints the same
# LUKS block (human and JSON) with and without a key; a wrong passphrase, a
# missing key-secret and an unknown secret fail with qemu-img's texts.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io cryptsetup

sample=$(testdata luks1-cryptsetup-aes-xts.luks.bz2)
want=$(awk -F'\t' '$1 == "luks1-cryptsetup-aes-xts.luks.bz2" { print $5 }' "$SHARED/testdata/MANIFEST.tsv")
key="--object secret,id=s0,data=imgtest-pass"
"$VIMG" convert $key --image-opts "driver=luks,key-secret=s0,file.filename=$sample" \
    -O raw sample.raw || fail "convert of the sample failed"
[ "$(sha256sum <sample.raw | cut -d' ' -f1)" = "$want" ] || fail "sample content differs from the manifest"

for out in human json; do
    run_both info-$out info --output=$out "$sample"
    expect_same info-$out.q info-$out.v "info --output=$out"
    run_both info-key-$out info --output=$out $key \
        --image-opts "driver=luks,key-secret=s0,file.filename=$sample"
    expect_same info-key-$out.q info-key-$out.v "info --output=$out with key-secret"
done

run_both wrong convert --object secret,id=s0,data=nope \
    --image-opts "driver=luks,key-secret=s0,file.filename=$sample" -O raw x.raw
expect_same wrong.q wrong.v "wrong passphrase"
grep -q "Invalid password, cannot unlock any keyslot" wrong.v || fail "wrong passphrase text"
run_both nokey convert -O raw "$sample" x.raw
expect_same nokey.q nokey.v "missing key-secret"
run_both nosecret convert $key --image-opts "driver=luks,key-secret=s9,file.filename=$sample" \
    -O raw x.raw
expect_same nosecret.q nosecret.v "unknown secret"

# cryptsetup volumes: cipher spec, key bits, hash.
i=0
for spec in "aes-xts-plain64 256 sha256" "aes-xts-plain64 512 sha1" "aes-xts-plain64 256 sha512" \
            "aes-cbc-essiv:sha256 256 sha256" "aes-cbc-plain 128 sha256"; do
    set -- $spec
    img=cs$i.luks; i=$((i + 1))
    truncate -s 3M "$img"
    echo -n pw | cryptsetup luksFormat --type luks1 --batch-mode --pbkdf-force-iterations 1000 \
        --cipher "$1" --key-size "$2" --hash "$3" --key-file - "$img" || fail "luksFormat $spec"
    opts="driver=luks,key-secret=s1,file.filename=$img"
    qemu-io --object secret,id=s1,data=pw --image-opts "$opts" \
        -c "write -P 0x3c 0 64k" -c "write -P 0xa7 300k 20k" -c "write -z 600k 4k" >/dev/null \
        || fail "qemu-io write to $spec"
    qemu-img convert --object secret,id=s1,data=pw --image-opts "$opts" -O raw "q$i.raw"
    "$VIMG" convert --object secret,id=s1,data=pw --image-opts "$opts" -O raw "v$i.raw" \
        || fail "vimg convert of $spec"
    cmp "q$i.raw" "v$i.raw" || fail "$spec reads differently"
    run_both info$i info --output=json "$img"
    expect_same info$i.q info$i.v "info of $spec"
done
pass
