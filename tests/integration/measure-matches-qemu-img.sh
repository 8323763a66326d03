#!/bin/bash
# Proves: `vimg measure` prints what `qemu-img measure` prints (human and
# JSON) for --size and for existing raw images, rounds raw sizes up to whole
# sectors, and rejects bad arguments, -o lists, -l parameters and formats
# with qemu-img's messages and exit codes.
source "$(dirname "$0")/lib.sh"
need qemu-img

truncate -s 10M sparse.raw
dd if=/dev/urandom of=sparse.raw bs=64k count=2 seek=3 conv=notrunc status=none
head -c 1000 /dev/urandom >odd.raw

n=0
check() {
    n=$((n + 1))
    run_both "s$n" measure "$@"
    expect_same "s$n.q" "s$n.v" "measure $*"
}
for out in human json; do
    for size in 0 1 511 512 1000 1.5k 1G 1T 8E-1; do
        [ "$size" = 8E-1 ] && size=9223372036854775807
        check --output=$out --size "$size"
        check --output=$out -O raw --size "$size"
    done
    check --output=$out sparse.raw
    check --output=$out odd.raw
    check --output=$out -f raw -U -O raw sparse.raw
    check --output=$out --image-opts driver=raw,file.filename=odd.raw
    check --output=$out 'json:{"driver":"raw","offset":512,"file":{"filename":"odd.raw"}}'
done
# Argument combinations.
check
check --size 1G sparse.raw
check sparse.raw odd.raw
check -f raw
check --image-opts --size 1
check -l snap --size 1
check --size 1 --size 2
check --output=xml --size 1
check --size -1
check --size abc
check --size 8E
check --size 20E
check nonexistent.raw
check -O foo --size 1
check -O foo nonexistent.raw
check -O foo -o foo=bar sparse.raw
check -O file --size 1
check -O host_device --size 1
check --object secret,id=s0,data=x --size 1
# -o lists: accepted protocol options, bad keys and values, list syntax.
for o in size=5 preallocation=full preallocation=bogus 'preallocation=full,,x' \
         nocow=on nocow nonocow nofoo no extent_size_hint=1M extent_size_hint=abc \
         nocow=maybe size=abc size=1x foo=bar help backing_file=x x.y=1 \
         'a,,' ',,a' 'a,,,b' 'a,,,' 'a=b,,c' 'a,,,,' 'a=b,=c' '=' ' ' '' ',' 'a=b,' \
         'nocow=on,foo' 'size=1,size=x'; do
    check -o "$o" --size 1
done
check -o nocow=on -o foo=1 --size 1
check -o nocow=on -o preallocation=falloc -O raw sparse.raw
# -l snapshot parameters.
check -l snap sparse.raw
check -l snapshot.id=1 sparse.raw
check -l snapshot.id=1,snapshot.name=x sparse.raw
check -l snapshot.foo=1 sparse.raw
check -l snapshot.id=1,foo=2 sparse.raw
check -l snapshot.foo=1 --size 1
check -l snapshot.id=1 nonexistent.raw
# A bad option makes qemu-img measure print getopt's complaint and the help
# text, and succeed; the help texts differ (formats), so compare stderr only.
check_help() {
    n=$((n + 1))
    (qemu-img measure "$@" >/dev/null 2>"h$n.q"; echo "exit=$?" >>"h$n.q")
    ("$VIMG" measure "$@" >"h$n.out" 2>"h$n.v"; echo "exit=$?" >>"h$n.v")
    expect_same "h$n.q" "h$n.v" "measure $*"
    grep -q '^Command syntax:' "h$n.out" || fail "measure $*: no help text"
}
check_help --bogus --size 1
check_help -x --size 1
check_help --size
check_help -O
check_help -h
pass
