/*
 * vimg snapshot: qemu-img snapshot. Lists (-l), creates (-c), applies (-a)
 * or deletes (-d) internal snapshots; -d finds the snapshot by name, -a by
 * id and then by name, as qemu-img does. Also prints the snapshot table for
 * `info`.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "vimg.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };
enum snapshot_action { ACTION_NONE, ACTION_LIST, ACTION_APPLY, ACTION_CREATE, ACTION_DELETE };

struct snapshot_args {
    enum snapshot_action action;
    const char *name;
    const char *filename;
    bool is_image_opts;
    bool is_quiet;
    bool is_force_share;
};

void
img_print_snapshots(const struct vimg_snapshot *list, size_t n)
{
    printf("Snapshot list:\n");
    printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
           "ICOUNT");
    for (size_t i = 0; i < n; i++) {
        const struct vimg_snapshot *sn = &list[i];
        char size[64], date[64] = "", clock[64], icount[32] = "";
        time_t t = (time_t)sn->date_sec;
        struct tm tm;
        uint64_t secs = sn->vm_clock_nsec / 1000000000u;

        tool_size_to_str(sn->vm_state_size, size, sizeof(size));
        if (localtime_r(&t, &tm))
            strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        snprintf(clock, sizeof(clock), "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64,
                 secs / 3600, secs / 60 % 60, secs % 60,
                 sn->vm_clock_nsec / 1000000u % 1000);
        if (sn->icount != UINT64_MAX)
            snprintf(icount, sizeof(icount), "%" PRIu64, sn->icount);
        printf("%-9s %-16s %8s%20s%13s%11s\n", sn->id, sn->name, size, date, clock, icount);
    }
}

static int
set_action(struct snapshot_args *a, enum snapshot_action action, const char *name)
{
    if (a->action != ACTION_NONE)
        return img_usage_error("Cannot mix '-l', '-a', '-c', '-d'");
    a->action = action;
    a->name = name;
    return 0;
}

static int
parse_snapshot_opt(int c, char **argv, struct snapshot_args *a)
{
    switch (c) {
    case 'l': return set_action(a, ACTION_LIST, NULL);
    case 'a': return set_action(a, ACTION_APPLY, optarg);
    case 'c': return set_action(a, ACTION_CREATE, optarg);
    case 'd': return set_action(a, ACTION_DELETE, optarg);
    case 'q': a->is_quiet = true; return 0;
    case 'U': a->is_force_share = true; return 0;
    case 'h': return 2;
    case OPT_OBJECT: return img_add_object(optarg) ? 0 : 1;
    case OPT_IMAGE_OPTS: a->is_image_opts = true; return 0;
    case ':':
        return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
    default:
        return img_bad_option(argv);
    }
}

/* Returns 0 to go on, 1 after an error, 2 for help. */
static int
parse_snapshot_args(int argc, char **argv, struct snapshot_args *a)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c, ret;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":la:c:d:hqU", long_opts, NULL)) != -1) {
        if ((ret = parse_snapshot_opt(c, argv, a)) != 0)
            return ret;
    }
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    a->filename = argv[optind];
    return 0;
}

static int
list_snapshots(struct vimg_node *node)
{
    struct vimg_error err = { 0 };
    struct vimg_snapshot *list;
    size_t n;

    /* As qemu-img, a format without snapshots or a table that fails to read prints nothing. */
    if (vimg_snapshot_list(node, &list, &n, &err) < 0)
        return 0;
    if (n > 0)
        img_print_snapshots(list, n);
    vimg_snapshot_list_free(list, n);
    return 0;
}

static int
create_snapshot(struct vimg_node *node, const char *name)
{
    struct vimg_error err = { 0 };
    struct vimg_snapshot sn = { .name = (char *)name };
    struct timeval tv;
    int ret;

    gettimeofday(&tv, NULL);
    sn.date_sec = (uint64_t)tv.tv_sec;
    sn.date_nsec = (uint64_t)tv.tv_usec * 1000;
    sn.icount = 0;
    if ((ret = vimg_snapshot_create(node, &sn, &err)) < 0) {
        tool_error("Could not create snapshot '%s': %d (%s)", name, ret, strerror(-ret));
        return 1;
    }
    return 0;
}

/* qemu-img finds the snapshot to delete by its name only. */
static int
delete_snapshot(struct vimg_node *node, const char *name)
{
    struct vimg_error err = { 0 };
    struct vimg_snapshot *list = NULL;
    size_t n = 0, i;
    int ret = 1;

    if (vimg_snapshot_list(node, &list, &n, &err) < 0)
        n = 0;
    for (i = 0; i < n && strcmp(list[i].name, name) != 0; i++)
        ;
    if (i == n)
        tool_error("Could not delete snapshot '%s': snapshot not found", name);
    else if (vimg_snapshot_delete(node, list[i].id, list[i].name, &err) < 0)
        tool_error_err(&err, "Could not delete snapshot '%s': ", name);
    else
        ret = 0;
    vimg_snapshot_list_free(list, n);
    return ret;
}

static int
apply_snapshot(struct vimg_node *node, const char *name)
{
    struct vimg_error err = { 0 };

    if (vimg_snapshot_apply(node, name, &err) < 0) {
        if (err.errnum == ENOENT)
            tool_error("Could not apply snapshot '%s': Failed to load snapshot: %s", name,
                       strerror(ENOENT));
        else
            tool_error_err(&err, "Could not apply snapshot '%s': ", name);
        return 1;
    }
    return 0;
}

static int
run_snapshot(const struct snapshot_args *a)
{
    unsigned flags = a->action == ACTION_LIST ? 0 : VIMG_OPEN_RDWR;
    struct vimg_node *node;
    int ret = 0;

    if (a->is_force_share)
        flags |= VIMG_OPEN_FORCE_SHARE;
    node = img_open(a->is_image_opts, a->filename, NULL, flags, a->is_quiet);
    if (!node)
        return 1;
    switch (a->action) {
    case ACTION_LIST: ret = list_snapshots(node); break;
    case ACTION_CREATE: ret = create_snapshot(node, a->name); break;
    case ACTION_APPLY: ret = apply_snapshot(node, a->name); break;
    case ACTION_DELETE: ret = delete_snapshot(node, a->name); break;
    case ACTION_NONE: break;
    }
    vimg_close(node);
    return ret;
}

int
cmd_snapshot(int argc, char **argv)
{
    struct snapshot_args a = { .action = ACTION_NONE };
    int ret = parse_snapshot_args(argc, argv, &a);

    if (ret == 2) {
        img_print_help();
        return 0;
    }
    if (ret != 0)
        return ret;
    return run_snapshot(&a);
}
