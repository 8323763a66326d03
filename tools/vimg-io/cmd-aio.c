/*
 * aio_read, aio_write and aio_flush. Requests run synchronously, but their
 * results are printed the way qemu-io prints completions: not when the
 * command runs, but when the requests are drained (aio_flush, close, reopen
 * and exit). Failures there do not change the exit status: qemu-io counts an
 * aio command as successful once it is submitted.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"
#include "rw.h"

/* Queues the text a completion will print at the next drain. */
static void
queue_output(struct io_state *s, char *text, size_t len)
{
    char **p;

    if (!text)
        return;
    if (len == 0 || !(p = realloc(s->pending, (s->n_pending + 1) * sizeof(*p)))) {
        free(text);
        return;
    }
    s->pending = p;
    s->pending[s->n_pending++] = text;
}

static int
aio_read_getopt(int argc, char **argv, struct rw_opts *o)
{
    int c;

    while ((c = getopt(argc, argv, "CiP:qv")) != -1) {
        switch (c) {
        case 'C': o->is_machine = true; break;
        case 'i': o->is_invalid = true; return 0;
        case 'P':
            o->has_pattern = true;
            if ((o->pattern = io_parse_pattern(optarg)) < 0)
                return -1;
            break;
        case 'q': o->is_quiet = true; break;
        case 'v': o->is_verbose = true; break;
        default:
            return io_usage(io_find_cmd("aio_read"));
        }
    }
    if (optind > argc - 2)
        return io_usage(io_find_cmd("aio_read"));
    return 0;
}

static void
aio_read_complete(FILE *out, const struct rw_opts *o, int64_t offset, const struct io_vec *v,
                  const struct timeval *t)
{
    if (o->has_pattern && !io_check_pattern(v->buf, o->pattern, v->total))
        fprintf(out, "Pattern verification failed at offset %" PRId64 ", %" PRId64 " bytes\n",
                offset, v->total);
    if (o->is_quiet)
        return;
    if (o->is_verbose)
        io_dump_buffer(out, v->buf, offset, v->total);
    io_print_report(out, "read", t, offset, v->total, v->total, 1, o->is_machine);
}

int
io_cmd_aio_read(struct io_state *s, int argc, char **argv)
{
    struct vimg_error err = { 0 };
    struct rw_opts o = { 0 };
    struct timeval t1, t2;
    struct io_vec v;
    int64_t offset;
    char *text = NULL;
    size_t len = 0;
    FILE *out;

    if (aio_read_getopt(argc, argv, &o) < 0)
        return -1;
    if (o.is_invalid) {
        printf("injecting invalid read request\n");
        return 0;
    }
    if ((offset = io_cvtnum(argv[optind])) < 0 ||
        io_make_iov(s, argc - optind - 1, argv + optind + 1, 0xab, &v) < 0)
        return -1;
    if ((out = open_memstream(&text, &len))) {
        gettimeofday(&t1, NULL);
        io_copy_on_read(s, offset, (int64_t)v.total);
        if (vimg_node_preadv(s->node, (uint64_t)offset, (uint64_t)v.total, v.iov, v.n_iov, 0,
                             &err) < 0) {
            fprintf(out, "readv failed: %s\n", strerror(err.errnum));
        } else {
            gettimeofday(&t2, NULL);
            t2 = io_tsub(t2, t1);
            aio_read_complete(out, &o, offset, &v, &t2);
        }
        fclose(out);
        queue_output(s, text, len);
    }
    io_free_iov(s, &v);
    return 0;
}

static int
aio_write_getopt(int argc, char **argv, struct rw_opts *o)
{
    int c;

    while ((c = getopt(argc, argv, "CfiP:quz")) != -1) {
        switch (c) {
        case 'C': o->is_machine = true; break;
        case 'f': o->flags |= VIMG_REQ_FUA; break;
        case 'i': o->is_invalid = true; return 0;
        case 'P':
            if ((o->pattern = io_parse_pattern(optarg)) < 0)
                return -1;
            break;
        case 'q': o->is_quiet = true; break;
        case 'u': o->flags |= VIMG_REQ_MAY_UNMAP; break;
        case 'z': o->is_zero = true; break;
        default:
            return io_usage(io_find_cmd("aio_write"));
        }
    }
    if (optind > argc - 2)
        return io_usage(io_find_cmd("aio_write"));
    if ((o->flags & VIMG_REQ_MAY_UNMAP) && !o->is_zero) {
        printf("-u requires -z to be specified\n");
        return -1;
    }
    if (o->is_zero && optind != argc - 2) {
        printf("-z supports only a single length parameter\n");
        return -1;
    }
    return 0;
}

/* Runs the write; returns its text for the drain, or NULL when out of memory. */
static char *
aio_write_run(struct io_state *s, const struct rw_opts *o, int64_t offset, int64_t count,
              const struct io_vec *v, size_t *len)
{
    struct vimg_error err = { 0 };
    struct timeval t1, t2;
    char *text = NULL;
    FILE *out = open_memstream(&text, len);
    int ret;

    if (!out)
        return NULL;
    gettimeofday(&t1, NULL);
    if (o->is_zero)
        ret = vimg_node_pwrite_zeroes(s->node, (uint64_t)offset, (uint64_t)count, o->flags,
                                      &err);
    else
        ret = vimg_node_pwritev(s->node, (uint64_t)offset, (uint64_t)count, v->iov, v->n_iov,
                                o->flags, &err);
    gettimeofday(&t2, NULL);
    if (ret < 0) {
        fprintf(out, "aio_write failed: %s\n", strerror(err.errnum));
    } else if (!o->is_quiet) {
        t2 = io_tsub(t2, t1);
        io_print_report(out, "wrote", &t2, offset, count, count, 1, o->is_machine);
    }
    fclose(out);
    return text;
}

int
io_cmd_aio_write(struct io_state *s, int argc, char **argv)
{
    struct rw_opts o = { .pattern = 0xcd };
    struct io_vec v = { 0 };
    int64_t offset, count;
    size_t len = 0;
    char *text;

    if (aio_write_getopt(argc, argv, &o) < 0)
        return -1;
    if (o.is_invalid) {
        printf("injecting invalid write request\n");
        return 0;
    }
    if ((offset = io_cvtnum(argv[optind])) < 0)
        return -1;
    if (o.is_zero) {
        if ((count = io_cvtnum(argv[optind + 1])) < 0)
            return -1;
    } else {
        if (io_make_iov(s, argc - optind - 1, argv + optind + 1, o.pattern, &v) < 0)
            return -1;
        count = v.total;
    }
    text = aio_write_run(s, &o, offset, count, &v, &len);
    queue_output(s, text, len);
    if (!o.is_zero)
        io_free_iov(s, &v);
    return 0;
}

int
io_cmd_aio_flush(struct io_state *s, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    io_drain(s);
    return 0;
}
