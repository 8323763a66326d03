#!/bin/bash
# Proves: vimg reads VHDX images as MANIFEST.tsv, qemu-img and libvhdi read
# them (Hyper-V's dynamic sample); `info`, `map` and `check` match qemu-img;
# an image with an unreplayed log is refused read-only with qemu-img's
# message, and a read-write open (`check -r all`, vimg-io) replays it into
# the same file qemu-img makes, headers aside; corrupt headers, region
# tables, metadata and BATs fail (or open) as in qemu-img.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

manifest() {  # FILE.bz2 COLUMN
    awk -F'\t' -v f="$1" -v c="$2" '$1 == f { print $c }' "$SHARED/testdata/MANIFEST.tsv"
}

n=0
check() {  # ARGS...: vimg and qemu-img print the same and exit alike
    n=$((n + 1))
    run_both "c$n" "$@"
    expect_same "c$n.q" "c$n.v" "$*"
}

# The Hyper-V sample: info, map, check and content.
dyn=$(basename "$(testdata iotest-dynamic-1G.vhdx.bz2)") || exit 1
check info "$dyn"
check info --output=json "$dyn"
check map --output=json "$dyn"
check check "$dyn"
check check --output=json "$dyn"
"$VIMG" convert -O raw "$dyn" dyn.raw || fail "convert $dyn"
[ "$(sha256sum <dyn.raw | cut -d' ' -f1)" = "$(manifest iotest-dynamic-1G.vhdx.bz2 5)" ] ||
    fail "$dyn: content differs"
rm -f dyn.raw
"$VIMG_IO" -c 'read -P 0xa5 0 33M' -c 'read -P 0x96 33M 33M' -c 'read -P 0 66M 958M' "$dyn" \
    >/dev/null || fail "$dyn: vimg-io reads differently"

# The unreplayed log: refused read-only, replayed read-write.
dirty=$(basename "$(testdata iotest-dirtylog-10G-4M.vhdx.bz2)") || exit 1
check info "$dirty"
check info -f vhdx --output=json "$dirty"
check check "$dirty"
cp "$dirty" q.vhdx
cp "$dirty" v.vhdx
(qemu-img check -r all q.vhdx; echo "exit=$?") >cq 2>&1
("$VIMG" check -r all v.vhdx; echo "exit=$?") >cv 2>&1
expect_same cq cv "check -r all"
check info --output=json v.vhdx
check check v.vhdx
qemu-img check v.vhdx >/dev/null || fail "qemu-img check refuses the replayed image"
# Same bytes as qemu-img's replay, except the two headers (new GUIDs, sequence numbers).
# With that, the content is the manifest's (hashing 10 GiB would take a minute).
cmp <(head -c $((64 << 10)) q.vhdx) <(head -c $((64 << 10)) v.vhdx) || fail "file identifier"
cmp <(tail -c +$(((192 << 10) + 1)) q.vhdx) <(tail -c +$(((192 << 10) + 1)) v.vhdx) ||
    fail "replayed image differs from qemu-img's"
cp "$dirty" io.vhdx
"$VIMG_IO" -c 'read 0 512' io.vhdx >/dev/null || fail "vimg-io read-write open"
cmp <(tail -c +$(((192 << 10) + 1)) q.vhdx) <(tail -c +$(((192 << 10) + 1)) io.vhdx) ||
    fail "vimg-io replay differs from qemu-img's"

# Corrupt images, one named field each.
c=0
corrupt() {  # POKE-COMMAND ARGS... (on the next k<N>.vhdx)
    c=$((c + 1))
    cp "$dyn" "k$c.vhdx"
    "$@"
    check info "k$c.vhdx"
}
k() { echo "k$((c + 1)).vhdx"; }
corrupt poke_le32 "$(k)" $((0x10004)) 0                     # header 1 checksum: header 2 used
corrupt eval "poke_le32 $(k) $((0x10004)) 0; poke_le32 $(k) $((0x20004)) 0"
corrupt poke_le32 "$(k)" $((0x30004)) 0                     # region table 1 checksum
corrupt poke_le32 "$(k)" $((0x40004)) 0                     # region table 2: not read
corrupt poke_le32 "$(k)" $((0x210000)) 1000                 # block size
corrupt poke_le32 "$(k)" $((0x210000)) 0
corrupt poke_le32 "$(k)" $((0x210004)) 2                    # has parent
corrupt poke_le32 "$(k)" $((0x210010)) 1024                 # logical sector size
corrupt poke_le32 "$(k)" $((0x210014)) 1024                 # physical: not checked
corrupt poke_le64 "$(k)" $((0x210008)) 0x100000000000000    # disk size past 64 TiB
corrupt poke_le64 "$(k)" $((0x210008)) 1000                 # disk size, rounded down
corrupt poke_le64 "$(k)" $((0x200000)) 0                    # metadata signature
corrupt poke_le16 "$(k)" $((0x20000a)) 0                    # no metadata items
corrupt truncate -s 3M "$(k)"                               # BAT past the end
corrupt truncate -s 100 "$(k)"
corrupt poke_le64 "$(k)" $((0x300000)) 4                    # invalid BAT state
pass
