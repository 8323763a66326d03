#!/bin/bash
# Proves, for vdi against qemu-img / qemu-io: blocks whose map entry is the
# discarded-block marker (0xfffffffe) read as zeros, map, check and convert
# as in qemu-img, and a write there allocates a new block as qemu-io does;
# `write -z` and `discard` (which qemu-img's vdi accepts and turns into data
# writes or nothing) leave byte-identical files; `check -r leaks|all` is
# refused with the same message and exit code; static=on images made by
# either tool are the same and `info` matches.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

n=0
check() {  # ARGS...: vimg and qemu-img print the same and exit alike
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

qemu-img create -q -f vdi base.vdi 6M
qemu-io -f vdi -c 'write -P 1 0 4M' base.vdi >/dev/null
cp base.vdi d.vdi
poke_le32 d.vdi $((512 + 4 * 1)) 0xfffffffe     # block 1: discarded
poke_le32 d.vdi $((512 + 4 * 3)) 0xfffffffe     # block 3: discarded
check map --output=json d.vdi
check info d.vdi
check check d.vdi
check check --output=json d.vdi
qemu-img convert -O raw d.vdi q.raw
"$VIMG" convert -O raw d.vdi v.raw || fail "vimg convert of discarded blocks"
cmp q.raw v.raw || fail "discarded blocks read differently"
cmp -s -i $((1 << 20)):0 -n $((1 << 20)) v.raw /dev/zero || fail "discarded block not zeros"
cp d.vdi q.vdi
cp d.vdi v.vdi
cmds=(-c 'write -P 2 1M 4k' -c 'write -z 2M 1M' -c 'discard 0 1M' -c 'write -z 5M 512'
      -c 'discard 3M 1M')
qemu-io -f vdi "${cmds[@]}" q.vdi >/dev/null || fail "qemu-io writes"
"$VIMG_IO" -f vdi "${cmds[@]}" v.vdi >/dev/null || fail "vimg-io writes"
cmp q.vdi v.vdi || fail "writes over discarded blocks gave different files"
check map --output=json v.vdi
for r in leaks all; do
    check check -r "$r" v.vdi
done
run_both st create -f vdi -o static=on s.vdi 3M
expect_same st.q st.v "create static=on"
qemu-img create -q -f vdi -o static=on qs.vdi 3M
"$VIMG" create -q -f vdi -o static=on vs.vdi 3M || fail "vimg create static=on"
cmp -i 0:0 -n $((0x188)) qs.vdi vs.vdi || fail "static headers differ"   # UUIDs follow
cmp -i 512:512 qs.vdi vs.vdi || fail "static block maps or data differ"
check info qs.vdi
check info --output=json qs.vdi
check check vs.vdi
pass
