#!/bin/bash
# Proves that `vimg create -f luks` takes qemu-img's options and texts
# (-o help, the "Formatting" line, option and secret errors, no file left
# behind after a failure) and makes volumes that cryptsetup opens with the
# passphrase and describes with the chosen cipher, mode and hash, and that
# qemu-img reads identically to vimg. vimg's writes encrypt byte for byte
# as qemu-io's do.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io cryptsetup

key="--object secret,id=s0,data=pw"
run_both help create -f luks -o help
expect_same help.q help.v "create -o help"
run_both help2 create -f luks new.luks -o help
expect_same help2.q help2.v "create -o help with a file name"

for bad in "cipher-alg=foo 1M" "key-secret=s9 1M" "cipher-alg=des,key-secret=s0 1M" \
           "cipher-alg=cast5-128,cipher-mode=xts,key-secret=s0 1M" \
           "ivgen-alg=essiv,ivgen-hash-alg=sha1,cipher-alg=aes-128,key-secret=s0 1M" \
           "key-secret=s0,preallocation=foo 1M" "key-secret=s0" "iter-time=x,key-secret=s0 1M"; do
    set -- $bad
    run_both bad create $key -f luks bad.luks -o "$1" ${2:-}
    expect_same bad.q bad.v "create -o $bad"
    [ ! -e bad.luks ] || fail "create -o $bad left a file behind"
done
run_both nokey create -f luks bad.luks 1M
expect_same nokey.q nokey.v "create without key-secret"

i=0
for spec in ":xts-plain64:sha256" "cipher-alg=aes-128,hash-alg=sha1:xts-plain64:sha1" \
            "cipher-mode=cbc,ivgen-alg=essiv,hash-alg=sha512:cbc-essiv:sha256:sha512" \
            "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=plain:cbc-plain:sha256" \
            "cipher-mode=ctr,preallocation=full:ctr-plain64:sha256"; do
    o=${spec%%:*}; rest=${spec#*:}; mode=${rest%:*}; hash=${rest##*:}
    img=c$i.luks; i=$((i + 1))
    # An unknown secret fails after the "Formatting" line, before any (flaky) PBKDF timing.
    run_both fmt create $key -f luks "$img" 1M -o "key-secret=s9,iter-time=10${o:+,$o}"
    expect_same fmt.q fmt.v "create -o $o"
    "$VIMG" create -q $key -f luks "$img" 1M -o "key-secret=s0,iter-time=10${o:+,$o}" \
        || fail "create $o"
    cryptsetup luksDump "$img" >dump || fail "luksDump $o"
    grep -q "^Cipher mode:[[:space:]]*$mode$" dump || fail "cipher mode of $o is not $mode"
    grep -q "^Hash spec:[[:space:]]*$hash$" dump || fail "hash of $o is not $hash"
    case $mode in cbc-plain|ctr-*) ;; *)
        echo -n pw | cryptsetup open --test-passphrase --key-file - "$img" \
            || fail "cryptsetup does not open $o";;
    esac
    opts="driver=luks,key-secret=s0,file.filename=$img"
    cp "$img" "q$img"
    "$VIMG_IO" $key --image-opts "$opts" -c "write -P 0x61 512 70000" -c "write -z 200k 8k" \
        >/dev/null || fail "vimg-io write to $o"
    qemu-io $key --image-opts "driver=luks,key-secret=s0,file.filename=q$img" \
        -c "write -P 0x61 512 70000" -c "write -z 200k 8k" >/dev/null
    cmp "$img" "q$img" || fail "vimg and qemu-io encrypt $o differently"
    qemu-img convert $key --image-opts "$opts" -O raw q.raw || fail "qemu-img reads $o"
    "$VIMG" convert $key --image-opts "$opts" -O raw v.raw || fail "vimg reads $o"
    cmp q.raw v.raw || fail "$o reads differently"
done
pass
