#!/bin/bash
# Proves: `create -f qed` (help, Formatting line, cluster_size, table_size,
# backing_file/backing_fmt, range errors) writes the same bytes as qemu-img;
# `info`, `map` and `check` match; bad header fields fail with qemu-img's
# messages; the same qemu-io command list run by qemu-io and vimg-io (also
# over a backing file, copying on write) gives byte-identical files that pass
# `qemu-img check`; images qemu-img writes read back identically in vimg.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

n=0
check() {  # ARGS...: vimg and qemu-img print the same and exit alike
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

check create -f qed -o help
check create -f qed -o help x.qed
for o in cluster_size=2k cluster_size=3k cluster_size=128M table_size=3 table_size=32 \
         table_size=0; do
    check create -f qed -o "$o" bad.qed 1M
done
check create -f qed big.qed 1P
qemu-img create -f raw base.raw 3M >/dev/null
qemu-io -f raw -c 'write -P 0x11 0 3M' base.raw >/dev/null
for opts in "5M" "-o cluster_size=8k,table_size=2 5M" \
            "-b base.raw -F raw -o cluster_size=16k 6M"; do
    # shellcheck disable=SC2086
    qemu-img create -f qed q.qed $opts >q.out || fail "qemu-img create $opts"
    # shellcheck disable=SC2086
    "$VIMG" create -f qed v.qed $opts | sed 's/v\.qed/q.qed/' >v.out || fail "vimg create $opts"
    expect_same q.out v.out "Formatting line for $opts"
    cmp q.qed v.qed || fail "vimg and qemu-img created different files for $opts"
    check info q.qed
    check info --output=json q.qed
    check check q.qed
done

# The same writes through qemu-io and vimg-io: identical files.
cmds=(-c 'write -P 0xaa 1000 512' -c 'write -P 0xbb 3M 4096' -c 'write -P 0xcc 100k 200k'
      -c 'write -P 0xdd 4000k 300k' -c 'write -P 0xee 3M 512')
for opts in "5M" "-o cluster_size=8k,table_size=2 5M" "-b base.raw -F raw -o cluster_size=16k 6M"; do
    # shellcheck disable=SC2086
    qemu-img create -f qed q.qed $opts >/dev/null
    cp q.qed v.qed
    qemu-io -f qed "${cmds[@]}" q.qed >/dev/null || fail "qemu-io writes ($opts)"
    "$VIMG_IO" -f qed "${cmds[@]}" v.qed >/dev/null || fail "vimg-io writes ($opts)"
    cmp q.qed v.qed || fail "vimg-io and qemu-io wrote different files ($opts)"
    qemu-img check v.qed >/dev/null || fail "qemu-img check of vimg-io's image ($opts)"
    check info q.qed
    check map --output=json q.qed
    check check q.qed
    check check --output=json q.qed
    qemu-img convert -O raw q.qed q.raw
    "$VIMG" convert -O raw q.qed v.raw || fail "vimg convert ($opts)"
    cmp q.raw v.raw || fail "vimg reads qemu-img's image differently ($opts)"
done
"$VIMG" convert -O qed q.raw c.qed || fail "convert to qed"
qemu-img check c.qed >/dev/null || fail "qemu-img check of converted image"
qemu-img compare q.raw c.qed >/dev/null || fail "converted image differs"

# Bad header fields: qemu-img's messages.
qemu-img create -f qed base.qed 5M >/dev/null
corrupt() {  # FIELD-POKES...: poke a copy of base.qed, compare info
    cp base.qed h.qed
    while [ $# -gt 0 ]; do
        "$1" h.qed $(($2)) "$3"
        shift 3
    done
    check info h.qed
}
corrupt poke_le32 0 1                           # magic
corrupt poke_le32 4 0x800                       # cluster_size too small
corrupt poke_le32 4 0x10001                     # cluster_size not a power of 2
corrupt poke_le32 8 0                           # table_size
corrupt poke_le32 8 3
corrupt poke_le32 12 2                          # header_size covers the L1 table
corrupt poke_le64 16 8                          # unknown feature
corrupt poke_le64 16 2                          # need-check: read-only opens
corrupt poke_le64 40 0x10001                    # l1_table_offset unaligned
corrupt poke_le64 40 0x1000000                  # l1_table_offset past the end
corrupt poke_le64 48 0x100                      # image_size not whole sectors
corrupt poke_le64 48 0x1000000000000            # image_size past the tables
corrupt poke_le64 16 1 poke_le32 56 64 poke_le32 60 0x10000    # backing name past header
pass
