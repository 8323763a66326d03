#!/bin/bash
# Proves: --object secret,... definitions are accepted and rejected exactly as
# qemu-img does (inline data, files, base64, and each error text).
source "$(dirname "$0")/lib.sh"
need qemu-img

printf 'file-secret' >secret.txt
n=0
check() {
    n=$((n + 1))
    rm -f img.raw
    run_both "o$n" create -q --object "$1" ${2:+--object "$2"} img.raw 1M
    expect_same "o$n.q" "o$n.v" "--object $*"
}
check secret,id=s0,data=abc
check secret,id=s0,file=secret.txt
check secret,id=s0,data=YWJj,format=base64
check secret,id=s0,data=abc,format=raw
check secret,id=x
check foo,id=x
check secret,data=1
check secret,id=x,data=1,file=secret.txt
check secret,id=x,data=1,format=foo
check secret,id=x,data=1,bogus=1
check secret,id=x,file=/nonexistent-secret
check secret,id=x,data=1 secret,id=x,data=2
check id=x
check secret,id=x,data=@@,format=base64
pass
