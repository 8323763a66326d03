/*
 * nbd-conformance SOCKET [ro]: drives the NBD server on a unix socket
 * through the commands, flags and error cases of the protocol
 * (doc/proto.md) with raw messages, and prints one line per case: what
 * the server answered, as option reply types, error numbers, extents and a
 * checksum of data read. Messages the server attaches to errors are left
 * out, so that two servers that follow the spec alike print the same
 * (tests/integration/nbd-conformance.sh compares vimg-nbd with qemu-nbd).
 * With "ro" the export is expected read-only and the write cases check
 * that they are refused.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define OPTS_MAGIC      0x49484156454f5054ULL
#define REP_MAGIC       0x0003e889045565a9ULL
#define REQ_MAGIC       0x25609513u
#define SIMPLE_MAGIC    0x67446698u
#define CHUNK_MAGIC     0x668e33efu
#define NBD_ALLOC       "base:allocation"

enum { OPT_EXPORT_NAME = 1, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 5, OPT_INFO, OPT_GO,
       OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT };
enum { CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES,
       CMD_BLOCK_STATUS };
#define FLAG_FUA        0x01
#define FLAG_NO_HOLE    0x02
#define FLAG_DF         0x04
#define FLAG_REQ_ONE    0x08
#define FLAG_FAST_ZERO  0x10

static const char *sock_path;
static uint64_t export_size;
/* The contexts the last SET_META_CONTEXT chose: their ids differ between servers. */
static uint32_t context_ids[8];
static char context_names[8][128];
static unsigned n_contexts;

static void
put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static void
put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, (uint16_t)v); }
static void
put64(uint8_t *p, uint64_t v) { put32(p, v >> 32); put32(p + 4, (uint32_t)v); }
static uint16_t
get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t
get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static uint64_t
get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static bool
recv_all(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        ssize_t n;
        if (poll(&pfd, 1, 5000) <= 0)
            return false;
        n = recv(fd, p, len, 0);
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static bool
send_all(int fd, const void *buf, size_t len)
{
    return send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len;
}

/* True when the server has closed the connection (after draining what it sent). */
static bool
is_closed(int fd)
{
    uint8_t buf[4096];

    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        if (poll(&pfd, 1, 3000) <= 0)
            return false;
        if (recv(fd, buf, sizeof(buf), 0) <= 0)
            return true;
    }
}

/* Connects and reads the greeting; client_flags are sent unless negative. */
static int
connect_server(long client_flags, bool print)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    uint8_t hello[18], cf[4];
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock_path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        perror("connect");
        exit(2);
    }
    if (!recv_all(fd, hello, sizeof(hello))) {
        fprintf(stderr, "no greeting\n");
        exit(2);
    }
    if (print)
        printf("greeting: magic=%s opts=%s flags=0x%x\n",
               memcmp(hello, "NBDMAGIC", 8) ? "bad" : "NBDMAGIC",
               get64(hello + 8) == OPTS_MAGIC ? "IHAVEOPT" : "other", get16(hello + 16));
    if (client_flags >= 0) {
        put32(cf, (uint32_t)client_flags);
        send_all(fd, cf, 4);
    }
    return fd;
}

static void
send_opt(int fd, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t hdr[16];

    put64(hdr, OPTS_MAGIC);
    put32(hdr + 8, opt);
    put32(hdr + 12, len);
    send_all(fd, hdr, 16);
    if (len)
        send_all(fd, data, len);
}

static const char *
rep_name(uint32_t type)
{
    switch (type) {
    case 1: return "ACK";
    case 2: return "SERVER";
    case 3: return "INFO";
    case 4: return "META_CONTEXT";
    case 0x80000001u: return "ERR_UNSUP";
    case 0x80000002u: return "ERR_POLICY";
    case 0x80000003u: return "ERR_INVALID";
    case 0x80000004u: return "ERR_PLATFORM";
    case 0x80000005u: return "ERR_TLS_REQD";
    case 0x80000006u: return "ERR_UNKNOWN";
    case 0x80000007u: return "ERR_SHUTDOWN";
    case 0x80000008u: return "ERR_BLOCK_SIZE_REQD";
    case 0x80000009u: return "ERR_TOO_BIG";
    default: return "?";
    }
}

