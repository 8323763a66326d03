/*
 * vimg bench: qemu-img bench. Sends COUNT reads or writes of BUFSIZE bytes,
 * DEPTH of them in flight, at offsets that start at -o and advance by the
 * step size, wrapping modulo the image size (the first offset is used as
 * given). Depth is a set of worker threads issuing blocking requests.
 *
 * With --flush-interval, a flush is sent whenever the number of requests
 * still to be issued is a multiple of the interval (not during the first
 * DEPTH requests, which qemu-img issues in one go); by default the requests
 * in flight are drained first, with --no-drain the flush runs beside them.
 *
 * Differences from qemu-img 7.2, where it hangs or crashes: depth 0 is
 * refused as an invalid depth, and an empty image fails its first request
 * instead of dividing by zero.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vimg.h"

enum { OPT_IMAGE_OPTS = 256, OPT_PATTERN, OPT_FLUSH_INTERVAL, OPT_NO_DRAIN };

#define BENCH_MAX_THREADS  1024
#define BENCH_STACK_SIZE   (256 * 1024)
#define BENCH_BUF_ALIGN    4096

struct bench_args {
    const char *fmt;
    const char *filename;
    bool is_image_opts;
    bool is_write;
    bool is_no_drain;
    bool is_native_aio;
    bool is_io_uring;
    unsigned flags;             /* VIMG_OPEN_* */
    int count;
    int depth;
    int pattern;
    int flush_interval;         /* 0 = none */
    uint64_t bufsize;
    uint64_t step;              /* 0 = bufsize */
    uint64_t offset;
};

struct bench_state {
    const struct bench_args *a;
    struct vimg_node *node;
    uint64_t image_size;
    atomic_uint_fast64_t next_index;    /* without flushes: the next request to issue */
    atomic_bool has_failed;
    pthread_mutex_t lock;               /* protects what follows */
    pthread_cond_t cond;
    uint64_t n_issued;                  /* with flushes: requests handed out */
    uint64_t n_done;                    /* with flushes: requests completed */
    bool is_flushing;                   /* a drained flush is waiting or running */
    int errnum;                         /* first failure */
};

/* qemu_strtoi as qemu-img bench uses it: base 0, whole string, 0..INT_MAX. */
static bool
parse_int(const char *s, int min, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 0);
    if (end == s || *end || errno || v < min || v > INT_MAX)
        return false;
    *out = (int)v;
    return true;
}

/* A size argument bounded by INT_MAX, with qemu-img's cvtnum messages. */
static bool
parse_int_size(const char *name, const char *s, uint64_t *out)
{
    int ret = vimg_parse_size(s, out);

    if (ret == -ERANGE || (ret == 0 && *out > INT_MAX)) {
        tool_error("Invalid %s specified. Must be between 0 and %d.", name, INT_MAX);
        return false;
    }
    if (ret < 0) {
        tool_cvtnum(name, s);   /* prints the suffix hint for a malformed number */
        return false;
    }
    return true;
}

static bool
set_cache_mode(const char *mode, unsigned *flags)
{
    static const char *const modes[] = {
        "none", "off", "directsync", "writethrough", "unsafe", "writeback", NULL,
    };

    for (int i = 0; modes[i]; i++)
        if (strcmp(mode, modes[i]) == 0)
            return img_cache_flags(mode, flags, false);
    tool_error("Invalid cache mode");
    return false;
}

/* -i and -n add to each other as QEMU's open flags do: io_uring wins, then native. */
static bool
set_aio(const char *mode, struct bench_args *a)
{
    if (strcmp(mode, "native") == 0) {
        a->is_native_aio = true;
    } else if (strcmp(mode, "io_uring") == 0) {
        a->is_io_uring = true;
    } else if (strcmp(mode, "threads") != 0) {
        tool_error("Invalid aio option: %s", mode);
        return false;
    }
    return true;
}

static int
parse_bench_number(int c, struct bench_args *a)
{
    int64_t n;

    switch (c) {
    case 'c':
        if (parse_int(optarg, 0, &a->count))
            return 0;
        tool_error("Invalid request count specified");
        return 1;
    case 'd':
        if (parse_int(optarg, 1, &a->depth))
            return 0;
        tool_error("Invalid queue depth specified");
        return 1;
    case 'o':
        if ((n = tool_cvtnum("offset", optarg)) < 0)
            return 1;
        a->offset = (uint64_t)n;
        return 0;
    case 's': return parse_int_size("buffer size", optarg, &a->bufsize) ? 0 : 1;
    case 'S': return parse_int_size("step_size", optarg, &a->step) ? 0 : 1;
    case OPT_PATTERN:
        if (parse_int(optarg, 0, &a->pattern) && a->pattern <= 0xff)
            return 0;
        tool_error("Invalid pattern byte specified");
        return 1;
    case OPT_FLUSH_INTERVAL:
        if (parse_int(optarg, 0, &a->flush_interval))
            return 0;
        tool_error("Invalid flush interval specified");
        return 1;
    default:
        return -1;
    }
}

