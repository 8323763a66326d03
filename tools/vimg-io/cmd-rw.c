/*
 * The synchronous data commands of vimg-io: read, readv, write, writev,
 * discard and flush, with qemu-io's option checks, messages and reports.
 * -b (read, write) reaches the VM state of the image (qcow2) instead of its
 * disk; as in qemu-io, readv and writev have no -b.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io.h"
#include "rw.h"

void
io_report_error(const char *what, int errnum)
{
    printf("%s failed: %s\n", what, strerror(errnum));
}

/* The offset and count of read/write/discard, with the length limit. */
static int
parse_offset_count(char **argv, int64_t *offset, int64_t *count, bool is_unlimited,
                   const char *limit_text)
{
    if ((*offset = io_cvtnum(argv[0])) < 0)
        return -1;
    if ((*count = io_cvtnum(argv[1])) < 0)
        return -1;
    if (*count > IO_MAX_REQUEST && !is_unlimited) {
        printf("length cannot exceed %" PRId64 "%s, given %s\n", (int64_t)IO_MAX_REQUEST,
               limit_text, argv[1]);
        return -1;
    }
    return 0;
}

static int
check_sector_aligned(int64_t offset, int64_t count)
{
    if (offset & 511) {
        printf("%" PRId64 " is not a sector-aligned value for 'offset'\n", offset);
        return -1;
    }
    if (count & 511) {
        printf("%" PRId64 " is not a sector-aligned value for 'count'\n", count);
        return -1;
    }
    return 0;
}

static int
read_getopt(struct io_state *s, int argc, char **argv, struct rw_opts *o)
{
    int c;

    (void)s;
    while ((c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b': o->is_vmstate = true; break;
        case 'C': o->is_machine = true; break;
        case 'l':
            o->has_plen = true;
            if ((o->plen = io_cvtnum(optarg)) < 0)
                return -1;
            break;
        case 'p': break;
        case 'P':
            o->has_pattern = true;
            if ((o->pattern = io_parse_pattern(optarg)) < 0)
                return -1;
            break;
        case 'q': o->is_quiet = true; break;
        case 's':
            o->has_poff = true;
            if ((o->poff = io_cvtnum(optarg)) < 0)
                return -1;
            break;
        case 'v': o->is_verbose = true; break;
        default:
            return io_usage(io_find_cmd("read"));
        }
    }
    if (optind != argc - 2)
        return io_usage(io_find_cmd("read"));
    return 0;
}

/* -s/-l select the verified part of the read data. */
static int
read_check_pattern_range(struct rw_opts *o, int64_t count)
{
    if (!o->has_pattern && (o->has_plen || o->has_poff))
        return io_usage(io_find_cmd("read"));
    if (!o->has_plen)
        o->plen = count - o->poff;
    if (o->plen < 0 || o->poff > count || o->plen > count - o->poff) {
        printf("pattern verification range exceeds end of read data\n");
        return -1;
    }
    return 0;
}

/* QEMU's bounce buffer limit for one copy-on-read step. */
#define COR_MAX_BYTES (16LL << 20)

/* Whether [offset, +bytes) is allocated in this layer; *n is the run's length. */
static bool
cor_is_allocated(struct io_state *s, int64_t offset, int64_t bytes, int64_t *n)
{
    struct vimg_error err = { 0 };
    struct vimg_block_status bs;

    if (vimg_node_block_status_above(s->node, vimg_node_backing(s->node), (uint64_t)offset,
                                     (uint64_t)bytes, &bs, &err) < 0) {
        *n = bytes;
        return true;
    }
    *n = (int64_t)bs.bytes < bytes ? (int64_t)bs.bytes : bytes;
    return bs.flags & VIMG_BS_ALLOCATED;
}

