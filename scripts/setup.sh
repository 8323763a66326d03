#!/bin/bash
# One command from a fresh Debian 12 machine: install dependencies, build, and
# run a short demo of the main job (create, write, convert, info).
set -e
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ -d build ] || meson setup build
ninja -C build
demo=$(mktemp -d)
trap 'rm -rf "$demo"' EXIT
echo "== demo in $demo"
./build/tools/vimg create -f raw "$demo/disk.raw" 64M
if [ -x ./build/tools/vimg-io ]; then
    ./build/tools/vimg-io -f raw -c 'write -P 0xab 1M 4M' "$demo/disk.raw"
else
    printf '\253%.0s' $(seq 4096) | dd of="$demo/disk.raw" bs=4096 seek=256 conv=notrunc status=none
fi
./build/tools/vimg convert -p -f raw -O raw "$demo/disk.raw" "$demo/copy.raw"
./build/tools/vimg info "$demo/copy.raw"
./build/tools/vimg map "$demo/copy.raw"
./build/tools/vimg compare -f raw -F raw "$demo/disk.raw" "$demo/copy.raw"