static int
parse_bench_opt(int c, char **argv, struct bench_args *a)
{
    int ret = parse_bench_number(c, a);

    if (ret >= 0)
        return ret;
    switch (c) {
    case 'f': a->fmt = optarg; return 0;
    case 'h': return 2;
    case 'i': return set_aio(optarg, a) ? 0 : 1;
    case 'n': a->is_native_aio = true; return 0;
    case 'q': return 0;     /* qemu-img bench prints its lines even with -q */
    case 't': return set_cache_mode(optarg, &a->flags) ? 0 : 1;
    case 'w': a->is_write = true; return 0;
    case 'U': a->flags |= VIMG_OPEN_FORCE_SHARE; return 0;
    case OPT_IMAGE_OPTS: a->is_image_opts = true; return 0;
    case OPT_NO_DRAIN: a->is_no_drain = true; return 0;
    case ':':
        return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
    default:
        return img_bad_option(argv);
    }
}

/* Returns 0 to go on, 1 after an error, 2 for help. */
static int
parse_bench_args(int argc, char **argv, struct bench_args *a)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "pattern", required_argument, NULL, OPT_PATTERN },
        { "no-drain", no_argument, NULL, OPT_NO_DRAIN },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c, ret;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", long_opts, NULL)) != -1) {
        if ((ret = parse_bench_opt(c, argv, a)) != 0)
            return ret;
    }
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    a->filename = argv[optind];
    if (a->flush_interval && !a->is_write) {
        tool_error("--flush-interval is only available in write tests");
        return 1;
    }
    if (a->flush_interval && a->flush_interval < a->depth) {
        tool_error("Flush interval can't be smaller than depth");
        return 1;
    }
    if (a->is_write)
        a->flags |= VIMG_OPEN_RDWR;
    if (!a->step)
        a->step = a->bufsize;
    if (a->is_io_uring)
        a->flags |= VIMG_OPEN_AIO_IO_URING;
    else if (a->is_native_aio)
        a->flags |= VIMG_OPEN_AIO_NATIVE;
    return 0;
}

/* Offset of request index: the first at -o, then stepping and wrapping at the image end. */
static uint64_t
request_offset(const struct bench_state *s, uint64_t index)
{
    unsigned __int128 pos;

    if (index == 0)
        return s->a->offset;
    pos = (unsigned __int128)s->a->offset + (unsigned __int128)index * s->a->step;
    if (s->image_size)
        return (uint64_t)(pos % s->image_size);
    return pos > UINT64_MAX ? UINT64_MAX : (uint64_t)pos;
}

