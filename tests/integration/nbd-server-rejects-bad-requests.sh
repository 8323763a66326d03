#!/bin/bash
# Proves: vimg-nbd validates every request and survives clients that break
# the protocol. A raw client (python, speaking the wire format) sends reads
# past the end, offsets that wrap, oversized lengths, unknown commands and
# flags, block status without a context, writes to a read-only export, bad
# magic, oversized options and unknown options and exports; it pipelines
# many requests; and it vanishes mid-request. Each gets the error the spec
# asks for (EINVAL, EPERM, NBD_REP_ERR_*), or the session ends where the spec
# allows it, and the server keeps serving with the image untouched.
source "$(dirname "$0")/lib.sh"
need python3 qemu-img qemu-io
[ -x "$VIMG_NBD" ] || fail "vimg-nbd not built"

wait_sock() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
    fail "no server on $1"
}
cat >nbdc.py <<'PY'
#!/usr/bin/env python3
# A raw NBD client for tests: speaks the wire protocol directly so that it can
# send what well-behaved clients never do. Usage:
#   nbdc.py SOCKET [--simple] [--no-meta] [--export NAME] STEP...
# Steps (each prints one line):
#   read OFF LEN [FLAGS]    -> "read ok DATA_BYTES HOLE_BYTES" or "read error E"
#   write OFF LEN [FLAGS]   -> "write ok" / "write error E" (payload is 0xab bytes)
#   zero OFF LEN [FLAGS] | trim OFF LEN | flush | cache OFF LEN | status OFF LEN [FLAGS]
#   cmd TYPE OFF LEN        -> any command number
#   pipeline N LEN          -> N reads in flight, then "pipeline ok N" when all came back
#   badmagic                -> "badmagic closed" when the server hangs up
#   halfwrite LEN           -> sends a write header, half the payload, and exits
#   readexit                -> sends a read and exits without reading the reply
#   opt NUM                 -> (before GO) raw option, prints "opt reply 0xTYPE"
#   bigopt                  -> (before GO) option with a 1 GiB length: "bigopt closed"
import socket, struct, sys

MAGIC_REQ, MAGIC_SIMPLE, MAGIC_CHUNK = 0x25609513, 0x67446698, 0x668e33ef
CMDS = {"read": 0, "write": 1, "flush": 3, "trim": 4, "cache": 5, "zero": 6, "status": 7}


def num(text):
    """A number: decimal, 0x hex, or with a k/M suffix."""
    mult = {"k": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text, 0) * mult


