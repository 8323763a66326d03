#!/usr/bin/env python3
"""Runs the generated sequences through qemu-io and vimg-io and compares them.

Each sequence runs in both tools, each on its own copy of the same starting
image, in directories laid out alike so file names in messages agree.
stdout, stderr and the exit status must be identical once the program names
and the timing parts of the statistics lines are normalised, and the final
images must be byte-identical. Exits 1 after printing the first differences.
"""
import argparse
import concurrent.futures
import difflib
import os
import random
import re
import shlex
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402

SIZE_BYTES = {"1M": 1 << 20, "1000": 1000, "64k": 65536, "3M": 3 << 20}
TIMING = re.compile(r"^(.*, \d+ ops; ).*$", re.M)
MACHINE = re.compile(r"^(\d+,\d+),[0-9:.]+,[0-9.]+,[0-9.]+$", re.M)


def normalise(text):
    text = text.replace("qemu-io", "TOOL").replace("vimg-io", "TOOL")
    text = TIMING.sub(r"\1TIME", text)
    return MACHINE.sub(r"\1,TIME", text)


def base_image(workdir, size):
    """A starting image: seeded data in the first 96 KiB, holes after."""
    path = os.path.join(workdir, "base-%s.img" % size)
    if not os.path.exists(path):
        rnd = random.Random(size)
        n = SIZE_BYTES[size]
        with open(path, "wb") as f:
            f.write(bytes(rnd.getrandbits(8) for _ in range(min(n, 96 * 1024))))
            f.truncate(n)
    return path


def prepare(d, base):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    shutil.copyfile(base, os.path.join(d, gen.IMAGE))
    with open(os.path.join(d, "pat.bin"), "wb") as f:
        f.write(b"abc\x00\xff")
    open(os.path.join(d, "empty.bin"), "wb").close()


def run_tool(tool, d, seq):
    main = shlex.split(seq[1])
    target = gen.IMAGE_OPTS if "--image-opts" in main else gen.IMAGE
    argv = [tool] + main
    for c in seq[2:]:
        argv += ["-c", c]
    argv.append(target)
    p = subprocess.run(argv, cwd=d, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=60)
    with open(os.path.join(d, gen.IMAGE), "rb") as f:
        image = f.read()
    return (normalise(p.stdout.decode(errors="replace")),
            normalise(p.stderr.decode(errors="replace")), p.returncode, image)


def compare(index, seq, args):
    base = base_image(args.workdir, seq[0])
    dq = os.path.join(args.workdir, "q%d" % (index % 4))
    dv = os.path.join(args.workdir, "v%d" % (index % 4))
    prepare(dq, base)
    prepare(dv, base)
    q = run_tool(args.qemu_io, dq, seq)
    v = run_tool(args.vimg_io, dv, seq)
    problems = []
    for name, a, b in (("stdout", q[0], v[0]), ("stderr", q[1], v[1])):
        if a != b:
            diff = difflib.unified_diff(a.splitlines(), b.splitlines(), "qemu-io " + name,
                                        "vimg-io " + name, lineterm="", n=2)
            problems.append("\n".join(diff))
    if q[2] != v[2]:
        problems.append("exit status: qemu-io %d, vimg-io %d" % (q[2], v[2]))
    if q[3] != v[3]:
        problems.append("final images differ")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu-io", default="qemu-io")
    ap.add_argument("--vimg-io", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--seed", type=int, default=7202)
    ap.add_argument("--count", type=int, default=520)
    ap.add_argument("--show", type=int, default=5)
    args = ap.parse_args()
    seqs = gen.generate(args.seed, args.count)
    for size in SIZE_BYTES:
        base_image(args.workdir, size)
    failed = 0
    # Four slots of directories, so at most four sequences run at once.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(seqs), 4):
            batch = list(enumerate(seqs[start:start + 4], start))
            results = pool.map(lambda x: (x[0], x[1], compare(x[0], x[1], args)), batch)
            for i, seq, problems in results:
                if not problems:
                    continue
                failed += 1
                if failed <= args.show:
                    print("=== sequence %d: %s %s" % (i, seq[0], seq[1]))
                    for c in seq[2:]:
                        print("    -c %r" % c)
                    print("\n".join(problems))
    print("%d of %d sequences differ" % (failed, len(seqs)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