static void
record_failure(struct bench_state *s, int errnum)
{
    pthread_mutex_lock(&s->lock);
    if (!s->errnum)
        s->errnum = errnum ? errnum : EIO;
    atomic_store(&s->has_failed, true);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void
flush_image(struct bench_state *s)
{
    struct vimg_error err = { 0 };

    if (vimg_node_flush(s->node, &err) < 0)
        record_failure(s, err.errnum);
}

/* Hands out the next request when no flushes are asked for; false when all are out. */
static bool
claim_plain(struct bench_state *s, uint64_t *index)
{
    if (atomic_load_explicit(&s->has_failed, memory_order_relaxed))
        return false;
    *index = atomic_fetch_add_explicit(&s->next_index, 1, memory_order_relaxed);
    return *index < (uint64_t)s->a->count;
}

/* Whether a flush goes before request index (see the file comment). */
static bool
is_flush_point(const struct bench_state *s, uint64_t index)
{
    uint64_t remaining = (uint64_t)s->a->count - index;

    return index >= (uint64_t)s->a->depth && remaining % (uint64_t)s->a->flush_interval == 0;
}

/* Hands out the next request, sending the flushes due before it. Called with s->lock held. */
static bool
claim_with_flush(struct bench_state *s, uint64_t *index)
{
    while (s->is_flushing && !s->errnum)
        pthread_cond_wait(&s->cond, &s->lock);
    if (s->errnum || s->n_issued >= (uint64_t)s->a->count)
        return false;
    *index = s->n_issued++;
    if (!is_flush_point(s, *index))
        return true;
    if (s->a->is_no_drain) {
        pthread_mutex_unlock(&s->lock);
        flush_image(s);
        pthread_mutex_lock(&s->lock);
        return !s->errnum;
    }
    s->is_flushing = true;
    while (s->n_done < *index && !s->errnum)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
    if (!atomic_load(&s->has_failed))
        flush_image(s);
    pthread_mutex_lock(&s->lock);
    s->is_flushing = false;
    pthread_cond_broadcast(&s->cond);
    return !s->errnum;
}

static bool
claim(struct bench_state *s, uint64_t *index)
{
    bool ok;

    if (!s->a->flush_interval)
        return claim_plain(s, index);
    pthread_mutex_lock(&s->lock);
    ok = claim_with_flush(s, index);
    pthread_mutex_unlock(&s->lock);
    return ok;
}

static void
complete(struct bench_state *s)
{
    if (!s->a->flush_interval)
        return;
    pthread_mutex_lock(&s->lock);
    s->n_done++;
    if (s->is_flushing)
        pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void *
bench_worker(void *arg)
{
    struct bench_state *s = arg;
    const struct bench_args *a = s->a;
    struct vimg_error err;
    uint64_t index;
    void *buf;
    int ret;

    if (posix_memalign(&buf, BENCH_BUF_ALIGN, a->bufsize ? a->bufsize : 1) != 0) {
        record_failure(s, ENOMEM);
        return NULL;
    }
    memset(buf, a->pattern, a->bufsize);
    while (claim(s, &index)) {
        uint64_t offset = request_offset(s, index);
        if (a->is_write)
            ret = vimg_node_pwrite(s->node, offset, buf, a->bufsize, 0, &err);
        else
            ret = vimg_node_pread(s->node, offset, buf, a->bufsize, 0, &err);
        if (ret < 0)
            record_failure(s, err.errnum);
        complete(s);
    }
    free(buf);
    return NULL;
}

/* Runs the workers to completion; returns how many could be started (0 = none). */
static unsigned
run_workers(struct bench_state *s)
{
    unsigned n = (unsigned)s->a->depth, n_started = 0;
    pthread_t *threads;
    pthread_attr_t attr;

    if ((uint64_t)n > (uint64_t)s->a->count)
        n = (unsigned)s->a->count;
    if (n > BENCH_MAX_THREADS)
        n = BENCH_MAX_THREADS;
    if (n == 0 || !(threads = calloc(n, sizeof(*threads))))
        return 0;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, BENCH_STACK_SIZE);
    for (; n_started < n; n_started++)
        if (pthread_create(&threads[n_started], &attr, bench_worker, s) != 0)
            break;
    pthread_attr_destroy(&attr);
    for (unsigned i = 0; i < n_started; i++)
        pthread_join(threads[i], NULL);
    free(threads);
    return n_started;
}

static double
now_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
run_requests(struct bench_state *s)
{
    double start = now_seconds();

    if (s->a->count > 0 && run_workers(s) == 0 && !s->errnum)
        s->errnum = EAGAIN;
    if (s->errnum) {
        tool_error("Failed request: %s", strerror(s->errnum));
        return 1;
    }
    printf("Run completed in %3.3f seconds.\n", now_seconds() - start);
    return 0;
}

static int
run_bench(const struct bench_args *a)
{
    struct vimg_error err = { 0 };
    struct bench_state s = { .a = a };
    int64_t len;
    int ret = 1;

    if (!(s.node = img_open(a->is_image_opts, a->filename, a->fmt, a->flags, false)))
        return 1;
    if ((len = vimg_node_length(s.node, &err)) < 0) {
        tool_error("%s", err.msg);
        goto out;
    }
    s.image_size = (uint64_t)len;
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.cond, NULL);
    printf("Sending %d %s requests, %" PRIu64 " bytes each, %d in parallel (starting at offset %"
           PRIu64 ", step size %" PRIu64 ")\n", a->count, a->is_write ? "write" : "read",
           a->bufsize, a->depth, a->offset, a->step);
    if (a->flush_interval)
        printf("Sending flush every %d requests\n", a->flush_interval);
    ret = run_requests(&s);
    /* As qemu-img closing the image: written data is flushed, outside the timing. */
    if (ret == 0 && a->is_write && vimg_node_flush(s.node, &err) < 0) {
        tool_error("%s", err.msg);
        ret = 1;
    }
    pthread_cond_destroy(&s.cond);
    pthread_mutex_destroy(&s.lock);
out:
    vimg_close(s.node);
    return ret;
}

int
cmd_bench(int argc, char **argv)
{
    struct bench_args a = { .count = 75000, .depth = 64, .bufsize = 4096 };
    int ret = parse_bench_args(argc, argv, &a);

    if (ret == 2) {
        img_print_help();
        return 0;
    }
    if (ret != 0)
        return ret;
    return run_bench(&a);
}
