/*
 * vimg-io: a drop-in replacement for qemu-io 7.2. Shared state, the command
 * table and the output helpers (sizes, timings, hex dumps, patterns).
 */
#ifndef VIMG_TOOLS_IO_H
#define VIMG_TOOLS_IO_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/time.h>

#include <vimg/node.h>
#include <vimg/opts.h>

#include "../common.h"

/* BDRV_REQUEST_MAX_BYTES: INT_MAX rounded down to whole sectors. */
#define IO_MAX_REQUEST 2147483136LL

/* The open image and what is needed to open it again (reopen). */
struct io_state {
    struct vimg_node *node;
    char *filename;             /* NULL when opened from options alone */
    char *format;
    struct vimg_opts *opts;     /* --image-opts / open -o options, or NULL */
    unsigned flags;             /* VIMG_OPEN_* */
    bool is_misaligned;         /* -m: buffers start one byte past an alignment */
    bool is_image_opts;         /* --image-opts: open's path is an options string too */
    bool is_cor;                /* -C: reads copy what this layer lacks into it */
    bool is_quit;
    bool is_snapshot;           /* -s: node is a temporary overlay over the image */
    int snapshot_fd;            /* -s: keeps the unlinked overlay for reopen */
    char *snapshot_name;        /* -s: the overlay's name before it was unlinked */
    bool is_snapshot_reopened;  /* -s: further reopens fail, as qemu-io's do */
    char **pending;             /* aio results not yet delivered, in submission order */
    size_t n_pending;
};

struct io_cmd {
    const char *name;
    int (*fn)(struct io_state *s, int argc, char **argv);
    int argmin;
    int argmax;                 /* -1: no limit */
    bool needs_file;
    bool is_write;              /* refused on a read-only image before parsing */
    const char *args;           /* NULL: none; "" prints an empty argument list */
    const char *oneline;
    const char *help;           /* extended help for "help NAME", or NULL */
};

/* command.c */
const struct io_cmd *io_find_cmd(const char *name);
/* Runs one command line; returns -1 when the command failed. */
int io_run_line(struct io_state *s, const char *line);
int io_usage(const struct io_cmd *cmd);
/* Prints the aio results waiting for a drain (aio_flush, close, reopen, exit). */
void io_drain(struct io_state *s);

/* pattern.c: output in qemu-io's words */
/* cvtnum: size argument; prints the parse error and returns -1 on failure. */
int64_t io_cvtnum(const char *arg);
/* The number part of cvtnum without printing: 0, -EINVAL or -ERANGE. */
int io_parse_num(const char *arg, int64_t *out);
void io_print_cvtnum_err(int ret, const char *arg);
/* "1 MiB", "1.500 KiB", "512 bytes" */
void io_cvtstr(double value, char *buf, size_t size);
void io_timestr(const struct timeval *t, bool is_machine, char *buf, size_t size);
void io_print_report(FILE *out, const char *op, const struct timeval *t, int64_t offset,
                     int64_t count, int64_t total, int ops, bool is_machine);
void io_dump_buffer(FILE *out, const void *buf, int64_t offset, int64_t len);
/* A -P argument: 0..255, strtol syntax; prints the error and returns -1 otherwise. */
int io_parse_pattern(const char *arg);
/* True when bytes [0, len) of buf are all pattern. */
bool io_check_pattern(const void *buf, int pattern, int64_t len);
struct timeval io_tsub(struct timeval t1, struct timeval t2);
/* A buffer of len bytes filled with pattern (misaligned by one with -m); io_free it. */
void *io_alloc(struct io_state *s, size_t len, int pattern);
void io_free(struct io_state *s, void *buf);

/* cmd-rw.c, cmd-aio.c, cmd-file.c, cmd-misc.c */
int io_cmd_read(struct io_state *s, int argc, char **argv);
int io_cmd_readv(struct io_state *s, int argc, char **argv);
int io_cmd_write(struct io_state *s, int argc, char **argv);
int io_cmd_writev(struct io_state *s, int argc, char **argv);
int io_cmd_discard(struct io_state *s, int argc, char **argv);
int io_cmd_flush(struct io_state *s, int argc, char **argv);
int io_cmd_aio_read(struct io_state *s, int argc, char **argv);
int io_cmd_aio_write(struct io_state *s, int argc, char **argv);
int io_cmd_aio_flush(struct io_state *s, int argc, char **argv);
int io_cmd_open(struct io_state *s, int argc, char **argv);
int io_cmd_close(struct io_state *s, int argc, char **argv);
int io_cmd_reopen(struct io_state *s, int argc, char **argv);
int io_cmd_info(struct io_state *s, int argc, char **argv);
int io_cmd_length(struct io_state *s, int argc, char **argv);
int io_cmd_map(struct io_state *s, int argc, char **argv);
int io_cmd_alloc(struct io_state *s, int argc, char **argv);
int io_cmd_truncate(struct io_state *s, int argc, char **argv);
int io_cmd_sleep(struct io_state *s, int argc, char **argv);
int io_cmd_abort(struct io_state *s, int argc, char **argv);
int io_cmd_sigraise(struct io_state *s, int argc, char **argv);
int io_cmd_quit(struct io_state *s, int argc, char **argv);
int io_cmd_help(struct io_state *s, int argc, char **argv);
int io_cmd_break(struct io_state *s, int argc, char **argv);
int io_cmd_remove_break(struct io_state *s, int argc, char **argv);
int io_cmd_resume(struct io_state *s, int argc, char **argv);
int io_cmd_wait_break(struct io_state *s, int argc, char **argv);

/* cmd-file.c: opening, shared by main and the open command */
bool io_parse_cache(const char *mode, unsigned *flags);
bool io_parse_discard(const char *mode);
bool io_parse_aio(const char *mode, unsigned *flags);
/*
 * -C: before a read of [offset, +bytes), copies into the image what it lacks
 * of the clusters the read touches (prints nothing; the read reports errors).
 */
void io_copy_on_read(struct io_state *s, int64_t offset, int64_t bytes);
/* Opens and records the image; prints "can't open ..." and returns -1 on failure. */
int io_open_image(struct io_state *s, const char *filename, const char *format,
                  struct vimg_opts *opts, unsigned flags);
/*
 * -s: opens the image read-only under a temporary qcow2 overlay in $TMPDIR
 * (else /var/tmp) that takes every write and is unlinked at once.
 */
int io_open_snapshot(struct io_state *s, const char *filename, const char *format,
                     struct vimg_opts *opts, unsigned flags);
void io_close_image(struct io_state *s);
void io_warn_short_booleans(const char *str);

#endif
