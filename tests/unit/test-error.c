/* Unit tests for src/core/error.c: set, set_errno, prefix, clear and truncation. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <vimg/error.h>

static void
test_error_set_fills_error_and_returns_negative_errno(void **state)
{
    struct vimg_error err = { 0 };

    (void)state;
    assert_int_equal(vimg_error_set(&err, EBADMSG, "L1 table offset 0x%x is beyond %d",
                                    0x50000, 7), -EBADMSG);
    assert_int_equal(err.errnum, EBADMSG);
    assert_string_equal(err.msg, "L1 table offset 0x50000 is beyond 7");
}

static void
test_error_set_accepts_null_error(void **state)
{
    (void)state;
    assert_int_equal(vimg_error_set(NULL, ENOSPC, "no room"), -ENOSPC);
    assert_int_equal(vimg_error_set_errno(NULL, ENOSPC, "no room"), -ENOSPC);
    vimg_error_prefix(NULL, "x: ");
    vimg_error_clear(NULL);
}

static void
test_error_set_turns_non_positive_errno_into_eio(void **state)
{
    struct vimg_error err = { 0 };

    (void)state;
    assert_int_equal(vimg_error_set(&err, 0, "zero"), -EIO);
    assert_int_equal(err.errnum, EIO);
    assert_int_equal(vimg_error_set(&err, -ENOENT, "negative"), -EIO);
    assert_int_equal(err.errnum, EIO);
    assert_string_equal(err.msg, "negative");
}

static void
test_error_set_errno_appends_strerror(void **state)
{
    struct vimg_error err = { 0 };
    char want[256];

    (void)state;
    assert_int_equal(vimg_error_set_errno(&err, ENOENT, "Could not open '%s'", "x"), -ENOENT);
    snprintf(want, sizeof(want), "Could not open 'x': %s", strerror(ENOENT));
    assert_string_equal(err.msg, want);
    assert_int_equal(err.errnum, ENOENT);
}

static void
test_error_set_truncates_long_message(void **state)
{
    struct vimg_error err = { 0 };
    char long_arg[2000];

    (void)state;
    memset(long_arg, 'a', sizeof(long_arg) - 1);
    long_arg[sizeof(long_arg) - 1] = '\0';
    vimg_error_set(&err, EINVAL, "bad: %s", long_arg);
    assert_int_equal(strlen(err.msg), VIMG_ERROR_MSG_MAX - 1);
    assert_memory_equal(err.msg, "bad: aaa", 8);
}

static void
test_error_set_errno_on_full_message_stays_terminated(void **state)
{
    struct vimg_error err = { 0 };
    char long_arg[VIMG_ERROR_MSG_MAX + 10];

    (void)state;
    memset(long_arg, 'b', sizeof(long_arg) - 1);
    long_arg[sizeof(long_arg) - 1] = '\0';
    vimg_error_set_errno(&err, EIO, "%s", long_arg);
    assert_int_equal(strlen(err.msg), VIMG_ERROR_MSG_MAX - 1);
    assert_int_equal(err.msg[VIMG_ERROR_MSG_MAX - 2], 'b');
}

static void
test_error_prefix_puts_text_in_front(void **state)
{
    struct vimg_error err = { 0 };

    (void)state;
    vimg_error_set(&err, EBADMSG, "bad header");
    vimg_error_prefix(&err, "Could not open '%s': ", "disk.qcow2");
    assert_string_equal(err.msg, "Could not open 'disk.qcow2': bad header");
    assert_int_equal(err.errnum, EBADMSG);
}

static void
test_error_prefix_cuts_the_old_message_when_too_long(void **state)
{
    struct vimg_error err = { 0 };
    char old[VIMG_ERROR_MSG_MAX];

    (void)state;
    memset(old, 'o', sizeof(old) - 1);
    old[sizeof(old) - 1] = '\0';
    vimg_error_set(&err, EIO, "%s", old);
    vimg_error_prefix(&err, "pre: ");
    assert_int_equal(strlen(err.msg), VIMG_ERROR_MSG_MAX - 1);
    assert_memory_equal(err.msg, "pre: ooo", 8);
}

static void
test_error_prefix_longer_than_message_size_is_cut(void **state)
{
    struct vimg_error err = { 0 };
    char prefix[VIMG_ERROR_MSG_MAX * 2];

    (void)state;
    memset(prefix, 'p', sizeof(prefix) - 1);
    prefix[sizeof(prefix) - 1] = '\0';
    vimg_error_set(&err, EIO, "tail");
    vimg_error_prefix(&err, "%s", prefix);
    assert_int_equal(strlen(err.msg), VIMG_ERROR_MSG_MAX - 1);
    assert_null(strstr(err.msg, "tail"));
}

static void
test_error_prefix_may_quote_the_message_itself(void **state)
{
    struct vimg_error err = { 0 };

    (void)state;
    vimg_error_set(&err, EIO, "abc");
    vimg_error_prefix(&err, "[%s] ", err.msg);
    assert_string_equal(err.msg, "[abc] abc");
}

static void
test_error_clear_resets(void **state)
{
    struct vimg_error err = { 0 };

    (void)state;
    vimg_error_set(&err, EIO, "x");
    vimg_error_clear(&err);
    assert_int_equal(err.errnum, 0);
    assert_string_equal(err.msg, "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_set_fills_error_and_returns_negative_errno),
        cmocka_unit_test(test_error_set_accepts_null_error),
        cmocka_unit_test(test_error_set_turns_non_positive_errno_into_eio),
        cmocka_unit_test(test_error_set_errno_appends_strerror),
        cmocka_unit_test(test_error_set_truncates_long_message),
        cmocka_unit_test(test_error_set_errno_on_full_message_stays_terminated),
        cmocka_unit_test(test_error_prefix_puts_text_in_front),
        cmocka_unit_test(test_error_prefix_cuts_the_old_message_when_too_long),
        cmocka_unit_test(test_error_prefix_longer_than_message_size_is_cut),
        cmocka_unit_test(test_error_prefix_may_quote_the_message_itself),
        cmocka_unit_test(test_error_clear_resets),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
