/*
 * Whole-image operations the tools build on: creation-option schemas, info,
 * check, measure.
 */
#ifndef VIMG_IMAGE_H
#define VIMG_IMAGE_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include <vimg/error.h>
#include <vimg/opts.h>

struct vimg_node;

/* Names of all drivers, sorted, for `--help` ("Supported formats:"). */
size_t vimg_driver_count(void);
const char *vimg_driver_name(size_t index);
bool vimg_format_exists(const char *name);
/* Whether images of format take compressed writes (`convert -c`); false if unknown. */
bool vimg_format_can_compress(const char *name);

/*
 * `create -o help`: appends the option lines of format (and, when filename
 * names a protocol, of that protocol) to a malloc'd text.
 */
int vimg_create_help(const char *format, const char *filename, char **text,
                     struct vimg_error *err);
/*
 * Checks that every key of opts is a creation option of format or of the
 * protocol behind filename, with a value of the right type. QEMU's texts.
 */
int vimg_create_validate(const char *format, const char *filename, struct vimg_opts *opts,
                         struct vimg_error *err);
/* "fmt=raw size=1048576 ..." as `create` prints it after "Formatting 'x', ". */
char *vimg_create_describe(const char *format, const char *filename,
                           const struct vimg_opts *opts);

/* ImageInfo as QEMU's `info --output=json` has it (keys in QEMU's order). */
int vimg_image_info(struct vimg_node *node, json_t **info, struct vimg_error *err);

struct vimg_check_result {
    int64_t corruptions;
    int64_t leaks;
    int64_t check_errors;
    int64_t corruptions_fixed;
    int64_t leaks_fixed;
    int64_t image_end_offset;
    int64_t total_clusters;
    int64_t allocated_clusters;
    int64_t fragmented_clusters;
    int64_t compressed_clusters;
};
#define VIMG_CHECK_FIX_LEAKS  1
#define VIMG_CHECK_FIX_ERRORS 2
/* ENOTSUP with "This image format does not support checks" when it has none. */
int vimg_image_check(struct vimg_node *node, int fix, struct vimg_check_result *result,
                     struct vimg_error *err);

struct vimg_measure {
    uint64_t required;
    uint64_t fully_allocated;
    uint64_t bitmaps;
    bool has_bitmaps;
};
/* Measures format (with creation opts) for in (may be NULL) or for size bytes. */
int vimg_image_measure(const char *format, struct vimg_opts *opts, struct vimg_node *in,
                       uint64_t size, struct vimg_measure *out, struct vimg_error *err);

/*
 * Records backing_file (NULL or "": none) and its format (may be NULL) as
 * node's backing file, without touching data (rebase -u, the end of rebase).
 * "Operation not supported" for a format that has no backing file.
 */
int vimg_image_change_backing_file(struct vimg_node *node, const char *backing_file,
                                   const char *backing_fmt, struct vimg_error *err);
/* Empties node's own layer after a commit (qcow2: back to a fresh image). */
int vimg_image_make_empty(struct vimg_node *node, struct vimg_error *err);
/* name as node would open it as its backing file: relative to node's directory (malloc'd). */
/*
 * name as seen from the image file base: absolute names and names with a
 * protocol prefix ("file:", "nbd://", "json:") stand as they are, others are
 * relative to base's directory (QEMU's path_combine). Free the result.
 */
char *vimg_path_combine(const char *base, const char *name);
char *vimg_image_backing_path(const struct vimg_node *node, const char *name);
/*
 * The image in top's backing chain (below top) that name designates, as the
 * recorded backing file name or the same file; NULL when none is.
 */
struct vimg_node *vimg_image_find_backing(struct vimg_node *top, const char *name);

enum vimg_bitmap_action {
    VIMG_BITMAP_ADD,
    VIMG_BITMAP_REMOVE,
    VIMG_BITMAP_CLEAR,
    VIMG_BITMAP_ENABLE,
    VIMG_BITMAP_DISABLE,
    VIMG_BITMAP_MERGE,
};

struct vimg_bitmap_op {
    enum vimg_bitmap_action action;
    const char *name;
    uint64_t granularity;           /* ADD: bytes, 0 = the format's default */
    const char *source;             /* MERGE: the bitmap merged into name */
    struct vimg_node *source_node;  /* MERGE: the image holding source; NULL = node */
};
/* One persistent dirty bitmap action, with QEMU's error texts. */
int vimg_image_bitmap(struct vimg_node *node, const struct vimg_bitmap_op *op,
                      struct vimg_error *err);

/* One persistent dirty bitmap, as `info` lists it. */
struct vimg_bitmap_info {
    char *name;
    uint64_t granularity;           /* bytes */
    bool is_enabled;                /* "auto": records guest writes */
    bool is_in_use;                 /* "in-use": inconsistent, not to be trusted */
};
/*
 * The persistent bitmaps of node, in the image's order; ENOTSUP (with
 * qemu-img's "Format driver '...' does not support bitmaps") when its
 * format, or this image's version of it, cannot store any.
 */
int vimg_image_bitmap_list(struct vimg_node *node, struct vimg_bitmap_info **list, size_t *n,
                           struct vimg_error *err);
void vimg_bitmap_list_free(struct vimg_bitmap_info *list, size_t n);
/*
 * The bits of persistent bitmap name (*bits malloc'd): bit i (LSB first in
 * each byte) set means the granularity bytes at i * granularity are dirty.
 * ENOENT when there is no such bitmap; EINVAL when it is inconsistent.
 */
int vimg_image_bitmap_read(struct vimg_node *node, const char *name, uint8_t **bits,
                           uint64_t *granularity, struct vimg_error *err);

/* One internal snapshot, as the image's snapshot table has it. */
struct vimg_snapshot {
    char *id;
    char *name;
    uint64_t vm_state_size;
    uint64_t date_sec;
    uint64_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;            /* UINT64_MAX: not recorded */
};
/* The snapshots of node (none for formats without them); free with vimg_snapshot_list_free. */
int vimg_snapshot_list(struct vimg_node *node, struct vimg_snapshot **list, size_t *n,
                       struct vimg_error *err);
void vimg_snapshot_list_free(struct vimg_snapshot *list, size_t n);
/* ENOTSUP for formats without internal snapshots. */
int vimg_snapshot_create(struct vimg_node *node, const struct vimg_snapshot *sn,
                         struct vimg_error *err);
int vimg_snapshot_apply(struct vimg_node *node, const char *id_or_name, struct vimg_error *err);
int vimg_snapshot_delete(struct vimg_node *node, const char *id, const char *name,
                         struct vimg_error *err);
/*
 * `convert -l`: reads of the read-only node show the snapshot with this id
 * and this name (either may be NULL, not both) until it is closed; ENOENT
 * when there is none. QEMU's texts.
 */
int vimg_snapshot_load_tmp(struct vimg_node *node, const char *id, const char *name,
                           struct vimg_error *err);
/* Progress of a long operation: done units of total so far. */
typedef void vimg_progress_fn(uint64_t done, uint64_t total, void *opaque);
/*
 * `amend -o`: changes the options of an open image; QEMU's texts for what
 * cannot change. progress (may be NULL) is called as QEMU's amend reports.
 */
int vimg_image_amend(struct vimg_node *node, struct vimg_opts *opts, bool is_forced,
                     vimg_progress_fn *progress, void *opaque, struct vimg_error *err);

#endif