/* Describes one reply's payload in out; stores the export size from INFO_EXPORT. */
static void
describe_reply(uint32_t type, const uint8_t *d, uint32_t len, char *out, size_t size)
{
    if (type == 2 && len >= 4 && get32(d) <= len - 4) {
        snprintf(out, size, "(%.*s)", (int)get32(d), (const char *)d + 4);
    } else if (type == 3 && len >= 2) {
        uint16_t info = get16(d);
        if (info == 0 && len == 12) {
            export_size = get64(d + 2);
            snprintf(out, size, "(EXPORT size=%" PRIu64 " flags=0x%x)", export_size,
                     get16(d + 10));
        } else if (info == 3 && len == 14) {
            snprintf(out, size, "(BLOCK_SIZE %u/%u/%u)", get32(d + 2), get32(d + 6),
                     get32(d + 10));
        } else {
            snprintf(out, size, "(%u:%.*s)", info, (int)len - 2, (const char *)d + 2);
        }
    } else if (type == 4 && len >= 4) {
        snprintf(out, size, "(%.*s)", (int)len - 4, (const char *)d + 4);
        if (n_contexts < 8) {
            context_ids[n_contexts] = get32(d);
            snprintf(context_names[n_contexts++], 128, "%.*s", (int)len - 4,
                     (const char *)d + 4);
        }
    } else {
        out[0] = '\0';
    }
}

/* Reads replies to opt until a final one; prints them. Returns the last type, 0 if closed. */
static uint32_t
read_replies(int fd, const char *label, uint32_t opt)
{
    char line[8192] = "", desc[4200];
    uint32_t type = 0;

    if (opt == OPT_SET_META_CONTEXT || opt == OPT_LIST_META_CONTEXT)
        n_contexts = 0;
    for (;;) {
        uint8_t hdr[20], *data;
        uint32_t len;
        if (!recv_all(fd, hdr, sizeof(hdr))) {
            printf("%s:%s closed\n", label, line);
            return 0;
        }
        type = get32(hdr + 12);
        len = get32(hdr + 16);
        if (get64(hdr) != REP_MAGIC || get32(hdr + 8) != opt || len > 65536) {
            printf("%s:%s bad reply\n", label, line);
            return 0;
        }
        data = malloc(len + 1);
        if (!data || !recv_all(fd, data, len)) {
            free(data);
            printf("%s:%s closed\n", label, line);
            return 0;
        }
        describe_reply(type, data, len, desc, sizeof(desc));
        free(data);
        snprintf(line + strlen(line), sizeof(line) - strlen(line), " %s%s", rep_name(type),
                 desc);
        if (type == 1 || type & 0x80000000u)
            break;
    }
    printf("%s:%s\n", label, line);
    return type;
}

static void
opt_case(int fd, const char *label, uint32_t opt, const void *data, uint32_t len)
{
    send_opt(fd, opt, data, len);
    read_replies(fd, label, opt);
}

/* Builds NAME + requests (INFO/GO) or NAME + queries (META_CONTEXT) into buf. */
static uint32_t
build_named(uint8_t *buf, const char *name, const char *const *queries, int n,
            bool is_meta)
{
    uint32_t pos = 0, nl = (uint32_t)strlen(name);

    put32(buf, nl);
    memcpy(buf + 4, name, nl);
    pos = 4 + nl;
    if (!is_meta) {
        put16(buf + pos, (uint16_t)n);
        pos += 2;
        for (int i = 0; i < n; i++, pos += 2)
            put16(buf + pos, (uint16_t)atoi(queries[i]));
        return pos;
    }
    put32(buf + pos, (uint32_t)n);
    pos += 4;
    for (int i = 0; i < n; i++) {
        uint32_t ql = (uint32_t)strlen(queries[i]);
        put32(buf + pos, ql);
        memcpy(buf + pos + 4, queries[i], ql);
        pos += 4 + ql;
    }
    return pos;
}

