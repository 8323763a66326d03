#!/bin/bash
# Proves: the first write of each open gives a vmdk image a new CID, as
# qemu-io/qemu-img do: the descriptor text is the same as qemu-io leaves it
# but for the (random) CID, the file has the same length (a separate
# descriptor file grows to a whole sector, the 20-sector descriptor area of
# a sparse file is rewritten in place), the rest of the file is byte for byte
# the same; opening and reading changes nothing. A child whose parent was
# written since then fails to read through to it, in both tools.
# Subformats: monolithicSparse, monolithicFlat (a 640-byte descriptor too),
# twoGbMaxExtentSparse, streamOptimized (compressed writes), and a descriptor
# whose parentCID line comes before CID.
source "$(dirname "$0")/lib.sh"
need qemu-io qemu-img python3
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"
cd "$TESTDIR"

# same_but_cid A B [text]: the files are equal once the CID values (random) are
# masked; with "text", only their descriptor texts are compared.
same_but_cid() {
    python3 - "$1" "$2" "${3:-all}" <<'PY' || fail "$1 and $2 differ beyond the CID"
import re, sys
def load(path):
    b = open(path, "rb").read()
    at = 512 if b[:4] in (b"KDMV", b"COWD") else 0
    area = b[at:at + 10240]
    text = area.split(b"\0", 1)[0]
    text = re.sub(rb"CID=[0-9a-f]+", rb"CID=X", text)
    return len(b), text, b[:at] + b[at + 10240:], len(area.split(b"\0", 1)[0])
a, b = load(sys.argv[1]), load(sys.argv[2])
sys.exit(0 if (a[:3] == b[:3] if sys.argv[3] == "all" else a[1] == b[1]) else 1)
PY
}
# desc_of FILE: the descriptor text, unmasked.
desc_of() {
    python3 -c 'import sys; b = open(sys.argv[1], "rb").read(); at = 512 if b[:4] == b"KDMV" else 0
sys.stdout.buffer.write(b[at:at + 10240].split(b"\0", 1)[0])' "$1"
}

mk() {      # mk NAME SUBFORMAT [python edit of the descriptor]
    rm -f "$1"*.vmdk
    qemu-img create -q -f vmdk -o subformat="$2" "$1.vmdk" 4M || fail "create $2"
    [ -n "${3:-}" ] && python3 -c "$3" "$1.vmdk"
    return 0
}
grow='import sys; p=sys.argv[1]; s=open(p).read(); open(p,"w").write(s+"#"+"x"*300+"\n")'
swap='import sys,re; p=sys.argv[1]; s=open(p).read(); c=re.search(r"\nCID=.*\n", s).group(0); s=s.replace(c, "\n", 1).replace("createType", c[1:] + "createType", 1); open(p,"w").write(s)'

# Each tool works in its own directory, on files of the same names (an
# embedded descriptor names its extent file).
mkdir q v
n=0
for spec in "monolithicSparse" "monolithicFlat" "monolithicFlat:$grow" "twoGbMaxExtentSparse" \
            "streamOptimized" "monolithicFlat:$swap"; do
    sub=${spec%%:*} edit=
    [ "$spec" != "$sub" ] && edit=${spec#*:}
    n=$((n + 1))
    for tool in q v; do
        (
            cd $tool || exit 1
            mk "i$n" "$sub" "$edit"
            cp "i$n.vmdk" "orig$n"
            io=qemu-io
            [ $tool = v ] && io=$VIMG_IO
            # Reads alone leave the image as it was.
            "$io" -c "read 0 64k" "i$n.vmdk" >/dev/null || fail "$io read ($sub)"
            cmp -s "i$n.vmdk" "orig$n" || fail "$io read changed $sub"
            if [ "$sub" = streamOptimized ]; then
                "$io" -c "write -c -P 0x3c 0 64k" -c "write -c -P 0x3d 1M 64k" "i$n.vmdk"
            else
                "$io" -c "write -P 0x3c 0 4k" -c "write -P 0x3d 1M 64k" "i$n.vmdk"
            fi >/dev/null || fail "$io write ($sub)"
        ) || exit 1
    done
    # Where compressed grains go after a reopen is laid out differently (vimg
    # appends at the end of the data, qemu-img further on): the text only there.
    if [ "$sub" = streamOptimized ]; then
        same_but_cid "q/i$n.vmdk" "v/i$n.vmdk" text
    else
        same_but_cid "q/i$n.vmdk" "v/i$n.vmdk"
    fi
    for f in q/i$n-*.vmdk; do
        [ -e "$f" ] || continue
        cmp -s "$f" "v/${f#q/}" || fail "extent $f differs ($sub)"
    done
    [ "$(desc_of v/i$n.vmdk)" != "$(desc_of v/orig$n)" ] || fail "vimg-io kept the CID ($sub)"
    qemu-img check -q "v/i$n.vmdk" || fail "qemu-img check after vimg-io write ($sub)"
    qemu-io -c "read -P 0x3d 1M 64k" "v/i$n.vmdk" | grep -q "^read" || fail "read back ($sub)"
done

# A child whose parent got a new CID since it was made no longer reads through.
for tool in q v; do
    (
        cd $tool || exit 1
        qemu-img create -q -f vmdk base.vmdk 4M
        qemu-io -c "write -P 0x11 0 1M" base.vmdk >/dev/null
        qemu-img create -q -f vmdk -b base.vmdk -F vmdk top.vmdk
        io=qemu-io
        [ $tool = v ] && io=$VIMG_IO
        {
            "$io" -c "read -P 0x11 0 64k" top.vmdk; echo "exit=$?"
            "$io" -c "write -P 0x22 2M 4k" base.vmdk; echo "exit=$?"
            "$io" -c "read -P 0x11 0 64k" top.vmdk; echo "exit=$?"
        } 2>&1 | sed -e 's/^vimg-io:/qemu-io:/' -e 's/([0-9.]* [KMG]iB\/sec.*)/(X)/' \
                     -e 's/[0-9]*\.[0-9][0-9] sec/T/' >../chain.$tool
    ) || exit 1
done
expect_same chain.q chain.v "child of a parent written since"
pass
