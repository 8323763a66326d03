/*
 * What vimg-io prints and parses the way qemu-io does: size arguments
 * (cvtnum), human sizes (cvtstr), timings, the statistics lines, hex dumps
 * and the byte patterns of -P.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

/* "0x10k": qemu-io warns that a suffix after hex digits is deprecated. */
static bool
has_hex_suffix(const char *arg)
{
    const char *p = arg;

    if (*p == '+')
        p++;
    if (p[0] != '0' || (p[1] != 'x' && p[1] != 'X') || !isxdigit((unsigned char)p[2]))
        return false;
    p += 2;
    while (isxdigit((unsigned char)*p))
        p++;
    return *p && strchr("kKmMgGtTpP", *p);
}

int
io_parse_num(const char *arg, int64_t *out)
{
    uint64_t v;
    int ret;

    if (has_hex_suffix(arg))
        tool_error("warning: Using a multiplier suffix on hex numbers is deprecated: %s", arg);
    ret = vimg_parse_size(arg, &v);
    if (ret == 0 && v > (uint64_t)INT64_MAX)
        ret = -ERANGE;
    if (ret == 0)
        *out = (int64_t)v;
    return ret;
}

void
io_print_cvtnum_err(int ret, const char *arg)
{
    if (ret == -ERANGE)
        printf("Parsing error: argument too large -- %s\n", arg);
    else
        printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n",
               arg);
}

int64_t
io_cvtnum(const char *arg)
{
    int64_t v;
    int ret = io_parse_num(arg, &v);

    if (ret < 0) {
        io_print_cvtnum_err(ret, arg);
        return -1;
    }
    return v;
}

/* Drops a fraction made only of zeros: "1.000 KiB" -> "1 KiB", "0.000000 bytes" -> "0 bytes". */
static void
strip_zero_fraction(char *buf)
{
    char *dot = strchr(buf, '.');
    char *p;

    if (!dot)
        return;
    for (p = dot + 1; *p == '0'; p++)
        continue;
    if (*p != ' ' && *p != '\0')
        return;
    memmove(dot, p, strlen(p) + 1);
}

void
io_cvtstr(double value, char *buf, size_t size)
{
    static const char *const units[] = { "EiB", "PiB", "TiB", "GiB", "MiB", "KiB" };

    for (int i = 0; i < 6; i++) {
        double unit = (double)(1ULL << (10 * (6 - i)));
        if (value >= unit) {
            snprintf(buf, size, "%.3f %s", value / unit, units[i]);
            strip_zero_fraction(buf);
            return;
        }
    }
    snprintf(buf, size, "%f bytes", value);
    strip_zero_fraction(buf);
}

struct timeval
io_tsub(struct timeval t1, struct timeval t2)
{
    t1.tv_usec -= t2.tv_usec;
    if (t1.tv_usec < 0) {
        t1.tv_usec += 1000000;
        t1.tv_sec--;
    }
    t1.tv_sec -= t2.tv_sec;
    return t1;
}

static double
tdiv(double value, const struct timeval *t)
{
    double secs = (double)t->tv_sec + (double)t->tv_usec / 1000000.0;

    return secs > 0 ? value / secs : value / 1e-6;
}

void
io_timestr(const struct timeval *t, bool is_machine, char *buf, size_t size)
{
    double secs = (double)(t->tv_sec % 60) + (double)t->tv_usec / 1000000.0;
    unsigned hours = (unsigned)(t->tv_sec / 3600);
    unsigned mins = (unsigned)(t->tv_sec % 3600 / 60);

    if (is_machine || t->tv_sec > 0)
        snprintf(buf, size, "%u:%02u:%05.2f", hours, mins, secs);
    else
        snprintf(buf, size, "%05.2f sec", secs);
}

void
io_print_report(FILE *out, const char *op, const struct timeval *t, int64_t offset,
                int64_t count, int64_t total, int ops, bool is_machine)
{
    char s1[64], s2[64], ts[64];

    io_timestr(t, is_machine, ts, sizeof(ts));
    if (is_machine) {
        fprintf(out, "%" PRId64 ",%d,%s,%.3f,%.3f\n", total, ops, ts,
                tdiv((double)total, t), tdiv((double)ops, t));
        return;
    }
    fprintf(out, "%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n", op, total, count,
            offset);
    io_cvtstr((double)total, s1, sizeof(s1));
    io_cvtstr(tdiv((double)total, t), s2, sizeof(s2));
    fprintf(out, "%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", s1, ops, ts, s2,
            tdiv((double)ops, t));
}

void
io_dump_buffer(FILE *out, const void *buf, int64_t offset, int64_t len)
{
    const unsigned char *p = buf;

    for (int64_t i = 0; i < len; i += 16) {
        int64_t n = len - i < 16 ? len - i : 16;
        fprintf(out, "%08" PRIx64 ":  ", (uint64_t)(offset + i));
        for (int64_t j = 0; j < n; j++)
            fprintf(out, "%02x ", p[i + j]);
        fputc(' ', out);
        for (int64_t j = 0; j < n; j++)
            fputc(isalnum(p[i + j]) ? p[i + j] : '.', out);
        fputc('\n', out);
    }
}

int
io_parse_pattern(const char *arg)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(arg, &end, 0);
    if (errno || end == arg || *end || v < 0 || v > 255) {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return (int)v;
}

bool
io_check_pattern(const void *buf, int pattern, int64_t len)
{
    const unsigned char *p = buf;

    for (int64_t i = 0; i < len; i++) {
        if (p[i] != (unsigned char)pattern)
            return false;
    }
    return true;
}

void *
io_alloc(struct io_state *s, size_t len, int pattern)
{
    size_t extra = s && s->is_misaligned ? 1 : 0;
    unsigned char *p;

    if (posix_memalign((void **)&p, 4096, len + extra + 1) != 0)
        return NULL;
    memset(p + extra, pattern, len);
    return p + extra;
}

void
io_free(struct io_state *s, void *buf)
{
    if (buf)
        free((unsigned char *)buf - (s && s->is_misaligned ? 1 : 0));
}
