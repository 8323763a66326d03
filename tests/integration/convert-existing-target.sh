#!/bin/bash
# Proves: `vimg convert -n` writes into an existing target as `qemu-img
# convert -n` does: onto a larger target (the tail is kept), onto a smaller
# one (refused), with --target-is-zero (zero areas are not written), -S 0,
# -B (zero areas written, --target-is-zero refused yet exit 0), several
# sources and --target-image-opts. Content, holes and messages must match.
source "$(dirname "$0")/lib.sh"

# run q|v ARGS...: runs qemu-img (q) or vimg (v).
run() { local t=$1; shift; if [ "$t" = q ]; then qemu-img "$@"; else "$VIMG" "$@"; fi; }
need qemu-img python3

truncate -s 12M m.img
python3 - <<'PY'
import os, random
rnd = random.Random(3)
fd = os.open("m.img", os.O_WRONLY)
os.pwrite(fd, bytes(rnd.randrange(1, 256) for _ in range(1 << 20)), 0)
os.pwrite(fd, bytes(1 << 20), 1 << 20)
os.pwrite(fd, bytes(rnd.randrange(1, 256) for _ in range(5000)), 3 << 20)
os.close(fd)
PY
python3 -c 'import sys; sys.stdout.buffer.write(bytes([0x5a]) * (16 << 20))' >dirty16.img
head -c 8M dirty16.img >dirty8.img

# into TEMPLATE ARGS...: both tools convert into a fresh copy of TEMPLATE at o.img.
into() {
    local tpl=$1 tool; shift
    for tool in q v; do
        cp "$tpl" o.img
        run $tool "$@" >"out.$tool" 2>&1
        echo "exit=$?" >>"out.$tool"
        qemu-img map -f raw --output=json o.img >"map.$tool"
        mv o.img "o.$tool"
    done
    sed -i 's/qemu-img:/TOOL:/g; s/vimg:/TOOL:/g' out.q out.v
    expect_same out.q out.v "output of convert $*"
    cmp -s o.q o.v || fail "content differs: convert $*"
    expect_same map.q map.v "map after convert $*"
}

for extra in "" "-p" "-S 0" "-S 64k" "--target-is-zero" "-B base.img" "-p --target-is-zero -B x" \
             "-C" "-W" "-O raw" "-m 1"; do
    into dirty16.img convert -n -f raw $extra m.img o.img
    into dirty8.img convert -n -f raw $extra m.img o.img
done
into dirty16.img convert -n -f raw m.img m.img o.img
into dirty16.img convert -n -f raw m.img m.img m.img o.img
into dirty16.img convert -n --target-image-opts -f raw m.img driver=raw,file.filename=o.img
into dirty16.img convert -n --target-image-opts -f raw m.img driver=file,filename=o.img
into dirty16.img convert -n --target-is-zero -p -f raw m.img o.img

# The 4 MiB past the source keep their bytes.
"$VIMG" convert -n -f raw -O raw m.img dirty16.img
cmp -s <(tail -c 4M dirty16.img) <(head -c 4M dirty8.img) || fail "-n changed the target's tail"
pass
