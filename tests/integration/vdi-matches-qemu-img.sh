#!/bin/bash
# Proves: `create -f vdi` (help, Formatting line, static=on, size rounding and
# limits) writes the same layout as qemu-img; `info` and `map` match; bad
# header fields fail with qemu-img's messages; `check` matches on clean and
# corrupt block maps (exit codes); the same qemu-io command list run by
# qemu-io and vimg-io gives byte-identical files that pass `qemu-img check`;
# images qemu-img writes read back identically in vimg.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

n=0
check() {  # ARGS...: vimg and qemu-img print the same and exit alike
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

# The layout without the two random UUIDs.
layout() { xxd "$1" | grep -v '^00000180\|^00000190\|^000001a0'; }

check create -f vdi -o help
check create -f vdi -o help x.vdi
check create -f vdi nosize.vdi
check create -f vdi -o cluster_size=4k bad.vdi 1M
check create -f vdi big.vdi 0x1fffff8000001
for opts in "5M" "5243000" "0" "-o static=on 3M" "-o static=off 2M" "1G"; do
    # shellcheck disable=SC2086
    qemu-img create -f vdi q.vdi $opts >q.out || fail "qemu-img create $opts"
    # shellcheck disable=SC2086
    "$VIMG" create -f vdi v.vdi $opts | sed 's/v\.vdi/q.vdi/' >v.out || fail "vimg create $opts"
    expect_same q.out v.out "Formatting line for $opts"
    layout q.vdi >q.hex
    layout v.vdi >v.hex
    expect_same q.hex v.hex "layout for $opts"
    qemu-img check v.vdi >/dev/null || fail "qemu-img check of vimg's $opts image"
    check info q.vdi
    check info --output=json q.vdi
    check check q.vdi
    check check --output=json q.vdi
done

# The same writes through qemu-io and vimg-io: identical files.
qemu-img create -f vdi base.vdi 7M >/dev/null
cp base.vdi q.vdi
cp base.vdi v.vdi
cmds=(-c 'write -P 0xaa 1000 512' -c 'write -P 0xbb 3M 4096' -c 'write -z 4M 64k'
      -c 'write -P 0xcc 1M 2M' -c 'write -P 0xdd 6M 1M' -c 'write -P 0xee 3M 512')
qemu-io -f vdi "${cmds[@]}" q.vdi >/dev/null || fail "qemu-io writes"
"$VIMG_IO" -f vdi "${cmds[@]}" v.vdi >/dev/null || fail "vimg-io writes"
cmp q.vdi v.vdi || fail "vimg-io and qemu-io wrote different files"
qemu-img check v.vdi >/dev/null || fail "qemu-img check of vimg-io's image"
check info q.vdi
check map --output=json q.vdi
check check q.vdi
qemu-img convert -O raw q.vdi q.raw
"$VIMG" convert -O raw q.vdi v.raw || fail "vimg convert"
cmp q.raw v.raw || fail "vimg reads qemu-img's image differently"

# vimg convert to vdi (static and dynamic) reads back identically in qemu-img.
for st in off on; do
    "$VIMG" convert -O vdi -o static=$st q.raw c.vdi || fail "convert to vdi static=$st"
    qemu-img check c.vdi >/dev/null || fail "qemu-img check of converted static=$st"
    qemu-img compare q.raw c.vdi >/dev/null || fail "converted static=$st differs"
    rm -f c.vdi
done

# Corrupt block maps: the same exit codes and stdout.
cp q.vdi m.vdi
poke_le32 m.vdi 516 0              # block 1 maps to data block 0, already block 0's
run_both cm check m.vdi
grep -v '^TOOL: \|^ERROR' cm.q >cm.q2
grep -v '^TOOL: \|^ERROR' cm.v >cm.v2
expect_same cm.q2 cm.v2 "check of a block used twice"
cp q.vdi m.vdi
poke_le32 m.vdi $((0x184)) 9        # blocks_allocated
check info m.vdi
run_both cm check m.vdi
grep -v '^TOOL: \|^ERROR' cm.q >cm.q2
grep -v '^TOOL: \|^ERROR' cm.v >cm.v2
expect_same cm.q2 cm.v2 "check of a wrong blocks_allocated"

# Bad header fields: qemu-img's messages, in qemu-img's order.
corrupt() {  # FIELD-POKES...: poke a copy of base.vdi, compare info
    cp base.vdi h.vdi
    while [ $# -gt 0 ]; do
        "$1" h.vdi $(($2)) "$3"
        shift 3
    done
    check info h.vdi
}
corrupt poke_le32 0x40 0x12345678                      # signature
corrupt poke_le32 0x44 0x00010000                      # version 1.0
corrupt poke_le32 0x44 0x00020001                      # version 2.1
corrupt poke_le32 0x154 0x201                          # offset_bmap unaligned
corrupt poke_le32 0x158 0x401                          # offset_data unaligned
corrupt poke_le32 0x168 0x400                          # sector_size
corrupt poke_le64 0x170 0x700001                       # disk_size past the map
corrupt poke_le64 0x170 0x7ffffffffff00000             # disk_size past the limit
corrupt poke_le64 0x170 0x100                          # disk_size not whole sectors
corrupt poke_le32 0x178 0x200000                       # block_size
corrupt poke_le32 0x180 6                              # blocks_in_image too few
corrupt poke_le32 0x180 0x3fffffff                     # blocks_in_image too many
corrupt poke_le32 0x1a8 1                              # uuid_link
corrupt poke_le32 0x1b8 1                              # uuid_parent
corrupt poke_le32 0x4c 0 poke_le32 0x50 1              # image_type, flags: ignored
corrupt poke_le32 0x168 0x400 poke_le32 0x178 0x200000 poke_le32 0x1a8 1
corrupt poke_le32 0x178 0x200000 poke_le32 0x180 4
corrupt poke_le32 0x180 4 poke_le32 0x1a8 1
corrupt poke_le32 0x180 0x3fffffff poke_le32 0x1a8 1
pass
