#!/bin/bash
# Proves: as in qemu-img, a protocol URL is parsed only when it comes as a
# filename string (positional argument, backing file name, -b), not as a
# "filename" option (--image-opts, json:, dotted keys): nbd, iscsi and ssh
# then ignore it, and with no driver no URI prefix picks the protocol (the
# file protocol opens it). vimg and qemu-img print the same and exit alike for
# every form; a live qemu-nbd proves the string forms still work (backing file
# strings, vimg-io -s). Also: a file whose length is not a multiple of the
# O_DIRECT alignment but is once rounded up to a sector is writable, as in
# qemu-io, with the same bytes written.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd

same() { run_both out "$@"; expect_same out.q out.v "$*"; }
# has DRIVER: both tools know the driver (optional libraries, qemu-block-extra).
has() {
    "$VIMG" --help | grep "^Supported formats:" | grep -qw "$1" &&
        qemu-img --help | grep "^Supported formats:" | grep -qw "$1"
}

# Dead addresses: nothing listens, so an answer other than "refused" shows the URL was ignored.
NBD=nbd://127.0.0.1:1/x
forms=(
    "driver=nbd,filename=$NBD"
    "driver=raw,file.driver=nbd,file.filename=$NBD"
    "driver=raw,file.filename=$NBD"
    "file.filename=$NBD"
    "driver=nbd,filename=$NBD,host=127.0.0.1,port=1"
    "driver=nbd,filename=bogus,host=127.0.0.1,port=1"
    "driver=raw,file.filename=gluster://127.0.0.1:1/v/x"
    "driver=raw,file.filename=ssh://127.0.0.1:1/x"
    "driver=raw,file.filename=blkdebug::/nonexistent"
)
has iscsi && forms+=(
    "driver=iscsi,filename=iscsi://127.0.0.1:1/iqn.x/0"
    "driver=raw,file.driver=iscsi,file.filename=iscsi://127.0.0.1:1/iqn.x/0"
    "driver=raw,file.filename=iscsi://127.0.0.1:1/iqn.x/0"
    "driver=iscsi,filename=bogus"
)
has ssh && forms+=(
    "driver=ssh,filename=ssh://127.0.0.1:1/x"
    "driver=raw,file.driver=ssh,file.filename=ssh://127.0.0.1:1/x"
    "driver=ssh,path=/x"
    "driver=ssh,server.port=22,path=/x"
)
for o in "${forms[@]}"; do
    same info --image-opts "$o"
done
for j in "{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"filename\":\"$NBD\"}}" \
         "{\"file.filename\":\"$NBD\"}" "{\"driver\":\"nbd\",\"filename\":\"$NBD\"}" \
         "{\"driver\":\"raw\",\"file.filename\":\"$NBD\"}" "{\"filename\":\"$NBD\"}"; do
    same info "json:$j"
done
# The string forms are parsed: the URL's address is used.
same info "$NBD"
same info -f raw "$NBD"
same info -f nbd "$NBD"
has iscsi && same info "iscsi://127.0.0.1:1/iqn.x/0"

# A live server: string forms reach it, option forms are ignored beside server.*.
qemu-img create -q -f raw base.raw 4M
qemu-io -f raw -c 'write -P 0x5a 1M 64k' base.raw >/dev/null
qemu-nbd -t -k "$TESTDIR/b.sock" -f raw base.raw & nbd_pid=$!
on_exit "kill $nbd_pid"
for _ in $(seq 100); do [ -S "$TESTDIR/b.sock" ] && break; sleep 0.05; done
[ -S "$TESTDIR/b.sock" ] || fail "qemu-nbd did not start"
URL="nbd+unix:///?socket=$TESTDIR/b.sock"
same info "$URL"
same info --image-opts "driver=nbd,filename=$NBD,server.type=unix,server.path=$TESTDIR/b.sock"
same info --image-opts "driver=raw,file.filename=$URL"
# "file:" is a prefix of the string form only (the option form: see the notes).
same info "file:$TESTDIR/base.raw"
same info -f raw "file:$TESTDIR/base.raw"
same info --image-opts "driver=raw,file.filename=file:$TESTDIR/base.raw"
same info --image-opts "driver=file,filename=file:$TESTDIR/base.raw"
# A backing name with a protocol prefix stands as it is, not relative to the image's directory.
mkdir sub
"$VIMG" create -q -f qcow2 -b "file:$TESTDIR/base.raw" -F raw sub/fb.qcow2 ||
    fail "create -b file:... refused"
same info --backing-chain sub/fb.qcow2
same compare -f qcow2 -F raw sub/fb.qcow2 "$TESTDIR/base.raw"
# A backing file name is a string: -b and the name in the header are parsed.
same create -f qcow2 -b "$URL" -F raw top.qcow2
qemu-img create -q -f qcow2 -b "$URL" -F raw top.qcow2
same info --backing-chain top.qcow2
same map --output=json top.qcow2
same info --image-opts "driver=qcow2,file.filename=top.qcow2,backing.driver=raw,backing.file.filename=$URL"
same info --image-opts "driver=qcow2,file.filename=top.qcow2,backing.driver=raw,backing.file.driver=nbd,backing.file.filename=$URL"
same info --image-opts "driver=qcow2,file.filename=top.qcow2,backing.driver=nbd,backing.filename=$URL"
# vimg-io -s puts the image under a temporary overlay: a URL must still be parsed.
for f in "-f nbd" "-f raw" ""; do
    # shellcheck disable=SC2086
    "$VIMG_IO" -s $f -c 'read -P 0x5a 1M 64k' -c 'write -P 0x11 0 4k' -c 'read -P 0x11 0 4k' \
        "$URL" >out.v 2>&1 || fail "vimg-io -s $f $URL: $(cat out.v)"
done
qemu-io -f raw -r -c 'read -P 0 0 4k' base.raw >/dev/null || fail "-s wrote to the base"

# Odd-sized file, O_DIRECT: qemu compares the length in whole sectors with the alignment,
# which is 4096 when the probe read hits a hole (a sparse start).
for kind in data hole; do
    for size in 1000 2048 4096 4000; do
        if [ $kind = data ]; then head -c "$size" /dev/urandom >odd.orig
        else rm -f odd.orig; truncate -s "$size" odd.orig; fi
        for tool in qemu-io "$VIMG_IO"; do
            t=$(basename "$tool")
            cp --sparse=always odd.orig "odd.$t"
            last=$(((size - 1) / 512 * 512))
            "$tool" -f raw -t none -c 'write -P 7 0 512' -c "write -P 8 $last 100" \
                -c "read -P 8 $last 100" -c length "odd.$t" >"o.$t.raw" 2>&1
            echo "exit=$?" >>"o.$t.raw"
            sed -e 's/^qemu-io:/TOOL:/; s/^vimg-io:/TOOL:/' -e '/ops; /d' -e "s/odd\.$t/IMG/" \
                "o.$t.raw" >"o.$t"
        done
        grep -q "O_DIRECT\|Invalid argument" o.qemu-io && { echo "no O_DIRECT here"; continue; }
        expect_same o.qemu-io o.vimg-io "$kind file of $size bytes with -t none"
        cmp odd.qemu-io odd.vimg-io || fail "$kind file of $size bytes: different bytes written"
        [ $kind = data ] && [ $size = 4000 ] && { grep -q "^wrote 100/100" o.vimg-io ||
            fail "a file aligned once rounded to a sector was not written: $(cat o.vimg-io)"; }
    done
done

pass
