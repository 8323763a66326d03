/*
 * JSON text as QEMU writes it. QEMU's QDict keeps 512 hash buckets (the TDB
 * string hash) with each bucket listed newest first, and its JSON writer
 * walks them in that order; scripts that diff qemu-img's output (and
 * json: filenames) need the same order and the same escapes from us.
 */
#include <stdlib.h>
#include <string.h>

#include <vimg/json.h>

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
vimg_json_print(FILE *f, const json_t *value, bool is_pretty)
{
    json_print_value(f, value, is_pretty, 0);
}

char *
vimg_json_dumps(const json_t *value, bool is_pretty)
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

