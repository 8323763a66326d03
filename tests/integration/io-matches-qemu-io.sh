#!/bin/bash
# Proves: vimg-io prints what qemu-io prints — stdout, stderr and exit status,
# after normalising program names and timings — and leaves the same image, for
# 520 generated command sequences mixing every command and option (reads,
# writes, vectors, aio, zero/compressed/FUA writes, discard, map, alloc,
# truncate, open/close/reopen, help, bad offsets, lengths, patterns, options).
# The generator (tests/io-gen/gen.py) is seeded, so the sequences never change.
source "$(dirname "$0")/lib.sh"
need qemu-io python3
[ -x "$VIMG_IO" ] || fail "vimg-io not built at $VIMG_IO"

python3 "$SRC_ROOT/tests/io-gen/difftest.py" --vimg-io "$VIMG_IO" --workdir "$TESTDIR" \
    --seed 7202 --count 520 || fail "vimg-io and qemu-io differ"
pass
