/*
 * Unit tests for src/core/zero.c: vimg_buffer_is_zero on every length up to
 * 300 at every alignment, with one non-zero byte at every position, and on
 * large buffers where the block loop does the work.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <vimg/node.h>

enum { MAX_LEN = 300, MAX_ALIGN = 16 };

static void
test_zero_accepts_all_zero_buffers_of_every_length_and_alignment(void **state)
{
    unsigned char *buf = calloc(1, MAX_LEN + MAX_ALIGN);

    (void)state;
    assert_non_null(buf);
    for (size_t align = 0; align < MAX_ALIGN; align++)
        for (size_t len = 0; len <= MAX_LEN; len++)
            if (!vimg_buffer_is_zero(buf + align, len))
                fail_msg("zero buffer of %zu bytes at +%zu reported non-zero", len, align);
    free(buf);
}

static void
test_zero_finds_one_byte_anywhere(void **state)
{
    unsigned char *buf = calloc(1, MAX_LEN + MAX_ALIGN);

    (void)state;
    assert_non_null(buf);
    for (size_t align = 0; align < MAX_ALIGN; align++) {
        for (size_t len = 1; len <= MAX_LEN; len++) {
            for (size_t pos = 0; pos < len; pos++) {
                buf[align + pos] = 0x80;
                if (vimg_buffer_is_zero(buf + align, len))
                    fail_msg("byte %zu of %zu at +%zu missed", pos, len, align);
                buf[align + pos] = 0;
            }
        }
    }
    free(buf);
}

static void
test_zero_ignores_bytes_outside_the_buffer(void **state)
{
    unsigned char buf[MAX_LEN + 2];

    (void)state;
    for (size_t len = 0; len <= MAX_LEN; len++) {
        memset(buf, 0xff, sizeof(buf));
        memset(buf + 1, 0, len);
        if (!vimg_buffer_is_zero(buf + 1, len))
            fail_msg("bytes around a zero buffer of %zu counted", len);
    }
}

static void
test_zero_handles_large_buffers(void **state)
{
    const size_t len = (4u << 20) + 37;
    unsigned char *buf = calloc(1, len + 8);
    static const size_t positions[] = { 0, 1, 63, 64, 4095, 4096, 65535, 1u << 20,
                                        (2u << 20) + 5, (4u << 20) - 1, (4u << 20) + 36 };

    (void)state;
    assert_non_null(buf);
    for (size_t align = 0; align < 8; align++) {
        assert_true(vimg_buffer_is_zero(buf + align, len));
        for (size_t i = 0; i < sizeof(positions) / sizeof(positions[0]); i++) {
            buf[align + positions[i]] = 1;
            if (vimg_buffer_is_zero(buf + align, len))
                fail_msg("byte %zu of a large buffer at +%zu missed", positions[i], align);
            buf[align + positions[i]] = 0;
        }
    }
    free(buf);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_accepts_all_zero_buffers_of_every_length_and_alignment),
        cmocka_unit_test(test_zero_finds_one_byte_anywhere),
        cmocka_unit_test(test_zero_ignores_bytes_outside_the_buffer),
        cmocka_unit_test(test_zero_handles_large_buffers),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