/* Copies [offset, +bytes) as read through the backing chain into this layer. */
static void
cor_copy(struct io_state *s, int64_t offset, int64_t bytes)
{
    struct vimg_error err = { 0 };
    void *buf = malloc((size_t)bytes);

    if (!buf)
        return;
    if (vimg_node_pread(s->node, (uint64_t)offset, buf, (uint64_t)bytes, 0, &err) == 0) {
        if (vimg_buffer_is_zero(buf, (size_t)bytes))
            vimg_node_pwrite_zeroes(s->node, (uint64_t)offset, (uint64_t)bytes, 0, &err);
        else
            vimg_node_pwrite(s->node, (uint64_t)offset, buf, (uint64_t)bytes, 0, &err);
    }
    free(buf);
}

/*
 * As QEMU's copy-on-read: only a read that is not wholly allocated here
 * copies, over whole clusters (cut at the end of the image); unallocated runs
 * are written back, as zeros when they read as zeros. Errors are left for
 * the read itself to report.
 */
void
io_copy_on_read(struct io_state *s, int64_t offset, int64_t bytes)
{
    struct vimg_error err = { 0 };
    int64_t len = vimg_node_length(s->node, &err), cluster, pos, end, n;

    if (!s->is_cor || len < 0 || offset < 0 || bytes < 0 || offset > len ||
        bytes > len - offset)
        return;
    /* Nothing counts as allocated in an empty range: QEMU copies the cluster around it. */
    if (bytes > 0 && cor_is_allocated(s, offset, bytes, &n) && n == bytes)
        return;
    cluster = vimg_node_cluster_size(s->node) ? vimg_node_cluster_size(s->node) : 1;
    pos = offset / cluster * cluster;
    end = (offset + bytes + cluster - 1) / cluster * cluster;
    if (end > len)
        end = len;
    while (pos < end) {
        if (!cor_is_allocated(s, pos, end - pos, &n)) {
            if (n > COR_MAX_BYTES)
                n = COR_MAX_BYTES;
            cor_copy(s, pos, n);
        }
        pos += n;
    }
}

static int
read_data(struct io_state *s, const struct rw_opts *o, int64_t offset, int64_t count,
          void *buf)
{
    struct vimg_error err = { 0 };

    if (o->is_vmstate) {
        if (vimg_node_pread_vmstate(s->node, (uint64_t)offset, buf, (uint64_t)count, &err) < 0)
            return -err.errnum;
        return 0;
    }
    io_copy_on_read(s, offset, count);
    if (vimg_node_pread(s->node, (uint64_t)offset, buf, (uint64_t)count, 0, &err) < 0)
        return -err.errnum;
    return 0;
}

int
io_cmd_read(struct io_state *s, int argc, char **argv)
{
    struct rw_opts o = { 0 };
    struct timeval t1, t2;
    int64_t offset, count;
    void *buf;
    int ret;

    if (read_getopt(s, argc, argv, &o) < 0 ||
        parse_offset_count(argv + optind, &offset, &count, false, "") < 0 ||
        read_check_pattern_range(&o, count) < 0)
        return -1;
    if (o.is_vmstate && check_sector_aligned(offset, count) < 0)
        return -1;
    if (!(buf = io_alloc(s, (size_t)count, 0xab)))
        return -1;
    gettimeofday(&t1, NULL);
    ret = read_data(s, &o, offset, count, buf);
    gettimeofday(&t2, NULL);
    if (ret < 0) {
        io_report_error("read", -ret);
        goto out;
    }
    if (o.has_pattern && !io_check_pattern((char *)buf + o.poff, o.pattern, o.plen)) {
        printf("Pattern verification failed at offset %" PRId64 ", %" PRId64 " bytes\n",
               offset + o.poff, o.plen);
        ret = -1;
    }
    if (!o.is_quiet) {
        if (o.is_verbose)
            io_dump_buffer(stdout, buf, offset, count);
        t2 = io_tsub(t2, t1);
        io_print_report(stdout, "read", &t2, offset, count, count, 1, o.is_machine);
    }
out:
    io_free(s, buf);
    return ret < 0 ? -1 : 0;
}

