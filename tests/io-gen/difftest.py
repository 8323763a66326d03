#!/usr/bin/env python3
"""Runs the generated sequences through qemu-io and vimg-io and compares them.

Each sequence runs in both tools, each on its own copy of the same starting
image, in directories laid out alike so file names in messages agree.
stdout, stderr and the exit status must be identical once the program names
and the timing parts of the statistics lines are normalised.

Raw final images must be byte-identical. qcow2 final images may lay their
clusters out differently, so they must instead hold the same guest data
(`qemu-img compare`), have the same virtual size and allocation map (`qemu-img
map --output=json` without host offsets), and the image vimg-io wrote must
pass `qemu-img check` with no corruption and no leak; where a sequence wrote
VM state (`write -b`), reading those ranges back with qemu-io must give the
same bytes. qcow2 starting images
are made by `qemu-img create -f qcow2 -o OPTIONS` (optionally over a raw or
qcow2 backing file with seeded data) and filled by qemu-io with data, zero
and compressed clusters. With --snapshot the sequences run under -s: the tools
make their temporary overlays in a directory of their own, which must be
empty again when they exit. Exits 1 after printing the first differences.
"""
import argparse
import concurrent.futures
import difflib
import json
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
# The -s overlay's random name, in qemu-io's "Could not open '...'" messages.
OVERLAY = re.compile(r"'[^']*/vl\.[A-Za-z0-9]{6}'")
SUFFIX = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
BACKING = {"raw": "backing.img", "qcow2": "backing.qcow2"}


def normalise(text):
    text = text.replace("qemu-io", "TOOL").replace("vimg-io", "TOOL")
    text = TIMING.sub(r"\1TIME", text)
    text = OVERLAY.sub("'OVERLAY'", text)
    return MACHINE.sub(r"\1,TIME", text)


def run(argv, cwd=None, env=None):
    p = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=60, env=env)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def must(argv, cwd=None):
    rc, out, err = run(argv, cwd)
    if rc != 0:
        sys.exit("setup failed: %s: %s%s" % (" ".join(argv), out, err))
    return out


def seeded_bytes(seed, n):
    rnd = random.Random(seed)
    return bytes(rnd.getrandbits(8) for _ in range(n))


class Setup:
    """The starting images of one option set, made once in workdir."""

    def __init__(self, args):
        self.args = args
        self.fmt = args.format
        self.workdir = args.workdir
        self.cluster = cluster_size(args.create_opts)

    def backing_path(self):
        if self.args.backing == "none":
            return None
        path = os.path.join(self.workdir, BACKING[self.args.backing])
        if os.path.exists(path):
            return path
        # Half the largest image: reads past its end see zeros.
        size = 3 << 19
        data = seeded_bytes("backing", 192 * 1024)
        if self.args.backing == "raw":
            with open(path, "wb") as f:
                f.write(data)
                f.truncate(size)
            return path
        must(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)])
        raw = path + ".data"
        with open(raw, "wb") as f:
            f.write(data)
        must(["qemu-io", "-f", "qcow2", "-c", "write -s %s 0 96k" % raw,
              "-c", "write -c -s %s 128k 64k" % raw, "-c", "write -z 64k 32k", path])
        os.unlink(raw)
        return path

    def base(self, size):
        ext = "img" if self.fmt == "raw" else "qcow2"
        path = os.path.join(self.workdir, "base-%s.%s" % (size, ext))
        if os.path.exists(path):
            return path
        n = SIZE_BYTES[size]
        if self.fmt == "raw":
            # Seeded data in the first 96 KiB, holes after.
            with open(path, "wb") as f:
                f.write(seeded_bytes(size, min(n, 96 * 1024)))
                f.truncate(n)
            return path
        self.make_qcow2(path, size, n)
        return path

    def make_qcow2(self, path, size, n):
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if self.args.create_opts:
            argv += ["-o", self.args.create_opts]
        backing = self.backing_path()
        if backing:
            argv += ["-b", os.path.basename(backing), "-F", self.args.backing]
        must(argv + [path, str(n)], cwd=self.workdir)
        raw = path + ".data"
        with open(raw, "wb") as f:
            f.write(seeded_bytes(size, 96 * 1024))
        c = self.cluster
        n = (n + 511) // 512 * 512
        # Data, a compressed cluster, zero clusters and a discarded one, where they fit.
        cmds = ["write -s %s 0 %d" % (raw, min(n, 40 * 1024))]
        for cmd, off, length in (("write -c -s %s" % raw, 2 * c, c), ("write -z", 4 * c, 2 * c),
                                 ("write -s %s" % raw, 7 * c, c), ("discard", 7 * c, c),
                                 ("write -P 0x77", 8 * c + 4096, 5 * 1024)):
            if off + length <= n:
                cmds.append("%s %d %d" % (cmd, off, length))
        argv = ["qemu-io", "-f", "qcow2"]
        for cmd in cmds:
            argv += ["-c", cmd]
        must(argv + [path])
        os.unlink(raw)

    def prepare(self, d, size):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        shutil.copyfile(self.base(size), os.path.join(d, gen.IMAGE))
        backing = self.backing_path()
        if backing:
            shutil.copyfile(backing, os.path.join(d, os.path.basename(backing)))
        with open(os.path.join(d, "pat.bin"), "wb") as f:
            f.write(b"abc\x00\xff")
        open(os.path.join(d, "empty.bin"), "wb").close()


