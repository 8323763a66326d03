/*
 * vimg-io: a drop-in replacement for qemu-io 7.2. Parses the command line,
 * opens the image, then runs the -c commands, or the lines of standard input
 * after a "vimg-io> " prompt (printed even when input is not a terminal, as
 * qemu-io does). The exit status is 1 when any command failed.
 */
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/object.h>

#include "config.h"
#include "io.h"

static const char usage_text[] =
"Usage: vimg-io [OPTIONS]... [-c STRING]... [file]\n"
"QEMU Disk exerciser\n"
"\n"
"  --object OBJECTDEF   define an object such as 'secret' for\n"
"                       passwords and/or encryption keys\n"
"  --image-opts         treat file as option string\n"
"  -c, --cmd STRING     execute command with its arguments\n"
"                       from the given string\n"
"  -f, --format FMT     specifies the block driver to use\n"
"  -r, --read-only      export read-only\n"
"  -s, --snapshot       use snapshot file\n"
"  -n, --nocache        disable host cache, short for -t none\n"
"  -C, --copy-on-read   enable copy-on-read\n"
"  -m, --misalign       misalign allocations for O_DIRECT\n"
"  -k, --native-aio     use kernel AIO implementation\n"
"                       (Linux only, prefer use of -i)\n"
"  -i, --aio=MODE       use AIO mode (threads, native or io_uring)\n"
"  -t, --cache=MODE     use the given cache mode for the image\n"
"  -d, --discard=MODE   use the given discard mode for the image\n"
"  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
"                       specify tracing options\n"
"                       see qemu-img(1) man page for full description\n"
"  -U, --force-share    force shared permissions\n"
"  -h, --help           display this help and exit\n"
"  -V, --version        output version information and exit\n"
"\n"
"See 'vimg-io -c help' for information on available commands.\n"
"\n"
"See <https://qemu.org/contribute/report-a-bug> for how to report bugs.\n"
"More information on the QEMU project at <https://qemu.org>.\n";

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };

static const struct option long_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { "cmd", required_argument, NULL, 'c' },
    { "format", required_argument, NULL, 'f' },
    { "read-only", no_argument, NULL, 'r' },
    { "snapshot", no_argument, NULL, 's' },
    { "nocache", no_argument, NULL, 'n' },
    { "copy-on-read", no_argument, NULL, 'C' },
    { "misalign", no_argument, NULL, 'm' },
    { "native-aio", no_argument, NULL, 'k' },
    { "discard", required_argument, NULL, 'd' },
    { "cache", required_argument, NULL, 't' },
    { "trace", required_argument, NULL, 'T' },
    { "object", required_argument, NULL, OPT_OBJECT },
    { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
    { "force-share", no_argument, NULL, 'U' },
    { "aio", required_argument, NULL, 'i' },
    { NULL, 0, NULL, 0 },
};

struct main_args {
    const char *format;
    const char **cmds;
    int n_cmds;
    unsigned flags;
    bool is_snapshot;
    bool is_image_opts;
    bool is_cor;
};

/* Returns 0 to go on, or the exit status + 1 when main must stop. */
static int
parse_option(int c, struct main_args *a, struct io_state *s)
{
    struct vimg_error err = { 0 };

    switch (c) {
    case 'h': printf("%s", usage_text); return 1;
    case 'V':
        printf("vimg-io version " VIMG_VERSION " (compatible with qemu-io 7.2)\n");
        return 1;
    case 'c': a->cmds[a->n_cmds++] = optarg; break;
    case 'f': a->format = optarg; break;
    case 'r': a->flags &= ~VIMG_OPEN_RDWR; break;
    case 's': a->is_snapshot = true; break;
    case 'n': a->flags = (a->flags & ~VIMG_OPEN_WRITETHROUGH) | VIMG_OPEN_NOCACHE; break;
    case 'C': a->is_cor = true; break;
    case 'T': break;
    case 'm': s->is_misaligned = true; break;
    case 'k': a->flags |= VIMG_OPEN_AIO_NATIVE; break;
    case 'i': return io_parse_aio(optarg, &a->flags) ? 0 : 2;
    case 't': return io_parse_cache(optarg, &a->flags) ? 0 : 2;
    case 'd': return io_parse_discard(optarg) ? 0 : 2;
    case 'U': a->flags |= VIMG_OPEN_FORCE_SHARE; break;
    case OPT_IMAGE_OPTS: a->is_image_opts = s->is_image_opts = true; break;
    case OPT_OBJECT:
        if (vimg_object_add(optarg, &err) < 0) {
            tool_error("%s", err.msg);
            return 2;
        }
        break;
    default:
        printf("%s", usage_text);
        return 2;
    }
    return 0;
}

