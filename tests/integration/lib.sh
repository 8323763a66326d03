# Sourced by every integration test. Provides:
#   VIMG, VIMG_IO, VIMG_NBD  the tools under test (from $VIMG_BUILD, default ./build)
#   TESTDIR                  a scratch directory removed on exit
#   SHARED                   ../shared beside the clone (testdata, reference)
#   need CMD...              skip (exit 77) when a peer tool is missing
#   fail MSG / pass          finish the test
#   expect_same A B          diff two command outputs (files)
#   poke_be64/le32/... FILE OFFSET VALUE   corrupt a named field
#   on_exit CMD              run CMD during cleanup (stop servers)
set -u
LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC_ROOT=$(cd "$LIB_DIR/../.." && pwd)
VIMG_BUILD=$(cd "${VIMG_BUILD:-$SRC_ROOT/build}" && pwd)
VIMG=${VIMG:-$VIMG_BUILD/tools/vimg}
VIMG_IO=${VIMG_IO:-$VIMG_BUILD/tools/vimg-io}
VIMG_NBD=${VIMG_NBD:-$VIMG_BUILD/tools/vimg-nbd}
SHARED=${SHARED:-$(cd "$SRC_ROOT/../shared" 2>/dev/null && pwd)}
TESTDIR=$(mktemp -d "${TMPDIR:-/tmp}/vimg-test.XXXXXX")
export LC_ALL=C

_cleanup_cmds=()
on_exit() { _cleanup_cmds+=("$*"); }
_cleanup() {
    local i
    for ((i = ${#_cleanup_cmds[@]} - 1; i >= 0; i--)); do
        eval "${_cleanup_cmds[$i]}" >/dev/null 2>&1 || true
    done
    rm -rf "$TESTDIR"
}
trap _cleanup EXIT

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || { echo "SKIP: $c not installed"; exit 77; }
    done
}

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "PASS"; exit 0; }

# expect_same FILE_A FILE_B [WHAT]: fails with a diff when they differ.
expect_same() {
    if ! diff -u "$1" "$2" >&2; then
        fail "${3:-outputs differ}: $1 vs $2"
    fi
}

# Replaces the program name so that vimg and qemu-img messages compare.
norm() { sed -e 's/^qemu-img:/TOOL:/; s/^vimg:/TOOL:/; s/qemu-img --help/TOOL --help/; s/vimg --help/TOOL --help/' "$@"; }

# run_both OUT_PREFIX ARGS...: runs qemu-img and vimg with the same args,
# saving normalised stdout+stderr and exit codes in $OUT_PREFIX.{q,v}.
run_both() {
    local p=$1 i; shift
    for i in $(seq 20); do
        (cd "$TESTDIR" && qemu-img "$@" >"$p.q.raw" 2>&1; echo "exit=$?" >>"$p.q.raw")
        qemu_pbkdf_flaked "$p.q.raw" || break
    done
    (cd "$TESTDIR" && "$VIMG" "$@" >"$p.v.raw" 2>&1; echo "exit=$?" >>"$p.v.raw")
    norm "$p.q.raw" >"$p.q"
    norm "$p.v.raw" >"$p.v"
}

# qemu-img's PBKDF calibration (LUKS create, amend of key slots) fails now
# and then on a busy or coarse-clocked machine with "Unable to get accurate
# CPU usage"; callers run such qemu-img commands again while this is true.
qemu_pbkdf_flaked() { grep -q "Unable to get accurate CPU usage" "$1"; }

_poke() {  # file offset bytes(hex string, already in order)
    printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
_hexbytes() {  # value width endian(be|le)
    local v=$1 w=$2 e=$3 i out="" b
    for ((i = 0; i < w; i++)); do
        b=$(( (v >> (8 * i)) & 0xff ))
        if [ "$e" = be ]; then out="\\x$(printf %02x $b)$out"; else out="$out\\x$(printf %02x $b)"; fi
    done
    printf '%s' "$out"
}
poke_be64() { _poke "$1" "$2" "$(_hexbytes $(( $3 )) 8 be)"; }
poke_be32() { _poke "$1" "$2" "$(_hexbytes $(( $3 )) 4 be)"; }
poke_be16() { _poke "$1" "$2" "$(_hexbytes $(( $3 )) 2 be)"; }
poke_le64() { _poke "$1" "$2" "$(_hexbytes $(( $3 )) 8 le)"; }
poke_le32() { _poke "$1" "$2" "$(_hexbytes $(( $3 )) 4 le)"; }
poke_le16() { _poke "$1" "$2" "$(_hexbytes $(( $3 )) 2 le)"; }
poke_u8()   { _poke "$1" "$2" "$(_hexbytes $(( $3 )) 1 le)"; }

# testdata FILE.bz2: decompresses a shared sample into TESTDIR, prints its path.
testdata() {
    local src="$SHARED/testdata/$1" dst="$TESTDIR/${1%.bz2}"
    [ -f "$src" ] || { echo "SKIP: $src missing"; exit 77; }
    bunzip2 -c "$src" >"$dst" && echo "$dst"
}

[ -x "$VIMG" ] || fail "vimg not built at $VIMG"
cd "$TESTDIR" || exit 1