/* The buffers of readv/writev/aio: one per length argument, each filled with pattern. */
int
io_make_iov(struct io_state *s, int n, char **argv, int pattern, struct io_vec *v)
{
    int64_t total = 0;

    memset(v, 0, sizeof(*v));
    v->iov = calloc((size_t)n, sizeof(*v->iov));
    if (!v->iov)
        return -1;
    for (int i = 0; i < n; i++) {
        int64_t len = io_cvtnum(argv[i]);
        if (len < 0)
            goto fail;
        if (len > IO_MAX_REQUEST) {
            printf("Argument '%s' exceeds maximum size %" PRId64 "\n", argv[i],
                   (int64_t)IO_MAX_REQUEST);
            goto fail;
        }
        if (len > IO_MAX_REQUEST - total) {
            printf("The total number of bytes exceed the maximum size %" PRId64 "\n",
                   (int64_t)IO_MAX_REQUEST);
            goto fail;
        }
        total += len;
        v->iov[i].iov_len = (size_t)len;
    }
    if (!(v->buf = io_alloc(s, (size_t)total, pattern)))
        goto fail;
    for (int i = 0, pos = 0; i < n; pos += (int)v->iov[i].iov_len, i++)
        v->iov[i].iov_base = v->buf + pos;
    v->n_iov = n;
    v->total = total;
    return 0;
fail:
    free(v->iov);
    v->iov = NULL;
    return -1;
}

void
io_free_iov(struct io_state *s, struct io_vec *v)
{
    io_free(s, v->buf);
    free(v->iov);
}

static int
readv_getopt(int argc, char **argv, struct rw_opts *o)
{
    int c;

    while ((c = getopt(argc, argv, "CP:qv")) != -1) {
        switch (c) {
        case 'C': o->is_machine = true; break;
        case 'P':
            o->has_pattern = true;
            if ((o->pattern = io_parse_pattern(optarg)) < 0)
                return -1;
            break;
        case 'q': o->is_quiet = true; break;
        case 'v': o->is_verbose = true; break;
        default:
            return io_usage(io_find_cmd("readv"));
        }
    }
    if (optind > argc - 2)
        return io_usage(io_find_cmd("readv"));
    return 0;
}

int
io_cmd_readv(struct io_state *s, int argc, char **argv)
{
    struct vimg_error err = { 0 };
    struct rw_opts o = { 0 };
    struct timeval t1, t2;
    struct io_vec v;
    int64_t offset;
    int ret;

    if (readv_getopt(argc, argv, &o) < 0 || (offset = io_cvtnum(argv[optind])) < 0 ||
        io_make_iov(s, argc - optind - 1, argv + optind + 1, 0xab, &v) < 0)
        return -1;
    gettimeofday(&t1, NULL);
    io_copy_on_read(s, offset, (int64_t)v.total);
    ret = vimg_node_preadv(s->node, (uint64_t)offset, (uint64_t)v.total, v.iov, v.n_iov, 0,
                           &err);
    gettimeofday(&t2, NULL);
    if (ret < 0) {
        io_report_error("readv", err.errnum);
        goto out;
    }
    if (o.has_pattern && !io_check_pattern(v.buf, o.pattern, v.total)) {
        printf("Pattern verification failed at offset %" PRId64 ", %" PRId64 " bytes\n",
               offset, v.total);
        ret = -1;
    }
    if (!o.is_quiet) {
        if (o.is_verbose)
            io_dump_buffer(stdout, v.buf, offset, v.total);
        t2 = io_tsub(t2, t1);
        io_print_report(stdout, "read", &t2, offset, v.total, v.total, 1, o.is_machine);
    }
out:
    io_free_iov(s, &v);
    return ret < 0 ? -1 : 0;
}

