#!/bin/bash
# Proves: `vimg info` (human and JSON, json: filenames, --image-opts, errors)
# prints exactly what `qemu-img info` prints for raw images.
source "$(dirname "$0")/lib.sh"
need qemu-img

qemu-img create -q -f raw a.raw 1G
qemu-img create -q -f raw small.raw 1000
truncate -s 1000 odd.raw
dd if=/dev/urandom of=data.raw bs=64k count=3 status=none
mkdir dir
touch unreadable.raw; chmod 000 unreadable.raw

n=0
check() {
    n=$((n + 1))
    run_both "i$n" info "$@"
    expect_same "i$n.q" "i$n.v" "info $*"
}
for f in a.raw small.raw odd.raw data.raw; do
    check "$f"
    check --output=json "$f"
    check -f raw --output=json "$f"
    check --output=human "$f"
done
check -U a.raw
check --backing-chain a.raw
check --output=json --backing-chain a.raw
check 'json:{"driver":"raw","file":{"driver":"file","filename":"a.raw"}}'
check --output=json 'json:{"file":{"driver":"file","filename":"a.raw"}}'
check 'json:{"driver":"raw","foo":1,"file":{"driver":"file","filename":"a.raw"}}'
check 'json:{"driver":"raw","file":{"driver":"file","filename":"a.raw","bar":2}}'
check 'json:{"driver":"raw"'
check 'json:{"driver":"raw"}'
check 'json:{"driver":"raw",}'
check 'json:[1]'
check 'json:{}x'
check --image-opts driver=raw,file.filename=a.raw
check --image-opts driver=raw,file.filename=a.raw,offset=1024,size=512 --output=json
check --image-opts driver=raw,file.filename=a.raw,offset=1024
check 'json:{"driver":"raw","offset":512,"size":1024,"file":{"driver":"file","filename":"a.raw"}}'
check --output=json 'json:{"driver":"raw","file":{"driver":"raw","file":{"driver":"file","filename":"a.raw"}}}'
check --output=json 'json:{"file":{"driver":"file","filename":"a.raw","locking":"off","aio":"threads"}}'
check 'json:{"file":{"driver":"file","filename":"a.raw"},"offset":"1k"}'
check 'json:{"driver":"raw","offset":"4k","size":"1023","file":{"driver":"file","filename":"a.raw"}}'
check 'json:{"driver":"raw","offset":"2G","file":{"driver":"file","filename":"a.raw"}}'
check --image-opts driver=file,filename=a.raw --output=json
check --image-opts driver=raw,file.filename=a.raw,file.locking=maybe
check --image-opts -f raw driver=raw,file.filename=a.raw
check --image-opts driver=raw,file.filename=a.raw,file.locking=off,file.aio=threads
check -f file a.raw --output=json
check nonexistent
check dir
check -f foo a.raw
check --output=xml a.raw
check --bogus a.raw
check a.raw b.raw
check
if [ "$(id -u)" != 0 ]; then check unreadable.raw; fi
pass