def recvn(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise EOFError
        buf += d
    return buf


def send_opt(s, opt, data=b""):
    s.sendall(struct.pack(">QII", 0x49484156454F5054, opt, len(data)) + data)


def opt_reply(s):
    magic, opt, typ, ln = struct.unpack(">QIII", recvn(s, 20))
    assert magic == 0x3e889045565a9, hex(magic)
    return typ, recvn(s, ln)


def negotiate(s, args):
    hello = recvn(s, 18)
    assert hello[:16] == b"NBDMAGICIHAVEOPT"
    s.sendall(struct.pack(">I", 3))
    while args and args[0] in ("opt", "bigopt"):
        if args[0] == "bigopt":
            s.sendall(struct.pack(">QII", 0x49484156454F5054, 99, 1 << 30))
            try:
                opt_reply(s)
                print("bigopt replied")
            except (EOFError, ConnectionResetError):
                print("bigopt closed")
            sys.exit(0)
        send_opt(s, int(args[1]))
        print("opt reply 0x%x" % opt_reply(s)[0])
        args[:] = args[2:]
    structured = "--simple" not in sys.argv
    if structured:
        send_opt(s, 8)
        assert opt_reply(s)[0] == 1
    if structured and "--no-meta" not in sys.argv:
        name = EXPORT.encode()
        q = b"base:allocation"
        send_opt(s, 10, struct.pack(">I", len(name)) + name + struct.pack(">II", 1, len(q)) + q)
        while True:
            typ = opt_reply(s)[0]
            if typ == 1:
                break
            if typ & 0x80000000:
                print("meta error 0x%x" % typ)
                sys.exit(0)
    name = EXPORT.encode()
    send_opt(s, 7, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    while True:
        typ, data = opt_reply(s)
        if typ == 1:
            break
        if typ & 0x80000000:
            print("go error 0x%x %s" % (typ, data.decode()))
            sys.exit(0)
    return structured


def request(s, typ, off, ln, flags=0, cookie=1, payload=b""):
    s.sendall(struct.pack(">IHHQQI", MAGIC_REQ, flags, typ, cookie, off, ln) + payload)


def reply(s, structured, read_len):
    """Returns (cookie, error, data_bytes, hole_bytes) for one whole reply."""
    data = hole = 0
    while True:
        magic = struct.unpack(">I", recvn(s, 4))[0]
        if magic == MAGIC_SIMPLE:
            err, cookie = struct.unpack(">IQ", recvn(s, 12))
            if not err and read_len:
                data = len(recvn(s, read_len))
            return cookie, err, data, hole
        assert magic == MAGIC_CHUNK, hex(magic)
        flags, typ, cookie, ln = struct.unpack(">HHQI", recvn(s, 16))
        body = recvn(s, ln)
        err = 0
        if typ == 1:
            data += ln - 8
        elif typ == 2:
            hole += struct.unpack(">I", body[8:12])[0]
        elif typ & 0x8000:
            err = struct.unpack(">I", body[:4])[0]
        if err:
            while not flags & 1:
                magic, flags, typ, c2, ln = struct.unpack(">IHHQI", recvn(s, 20))
                recvn(s, ln)
            return cookie, err, data, hole
        if flags & 1:
            return cookie, 0, data, hole


def step(s, structured, args):
    name = args.pop(0)
    if name == "pipeline":
        n, ln = num(args.pop(0)), num(args.pop(0))
        for i in range(n):
            request(s, 0, i * ln, ln, cookie=1000 + i)
        seen = set()
        for i in range(n):
            cookie, err, d, h = reply(s, structured, ln)
            assert not err and d + h == ln, (err, d, h)
            seen.add(cookie)
        print("pipeline ok %d" % len(seen))
        return
    if name == "badmagic":
        s.sendall(b"\0" * 28)
        try:
            s.recv(1) and print("badmagic replied") or print("badmagic closed")
        except ConnectionResetError:
            print("badmagic closed")
        return
    if name == "halfwrite":
        ln = num(args.pop(0))
        request(s, 1, 0, ln, payload=b"\xcd" * (ln // 2))
        sys.exit(0)
    if name == "readexit":
        request(s, 0, 0, 1 << 20)
        sys.exit(0)
    if name == "cmd":
        typ = int(args.pop(0))
    else:
        typ = CMDS[name]
    off = ln = flags = 0
    if name not in ("flush",):
        off, ln = num(args.pop(0)), num(args.pop(0))
    if args and args[0].startswith("0x"):
        flags = int(args.pop(0), 16)
    payload = b"\xab" * ln if typ == 1 and ln <= (64 << 20) else b""
    try:
        request(s, typ, off, ln, flags, payload=payload)
        cookie, err, d, h = reply(s, structured, ln if typ == 0 else 0)
    except (EOFError, ConnectionResetError, BrokenPipeError):
        print("%s closed" % name)
        sys.exit(0)
    if err:
        print("%s error %d" % (name, err))
    elif typ == 0:
        print("read ok %d %d" % (d, h))
    else:
        print("%s ok" % name)


sock_path = sys.argv[1]
args = [a for a in sys.argv[2:] if a not in ("--simple", "--no-meta")]
EXPORT = ""
if args[:1] == ["--export"]:
    EXPORT = args[1]
    args = args[2:]
s = socket.socket(socket.AF_UNIX)
s.connect(sock_path)
structured = negotiate(s, args)
while args:
    step(s, structured, args)
PY
# check SOCK EXPECTED ARGS...: the raw client's output lines must equal EXPECTED.
check() {
    local sock=$1 want=$2; shift 2
    timeout 20 python3 nbdc.py "$TESTDIR/$sock" "$@" >got 2>&1
    printf '%s\n' "$want" | tr '|' '\n' >want
    expect_same want got "nbdc $*"
}

qemu-img create -q -f raw img.raw 16M
qemu-io -f raw -c 'write -P 0x5a 1M 1M' img.raw >/dev/null
cp img.raw orig.raw
"$VIMG_NBD" -t -e 8 -k "$TESTDIR/rw.sock" -f raw img.raw & rw_pid=$!
on_exit "kill $rw_pid"
"$VIMG_NBD" -t -e 8 -r -k "$TESTDIR/ro.sock" -f raw -x ro orig.raw & ro_pid=$!
on_exit "kill $ro_pid"
wait_sock rw.sock; wait_sock ro.sock
END=$((16 << 20))

# Bounds: past the end, wrapping, too long; zero length is fine.
check rw.sock "read ok 1048576 0|read error 22|read error 22|read error 22|read error 22|read ok 0 0" \
    read 1M 1M read $END 512 read $((END - 512)) 1024 read 0xfffffffffffffe00 1024 \
    read 0 $((33 << 20)) read 0 0
check rw.sock "write error 22|zero error 22|trim error 22|cache error 22|status error 22" \
    write $END 512 zero $((END - 4096)) 8192 trim $END 1 cache $((END + 512)) 512 \
    status $END 512
# Unknown commands and flags; block status needs a negotiated context.
check rw.sock "cmd error 22|cmd error 22|read error 22|write error 22|status ok|flush ok" \
    cmd 99 0 512 cmd 2000 0 512 read 0 512 0x8000 write 0 512 0x8 status 0 $END 0x8 flush
check rw.sock "status error 22" --no-meta status 0 512
# Without structured replies: errors are simple replies and the session goes on; DF is refused.
check rw.sock "read error 22|read ok 4096 0|read error 22" --simple read $END 512 read 0 4096 \
    read 0 512 0x4
# Holes come back as hole chunks, data as data.
check rw.sock "read ok 1048576 1048576" read 1M 2M
# Read-only exports refuse every kind of write with EPERM, and still read.
check ro.sock "write error 1|trim error 1|zero error 1|read ok 512 0" --export ro \
    write 0 512 trim 0 512 zero 0 512 read 1M 512
# Negotiation: unknown options, STARTTLS without TLS, unknown exports.
check rw.sock "opt reply 0x80000001|opt reply 0x80000002|read ok 512 0" opt 99 opt 5 read 1M 512
check rw.sock "meta error 0x80000006" --export nope read 0 512
check rw.sock "go error 0x80000006 export 'nope' not present" --no-meta --export nope read 0 512
# Violations end the session: oversized write payload, bad magic, huge option.
check rw.sock "write closed" write 0 $((33 << 20))
check rw.sock "badmagic closed" badmagic
check rw.sock "bigopt closed" bigopt
# Many requests in flight on one connection all come back.
check rw.sock "pipeline ok 64" pipeline 64 262144
# Clients that vanish mid-request.
for _ in 1 2 3; do
    timeout 10 python3 nbdc.py "$TESTDIR/rw.sock" halfwrite 1048576
    timeout 10 python3 nbdc.py "$TESTDIR/rw.sock" readexit
done
kill -0 $rw_pid || fail "server died"
qemu-img compare -f raw orig.raw "nbd+unix:///?socket=$TESTDIR/rw.sock" >out 2>&1 ||
    { cat out >&2; fail "image changed by rejected requests"; }
kill $rw_pid; wait $rw_pid
cmp orig.raw img.raw || fail "image changed on disk"
pass