static void
handshake_cases(void)
{
    static const char *const infos[] = { "1", "2", "3" };
    static const char *const q_base[] = { "base:" };
    static const char *const q_qemu[] = { "qemu:" };
    static const char *const q_alloc[] = { NBD_ALLOC };
    static const char *const q_none[] = { "nosuch:context" };
    static const char *const q_two[] = { NBD_ALLOC, "qemu:allocation-depth" };
    uint8_t buf[1024];
    uint32_t n;
    int fd;

    fd = connect_server(-1, true);
    put32(buf, 0x80);
    send_all(fd, buf, 4);
    printf("unknown client flags: %s\n", is_closed(fd) ? "closed" : "open");
    close(fd);

    fd = connect_server(1, false);
    put64(buf, 0x1122334455667788ULL);
    put32(buf + 8, OPT_LIST);
    put32(buf + 12, 0);
    send_all(fd, buf, 16);
    printf("bad option magic: %s\n", is_closed(fd) ? "closed" : "open");
    close(fd);

    fd = connect_server(0, false);
    send_opt(fd, OPT_LIST, NULL, 0);
    printf("LIST without fixed newstyle: %s\n", is_closed(fd) ? "closed" : "open");
    close(fd);

    fd = connect_server(3, false);
    opt_case(fd, "unknown option 0x42", 0x42, "xyz", 3);
    opt_case(fd, "LIST", OPT_LIST, NULL, 0);
    opt_case(fd, "LIST with data", OPT_LIST, "abcd", 4);
    opt_case(fd, "STARTTLS without TLS", OPT_STARTTLS, NULL, 0);
    n = build_named(buf, "nosuch", NULL, 0, false);
    opt_case(fd, "INFO unknown export", OPT_INFO, buf, n);
    n = build_named(buf, "", infos, 3, false);
    opt_case(fd, "INFO name/description/block size", OPT_INFO, buf, n);
    opt_case(fd, "INFO too short", OPT_INFO, buf, 3);
    opt_case(fd, "INFO bad request count", OPT_INFO, buf, n - 1);
    n = build_named(buf, "", NULL, 0, true);
    opt_case(fd, "LIST_META_CONTEXT before STRUCTURED_REPLY", OPT_LIST_META_CONTEXT, buf, n);
    opt_case(fd, "STRUCTURED_REPLY with data", OPT_STRUCTURED_REPLY, "ab", 2);
    opt_case(fd, "STRUCTURED_REPLY", OPT_STRUCTURED_REPLY, NULL, 0);
    opt_case(fd, "STRUCTURED_REPLY again", OPT_STRUCTURED_REPLY, NULL, 0);
    opt_case(fd, "LIST_META_CONTEXT all", OPT_LIST_META_CONTEXT, buf, n);
    n = build_named(buf, "", q_base, 1, true);
    opt_case(fd, "LIST_META_CONTEXT base:", OPT_LIST_META_CONTEXT, buf, n);
    n = build_named(buf, "", q_qemu, 1, true);
    opt_case(fd, "LIST_META_CONTEXT qemu:", OPT_LIST_META_CONTEXT, buf, n);
    opt_case(fd, "SET_META_CONTEXT qemu:", OPT_SET_META_CONTEXT, buf, n);
    n = build_named(buf, "", q_none, 1, true);
    opt_case(fd, "LIST_META_CONTEXT unknown", OPT_LIST_META_CONTEXT, buf, n);
    opt_case(fd, "SET_META_CONTEXT unknown", OPT_SET_META_CONTEXT, buf, n);
    opt_case(fd, "SET_META_CONTEXT truncated", OPT_SET_META_CONTEXT, buf, n - 2);
    n = build_named(buf, "nosuch", q_alloc, 1, true);
    opt_case(fd, "SET_META_CONTEXT unknown export", OPT_SET_META_CONTEXT, buf, n);
    n = build_named(buf, "", q_two, 2, true);
    opt_case(fd, "SET_META_CONTEXT two", OPT_SET_META_CONTEXT, buf, n);
    n = build_named(buf, "nosuch", NULL, 0, false);
    opt_case(fd, "GO unknown export", OPT_GO, buf, n);
    opt_case(fd, "ABORT", OPT_ABORT, NULL, 0);
    printf("after ABORT: %s\n", is_closed(fd) ? "closed" : "open");
    close(fd);

    fd = connect_server(1, false);
    send_opt(fd, OPT_EXPORT_NAME, "nosuch", 6);
    printf("EXPORT_NAME unknown: %s\n", is_closed(fd) ? "closed" : "open");
    close(fd);

    fd = connect_server(1, false);
    send_opt(fd, OPT_EXPORT_NAME, NULL, 0);
    if (recv_all(fd, buf, 10 + 124))
        printf("EXPORT_NAME: size=%" PRIu64 " flags=0x%x zeroes=%s\n", get64(buf),
               get16(buf + 8), buf[10] == 0 && !memcmp(buf + 10, buf + 11, 123) ? "yes" : "no");
    else
        printf("EXPORT_NAME: closed\n");
    close(fd);
}

