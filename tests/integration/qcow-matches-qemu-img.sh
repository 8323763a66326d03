#!/bin/bash
# Proves: `create -f qcow` (help, Formatting line, backing_file, sizes,
# encryption options) writes the same bytes and messages as qemu-img; `info`
# and `map` match; bad header fields fail with qemu-img's messages; the same
# qemu-io command list run by qemu-io and vimg-io (also over a backing file,
# copying on write, and over compressed clusters) gives files that
# `qemu-img compare` finds equal; images qemu-img writes, compressed ones
# included, read back identically in vimg.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

n=0
check() {  # ARGS...: vimg and qemu-img print the same and exit alike
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

check create -f qcow -o help
check create -f qcow x.qcow
check create -f qcow -o encryption=on e.qcow 1M
check create -f qcow -o encrypt.format=aes e.qcow 1M
check create -f qcow -o encrypt.format=luks e.qcow 1M
check create -f qcow -o encryption=on,encrypt.format=aes e.qcow 1M
qemu-img create -f raw base.raw 3M >/dev/null
qemu-io -f raw -c 'write -P 0x11 0 3M' base.raw >/dev/null
check create -f qcow -b base.raw nofmt.qcow
for opts in "5M" "1000" "-o encryption=off 2G" "-b base.raw -F raw 6M" "-b base.raw -F raw"; do
    # shellcheck disable=SC2086
    qemu-img create -f qcow q.qcow $opts >q.out || fail "qemu-img create $opts"
    # shellcheck disable=SC2086
    "$VIMG" create -f qcow v.qcow $opts | sed 's/v\.qcow/q.qcow/' >v.out || fail "vimg create $opts"
    expect_same q.out v.out "Formatting line for $opts"
    cmp q.qcow v.qcow || fail "vimg and qemu-img created different files for $opts"
    check info q.qcow
    check info --output=json q.qcow
done

# The same writes through qemu-io and vimg-io: equal images, same layout.
cmds=(-c 'write -P 0xaa 1000 512' -c 'write -P 0xbb 3M 4096' -c 'write -P 0xcc 100k 200k'
      -c 'write -P 0xdd 4000k 300k' -c 'write -P 0xee 3M 512')
for opts in "5M" "-b base.raw -F raw 6M"; do
    # shellcheck disable=SC2086
    qemu-img create -f qcow q.qcow $opts >/dev/null
    cp q.qcow v.qcow
    qemu-io -f qcow "${cmds[@]}" q.qcow >/dev/null || fail "qemu-io writes ($opts)"
    "$VIMG_IO" -f qcow "${cmds[@]}" v.qcow >/dev/null || fail "vimg-io writes ($opts)"
    cmp q.qcow v.qcow || fail "vimg-io and qemu-io wrote different files ($opts)"
    qemu-img compare q.qcow v.qcow >/dev/null || fail "qemu-img compare ($opts)"
    check info q.qcow
    check map --output=json q.qcow
    qemu-img convert -O raw q.qcow q.raw
    "$VIMG" convert -O raw q.qcow v.raw || fail "vimg convert ($opts)"
    cmp q.raw v.raw || fail "vimg reads qemu-img's image differently ($opts)"
done
"$VIMG" convert -O qcow q.raw c.qcow || fail "convert to qcow"
qemu-img compare q.raw c.qcow >/dev/null || fail "converted image differs"

# Compressed clusters written by qemu-img: read, mapped, and rewritten alike.
head -c 200000 /dev/urandom >r.raw
qemu-io -f raw -c 'write -P 0x33 0 50000' -c 'write -P 0x44 150000 3000' r.raw >/dev/null
truncate -s 1M r.raw
qemu-img convert -c -O qcow r.raw z.qcow
qemu-img convert -O raw z.qcow q.raw
"$VIMG" convert -O raw z.qcow v.raw || fail "vimg convert of compressed image"
cmp q.raw v.raw || fail "vimg reads compressed clusters differently"
cmp r.raw v.raw || fail "compressed image does not hold its source"
check map --output=json z.qcow
check info z.qcow
cp z.qcow zq.qcow
cp z.qcow zv.qcow
qemu-io -f qcow -c 'write -P 0x55 4100 100' -c 'write -P 0x66 150000 10' zq.qcow >/dev/null
"$VIMG_IO" -f qcow -c 'write -P 0x55 4100 100' -c 'write -P 0x66 150000 10' zv.qcow \
    >/dev/null || fail "vimg-io writes over compressed clusters"
qemu-img compare zq.qcow zv.qcow >/dev/null || fail "writes over compressed clusters differ"

# Bad header fields: qemu-img's messages.
qemu-img create -f qcow -b base.raw -F raw base.qcow 6M >/dev/null
corrupt() {  # FIELD-POKES...: poke a copy of base.qcow, compare info
    cp base.qcow h.qcow
    while [ $# -gt 0 ]; do
        "$1" h.qcow $(($2)) "$3"
        shift 3
    done
    check info -f qcow h.qcow
}
corrupt poke_be32 0 1                           # magic
corrupt poke_be32 4 2                           # version: qcow2's
corrupt poke_be32 4 5                           # version unknown
corrupt poke_be64 24 1                          # size too small
corrupt poke_be64 24 0x10000000000000           # size: L1 table too large
corrupt poke_u8 32 8                            # cluster_bits too small
corrupt poke_u8 32 17                           # cluster_bits too large
corrupt poke_u8 32 16                           # cluster_bits largest
corrupt poke_u8 33 5                            # l2_bits too small
corrupt poke_u8 33 14                           # l2_bits too large
corrupt poke_be32 36 2                          # crypt_method unknown
corrupt poke_be32 36 1                          # crypt_method AES: info only
corrupt poke_be64 40 0x10000000                 # l1_table_offset past the end: zeros
corrupt poke_be64 40 0x7fffffffffffff00         # l1_table_offset unreadable
corrupt poke_be32 16 1024                       # backing name too long
corrupt poke_be32 16 1023                       # backing name past the end
corrupt poke_be64 8 0x100000                    # backing name offset past the end
pass
