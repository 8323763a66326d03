/*
 * Unit tests for the block status of src/protocols/file.c: data and hole runs
 * as SEEK_DATA/SEEK_HOLE give them, also when the driver skips a seek it made
 * before (the data start found from inside a hole is remembered), and never a
 * remembered data start after a discard, a zero write or a truncate has made
 * a hole there.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <vimg/node.h>

#define KiB 1024u
#define MiB (1024u * 1024u)

struct fixture {
    char path[64];
    struct vimg_node *node;
};

/* A 4 MiB file with data in [0, 64k) and [1M, 2M), holes elsewhere. */
static int
setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct vimg_error err = { 0 };
    char *buf = malloc(MiB);
    int fd;

    if (!f || !buf)
        return -1;
    memset(buf, 0x5a, MiB);
    snprintf(f->path, sizeof(f->path), "/tmp/vimg-unit-bs.XXXXXX");
    if ((fd = mkstemp(f->path)) < 0 || ftruncate(fd, 4 * MiB) < 0 ||
        pwrite(fd, buf, 64 * KiB, 0) != 64 * KiB || pwrite(fd, buf, MiB, MiB) != MiB) {
        free(buf);
        return -1;
    }
    close(fd);
    free(buf);
    if (vimg_open(&f->node, f->path, "raw", NULL, VIMG_OPEN_RDWR, &err) < 0) {
        print_error("open %s: %s\n", f->path, err.msg);
        return -1;
    }
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;

    vimg_close(f->node);
    unlink(f->path);
    free(f);
    return 0;
}

/* The status at offset: 'D' data, 'Z' zero, and how far it goes. */
static char
status_at(struct vimg_node *node, uint64_t offset, uint64_t *bytes)
{
    struct vimg_block_status bs;
    struct vimg_error err = { 0 };

    if (vimg_node_block_status(node, offset, 4 * MiB - offset, &bs, &err) < 0)
        fail_msg("block status at %llu: %s", (unsigned long long)offset, err.msg);
    *bytes = bs.bytes;
    return (bs.flags & VIMG_BS_DATA) ? 'D' : (bs.flags & VIMG_BS_ZERO) ? 'Z' : '?';
}

static void
test_runs_follow_the_file(void **state)
{
    struct fixture *f = *state;
    uint64_t n;

    assert_int_equal(status_at(f->node, 0, &n), 'D');
    assert_int_equal(n, 64 * KiB);
    assert_int_equal(status_at(f->node, 64 * KiB, &n), 'Z');
    assert_int_equal(n, MiB - 64 * KiB);
    /* Asked again from the data start found above: the same answer. */
    assert_int_equal(status_at(f->node, MiB, &n), 'D');
    assert_int_equal(n, MiB);
    assert_int_equal(status_at(f->node, MiB, &n), 'D');
    assert_int_equal(n, MiB);
    assert_int_equal(status_at(f->node, 2 * MiB, &n), 'Z');
}

static void
test_discard_at_the_remembered_data_start_is_seen(void **state)
{
    struct fixture *f = *state;
    struct vimg_error err = { 0 };
    uint64_t n;

    assert_int_equal(status_at(f->node, 64 * KiB, &n), 'Z');   /* finds data at 1M */
    assert_int_equal(vimg_node_discard(f->node, MiB, 64 * KiB, &err), 0);
    assert_int_equal(status_at(f->node, MiB, &n), 'Z');
    assert_int_equal(n, 64 * KiB);
}

static void
test_zero_write_at_the_remembered_data_start_is_seen(void **state)
{
    struct fixture *f = *state;
    struct vimg_error err = { 0 };
    uint64_t n;

    assert_int_equal(status_at(f->node, 64 * KiB, &n), 'Z');
    assert_int_equal(vimg_node_pwrite_zeroes(f->node, MiB, 128 * KiB, VIMG_REQ_MAY_UNMAP,
                                             &err), 0);
    assert_int_equal(status_at(f->node, MiB, &n), 'Z');
    assert_int_equal(n, 128 * KiB);
}

static void
test_truncate_past_the_remembered_data_start_is_seen(void **state)
{
    struct fixture *f = *state;
    struct vimg_error err = { 0 };
    uint64_t n;

    assert_int_equal(status_at(f->node, 64 * KiB, &n), 'Z');
    assert_int_equal(vimg_node_truncate(f->node, 512 * KiB, true, NULL, &err), 0);
    assert_int_equal(vimg_node_truncate(f->node, 4 * MiB, true, NULL, &err), 0);
    assert_int_equal(status_at(f->node, MiB, &n), 'Z');
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_runs_follow_the_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_discard_at_the_remembered_data_start_is_seen,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_write_at_the_remembered_data_start_is_seen,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncate_past_the_remembered_data_start_is_seen,
                                        setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