static int
write_getopt(int argc, char **argv, struct rw_opts *o)
{
    int c;

    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (c) {
        case 'b': o->is_vmstate = true; break;
        case 'c': o->is_compressed = true; break;
        case 'C': o->is_machine = true; break;
        case 'f': o->flags |= VIMG_REQ_FUA; break;
        case 'n': o->flags |= VIMG_REQ_NO_FALLBACK; break;
        case 'p': break;
        case 'P':
            o->has_pattern = true;
            if ((o->pattern = io_parse_pattern(optarg)) < 0)
                return -1;
            break;
        case 'q': o->is_quiet = true; break;
        case 's': o->source = optarg; break;
        case 'u': o->flags |= VIMG_REQ_MAY_UNMAP; break;
        case 'z': o->is_zero = true; break;
        default:
            return io_usage(io_find_cmd("write"));
        }
    }
    if (optind != argc - 2)
        return io_usage(io_find_cmd("write"));
    return 0;
}

static int
write_check_flags(const struct rw_opts *o)
{
    const char *msg = NULL;

    if (o->is_vmstate && o->is_zero)
        msg = "-b and -z cannot be specified at the same time";
    else if ((o->flags & VIMG_REQ_FUA) && (o->is_vmstate || o->is_compressed))
        msg = "-f and -b or -c cannot be specified at the same time";
    else if ((o->flags & VIMG_REQ_NO_FALLBACK) && !o->is_zero)
        msg = "-n requires -z to be specified";
    else if ((o->flags & VIMG_REQ_MAY_UNMAP) && !o->is_zero)
        msg = "-u requires -z to be specified";
    else if (o->is_zero + o->has_pattern + (o->source != NULL) > 1)
        msg = "Only one of -z, -P, and -s can be specified at the same time";
    if (msg) {
        printf("%s\n", msg);
        return -1;
    }
    return 0;
}

/* Reads up to count bytes of path into buf; perror-style messages on stderr. */
static int64_t
read_source(const char *path, unsigned char *buf, int64_t count)
{
    int fd = open(path, O_RDONLY);
    int64_t done = 0;
    ssize_t n;

    if (fd < 0) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    while (done < count && (n = read(fd, buf + done, (size_t)(count - done))) != 0) {
        if (n < 0) {
            fprintf(stderr, "%s: %s\n", path, strerror(errno));
            close(fd);
            return -1;
        }
        done += n;
    }
    close(fd);
    if (done == 0)
        fprintf(stderr, "%s: file is empty\n", path);
    return done ? done : -1;
}

/* -s FILE: the buffer repeats the first count bytes of the file. */
static void *
write_source_buffer(struct io_state *s, const char *path, int64_t count)
{
    unsigned char *buf = io_alloc(s, (size_t)count, 0);
    int64_t n;

    if (!buf)
        return NULL;
    if ((n = read_source(path, buf, count)) < 0) {
        io_free(s, buf);
        return NULL;
    }
    for (int64_t i = n; i < count; i++)
        buf[i] = buf[i % n];
    return buf;
}

static int
write_data(struct io_state *s, const struct rw_opts *o, int64_t offset, int64_t count,
           const void *buf)
{
    struct vimg_error err = { 0 };
    int ret;

    if (o->is_vmstate)
        ret = vimg_node_pwrite_vmstate(s->node, (uint64_t)offset, buf, (uint64_t)count, &err);
    else if (o->is_zero)
        ret = vimg_node_pwrite_zeroes(s->node, (uint64_t)offset, (uint64_t)count, o->flags,
                                      &err);
    else if (o->is_compressed)
        ret = vimg_node_pwrite_compressed(s->node, (uint64_t)offset, buf, (uint64_t)count,
                                          &err);
    else
        ret = vimg_node_pwrite(s->node, (uint64_t)offset, buf, (uint64_t)count, o->flags,
                               &err);
    return ret < 0 ? -err.errnum : 0;
}

