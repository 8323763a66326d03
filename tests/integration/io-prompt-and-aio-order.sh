#!/bin/bash
# Proves: without -c, vimg-io reads commands from standard input after a
# prompt, as qemu-io does (also when input is not a terminal), stops at quit,
# and prints aio completions where qemu-io does: at aio_flush, close, reopen
# and exit, not when the request is submitted. Also --help, --version and
# the usage error of a bad option.
source "$(dirname "$0")/lib.sh"
need qemu-io
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"

norm_io() {
    sed -E -e 's/qemu-io/TOOL/g; s/vimg-io/TOOL/g' -e 's/^(.*, [0-9]+ ops; ).*$/\1TIME/' "$@"
}
n=0
both_stdin() {  # INPUT ARGS...
    local input=$1; shift
    n=$((n + 1))
    truncate -s 1M q.img; cp q.img v.img
    printf '%b' "$input" | qemu-io "${@//IMG/q.img}" >"s$n.q" 2>&1; echo "exit=$?" >>"s$n.q"
    printf '%b' "$input" | "$VIMG_IO" "${@//IMG/v.img}" >"s$n.v" 2>&1; echo "exit=$?" >>"s$n.v"
    sed -i 's/[qv]\.img/IMG/g' "s$n.q" "s$n.v"
    expect_same <(norm_io "s$n.q") <(norm_io "s$n.v") "stdin script $n"
    cmp q.img v.img || fail "images differ after stdin script $n"
}
both_stdin 'read -q 0 1\nread 2M 1\n\n  read   -q  0   1  \nbogus\nquit\nread 0 1\n' -f raw IMG
both_stdin 'write -P 5 0 512\naio_write -P 7 0 1\naio_flush\nlength\nread -P 5 0 512\n' -f raw IMG
both_stdin 'aio_write -P 7 0 1\naio_flush\naio_read -P 7 0 1\nclose\nopen -o driver=raw IMG\n' \
    -f raw IMG
both_stdin 'aio_read -v 0 16\nreopen -r\naio_write 0 1\n' -f raw IMG
both_stdin 'read 0 1' -f raw IMG
both_stdin 'help open\n' -r -f raw IMG
both_stdin 'length\n' -f raw

for args in "--help" "-h" "-x" "-f raw a b"; do
    n=$((n + 1))
    qemu-io $args >"o$n.q" 2>&1; echo "exit=$?" >>"o$n.q"
    "$VIMG_IO" $args >"o$n.v" 2>&1; echo "exit=$?" >>"o$n.v"
    expect_same <(norm_io "o$n.q") <(norm_io "o$n.v") "vimg-io $args"
done
"$VIMG_IO" --version | grep -q '^vimg-io version ' || fail "--version"
pass
