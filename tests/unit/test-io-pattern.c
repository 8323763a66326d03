/*
 * Unit tests for tools/vimg-io/pattern.c: the size, timing, report and
 * hex-dump texts qemu-io prints, and its number and pattern parsing. The
 * expected texts were observed from qemu-io 7.2.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../tools/vimg-io/io.h"

static void
test_cvtstr_strips_only_zero_fractions(void **state)
{
    char buf[64];

    (void)state;
    io_cvtstr(1, buf, sizeof(buf));
    assert_string_equal(buf, "1 bytes");
    io_cvtstr(1000, buf, sizeof(buf));
    assert_string_equal(buf, "1000 bytes");
    io_cvtstr(1536, buf, sizeof(buf));
    assert_string_equal(buf, "1.500 KiB");
    io_cvtstr(1048575, buf, sizeof(buf));
    assert_string_equal(buf, "1023.999 KiB");
    io_cvtstr(1073741823, buf, sizeof(buf));
    assert_string_equal(buf, "1024 MiB");
    io_cvtstr(222.765523, buf, sizeof(buf));
    assert_string_equal(buf, "222.765523 bytes");
    io_cvtstr(0, buf, sizeof(buf));
    assert_string_equal(buf, "0 bytes");
    io_cvtstr(1.5 * (double)(1ULL << 60), buf, sizeof(buf));
    assert_string_equal(buf, "1.500 EiB");
}

static void
test_timestr_switches_to_clock_form_after_one_second(void **state)
{
    struct timeval t = { .tv_sec = 0, .tv_usec = 150000 };
    char buf[64];

    (void)state;
    io_timestr(&t, false, buf, sizeof(buf));
    assert_string_equal(buf, "00.15 sec");
    io_timestr(&t, true, buf, sizeof(buf));
    assert_string_equal(buf, "0:00:00.15");
    t.tv_sec = 3723;
    t.tv_usec = 580000;
    io_timestr(&t, false, buf, sizeof(buf));
    assert_string_equal(buf, "1:02:03.58");
}

static char *
capture_report(bool is_machine)
{
    struct timeval t = { .tv_sec = 2, .tv_usec = 0 };
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    assert_non_null(f);
    io_print_report(f, "wrote", &t, 512, 65536, 65536, 1, is_machine);
    fclose(f);
    return text;
}

static void
test_report_lines_match_qemu_io(void **state)
{
    char *text;

    (void)state;
    text = capture_report(false);
    assert_string_equal(text, "wrote 65536/65536 bytes at offset 512\n"
                        "64 KiB, 1 ops; 0:00:02.00 (32 KiB/sec and 0.5000 ops/sec)\n");
    free(text);
    text = capture_report(true);
    assert_string_equal(text, "65536,1,0:00:02.00,32768.000,0.500\n");
    free(text);
}

static void
test_dump_buffer_prints_partial_last_line(void **state)
{
    unsigned char data[20];
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    (void)state;
    for (int i = 0; i < 20; i++)
        data[i] = (unsigned char)(0x2e + i * 3);
    io_dump_buffer(f, data, 7, sizeof(data));
    fclose(f);
    assert_string_equal(text,
        "00000007:  2e 31 34 37 3a 3d 40 43 46 49 4c 4f 52 55 58 5b  .147...CFILORUX.\n"
        "00000017:  5e 61 64 67  .adg\n");
    free(text);
}

static void
test_parse_num_accepts_qemu_size_syntax(void **state)
{
    int64_t v;

    (void)state;
    assert_int_equal(io_parse_num("1.5k", &v), 0);
    assert_int_equal(v, 1536);
    assert_int_equal(io_parse_num("0x10", &v), 0);
    assert_int_equal(v, 16);
    assert_int_equal(io_parse_num("010", &v), 0);
    assert_int_equal(v, 10);
    assert_int_equal(io_parse_num("1.00097k", &v), 0);
    assert_int_equal(v, 1025);
    assert_int_equal(io_parse_num("9223372036854775807", &v), 0);
    assert_int_equal(v, INT64_MAX);
}

static void
test_parse_num_rejects_bad_and_huge_values(void **state)
{
    int64_t v;

    (void)state;
    assert_int_equal(io_parse_num("1.5", &v), -EINVAL);
    assert_int_equal(io_parse_num("-1", &v), -EINVAL);
    assert_int_equal(io_parse_num("1x", &v), -EINVAL);
    assert_int_equal(io_parse_num("99999999999999999999k", &v), -EINVAL);
    assert_int_equal(io_parse_num("8E", &v), -ERANGE);
    assert_int_equal(io_parse_num("9223372036854775808", &v), -ERANGE);
}

static void
test_pattern_parse_and_check(void **state)
{
    unsigned char buf[8];

    (void)state;
    assert_int_equal(io_parse_pattern("0377"), 255);
    assert_int_equal(io_parse_pattern("0xab"), 0xab);
    assert_int_equal(io_parse_pattern("256"), -1);
    assert_int_equal(io_parse_pattern("0x"), -1);
    assert_int_equal(io_parse_pattern("-1"), -1);
    memset(buf, 0xcd, sizeof(buf));
    assert_true(io_check_pattern(buf, 0xcd, sizeof(buf)));
    buf[7] = 0;
    assert_false(io_check_pattern(buf, 0xcd, sizeof(buf)));
    assert_true(io_check_pattern(buf, 0xcd, 7));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cvtstr_strips_only_zero_fractions),
        cmocka_unit_test(test_timestr_switches_to_clock_form_after_one_second),
        cmocka_unit_test(test_report_lines_match_qemu_io),
        cmocka_unit_test(test_dump_buffer_prints_partial_last_line),
        cmocka_unit_test(test_parse_num_accepts_qemu_size_syntax),
        cmocka_unit_test(test_parse_num_rejects_bad_and_huge_values),
        cmocka_unit_test(test_pattern_parse_and_check),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