static int
open_main_image(struct io_state *s, const struct main_args *a, const char *filename)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *opts;

    s->is_cor = a->is_cor;
    if (!a->is_image_opts)
        return a->is_snapshot ? io_open_snapshot(s, filename, a->format, NULL, a->flags)
                              : io_open_image(s, filename, a->format, NULL, a->flags);
    if (a->format) {
        tool_error("--image-opts and -f are mutually exclusive");
        return -1;
    }
    io_warn_short_booleans(filename);
    opts = vimg_opts_new();
    if (!opts || vimg_opts_parse(opts, filename, NULL, &err) < 0) {
        tool_error("%s", err.msg);
        vimg_opts_free(opts);
        return -1;
    }
    if (a->is_snapshot)
        return io_open_snapshot(s, NULL, NULL, opts, a->flags);
    return io_open_image(s, NULL, NULL, opts, a->flags);
}

static int
run_stdin(struct io_state *s)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int ret = 0;

    for (;;) {
        printf("%s> ", tool_name);
        fflush(stdout);
        if ((n = getline(&line, &cap, stdin)) < 0)
            break;
        if (n > 0 && line[n - 1] == '\n')
            line[n - 1] = '\0';
        if (io_run_line(s, line) < 0)
            ret = -1;
        if (s->is_quit)
            break;
    }
    free(line);
    return ret;
}

static int
run_commands(struct io_state *s, const struct main_args *a)
{
    int ret = 0;

    if (a->n_cmds == 0)
        return run_stdin(s);
    for (int i = 0; i < a->n_cmds && !s->is_quit; i++) {
        if (io_run_line(s, a->cmds[i]) < 0)
            ret = -1;
    }
    return ret;
}

/* Signals qemu-io's event loop handles or ignores, so sigraise does not end it. */
static void
ignore_signal(int sig)
{
    (void)sig;
}

static void
setup_signals(void)
{
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR1, ignore_signal);
    signal(SIGALRM, ignore_signal);
    signal(SIGIO, ignore_signal);
}

int
main(int argc, char **argv)
{
    struct main_args a = { .flags = VIMG_OPEN_RDWR };
    struct io_state s = { 0 };
    int c, stop, ret = 0;

    tool_name = "vimg-io";
    setup_signals();
    tool_setup_warnings();
    a.cmds = calloc((size_t)argc, sizeof(*a.cmds));
    if (!a.cmds)
        return 1;
    argv[0] = (char *)tool_name;
    while ((c = getopt_long(argc, argv, "hVc:d:f:rsnCmki:t:T:U", long_options, NULL)) != -1) {
        if ((stop = parse_option(c, &a, &s)) != 0) {
            free(a.cmds);
            return stop - 1;
        }
    }
    if (optind < argc - 1) {
        printf("%s", usage_text);
        ret = 1;
    } else if (optind == argc - 1 && open_main_image(&s, &a, argv[optind]) < 0) {
        ret = 1;
    } else if (run_commands(&s, &a) < 0) {
        ret = 1;
    }
    if (s.node)
        io_close_image(&s);
    io_drain(&s);
    vimg_objects_clear();
    free(a.cmds);
    return ret;
}
