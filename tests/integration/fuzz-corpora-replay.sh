#!/bin/bash
# Proves: every libFuzzer target in tests/fuzz still builds (clang, warnings
# are errors, ASan+UBSan) and replays its whole seed corpus, which holds every
# past finding, without a crash, leak, sanitizer report or out-of-memory. The
# targets are not part of the normal build (they need -Dfuzzing=true), so
# without this test they can stop building unnoticed (it happened once: a
# library dependency added to luks.c). Takes about a minute on 2 cores.
source "$(dirname "$0")/lib.sh"
need clang meson ninja

B=$TESTDIR/fuzz
CC=clang meson setup "$B" "$SRC_ROOT" -Dfuzzing=true -Dwerror=true \
    -Db_sanitize=address,undefined >"$TESTDIR/setup.log" 2>&1 ||
    { tail -20 "$TESTDIR/setup.log"; fail "configuring the fuzz build"; }
targets=()
for f in "$SRC_ROOT"/tests/fuzz/fuzz-*.c; do
    targets+=("tests/fuzz/$(basename "$f" .c)")
done
[ ${#targets[@]} -ge 18 ] || fail "only ${#targets[@]} fuzz targets found"
nice ninja -C "$B" "${targets[@]}" >"$TESTDIR/build.log" 2>&1 ||
    { grep -E "error|warning" "$TESTDIR/build.log" | head -20; fail "building the fuzz targets"; }
meson test -C "$B" --suite fuzz --no-rebuild --num-processes 1 >"$TESTDIR/test.log" 2>&1
ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$TESTDIR/test.log")
[ "$ok" = "${#targets[@]}" ] ||
    { grep -E "FAIL|ERROR" "$TESTDIR/test.log" | head; fail "corpus replay: $ok of ${#targets[@]} targets ok"; }
pass
