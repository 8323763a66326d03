/*
 * reopen, sleep, abort, sigraise, quit, and the blkdebug breakpoint commands
 * (break, remove_break, resume, wait_break). vimg has no breakpoint driver
 * yet, so those fail with "Operation not supported" as qemu-io's do on any
 * image without blkdebug; wait_break fails the same way instead of waiting
 * forever for a request that can never be suspended.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io.h"

struct reopen_args {
    unsigned flags;
    bool has_rw;
    struct vimg_opts *opts;
};

static int
reopen_getopt(int argc, char **argv, struct reopen_args *a)
{
    struct vimg_error err = { 0 };
    int c;

    while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (c) {
        case 'c':
            if (!io_parse_cache(optarg, &a->flags))
                return -1;
            break;
        case 'o':
            if (vimg_opts_parse(a->opts, optarg, NULL, &err) < 0) {
                tool_error("%s", err.msg);
                return -1;
            }
            break;
        case 'r':
        case 'w':
            if (a->has_rw) {
                tool_error("Only one -r/-w option may be given");
                return -1;
            }
            a->has_rw = true;
            a->flags = c == 'r' ? a->flags & ~VIMG_OPEN_RDWR : a->flags | VIMG_OPEN_RDWR;
            break;
        default:
            return io_usage(io_find_cmd("reopen"));
        }
    }
    if (optind != argc)
        return io_usage(io_find_cmd("reopen"));
    return 0;
}

/* The -o options reopen can change: read-only, cache.direct and cache.no-flush. */
static int
reopen_apply_opts(struct reopen_args *a)
{
    struct vimg_error err = { 0 };
    char key[256];
    const char *last;
    bool v;

    if (vimg_opts_has(a->opts, "read-only")) {
        if (a->has_rw) {
            tool_error("Cannot set both -r/-w and 'read-only'");
            return -1;
        }
        if (vimg_opts_get_bool(a->opts, "read-only", false, &v, &err) < 0)
            goto fail;
        /* qemu-io's own user of the image keeps its write permission. */
        if (v && (a->flags & VIMG_OPEN_RDWR)) {
            tool_error("Read-only block node cannot support read-write users");
            return -1;
        }
        a->flags |= v ? 0 : VIMG_OPEN_RDWR;
    }
    if (vimg_opts_get_bool(a->opts, "cache.direct", a->flags & VIMG_OPEN_NOCACHE, &v, &err) < 0)
        goto fail;
    a->flags = v ? a->flags | VIMG_OPEN_NOCACHE : a->flags & ~VIMG_OPEN_NOCACHE;
    if (vimg_opts_get_bool(a->opts, "cache.no-flush", a->flags & VIMG_OPEN_NO_FLUSH, &v,
                           &err) < 0)
        goto fail;
    a->flags = v ? a->flags | VIMG_OPEN_NO_FLUSH : a->flags & ~VIMG_OPEN_NO_FLUSH;
    if (vimg_opts_find_unused(a->opts, key, sizeof(key))) {
        last = strrchr(key, '.');
        tool_error("Cannot change the option '%s'", last ? last + 1 : key);
        return -1;
    }
    return 0;
fail:
    tool_error("%s", err.msg);
    return -1;
}

/*
 * Whether qemu-io's reopen of the unlinked -s overlay fails: QEMU opens the
 * file again by name (and so fails) to change read-write or to use O_DIRECT
 * (the overlay never does), and for every reopen after one that succeeded or
 * one that failed to change read-write. The image stays as it was.
 */
static bool
snapshot_reopen_fails(struct io_state *s, unsigned flags)
{
    bool fails = s->is_snapshot_reopened || ((flags ^ s->flags) & VIMG_OPEN_RDWR) ||
                 (flags & VIMG_OPEN_NOCACHE);

    if (!fails || ((flags ^ s->flags) & VIMG_OPEN_RDWR))
        s->is_snapshot_reopened = true;
    return fails;
}

/* Opens the image again with new flags; on failure the old flags are restored. */
static int
reopen_image(struct io_state *s, unsigned flags)
{
    struct vimg_error err = { 0 };

    io_drain(s);
    if (flags & VIMG_OPEN_RDWR)
        flags &= ~VIMG_OPEN_FORCE_SHARE;
    if (s->is_snapshot && snapshot_reopen_fails(s, flags)) {
        tool_error("Could not open '%s': %s", s->snapshot_name, strerror(ENOENT));
        return -1;
    }
    vimg_close(s->node);
    s->node = NULL;
    /* The format was probed (and warned about) when the image was opened. */
    vimg_set_warning_handler(NULL);
    if (vimg_open(&s->node, s->filename, s->format, s->opts, flags | VIMG_OPEN_REOPEN,
                  &err) == 0) {
        s->flags = flags;
        tool_setup_warnings();
        return 0;
    }
    tool_error("%s", err.msg);
    if (vimg_open(&s->node, s->filename, s->format, s->opts, s->flags | VIMG_OPEN_REOPEN,
                  &err) < 0) {
        tool_error("%s", err.msg);
        s->node = NULL;
    }
    tool_setup_warnings();
    return -1;
}

int
io_cmd_reopen(struct io_state *s, int argc, char **argv)
{
    struct reopen_args a = { .flags = s->flags, .opts = vimg_opts_new() };
    int ret = -1;

    if (a.opts && reopen_getopt(argc, argv, &a) == 0 && reopen_apply_opts(&a) == 0)
        ret = reopen_image(s, a.flags);
    vimg_opts_free(a.opts);
    return ret;
}

/* Completions are delivered while qemu-io sleeps in its event loop. */
int
io_cmd_sleep(struct io_state *s, int argc, char **argv)
{
    struct timespec ts;
    char *end;
    long long ms;

    (void)argc;
    errno = 0;
    ms = strtoll(argv[1], &end, 0);
    if (end == argv[1] || *end || ms < 0) {
        printf("%s is not a valid number\n", argv[1]);
        return -1;
    }
    io_drain(s);
    /* A delay whose nanoseconds overflow ends at once, as qemu-io's timer does. */
    if (errno == ERANGE || ms > INT64_MAX / 1000000)
        return 0;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000;
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        continue;
    return 0;
}

int
io_cmd_abort(struct io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    (void)argv;
    abort();
}

int
io_cmd_sigraise(struct io_state *s, int argc, char **argv)
{
    int64_t sig = io_cvtnum(argv[1]);

    (void)s;
    (void)argc;
    if (sig < 0)
        return -1;
    if (sig > NSIG) {
        printf("signal argument '%s' is too large to be a valid signal\n", argv[1]);
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    raise((int)sig);
    return 0;
}

int
io_cmd_quit(struct io_state *s, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    s->is_quit = true;
    return 0;
}

int
io_cmd_break(struct io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    (void)argv;
    printf("Could not set breakpoint: %s\n", strerror(ENOTSUP));
    return -1;
}

int
io_cmd_remove_break(struct io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    printf("Could not remove breakpoint %s: %s\n", argv[1], strerror(ENOTSUP));
    return -1;
}

int
io_cmd_resume(struct io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    (void)argv;
    printf("Could not resume request: %s\n", strerror(ENOTSUP));
    return -1;
}

int
io_cmd_wait_break(struct io_state *s, int argc, char **argv)
{
    (void)s;
    (void)argc;
    printf("Could not wait for breakpoint %s: %s\n", argv[1], strerror(ENOTSUP));
    return -1;
}
