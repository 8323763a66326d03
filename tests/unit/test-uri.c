/*
 * Unit tests for src/core/uri.c: vimg_hex_digit, %XX decoding (bad and cut-off
 * escapes kept as written, %00 kept as a byte) and the HOST[:PORT] /
 * [V6HOST][:PORT] split of an authority that nbd, ssh and gluster share.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/driver.h"

static void
test_uri_hex_digit_knows_both_cases(void **state)
{
    (void)state;
    assert_int_equal(vimg_hex_digit('0'), 0);
    assert_int_equal(vimg_hex_digit('9'), 9);
    assert_int_equal(vimg_hex_digit('a'), 10);
    assert_int_equal(vimg_hex_digit('F'), 15);
    assert_int_equal(vimg_hex_digit('g'), -1);
    assert_int_equal(vimg_hex_digit('G'), -1);
    assert_int_equal(vimg_hex_digit('%'), -1);
    assert_int_equal(vimg_hex_digit('\0'), -1);
}

static void
check_decode(const char *in, size_t len, const char *want, size_t want_len)
{
    char *out = vimg_uri_decode(in, len);

    assert_non_null(out);
    assert_memory_equal(out, want, want_len + 1);
    free(out);
}

static void
test_uri_decode_escapes_and_keeps_bad_ones(void **state)
{
    (void)state;
    check_decode("a%41b", 5, "aAb", 3);
    check_decode("%2f%2F", 6, "//", 2);
    check_decode("%zz%4", 5, "%zz%4", 5);
    check_decode("x%41", 4, "xA", 2);
    check_decode("x%4", 3, "x%4", 3);
    check_decode("%41%41", 4, "A%", 2);        /* only [s, s + len) is read */
    check_decode("a%00b", 5, "a\0b", 3);
    check_decode("", 0, "", 0);
}

static void
check_split(const char *auth, int want_ret, const char *want_host, const char *want_port)
{
    const char *host = NULL, *port = (const char *)1;
    size_t host_len = 0;
    int ret = vimg_uri_split_host(auth, strlen(auth), &host, &host_len, &port);

    assert_int_equal(ret, want_ret);
    if (ret < 0)
        return;
    assert_int_equal(host_len, strlen(want_host));
    assert_memory_equal(host, want_host, host_len);
    if (!want_port) {
        assert_null(port);
    } else {
        assert_non_null(port);
        assert_string_equal(port, want_port);
    }
}

static void
test_uri_split_host_forms(void **state)
{
    (void)state;
    check_split("example.com", 0, "example.com", NULL);
    check_split("example.com:10809", 0, "example.com", "10809");
    check_split("h:", 0, "h", "");
    check_split(":22", 0, "", "22");
    check_split("", 0, "", NULL);
    check_split("[::1]", 0, "::1", NULL);
    check_split("[::1]:22", 0, "::1", "22");
    check_split("[::1]:", 0, "::1", "");
    check_split("[]", 0, "", NULL);
    check_split("[::1", -1, NULL, NULL);
    check_split("[::1]x", -1, NULL, NULL);
    check_split("[::1]x:1", -1, NULL, NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uri_hex_digit_knows_both_cases),
        cmocka_unit_test(test_uri_decode_escapes_and_keeps_bad_ones),
        cmocka_unit_test(test_uri_split_host_forms),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