def cluster_size(create_opts):
    m = re.search(r"(?:^|,)cluster_size=(\d+)([kKmM]?)", create_opts or "")
    if not m:
        return 65536
    return int(m.group(1)) << {"": 0, "k": 10, "K": 10, "m": 20, "M": 20}[m.group(2)]


def run_tool(tool, d, seq, fmt):
    """Runs one tool with TMPDIR (where -s puts its overlay) private to d."""
    main = shlex.split(seq[1])
    target = gen.image_opts(fmt) if "--image-opts" in main else gen.IMAGE
    argv = [tool] + main
    for c in seq[2:]:
        argv += ["-c", c]
    argv.append(target)
    tmp = d + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    rc, out, err = run(argv, d, dict(os.environ, TMPDIR=tmp))
    left = os.listdir(tmp)
    if left:
        err += "left behind in TMPDIR: %s\n" % " ".join(sorted(left))
    return normalise(out), normalise(err), rc


def cvtnum(text):
    """qemu-io's number syntax, enough for the generated offsets; None if not one."""
    m = re.fullmatch(r"(0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?)([bkmgtpeBKMGTPE]?)", text)
    if not m:
        return None
    base = int(m.group(1), 16) if m.group(1)[:2].lower() == "0x" else float(m.group(1))
    return int(base * (1 << SUFFIX[m.group(2).lower()]))


def vmstate_ranges(seq):
    """The ranges `write -b` may have written (at most 4 MiB each, below 2^50)."""
    ranges = []
    for c in seq[2:]:
        words = c.split()
        if words[:1] != ["write"] or "-b" not in words or len(words) < 3:
            continue
        off, length = cvtnum(words[-2]), cvtnum(words[-1])
        if off is None or length is None or off % 512 or length % 512 or off >= 1 << 50:
            continue
        ranges.append((off, min(length, 4 << 20)))
    return ranges


def vmstate_dump(d, ranges):
    path = os.path.join(d, gen.IMAGE)
    argv = ["qemu-io", "-r", "-U", "-f", "qcow2"]
    for off, length in ranges:
        argv += ["-c", "read -b -v %d %d" % (off, length)]
    rc, out, err = run(argv + [path])
    return normalise(out + err)