int
io_cmd_write(struct io_state *s, int argc, char **argv)
{
    struct rw_opts o = { .pattern = 0xcd };
    struct timeval t1, t2;
    int64_t offset, count;
    void *buf = NULL;
    int ret;

    if (write_getopt(argc, argv, &o) < 0 || write_check_flags(&o) < 0 ||
        parse_offset_count(argv + optind, &offset, &count,
                           o.flags & VIMG_REQ_NO_FALLBACK, " without -n") < 0)
        return -1;
    if ((o.is_vmstate || o.is_compressed) && check_sector_aligned(offset, count) < 0)
        return -1;
    if (!o.is_zero) {
        buf = o.source ? write_source_buffer(s, o.source, count)
                       : io_alloc(s, (size_t)count, o.pattern);
        if (!buf)
            return -1;
    }
    gettimeofday(&t1, NULL);
    ret = write_data(s, &o, offset, count, buf);
    gettimeofday(&t2, NULL);
    io_free(s, buf);
    if (ret < 0) {
        io_report_error("write", -ret);
        return -1;
    }
    if (!o.is_quiet) {
        t2 = io_tsub(t2, t1);
        io_print_report(stdout, "wrote", &t2, offset, count, count, 1, o.is_machine);
    }
    return 0;
}

static int
writev_getopt(int argc, char **argv, struct rw_opts *o)
{
    int c;

    while ((c = getopt(argc, argv, "CfqP:")) != -1) {
        switch (c) {
        case 'C': o->is_machine = true; break;
        case 'f': o->flags |= VIMG_REQ_FUA; break;
        case 'q': o->is_quiet = true; break;
        case 'P':
            if ((o->pattern = io_parse_pattern(optarg)) < 0)
                return -1;
            break;
        default:
            return io_usage(io_find_cmd("writev"));
        }
    }
    if (optind > argc - 2)
        return io_usage(io_find_cmd("writev"));
    return 0;
}

int
io_cmd_writev(struct io_state *s, int argc, char **argv)
{
    struct vimg_error err = { 0 };
    struct rw_opts o = { .pattern = 0xcd };
    struct timeval t1, t2;
    struct io_vec v;
    int64_t offset;
    int ret;

    if (writev_getopt(argc, argv, &o) < 0 || (offset = io_cvtnum(argv[optind])) < 0 ||
        io_make_iov(s, argc - optind - 1, argv + optind + 1, o.pattern, &v) < 0)
        return -1;
    gettimeofday(&t1, NULL);
    ret = vimg_node_pwritev(s->node, (uint64_t)offset, (uint64_t)v.total, v.iov, v.n_iov,
                            o.flags, &err);
    gettimeofday(&t2, NULL);
    if (ret < 0) {
        io_report_error("writev", err.errnum);
    } else if (!o.is_quiet) {
        t2 = io_tsub(t2, t1);
        io_print_report(stdout, "wrote", &t2, offset, v.total, v.total, 1, o.is_machine);
    }
    io_free_iov(s, &v);
    return ret < 0 ? -1 : 0;
}

int
io_cmd_discard(struct io_state *s, int argc, char **argv)
{
    struct vimg_error err = { 0 };
    struct rw_opts o = { 0 };
    struct timeval t1, t2;
    int64_t offset, count;
    int c;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        if (c == 'C')
            o.is_machine = true;
        else if (c == 'q')
            o.is_quiet = true;
        else
            return io_usage(io_find_cmd("discard"));
    }
    if (optind != argc - 2)
        return io_usage(io_find_cmd("discard"));
    if (parse_offset_count(argv + optind, &offset, &count, false, "") < 0)
        return -1;
    gettimeofday(&t1, NULL);
    c = vimg_node_discard(s->node, (uint64_t)offset, (uint64_t)count, &err);
    gettimeofday(&t2, NULL);
    if (c < 0) {
        io_report_error("discard", err.errnum);
        return -1;
    }
    if (!o.is_quiet) {
        t2 = io_tsub(t2, t1);
        io_print_report(stdout, "discard", &t2, offset, count, count, 1, o.is_machine);
    }
    return 0;
}

int
io_cmd_flush(struct io_state *s, int argc, char **argv)
{
    struct vimg_error err = { 0 };

    (void)argc;
    (void)argv;
    if (vimg_node_flush(s->node, &err) < 0) {
        tool_error("%s", err.msg);
        return -1;
    }
    return 0;
}