/* Opens a connection in transmission: structured replies and contexts as asked. */
static int
open_export(bool structured, const char *const *queries, int n_queries)
{
    uint8_t buf[512];
    uint32_t n;
    int fd = connect_server(3, false);

    if (structured) {
        send_opt(fd, OPT_STRUCTURED_REPLY, NULL, 0);
        read_replies(fd, "  (setup) STRUCTURED_REPLY", OPT_STRUCTURED_REPLY);
    }
    if (n_queries) {
        n = build_named(buf, "", queries, n_queries, true);
        send_opt(fd, OPT_SET_META_CONTEXT, buf, n);
        read_replies(fd, "  (setup) SET_META_CONTEXT", OPT_SET_META_CONTEXT);
    }
    n = build_named(buf, "", NULL, 0, false);
    send_opt(fd, OPT_GO, buf, n);
    read_replies(fd, "  (setup) GO", OPT_GO);
    return fd;
}

static uint64_t next_cookie = 1;

static void
send_req(int fd, uint16_t flags, uint16_t type, uint64_t offset, uint32_t len,
         const void *payload)
{
    uint8_t hdr[28];

    put32(hdr, REQ_MAGIC);
    put16(hdr + 4, flags);
    put16(hdr + 6, type);
    put64(hdr + 8, next_cookie++);
    put64(hdr + 16, offset);
    put32(hdr + 24, len);
    send_all(fd, hdr, 28);
    if (payload && len)
        send_all(fd, payload, len);
}