def image_map(d):
    """Virtual size and allocation map of a qcow2 image, without host offsets."""
    path = os.path.join(d, gen.IMAGE)
    rc, out, err = run(["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", path])
    if rc != 0:
        return "info failed: " + err
    size = json.loads(out)["virtual-size"]
    rc, out, err = run(["qemu-img", "map", "-U", "--output=json", "-f", "qcow2", path])
    if rc != 0:
        return "map failed: " + err
    # Without offsets, runs that only differ in where their data lies merge.
    runs = []
    for e in json.loads(out):
        e.pop("offset", None)
        if runs and all(runs[-1][k] == e[k] for k in e if k not in ("start", "length")):
            runs[-1]["length"] += e["length"]
        else:
            runs.append(e)
    return "\n".join(["virtual size %d" % size] + [json.dumps(e, sort_keys=True)
                                                   for e in runs])


def compare_qcow2(dq, dv, seq):
    problems = []
    ranges = vmstate_ranges(seq)
    if ranges and vmstate_dump(dq, ranges) != vmstate_dump(dv, ranges):
        problems.append("VM state differs in %s" % ranges)
    q_img, v_img = os.path.join(dq, gen.IMAGE), os.path.join(dv, gen.IMAGE)
    rc, out, err = run(["qemu-img", "check", "-U", "-f", "qcow2", v_img])
    if rc != 0:
        problems.append("qemu-img check of vimg-io's image (exit %d):\n%s%s" % (rc, out, err))
    q_map, v_map = image_map(dq), image_map(dv)
    if q_map != v_map:
        diff = difflib.unified_diff(q_map.splitlines(), v_map.splitlines(), "qemu-io map",
                                    "vimg-io map", lineterm="", n=2)
        problems.append("\n".join(diff))
    rc, out, err = run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", q_img,
                        v_img])
    if rc != 0:
        problems.append("final images differ: %s%s" % (out, err))
    return problems


def compare(index, seq, setup):
    args = setup.args
    dq = os.path.join(args.workdir, "q%d" % (index % 4))
    dv = os.path.join(args.workdir, "v%d" % (index % 4))
    setup.prepare(dq, seq[0])
    setup.prepare(dv, seq[0])
    q = run_tool(args.qemu_io, dq, seq, setup.fmt)
    v = run_tool(args.vimg_io, dv, seq, setup.fmt)
    problems = []
    for name, a, b in (("stdout", q[0], v[0]), ("stderr", q[1], v[1])):
        if a != b:
            diff = difflib.unified_diff(a.splitlines(), b.splitlines(), "qemu-io " + name,
                                        "vimg-io " + name, lineterm="", n=2)
            problems.append("\n".join(diff))
    if q[2] != v[2]:
        problems.append("exit status: qemu-io %d, vimg-io %d" % (q[2], v[2]))
    if setup.fmt == "qcow2":
        problems += compare_qcow2(dq, dv, seq)
    else:
        with open(os.path.join(dq, gen.IMAGE), "rb") as fq, \
                open(os.path.join(dv, gen.IMAGE), "rb") as fv:
            if fq.read() != fv.read():
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
    ap.add_argument("--format", choices=["raw", "qcow2"], default="raw")
    ap.add_argument("--create-opts", default="",
                    help="qcow2 creation options (qemu-img create -o)")
    ap.add_argument("--backing", choices=["none", "raw", "qcow2"], default="none",
                    help="qcow2: the starting images have a backing file of this format")
    ap.add_argument("--only", type=int, help="run only the sequence of this index")
    ap.add_argument("--snapshot", action="store_true", help="run every sequence under -s")
    args = ap.parse_args()
    args.vimg_io = os.path.abspath(args.vimg_io)
    os.makedirs(args.workdir, exist_ok=True)
    setup = Setup(args)
    seqs = list(enumerate(gen.generate(args.seed, args.count, args.format, setup.cluster,
                                       args.backing != "none", args.snapshot)))
    if args.only is not None:
        seqs = seqs[args.only:args.only + 1]
    for size in SIZE_BYTES:
        setup.base(size)
    failed = 0
    # Four slots of directories, so at most four sequences run at once.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(seqs), 4):
            batch = seqs[start:start + 4]
            results = pool.map(lambda x: (x[0], x[1], compare(x[0], x[1], setup)), batch)
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
