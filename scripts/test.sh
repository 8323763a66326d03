#!/bin/bash
# The whole test suite: installs what it needs, builds (warnings are errors),
# runs unit and integration tests, and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
bash scripts/deps.sh || { echo "0 passed, 1 failed"; exit 1; }
builddir=${VIMG_TEST_BUILD:-build-test}
if [ ! -d "$builddir" ]; then
    meson setup "$builddir" -Dwerror=true ${VIMG_TEST_SETUP_ARGS:-} >/dev/null || {
        echo "0 passed, 1 failed"; exit 1; }
fi
if ! ninja -C "$builddir" >"$builddir/build.log" 2>&1; then
    cat "$builddir/build.log"
    echo "0 passed, 1 failed"
    exit 1
fi
meson test -C "$builddir" --print-errorlogs --num-processes 2 "$@" | tee "$builddir/test.log"
status=${PIPESTATUS[0]}
ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$builddir/test.log" | tail -1)
failed=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$builddir/test.log" | tail -1)
timeout=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$builddir/test.log" | tail -1)
skipped=$(sed -n 's/^Skipped: *\([0-9]*\).*/\1/p' "$builddir/test.log" | tail -1)
echo "${ok:-0} passed, $(( ${failed:-0} + ${timeout:-0} )) failed, ${skipped:-0} skipped"
exit "$status"