static uint32_t
fnv1a(const uint8_t *p, size_t len)
{
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

/*
 * Reads the reply to the last request (length len for reads) and prints it:
 * the error, the data's checksum with holes filled by zeros, the extents.
 */
static void
read_reply(int fd, const char *label, uint16_t type, uint32_t len)
{
    uint8_t hdr[20], *data = type == CMD_READ ? calloc(1, len ? len : 1) : NULL;
    char line[8192] = "";
    bool got_data = false;

    for (;;) {
        uint32_t magic, clen;
        uint16_t flags, ctype;
        uint8_t *c;
        if (!recv_all(fd, hdr, 4))
            goto closed;
        magic = get32(hdr);
        if (magic == SIMPLE_MAGIC) {
            uint32_t error;
            if (!recv_all(fd, hdr + 4, 12))
                goto closed;
            error = get32(hdr + 4);
            if (error == 0 && type == CMD_READ) {
                if (!recv_all(fd, data, len))
                    goto closed;
                got_data = true;
            }
            snprintf(line + strlen(line), sizeof(line) - strlen(line), " simple err=%u",
                     error);
            break;
        }
        if (magic != CHUNK_MAGIC || !recv_all(fd, hdr + 4, 16))
            goto closed;
        flags = get16(hdr + 4);
        ctype = get16(hdr + 6);
        clen = get32(hdr + 16);
        if (clen > (64u << 20) || !(c = malloc(clen + 1)) || !recv_all(fd, c, clen))
            goto closed;
        if (ctype == 1 && clen >= 8 && data) {
            uint64_t off = get64(c);
            if (off <= len && clen - 8 <= len - off)
                memcpy(data + off, c + 8, clen - 8);
            got_data = true;
        } else if (ctype == 2) {
            got_data = true;
        } else if (ctype == 5 && clen >= 4) {
            const char *ctx = "unknown id";
            for (unsigned i = 0; i < n_contexts; i++)
                if (context_ids[i] == get32(c))
                    ctx = context_names[i];
            snprintf(line + strlen(line), sizeof(line) - strlen(line), " status[%s]:", ctx);
            for (uint32_t i = 4; i + 8 <= clen && strlen(line) < 7900; i += 8)
                snprintf(line + strlen(line), sizeof(line) - strlen(line), " %u/%u",
                         get32(c + i), get32(c + i + 4));
        } else if (ctype & 0x8000) {
            snprintf(line + strlen(line), sizeof(line) - strlen(line), " err=%u",
                     clen >= 4 ? get32(c) : 0);
        }
        free(c);
        if (flags & 1)
            break;
    }
    if (got_data)
        snprintf(line + strlen(line), sizeof(line) - strlen(line), " data=%08x",
                 fnv1a(data, len));
    printf("%s:%s\n", label, line);
    free(data);
    return;
closed:
    printf("%s:%s closed\n", label, line);
    free(data);
}

static void
cmd_case(int fd, const char *label, uint16_t flags, uint16_t type, uint64_t offset,
         uint32_t len, const void *payload)
{
    send_req(fd, flags, type, offset, len, payload);
    read_reply(fd, label, type, len);
}

static void
write_cases(int fd, bool ro)
{
    static uint8_t buf[65536];
    uint64_t end = export_size;

    memset(buf, 0xa5, sizeof(buf));
    cmd_case(fd, "WRITE 64k", 0, CMD_WRITE, 0, 65536, buf);
    cmd_case(fd, "WRITE FUA", FLAG_FUA, CMD_WRITE, 65536, 4096, buf);
    cmd_case(fd, "WRITE past the end", 0, CMD_WRITE, end - 512, 1024, buf);
    cmd_case(fd, "WRITE at the end", 0, CMD_WRITE, end, 512, buf);
    cmd_case(fd, "WRITE unknown flag", 0x100, CMD_WRITE, 0, 512, buf);
    cmd_case(fd, "WRITE_ZEROES", 0, CMD_WRITE_ZEROES, 1 << 20, 65536, NULL);
    cmd_case(fd, "WRITE_ZEROES NO_HOLE", FLAG_NO_HOLE, CMD_WRITE_ZEROES, 2 << 20, 65536, NULL);
    cmd_case(fd, "WRITE_ZEROES FUA", FLAG_FUA, CMD_WRITE_ZEROES, 2 << 20, 4096, NULL);
    cmd_case(fd, "WRITE_ZEROES past the end", 0, CMD_WRITE_ZEROES, end - 512, 1024, NULL);
    cmd_case(fd, "TRIM", 0, CMD_TRIM, 3 << 20, 65536, NULL);
    cmd_case(fd, "TRIM FUA", FLAG_FUA, CMD_TRIM, 3 << 20, 4096, NULL);
    cmd_case(fd, "TRIM past the end", 0, CMD_TRIM, end, 4096, NULL);
    if (!ro)
        cmd_case(fd, "READ back", 0, CMD_READ, 0, 65536 + 4096, NULL);
}

static void
transmission_cases(bool ro)
{
    static const char *const q_alloc[] = { NBD_ALLOC };
    uint64_t end;
    int fd = open_export(true, q_alloc, 1);

    end = export_size;
    cmd_case(fd, "READ 64k", 0, CMD_READ, 0, 65536, NULL);
    cmd_case(fd, "READ DF", FLAG_DF, CMD_READ, 0, 65536, NULL);
    cmd_case(fd, "READ FUA", FLAG_FUA, CMD_READ, 4096, 4096, NULL);
    cmd_case(fd, "READ last byte", 0, CMD_READ, end - 1, 1, NULL);
    cmd_case(fd, "READ past the end", 0, CMD_READ, end - 512, 1024, NULL);
    cmd_case(fd, "READ offset past the end", 0, CMD_READ, end + 4096, 512, NULL);
    cmd_case(fd, "READ offset overflow", 0, CMD_READ, UINT64_MAX - 511, 1024, NULL);
    cmd_case(fd, "READ 64 MiB", 0, CMD_READ, 0, 64u << 20, NULL);
    cmd_case(fd, "READ unknown flag", 0x4000, CMD_READ, 0, 512, NULL);
    cmd_case(fd, "READ NO_HOLE flag", FLAG_NO_HOLE, CMD_READ, 0, 512, NULL);
    write_cases(fd, ro);
    cmd_case(fd, "FLUSH", 0, CMD_FLUSH, 0, 0, NULL);
    cmd_case(fd, "CACHE", 0, CMD_CACHE, 0, 65536, NULL);
    cmd_case(fd, "CACHE past the end", 0, CMD_CACHE, end - 512, 1024, NULL);
    cmd_case(fd, "BLOCK_STATUS", 0, CMD_BLOCK_STATUS, 0, (uint32_t)(end < (1u << 30) ? end
                                                                      : 1u << 30), NULL);
    cmd_case(fd, "BLOCK_STATUS REQ_ONE", FLAG_REQ_ONE, CMD_BLOCK_STATUS, 0, 4 << 20, NULL);
    cmd_case(fd, "BLOCK_STATUS past the end", 0, CMD_BLOCK_STATUS, end, 4096, NULL);
    cmd_case(fd, "unknown command 42", 0, 42, 0, 512, NULL);
    if (!ro)
        cmd_case(fd, "WRITE 64 MiB (header only)", 0, CMD_WRITE, 0, 64u << 20, NULL);
    send_req(fd, 0, CMD_DISC, 0, 0, NULL);
    printf("DISC: %s\n", is_closed(fd) ? "closed" : "open");
    close(fd);

    /* Simple replies, no context. */
    fd = open_export(false, NULL, 0);
    cmd_case(fd, "simple READ", 0, CMD_READ, 0, 8192, NULL);
    cmd_case(fd, "simple READ past the end", 0, CMD_READ, end - 512, 1024, NULL);
    cmd_case(fd, "simple READ DF", FLAG_DF, CMD_READ, 0, 512, NULL);
    cmd_case(fd, "simple BLOCK_STATUS", 0, CMD_BLOCK_STATUS, 0, 4096, NULL);
    cmd_case(fd, "simple FLUSH", 0, CMD_FLUSH, 0, 0, NULL);
    send_req(fd, 0, CMD_DISC, 0, 0, NULL);
    printf("simple DISC: %s\n", is_closed(fd) ? "closed" : "open");
    close(fd);

    /* Structured replies, no context. */
    fd = open_export(true, NULL, 0);
    cmd_case(fd, "BLOCK_STATUS without context", 0, CMD_BLOCK_STATUS, 0, 4096, NULL);
    /* A bad magic ends the session. */
    send_all(fd, "\x12\x34\x56\x78", 4);
    send_req(fd, 0, CMD_READ, 0, 512, NULL);
    printf("bad request magic: %s\n", is_closed(fd) ? "closed" : "open");
    close(fd);

    /* A client that leaves in the middle of a write payload. */
    fd = open_export(true, NULL, 0);
    send_req(fd, 0, CMD_WRITE, 0, 65536, NULL);
    send_all(fd, "abc", 3);
    close(fd);
    fd = open_export(true, NULL, 0);
    cmd_case(fd, "after a client vanished", 0, CMD_READ, 0, 4096, NULL);
    close(fd);
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: nbd-conformance SOCKET [ro]\n");
        return 2;
    }
    sock_path = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    handshake_cases();
    transmission_cases(argc > 2 && strcmp(argv[2], "ro") == 0);
    return 0;
}
