#!/bin/bash
# Proves: `vimg check` on images without checks (raw) answers like
# `qemu-img check`: the same message, exit code 63, and the same errors and
# exit codes for bad options and files.
source "$(dirname "$0")/lib.sh"
need qemu-img

qemu-img create -q -f raw a.raw 1M
n=0
check() { n=$((n + 1)); run_both "k$n" check "$@"; expect_same "k$n.q" "k$n.v" "check $*"; }
check a.raw
check --output=json a.raw
check --output=human a.raw
check -q a.raw
check -f raw a.raw
check -r leaks a.raw
check -r all a.raw
check -r all -U a.raw
check -r foo a.raw
check -T none a.raw
check -T bogus a.raw
check -U a.raw
check --image-opts driver=raw,file.filename=a.raw
check --output=xml a.raw
# "filename" in JSON is the name as typed, whatever form it takes.
qemu-img create -q -f qcow2 c.qcow2 1M
check --output=json --image-opts driver=qcow2,file.filename=c.qcow2
check --output=json 'json:{"driver":"qcow2","file":{"driver":"file","filename":"c.qcow2"}}'
check --output=json ./c.qcow2
check nonexistent
check
check a.raw a.raw
pass
