/* What every tool shares: QEMU-style output, messages, --object handling. */
#ifndef VIMG_TOOLS_COMMON_H
#define VIMG_TOOLS_COMMON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include <vimg/error.h>

extern const char *tool_name;   /* "vimg", "vimg-io", ... for message prefixes */

/* "tool: message\n" on stderr. */
void tool_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints err after an optional prefix: "tool: <prefix><msg>". */
void tool_error_err(const struct vimg_error *err, const char *prefix_fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Installs the library's warning printer (plain text on stderr). */
void tool_setup_warnings(void);

/* QEMU's JSON text: keys in QDict order, pretty with 4-space indent or compact. */
void tool_json_print(FILE *f, const json_t *value, bool is_pretty);
char *tool_json_dumps(const json_t *value, bool is_pretty);

/* "1 GiB", "44.7 MiB", "0.977 MiB" as QEMU's size_to_str prints them. */
void tool_size_to_str(uint64_t size, char *buf, size_t buf_size);

/* Size argument parsing with qemu-img's cvtnum messages; -1 after printing one. */
int64_t tool_cvtnum(const char *name, const char *value);

/*
 * qemu's progress meter as convert and compare drive it: a figure is set
 * (tool_meter_set) or added to (tool_meter_add) and printed as
 * "    (NN.NN/100%)\r" when it moved by more than min_skip since the last one
 * printed, or is 0 or 100. tool_meter_end prints the final newline only.
 */
struct tool_meter {
    bool is_enabled;
    float current;
    float last_printed;
    float min_skip;
};
void tool_meter_init(struct tool_meter *m, bool is_enabled, float min_skip);
void tool_meter_set(struct tool_meter *m, float pct);
void tool_meter_add(struct tool_meter *m, float delta);
void tool_meter_end(struct tool_meter *m);

/* Prints a format-specific info tree as QEMU's human dump does ("lazy refcounts: false"). */
void tool_dump_tree(const json_t *v, int indent);

#endif
