#!/bin/bash
# Proves that `amend` changes LUKS key slots as qemu-img 7.2 does, for the
# luks format (-o state=...,keyslot=...,new-secret=...,old-secret=...,
# iter-time=...) and for qcow2 (the same under encrypt.*): the same steps on
# two copies of one volume give the same messages, exit codes and slot
# states; a slot vimg adds opens with its passphrase in qemu-img and in
# cryptsetup; erasing the last slot needs --force; AES and unencrypted
# qcow2 images are refused with qemu-img's texts.
. "$(dirname "$0")/lib.sh"
need qemu-img cryptsetup

key="--object secret,id=s0,data=pw --object secret,id=s1,data=second --object secret,id=s2,data=third"

# The slots' states and offsets (iteration counts depend on timing).
slots() { qemu-img info --output=json "$1" | grep -E '"active"|key-offset'; }

# step PREFIX OPTS_Q OPTS_V ARGS...: amend both copies, compare output and slots.
step() {
    local p=$1 q=$2 v=$3; shift 3
    for _ in $(seq 20); do
        qemu-img amend $key --image-opts "$q" "$@" >s.q.raw 2>&1; echo "exit=$?" >>s.q.raw
        qemu_pbkdf_flaked s.q.raw || break
    done
    "$VIMG" amend $key --image-opts "$v" "$@" >s.v.raw 2>&1; echo "exit=$?" >>s.v.raw
    norm s.q.raw | sed 's/qa\./IMG./g' >s.q; norm s.v.raw | sed 's/va\./IMG./g' >s.v
    slots "$qimg" >>s.q; slots "$vimg" >>s.v
    expect_same s.q s.v "amend $p $*"
}

run_both help amend -f luks -o help x.luks
expect_same help.q help.v "amend -f luks -o help"

for fmt in luks qcow2; do
    if [ $fmt = luks ]; then
        "$VIMG" create -q -f luks $key -o key-secret=s0,iter-time=10 va.luks 1M || fail "create"
        P= qimg=qa.luks vimg=va.luks
    else
        "$VIMG" create -q -f qcow2 $key -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 \
            va.qcow2 1M || fail "create qcow2"
        P=encrypt. qimg=qa.qcow2 vimg=va.qcow2
    fi
    cp $vimg $qimg
    Q="driver=$fmt,file.filename=$qimg,${P}key-secret=s0"
    V="driver=$fmt,file.filename=$vimg,${P}key-secret=s0"
    for o in "state=active,new-secret=s1,iter-time=10" "state=active,new-secret=s2,keyslot=5,iter-time=10" \
             "state=active,new-secret=s2,keyslot=5" "state=active,new-secret=s2,keyslot=8" \
             "state=active,keyslot=3" "state=inactive,new-secret=s1" \
             "state=active,old-secret=s0,new-secret=s1" "state=foo" "keyslot=1" "iter-time=x" \
             "state=inactive,keyslot=5" "state=inactive,keyslot=5" "state=inactive,keyslot=2,old-secret=s1" \
             "state=inactive,old-secret=s9" "state=inactive,old-secret=s2" "state=inactive" \
             "state=inactive,old-secret=s0"; do
        step $fmt "$Q" "$V" -o "$(echo "$o" | sed "s/\([a-z-]*=\)/$P\1/g")"
    done
    # Slot 1 (s1) is the last one left: erasing it needs --force.
    Q1=${Q%key-secret=s0}key-secret=s1 V1=${V%key-secret=s0}key-secret=s1
    step $fmt "$Q1" "$V1" -o "${P}state=inactive,${P}keyslot=1"
    step $fmt "$Q1" "$V1" -o "${P}state=active,${P}new-secret=s2,${P}iter-time=10"
    qemu-img info $key --image-opts "${V%key-secret=s0}key-secret=s2" >/dev/null ||
        fail "qemu-img does not open the $fmt slot vimg added"
    if [ $fmt = luks ]; then
        echo -n third | cryptsetup open --test-passphrase --key-file - $vimg ||
            fail "cryptsetup does not open the slot vimg added"
        echo -n pw | cryptsetup open --test-passphrase --key-file - $vimg 2>/dev/null &&
            fail "cryptsetup still opens the slot vimg erased"
    fi
    step $fmt "$Q1" "$V1" -o "${P}state=inactive,${P}old-secret=s1"
    step $fmt "$Q1" "$V1" -o "${P}state=inactive,${P}old-secret=s1" --force
done

# AES and unencrypted qcow2 images have no key slots.
qemu-img create -q -f qcow2 $key -o encrypt.format=aes,encrypt.key-secret=s0 aes.qcow2 1M
qemu-img create -q -f qcow2 plain.qcow2 1M
run_both aes amend $key --image-opts driver=qcow2,file.filename=aes.qcow2,encrypt.key-secret=s0 \
    -o encrypt.state=inactive,encrypt.keyslot=0
expect_same aes.q aes.v "amend of an AES image"
run_both plain amend -f qcow2 plain.qcow2 -o encrypt.state=inactive,encrypt.keyslot=0
expect_same plain.q plain.v "amend of an unencrypted image"
pass
