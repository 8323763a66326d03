/* The vimg tool's subcommands and the helpers they share. */
#ifndef VIMG_TOOLS_VIMG_H
#define VIMG_TOOLS_VIMG_H

#include <stdbool.h>

#include <vimg/image.h>
#include <vimg/node.h>
#include <vimg/object.h>
#include <vimg/opts.h>

#include "../common.h"

int cmd_amend(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bitmap(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_dd(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);

/* The "Snapshot list:" table of `snapshot -l` and `info`. */
void img_print_snapshots(const struct vimg_snapshot *list, size_t n);

/* "unrecognized option" / "Try 'vimg --help'" as qemu-img words them; returns 1. */
int img_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* getopt error for the option at argv[optind - 1]; returns 1. */
int img_bad_option(char **argv);
/* The `vimg --help` text on stdout, which qemu-img also prints for `CMD -h`. */
void img_print_help(void);
/* Registers an --object argument, printing the error; false on failure. */
bool img_add_object(const char *spec);
/* Parses the --output argument: 0 human, 1 json, -1 after printing the error. */
int img_output_format(const char *arg);
/* Sets up flags from a -t/-T cache mode; false after printing the error. */
bool img_cache_flags(const char *mode, unsigned *flags, bool is_source);

/*
 * Opens filename as qemu-img's img_open does: --image-opts parses filename
 * as options; errors print "Could not open 'NAME': ..." and return NULL.
 */
struct vimg_node *img_open(bool is_image_opts, const char *filename, const char *fmt,
                           unsigned flags, bool is_quiet);

/* An -l snapshot_param: "snapshot.id=ID,snapshot.name=NAME" or a bare ID or name. */
struct img_snapshot_param {
    const char *param;           /* as given; NULL when -l was not */
    bool is_dotted;              /* the snapshot.id/snapshot.name form */
    char *id;                    /* snapshot.id=, dotted form only */
    char *name;                  /* snapshot.name=, dotted form only */
};

/* Parses value into p, printing qemu-img's errors; false on failure. */
bool img_snapshot_param_parse(struct img_snapshot_param *p, const char *value);
/* Sets p to a bare ID or name, even one that starts "snapshot." (convert -s). */
void img_snapshot_param_set_bare(struct img_snapshot_param *p, const char *value);
/* Loads the snapshot read-only into node as qemu-img does; false after printing the error. */
bool img_snapshot_param_load(const struct img_snapshot_param *p, struct vimg_node *node);
void img_snapshot_param_free(struct img_snapshot_param *p);

#endif
