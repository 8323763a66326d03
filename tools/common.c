/* Shared tool code: messages, sizes, progress lines. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/json.h>
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

/*
 * QEMU prints its raw-probing "WARNING: ..." block, check's findings
 * ("ERROR ...", "Leaked cluster ...", "Repairing ...") and qcow2's corruption
 * events ("qcow2: ...") as they are, and every other
 * library warning through error_report(), behind the program name.
 */
static void
print_warning(const char *msg)
{
    static const char *const raw[] = {
        "WARNING: ", "ERROR", "Leaked cluster ", "Repairing ", "Rebuilding refcount ",
        "Can't get refcount ", "qcow2: ",
        "Discarding ", "qcow2_free_clusters failed",
    };

    /* ... except check's snapshot table failures, which QEMU says through error_report(). */
    static const char *const prefixed[] = {
        "ERROR snapshot table too large", "ERROR snapshot table offset invalid",
        "ERROR failed to read the snapshot table",
        "ERROR writing refblock",
    };

    for (size_t i = 0; i < sizeof(prefixed) / sizeof(prefixed[0]); i++) {
        if (strncmp(msg, prefixed[i], strlen(prefixed[i])) == 0) {
            fprintf(stderr, "%s: %s\n", tool_name, msg);
            return;
        }
    }
    for (size_t i = 0; i < sizeof(raw) / sizeof(raw[0]); i++) {
        if (strncmp(msg, raw[i], strlen(raw[i])) == 0) {
            fprintf(stderr, "%s\n", msg);
            return;
        }
    }
    fprintf(stderr, "%s: %s\n", tool_name, msg);
}

void
tool_setup_warnings(void)
{
    vimg_set_warning_handler(print_warning);
}

void
tool_json_print(FILE *f, const json_t *value, bool is_pretty)
{
    vimg_json_print(f, value, is_pretty);
}

char *
tool_json_dumps(const json_t *value, bool is_pretty)
{
    return vimg_json_dumps(value, is_pretty);
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

void
tool_meter_init(struct tool_meter *m, bool is_enabled, float min_skip)
{
    m->is_enabled = is_enabled;
    m->current = 0;
    m->last_printed = 0;
    m->min_skip = min_skip;
}

void
tool_meter_set(struct tool_meter *m, float pct)
{
    if (pct > 100)
        pct = 100;
    m->current = pct;
    if (!m->is_enabled)
        return;
    if (pct > m->last_printed + m->min_skip || pct < m->last_printed - m->min_skip ||
        pct == 0 || pct == 100) {
        m->last_printed = pct;
        printf("    (%3.2f/100%%)\r", pct);
        fflush(stdout);
    }
}

void
tool_meter_add(struct tool_meter *m, float delta)
{
    /* Scaled the way qemu scales a delta against its maximum of 100, in float, so that
     * sums of figures round exactly as qemu's do. */
    tool_meter_set(m, m->current + delta / 100.0f * 100.0f);
}

void
tool_meter_end(struct tool_meter *m)
{
    if (!m->is_enabled)
        return;
    printf("\n");
    fflush(stdout);
}

/* A format-specific key as QEMU's human dump prints it: "compression type". */
static void
dump_key(const char *key, int indent)
{
    printf("%*s", indent, "");
    for (const char *p = key; *p; p++)
        putchar(*p == '-' ? ' ' : *p);
}

/* The human rendering of a format-specific tree, as qemu-img info prints it. */
void
tool_dump_tree(const json_t *v, int indent)
{
    const char *key;
    json_t *child;
    size_t i;

    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, key, child) {
            dump_key(key, indent);
            printf(json_is_object(child) || json_is_array(child) ? ":\n" : ": ");
            tool_dump_tree(child, json_is_object(child) || json_is_array(child) ? indent + 4 : 0);
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, child) {
            bool is_tree = json_is_object(child) || json_is_array(child);
            printf("%*s[%zu]:%s", indent, "", i, is_tree ? "\n" : " ");
            tool_dump_tree(child, is_tree ? indent + 4 : 0);
        }
    } else if (json_is_string(v)) {
        printf("%s\n", json_string_value(v));
    } else if (json_is_integer(v)) {
        printf("%" JSON_INTEGER_FORMAT "\n", json_integer_value(v));
    } else if (json_is_boolean(v)) {
        printf("%s\n", json_is_true(v) ? "true" : "false");
    } else if (json_is_real(v)) {
        printf("%g\n", json_real_value(v));
    }
}
