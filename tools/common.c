/*
 * Shared tool code. JSON goes out in QEMU's QDict order: a QDict keeps
 * 512 hash buckets (the TDB string hash) and lists each bucket newest
 * first, and QEMU's JSON writer walks them in that order; scripts that diff
 * qemu-img's output need the same order from us.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/node.h>
#include <vimg/opts.h>

#include "common.h"

const char *tool_name = "vimg";

void
tool_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", tool_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void
tool_error_err(const struct vimg_error *err, const char *prefix_fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", tool_name);
    if (prefix_fmt) {
        va_start(ap, prefix_fmt);
        vfprintf(stderr, prefix_fmt, ap);
        va_end(ap);
    }
    fprintf(stderr, "%s\n", err->msg);
}

static void
print_warning(const char *msg)
{
    fprintf(stderr, "%s\n", msg);
}

void
tool_setup_warnings(void)
{
    vimg_set_warning_handler(print_warning);
}

#define QDICT_BUCKETS 512

static unsigned
qdict_bucket(const char *key)
{
    unsigned value = 0x238F13AFu * (unsigned)strlen(key);

    for (unsigned i = 0; key[i]; i++)
        value += (unsigned)(unsigned char)key[i] << (i * 5 % 24);
    return (1103515243u * value + 12345u) % QDICT_BUCKETS;
}

struct key_order {
    const char *key;
    unsigned bucket;
    size_t index;          /* insertion order; later ones come first in a bucket */
};

static int
key_order_cmp(const void *a, const void *b)
{
    const struct key_order *x = a, *y = b;

    if (x->bucket != y->bucket)
        return x->bucket < y->bucket ? -1 : 1;
    return x->index > y->index ? -1 : 1;
}

static void
json_print_string(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    fputc('"', f);
    while (*p) {
        unsigned c = *p;
        int extra = 0;
        switch (c) {
        case '"': fputs("\\\"", f); p++; continue;
        case '\\': fputs("\\\\", f); p++; continue;
        case '\b': fputs("\\b", f); p++; continue;
        case '\f': fputs("\\f", f); p++; continue;
        case '\n': fputs("\\n", f); p++; continue;
        case '\r': fputs("\\r", f); p++; continue;
        case '\t': fputs("\\t", f); p++; continue;
        default: break;
        }
        if (c < 0x20 || c == 0x7f) {
            fprintf(f, "\\u%04X", c);
            p++;
            continue;
        }
        if (c < 0x80) {
            fputc((int)c, f);
            p++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) { c &= 0x1f; extra = 1; }
        else if ((c & 0xf0) == 0xe0) { c &= 0x0f; extra = 2; }
        else if ((c & 0xf8) == 0xf0) { c &= 0x07; extra = 3; }
        else { fputs("\\uFFFD", f); p++; continue; }
        p++;
        for (int i = 0; i < extra && (*p & 0xc0) == 0x80; i++, p++)
            c = (c << 6) | (*p & 0x3f);
        if (c >= 0x10000) {
            c -= 0x10000;
            fprintf(f, "\\u%04X\\u%04X", 0xd800 + (c >> 10), 0xdc00 + (c & 0x3ff));
        } else {
            fprintf(f, "\\u%04X", c);
        }
    }
    fputc('"', f);
}

static void
json_newline(FILE *f, bool is_pretty, int indent)
{
    if (is_pretty)
        fprintf(f, "\n%*s", indent * 4, "");
}

static void
json_print_value(FILE *f, const json_t *v, bool is_pretty, int indent)
{
    const char *sep = "";

    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(v), i = 0;
        struct key_order *keys = calloc(n ? n : 1, sizeof(*keys));
        const char *key;
        json_t *child;
        json_object_foreach((json_t *)v, key, child) {
            keys[i].key = key;
            keys[i].bucket = qdict_bucket(key);
            keys[i].index = i;
            i++;
        }
        qsort(keys, n, sizeof(*keys), key_order_cmp);
        fputc('{', f);
        for (i = 0; i < n; i++) {
            fputs(sep, f);
            json_newline(f, is_pretty, indent + 1);
            json_print_string(f, keys[i].key);
            fputs(": ", f);
            json_print_value(f, json_object_get(v, keys[i].key), is_pretty, indent + 1);
            sep = is_pretty ? "," : ", ";
        }
        json_newline(f, is_pretty, indent);
        fputc('}', f);
        free(keys);
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *child;
        fputc('[', f);
        json_array_foreach(v, i, child) {
            fputs(sep, f);
            json_newline(f, is_pretty, indent + 1);
            json_print_value(f, child, is_pretty, indent + 1);
            sep = is_pretty ? "," : ", ";
        }
        json_newline(f, is_pretty, indent);
        fputc(']', f);
        break;
    }
    case JSON_STRING:
        json_print_string(f, json_string_value(v));
        break;
    case JSON_INTEGER:
        fprintf(f, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        fprintf(f, "%.17g", json_real_value(v));
        break;
    case JSON_TRUE:
        fputs("true", f);
        break;
    case JSON_FALSE:
        fputs("false", f);
        break;
    case JSON_NULL:
        fputs("null", f);
        break;
    }
}

void
tool_json_print(FILE *f, const json_t *value, bool is_pretty)
{
    json_print_value(f, value, is_pretty, 0);
}

char *
tool_json_dumps(const json_t *value, bool is_pretty)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    if (!f)
        return NULL;
    json_print_value(f, value, is_pretty, 0);
    fclose(f);
    return buf;
}

void
tool_size_to_str(uint64_t size, char *buf, size_t buf_size)
{
    static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    int exp, i;

    /* Switch units at 1000 rather than 1024, so no figure needs four digits. */
    frexp((double)size / (1000.0 / 1024.0), &exp);
    i = (exp - 1) / 10;
    if (i < 0)
        i = 0;
    if (i > 6)
        i = 6;
    snprintf(buf, buf_size, "%0.3g %sB", (double)size / (double)(1ULL << (i * 10)), suffixes[i]);
}

void
tool_progress_init(struct tool_progress *p, bool is_enabled)
{
    p->is_enabled = is_enabled;
    p->last_printed = -1;
    if (is_enabled)
        tool_progress_update(p, 0, 1);
}

void
tool_progress_update(struct tool_progress *p, uint64_t done, uint64_t total)
{
    float pct = total ? (float)((double)done * 100.0 / (double)total) : 100.0f;

    if (!p->is_enabled)
        return;
    /* qemu-img prints when the figure moved by at least 1%, and always at 100%. */
    if (p->last_printed >= 0 && pct - p->last_printed < 1.0f && pct < 100.0f)
        return;
    if (p->last_printed >= 100.0f && pct >= 100.0f)
        return;
    p->last_printed = pct;
    printf("    (%3.2f/100%%)\r", pct);
    fflush(stdout);
}

void
tool_progress_end(struct tool_progress *p)
{
    if (!p->is_enabled)
        return;
    p->last_printed = -1;
    tool_progress_update(p, 1, 1);
    printf("\n");
    fflush(stdout);
}

int64_t
tool_cvtnum(const char *name, const char *value)
{
    uint64_t n;
    int ret = vimg_parse_size(value, &n);

    if (ret == -ERANGE || (ret == 0 && n > (uint64_t)INT64_MAX)) {
        tool_error("Invalid %s specified. Must be between 0 and %" PRId64 ".", name, INT64_MAX);
        return -1;
    }
    if (ret < 0) {
        tool_error("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", name);
        tool_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    return (int64_t)n;
}
