/* Option sets and buffers the data commands (cmd-rw.c, cmd-aio.c) share. */
#ifndef VIMG_TOOLS_IO_RW_H
#define VIMG_TOOLS_IO_RW_H

#include <sys/uio.h>

#include "io.h"

struct rw_opts {
    bool is_machine;        /* -C */
    bool is_quiet;          /* -q */
    bool is_verbose;        /* -v */
    bool is_vmstate;        /* -b */
    bool is_compressed;     /* -c */
    bool is_zero;           /* -z */
    bool is_invalid;        /* -i (aio) */
    bool has_pattern;       /* -P */
    bool has_poff;          /* -s (read) */
    bool has_plen;          /* -l (read) */
    int pattern;
    int64_t poff;
    int64_t plen;
    unsigned flags;         /* VIMG_REQ_* */
    const char *source;     /* -s (write) */
};

/* One buffer split into the iovecs of readv/writev/aio. */
struct io_vec {
    struct iovec *iov;
    int n_iov;
    unsigned char *buf;
    int64_t total;
};

/* "<what> failed: <strerror>" on stdout. */
void io_report_error(const char *what, int errnum);
/* Parses length arguments into v (printing qemu-io's errors); -1 on failure. */
int io_make_iov(struct io_state *s, int n, char **argv, int pattern, struct io_vec *v);
void io_free_iov(struct io_state *s, struct io_vec *v);

#endif
