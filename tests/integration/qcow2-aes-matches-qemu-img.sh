#!/bin/bash
# Proves that legacy AES qcow2 images (encrypt.format=aes / encryption=on,
# crypt_method 1) work as in qemu-img: creation output and errors, images
# byte-identical to qemu-img's (no random parts), data encrypted byte for
# byte as qemu-io does (AES-128-CBC, IV the guest sector, key the passphrase
# zero-padded to 16 bytes, longer ones cut), images written by qemu-img
# converted out identically, info, and the open errors.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

key="--object secret,id=s0,data=pw --object secret,id=s1,data=0123456789abcdefXYZ"
io_opts() { echo "driver=qcow2,encrypt.key-secret=${2:-s0},file.filename=$1"; }

qemu-img create -q -f raw src.raw 2M
qemu-io -f raw -c 'write -P 0x5a 100k 1M' -c 'write -P 0xa5 1536k 4k' src.raw >/dev/null

for o in "encryption=on" "encrypt.format=aes,encrypt.key-secret=s9" \
         "encrypt.format=aes,encrypt.key-secret=s0,encrypt.cipher-alg=aes-128" \
         "encrypt.format=aes,encrypt.key-secret=s0,encrypt.iter-time=10"; do
    run_both bad create -f qcow2 $key -o "$o" bad.qcow2 1M
    expect_same bad.q bad.v "create -o $o"
    [ ! -e bad.qcow2 ] || fail "create -o $o left a file behind"
done

i=0
for spec in "encrypt.format=aes,encrypt.key-secret=s0" "encryption=on,encrypt.key-secret=s1" \
            "encrypt.format=aes,encrypt.key-secret=s0,compat=0.10,cluster_size=4096" \
            "encrypt.format=aes,encrypt.key-secret=s1,extended_l2=on"; do
    sec=${spec##*key-secret=}; sec=${sec%%,*}
    q=q$i.qcow2 v=v$i.qcow2; i=$((i + 1))
    qemu-img create -f qcow2 $key -o "$spec" "$q" 2M >out.q 2>&1 || fail "qemu-img create $spec"
    "$VIMG" create -f qcow2 $key -o "$spec" "$v" 2M >out.v 2>&1 || fail "vimg create $spec"
    sed -i "s/$q/IMG/" out.q; sed -i "s/$v/IMG/" out.v
    expect_same out.q out.v "create -o $spec"
    cmp "$q" "$v" || fail "vimg's new image differs from qemu-img's ($spec)"
    run_both info info --output=json "$v"
    expect_same info.q info.v "info of $spec"
    w="-c 'write -P 0x61 512 70000' -c 'write -z 200k 8k' -c 'write -P 0x62 1M 64k' -c 'write -P 0x63 1025k 1k'"
    eval qemu-io $key --image-opts "$(io_opts "$q" "$sec")" $w >/dev/null
    eval "\"$VIMG_IO\"" $key --image-opts "$(io_opts "$v" "$sec")" $w >/dev/null ||
        fail "vimg-io writes $spec"
    cmp "$q" "$v" || fail "vimg-io and qemu-io encrypt $spec differently"
    qemu-img convert -n $key -f raw src.raw --target-image-opts "$(io_opts "$q" "$sec")"
    "$VIMG" convert $key --image-opts "$(io_opts "$q" "$sec")" -O raw back.raw ||
        fail "vimg reads $spec"
    cmp src.raw back.raw || fail "vimg reads qemu-img's $spec wrongly"
    run_both info2 info $key --image-opts "$(io_opts "$q" "$sec")"
    expect_same info2.q info2.v "info with the secret of $spec"
done

# Only the first 16 bytes of a passphrase count.
qemu-io --object secret,id=s2,data=0123456789abcdef --image-opts "$(io_opts q1.qcow2 s2)" \
    -c "read -P 0x5a 100k 1M" | grep -q "Pattern verification failed" && fail "qemu-io pattern"
"$VIMG_IO" --object secret,id=s2,data=0123456789abcdef --image-opts "$(io_opts q1.qcow2 s2)" \
    -c "read -P 0x5a 100k 1M" | grep -q "Pattern verification failed" &&
    fail "vimg does not cut the passphrase to 16 bytes"

# convert out of and into AES images.
"$VIMG" convert $key -O qcow2 -o encrypt.format=aes,encrypt.key-secret=s0 src.raw conv.qcow2 ||
    fail "vimg convert to aes"
qemu-img compare $key --image-opts driver=raw,file.filename=src.raw "$(io_opts conv.qcow2)" \
    >/dev/null || fail "qemu-img does not read vimg's aes image as the source"

for o in "" "encrypt.format=luks,encrypt.key-secret=s0" "encrypt.key-secret=s9" \
         "encrypt.foo=1,encrypt.key-secret=s0"; do
    run_both op map --output=json $key --image-opts "driver=qcow2,file.filename=q0.qcow2${o:+,$o}"
    expect_same op.q op.v "open with $o"
done
pass
