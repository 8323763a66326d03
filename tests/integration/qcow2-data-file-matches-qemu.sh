#!/bin/bash
# Proves: qcow2 images with an external data file behave as in QEMU when
# - `amend -o data_file=NAME` renames the data file the header names ("" drops
#   the name, and the image then needs a data-file option), data_file_raw=off
#   clears the raw bit, and the refusals (no data file, setting raw, a
#   downgrade after a rename) have qemu-img's texts: the image and data file
#   are byte-identical to qemu-img's after each case;
# - `resize` and `amend -o size=` grow, cut and map a raw data file as
#   qemu-img does (a raw data file stays mapped one to one);
# - a data-file child given as options (--image-opts data-file.*, json:)
#   is the file read, and unknown keys in it are refused under the child's
#   name, as qemu-io does.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# setup RAW: q/ and v/ each hold i.qcow2 (data file d.raw) with some data.
setup() {
    local t
    for t in q v; do
        rm -rf "$t" && mkdir "$t" || exit 1
        (cd "$t" && qemu-img create -q -f qcow2 -o "data_file=d.raw,data_file_raw=$1" \
            i.qcow2 10M && qemu-io -c 'write -P 3 0 64k' -c 'write -P 4 1M 4k' i.qcow2 \
            >/dev/null) || fail "setup $1"
    done
}

# both WHAT ARGS...: runs qemu-img in q/ and vimg in v/; same output and files.
both() {
    local what=$1
    shift
    (cd q && qemu-img "$@" >../out.q 2>&1; echo "exit=$?" >>../out.q)
    (cd v && "$VIMG" "$@" >../out.v 2>&1; echo "exit=$?" >>../out.v)
    norm out.q >out.qn
    norm out.v >out.vn
    expect_same out.qn out.vn "$what: $*"
    cmp q/i.qcow2 v/i.qcow2 || fail "$what: $*: images differ"
    cmp q/d.raw v/d.raw || fail "$what: $*: data files differ"
}

n=0
for raw in off on; do
    for o in data_file=new.raw data_file=d.raw data_file= data_file=a-much-longer-data-file-name.raw \
             data_file_raw=off data_file_raw=on "data_file=x,data_file_raw=on" \
             "data_file=x.raw,data_file_raw=off" compat=0.10 "data_file=n2.raw,compat=0.10" \
             "data_file=n3.raw,lazy_refcounts=on" "data_file=n4.raw,size=20M" size=20M \
             size=10000000 size=5M; do
        setup "$raw"
        both "raw=$raw" amend -o "$o" i.qcow2
        both "raw=$raw info" info i.qcow2
        n=$((n + 1))
    done
    for args in "20M" "--preallocation=metadata 20M" "10000000" "--shrink 5M"; do
        setup "$raw"
        # shellcheck disable=SC2086
        both "raw=$raw" resize $args i.qcow2
        both "raw=$raw map" map --output=json i.qcow2
        n=$((n + 1))
    done
done
[ "$n" = 38 ] || fail "ran $n of 38 cases"

# An image without a data file: data_file_raw=off is a no-op, the rest refused.
for o in data_file_raw=off data_file_raw=on data_file=x.raw data_file=; do
    for t in q v; do
        rm -rf "$t" && mkdir "$t" && (cd "$t" && qemu-img create -q -f qcow2 i.qcow2 1M &&
            touch d.raw) || fail "setup plain"
    done
    both "no data file" amend -o "$o" i.qcow2
done

# A name too long for the header cluster.
for t in q v; do
    rm -rf "$t" && mkdir "$t" &&
        (cd "$t" && qemu-img create -q -f qcow2 -o data_file=d.raw,cluster_size=512 i.qcow2 1M) ||
        fail "setup 512"
done
both "long name" amend -o "data_file=$(printf 'x%.0s' $(seq 600)).raw" i.qcow2

# A data file name dropped: the image needs the option, in both tools.
setup off
both "dropped name" amend -o data_file= i.qcow2
(cd v && "$VIMG_IO" -c 'read 0 4k' i.qcow2 >../io.v 2>&1)
(cd q && qemu-io -c 'read 0 4k' i.qcow2 >../io.q 2>&1)
sed -i 's/^vimg-io:/qemu-io:/' io.v
expect_same io.q io.v "open without the data file name"

# The data-file child as options: the file it names is the one read.
setup off
cd v || exit 1
cp d.raw e.raw
qemu-io -f raw -c 'write -P 9 0 4k' e.raw >/dev/null
for o in "data-file.filename=e.raw" "data-file.driver=file,data-file.filename=e.raw" \
         "data-file.driver=raw,data-file.file.filename=e.raw" \
         "data-file.driver=file,data-file.filename=e.raw,data-file.bogus=1" \
         "data-file.driver=raw,data-file.file.filename=e.raw,data-file.file.bogus=1"; do
    spec="driver=qcow2,file.filename=i.qcow2,$o"
    qemu-io -c 'read -P 9 0 4k' --image-opts "$spec" 2>&1 | sed 's/, [0-9.]* [a-zA-Z/]*sec.*//; s/^[0-9].*ops.*//' >../dq
    "$VIMG_IO" -c 'read -P 9 0 4k' --image-opts "$spec" 2>&1 | sed 's/^vimg-io:/qemu-io:/; s/, [0-9.]* [a-zA-Z/]*sec.*//; s/^[0-9].*ops.*//' >../dv
    expect_same ../dq ../dv "--image-opts $spec"
done
"$VIMG_IO" -c 'read -P 9 0 4k' \
    'json:{"driver":"qcow2","file":{"driver":"file","filename":"i.qcow2"},"data-file":{"driver":"file","filename":"e.raw"}}' \
    >../dj 2>&1 || fail "json: data-file dict: $(cat ../dj)"
grep -q '^read 4096/4096' ../dj || fail "json: data-file dict: $(cat ../dj)"
cd "$TESTDIR" || exit 1
pass
