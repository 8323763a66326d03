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

#endif
