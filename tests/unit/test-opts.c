/*
 * Unit tests for src/core/opts.c: key=value parsing, the tree operations,
 * used marks, typed getters and vimg_parse_size. Expected sizes and error
 * texts were taken from qemu-img 7.2 (`qemu-img create -f raw x SIZE`,
 * `-o cluster_size=SIZE` and `-o refcount_bits=N`).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <vimg/opts.h>

static struct vimg_opts *
parse_ok(const char *str, const char *implied_key)
{
    struct vimg_opts *opts = vimg_opts_new();
    struct vimg_error err = { 0 };

    assert_non_null(opts);
    assert_int_equal(vimg_opts_parse(opts, str, implied_key, &err), 0);
    assert_int_equal(err.errnum, 0);
    return opts;
}

static void
assert_parse_fails(const char *str, const char *implied_key, const char *msg)
{
    struct vimg_opts *opts = vimg_opts_new();
    struct vimg_error err = { 0 };

    assert_int_equal(vimg_opts_parse(opts, str, implied_key, &err), -EINVAL);
    assert_int_equal(err.errnum, EINVAL);
    assert_non_null(strstr(err.msg, msg));
    vimg_opts_free(opts);
}

static void
assert_json(const struct vimg_opts *opts, const char *expected)
{
    char *json = vimg_opts_to_json(opts);

    assert_non_null(json);
    assert_string_equal(json, expected);
    free(json);
}

/* ---- parsing ---- */

static void
test_opts_parse_reads_key_value_pairs_in_order(void **state)
{
    struct vimg_opts *opts = parse_ok("driver=qcow2,size=1M,x=", NULL);

    (void)state;
    assert_int_equal(vimg_opts_count(opts), 3);
    assert_string_equal(vimg_opts_key_at(opts, 0), "driver");
    assert_string_equal(vimg_opts_value_at(opts, 0), "qcow2");
    assert_string_equal(vimg_opts_key_at(opts, 1), "size");
    assert_string_equal(vimg_opts_value_at(opts, 2), "");
    assert_null(vimg_opts_key_at(opts, 3));
    vimg_opts_free(opts);
}

static void
test_opts_parse_double_comma_is_a_literal_comma(void **state)
{
    struct vimg_opts *opts = parse_ok("filename=a,,b,,,,c,format=raw", NULL);

    (void)state;
    assert_string_equal(vimg_opts_peek(opts, "filename"), "a,b,,c");
    assert_string_equal(vimg_opts_peek(opts, "format"), "raw");
    vimg_opts_free(opts);
}

static void
test_opts_parse_first_bare_element_is_implied_key(void **state)
{
    struct vimg_opts *opts = parse_ok("disk,,1.img,format=raw", "filename");

    (void)state;
    assert_string_equal(vimg_opts_peek(opts, "filename"), "disk,1.img");
    assert_string_equal(vimg_opts_peek(opts, "format"), "raw");
    vimg_opts_free(opts);
}

static void
test_opts_parse_implied_key_only_applies_first(void **state)
{
    struct vimg_opts *opts = parse_ok("format=raw,readonly", "filename");

    (void)state;
    assert_false(vimg_opts_has(opts, "filename"));
    assert_string_equal(vimg_opts_peek(opts, "readonly"), "on");
    vimg_opts_free(opts);
}

static void
test_opts_parse_bare_key_means_on(void **state)
{
    struct vimg_opts *opts = parse_ok("lazy_refcounts,nocow,compat=1.1", NULL);
    bool b = false;

    (void)state;
    assert_string_equal(vimg_opts_peek(opts, "lazy_refcounts"), "on");
    assert_int_equal(vimg_opts_get_bool(opts, "nocow", false, &b, NULL), 0);
    assert_true(b);
    vimg_opts_free(opts);
}

static void
test_opts_parse_dotted_keys_create_nested_dicts(void **state)
{
    struct vimg_opts *opts =
        parse_ok("driver=raw,file.driver=file,file.filename=x,file.aio.mode=y", NULL);
    struct vimg_opts *file;

    (void)state;
    file = vimg_opts_get_dict(opts, "file");
    assert_non_null(file);
    assert_int_equal(vimg_opts_count(file), 3);
    assert_string_equal(vimg_opts_peek(file, "filename"), "x");
    assert_non_null(vimg_opts_dict_at(file, 2));
    assert_string_equal(vimg_opts_peek(opts, "file.aio.mode"), "y");
    assert_null(vimg_opts_peek(opts, "file"));
    assert_json(opts, "{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"x\","
                      "\"aio\":{\"mode\":\"y\"}}}");
    vimg_opts_free(opts);
}

static void
test_opts_parse_later_value_wins(void **state)
{
    struct vimg_opts *opts = parse_ok("a=1,b=2,a=3", NULL);

    (void)state;
    assert_int_equal(vimg_opts_count(opts), 2);
    assert_string_equal(vimg_opts_peek(opts, "a"), "3");
    vimg_opts_free(opts);
}

static void
test_opts_parse_empty_string_gives_empty_tree(void **state)
{
    struct vimg_opts *opts = parse_ok("", "filename");

    (void)state;
    assert_true(vimg_opts_is_empty(opts));
    vimg_opts_free(opts);
}

static void
test_opts_parse_rejects_value_then_dict(void **state)
{
    (void)state;
    assert_parse_fails("file=x,file.driver=file", NULL, "Parameter 'file' used inconsistently");
}

static void
test_opts_parse_rejects_dict_then_value(void **state)
{
    (void)state;
    assert_parse_fails("file.driver=file,file=x", NULL,
                       "Parameter 'file' used inconsistently");
}

static void
test_opts_parse_rejects_empty_key(void **state)
{
    (void)state;
    assert_parse_fails("a=1,=2", NULL, "Invalid parameter ''");
    assert_parse_fails("a.=2", NULL, "Invalid parameter ''");
}

/* ---- set, merge, del ---- */

static void
test_opts_set_default_keeps_existing_value(void **state)
{
    struct vimg_opts *opts = parse_ok("a=1", NULL);

    (void)state;
    assert_int_equal(vimg_opts_set_default(opts, "a", "2", NULL), 0);
    assert_int_equal(vimg_opts_set_default(opts, "b.c", "3", NULL), 0);
    assert_string_equal(vimg_opts_peek(opts, "a"), "1");
    assert_string_equal(vimg_opts_peek(opts, "b.c"), "3");
    vimg_opts_free(opts);
}

static void
test_opts_set_rejects_path_through_a_string(void **state)
{
    struct vimg_opts *opts = parse_ok("a=1", NULL);
    struct vimg_error err = { 0 };

    (void)state;
    assert_int_equal(vimg_opts_set(opts, "a.b.c", "2", &err), -EINVAL);
    assert_int_equal(err.errnum, EINVAL);
    assert_string_equal(err.msg, "Parameter 'a' used inconsistently");
    vimg_opts_free(opts);
}

static void
test_opts_merge_src_wins_and_src_is_unchanged(void **state)
{
    struct vimg_opts *dst = parse_ok("driver=raw,file.filename=a,file.locking=on", NULL);
    struct vimg_opts *src = parse_ok("file.filename=b,size=1M", NULL);
    struct vimg_error err = { 0 };

    (void)state;
    assert_int_equal(vimg_opts_merge(dst, src, &err), 0);
    assert_json(dst, "{\"driver\":\"raw\",\"file\":{\"filename\":\"b\",\"locking\":\"on\"},"
                     "\"size\":\"1M\"}");
    assert_json(src, "{\"file\":{\"filename\":\"b\"},\"size\":\"1M\"}");
    vimg_opts_free(dst);
    vimg_opts_free(src);
}

static void
test_opts_merge_reports_inconsistent_use(void **state)
{
    struct vimg_opts *dst = parse_ok("file=x", NULL);
    struct vimg_opts *src = parse_ok("file.driver=file", NULL);
    struct vimg_error err = { 0 };

    (void)state;
    assert_int_equal(vimg_opts_merge(dst, src, &err), -EINVAL);
    assert_int_equal(err.errnum, EINVAL);
    assert_non_null(strstr(err.msg, "'file' used inconsistently"));
    vimg_opts_free(dst);
    vimg_opts_free(src);
}

/* Paths once went through 1024-byte buffers and longer ones were dropped. */
static void
test_opts_merge_keeps_paths_longer_than_1024_bytes(void **state)
{
    char *key = malloc(3000);
    struct vimg_opts *src = vimg_opts_new(), *dst = vimg_opts_new();

    (void)state;
    for (int i = 0; i < 1500; i++) {
        key[2 * i] = 'k';
        key[2 * i + 1] = '.';
    }
    key[2999] = '\0';
    assert_int_equal(vimg_opts_set(src, key, "v", NULL), 0);
    assert_int_equal(vimg_opts_merge(dst, src, NULL), 0);
    assert_string_equal(vimg_opts_peek(dst, key), "v");
    vimg_opts_free(src);
    vimg_opts_free(dst);
    free(key);
}

static void
test_opts_dup_copies_values_and_used_marks(void **state)
{
    struct vimg_opts *opts = parse_ok("a=1,b.c=2", NULL);
    struct vimg_opts *copy;
    char key[64];

    (void)state;
    vimg_opts_get(opts, "a");
    copy = vimg_opts_dup(opts);
    assert_non_null(copy);
    vimg_opts_set(opts, "a", "changed", NULL);
    assert_string_equal(vimg_opts_peek(copy, "a"), "1");
    assert_true(vimg_opts_find_unused(copy, key, sizeof(key)));
    assert_string_equal(key, "b");
    vimg_opts_free(opts);
    vimg_opts_free(copy);
}

static void
test_opts_del_removes_leaf_and_dict(void **state)
{
    struct vimg_opts *opts = parse_ok("a=1,b.c=2,b.d=3,e=4", NULL);

    (void)state;
    assert_true(vimg_opts_del(opts, "b.c"));
    assert_false(vimg_opts_has(opts, "b.c"));
    assert_true(vimg_opts_has(opts, "b.d"));
    assert_true(vimg_opts_del(opts, "b"));
    assert_false(vimg_opts_del(opts, "b"));
    assert_false(vimg_opts_del(opts, "a.x"));
    assert_false(vimg_opts_del(opts, "zz"));
    assert_json(opts, "{\"a\":\"1\",\"e\":\"4\"}");
    vimg_opts_free(opts);
}

/* ---- used marks ---- */

static void
test_opts_find_unused_names_first_unread_key(void **state)
{
    struct vimg_opts *opts = parse_ok("driver=raw,file.filename=x,file.bogus=1", NULL);
    char key[64];

    (void)state;
    assert_true(vimg_opts_find_unused(opts, key, sizeof(key)));
    assert_string_equal(key, "driver");
    vimg_opts_get(opts, "driver");
    assert_true(vimg_opts_find_unused(opts, key, sizeof(key)));
    assert_string_equal(key, "file");
    vimg_opts_get_dict(opts, "file");
    vimg_opts_get(opts, "file.filename");
    assert_true(vimg_opts_find_unused(opts, key, sizeof(key)));
    assert_string_equal(key, "file.bogus");
    vimg_opts_get(opts, "file.bogus");
    assert_false(vimg_opts_find_unused(opts, key, sizeof(key)));
    vimg_opts_free(opts);
}

/* Paths past 1024 bytes were once skipped, so an unknown key went unreported. */
static void
test_opts_find_unused_reports_keys_deeper_than_1024_bytes(void **state)
{
    char *path = malloc(3000);
    struct vimg_opts *opts = vimg_opts_new();
    char key[16];

    (void)state;
    for (int i = 0; i < 1500; i++) {
        path[2 * i] = 'k';
        path[2 * i + 1] = '.';
    }
    path[2999] = '\0';
    assert_int_equal(vimg_opts_set(opts, path, "v", NULL), 0);
    for (int i = 1; i < 1500; i++) {
        path[2 * i - 1] = '\0';
        assert_non_null(vimg_opts_get_dict(opts, path));
        path[2 * i - 1] = '.';
    }
    assert_true(vimg_opts_find_unused(opts, key, sizeof(key)));
    assert_string_equal(key, "k.k.k.k.k.k.k.k");
    vimg_opts_get(opts, path);
    assert_false(vimg_opts_find_unused(opts, key, sizeof(key)));
    vimg_opts_free(opts);
    free(path);
}

static void
test_opts_peek_does_not_mark_used(void **state)
{
    struct vimg_opts *opts = parse_ok("a=1", NULL);
    char key[8];

    (void)state;
    assert_string_equal(vimg_opts_peek(opts, "a"), "1");
    assert_true(vimg_opts_find_unused(opts, key, sizeof(key)));
    vimg_opts_get(opts, "a");
    assert_false(vimg_opts_find_unused(opts, key, sizeof(key)));
    vimg_opts_mark_unused(opts);
    assert_true(vimg_opts_find_unused(opts, key, sizeof(key)));
    vimg_opts_free(opts);
}

static void
test_opts_find_unused_truncates_long_key(void **state)
{
    struct vimg_opts *opts = parse_ok("abcdefgh.ijklmnop=1", NULL);
    char key[6];

    (void)state;
    vimg_opts_get_dict(opts, "abcdefgh");
    assert_true(vimg_opts_find_unused(opts, key, sizeof(key)));
    assert_string_equal(key, "abcde");
    vimg_opts_free(opts);
}

static void
test_opts_set_clears_used_mark(void **state)
{
    struct vimg_opts *opts = parse_ok("a=1", NULL);
    char key[8];

    (void)state;
    vimg_opts_get(opts, "a");
    vimg_opts_set(opts, "a", "2", NULL);
    assert_true(vimg_opts_find_unused(opts, key, sizeof(key)));
    vimg_opts_free(opts);
}

/* ---- typed getters ---- */

static void
test_opts_getters_return_default_when_absent(void **state)
{
    struct vimg_opts *opts = vimg_opts_new();
    static const char *const values[] = { "a", "b", NULL };
    uint64_t n;
    bool b;
    int e;

    (void)state;
    assert_int_equal(vimg_opts_get_size(opts, "x", 42, &n, NULL), 0);
    assert_int_equal(n, 42);
    assert_int_equal(vimg_opts_get_number(opts, "x", 7, &n, NULL), 0);
    assert_int_equal(n, 7);
    assert_int_equal(vimg_opts_get_bool(opts, "x", true, &b, NULL), 0);
    assert_true(b);
    assert_int_equal(vimg_opts_get_enum(opts, "x", values, 1, &e, NULL), 0);
    assert_int_equal(e, 1);
    vimg_opts_free(opts);
}

static void
test_opts_get_size_accepts_fractional_suffix(void **state)
{
    struct vimg_opts *opts = parse_ok("offset=1.5k", NULL);
    uint64_t n;

    (void)state;
    assert_int_equal(vimg_opts_get_size(opts, "offset", 0, &n, NULL), 0);
    assert_int_equal(n, 1536);
    vimg_opts_free(opts);
}

static void
test_opts_get_size_rejects_garbage_with_qemu_text(void **state)
{
    struct vimg_opts *opts = parse_ok("cluster_size=1.5", NULL);
    struct vimg_error err = { 0 };
    uint64_t n;

    (void)state;
    assert_int_equal(vimg_opts_get_size(opts, "cluster_size", 0, &n, &err), -EINVAL);
    assert_int_equal(err.errnum, EINVAL);
    assert_string_equal(err.msg,
                        "Parameter 'cluster_size' expects a non-negative number below 2^64\n"
                        "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
                        "peta-\nand exabytes, respectively.");
    vimg_opts_free(opts);
}

static void
test_opts_get_size_rejects_overflow_as_out_of_range(void **state)
{
    struct vimg_opts *opts = parse_ok("cluster_size=16E", NULL);
    struct vimg_error err = { 0 };
    uint64_t n;

    (void)state;
    assert_int_equal(vimg_opts_get_size(opts, "cluster_size", 0, &n, &err), -EINVAL);
    assert_int_equal(err.errnum, EINVAL);
    assert_string_equal(err.msg, "Value '16E' is out of range for parameter 'cluster_size'");
    vimg_opts_free(opts);
}

static void
test_opts_get_bool_accepts_qemu_spellings(void **state)
{
    static const char *const yes[] = { "on", "yes", "true", "y" };
    static const char *const no[] = { "off", "no", "false", "n" };
    struct vimg_opts *opts = vimg_opts_new();
    bool b;

    (void)state;
    for (size_t i = 0; i < 4; i++) {
        vimg_opts_set(opts, "k", yes[i], NULL);
        assert_int_equal(vimg_opts_get_bool(opts, "k", false, &b, NULL), 0);
        assert_true(b);
        vimg_opts_set(opts, "k", no[i], NULL);
        assert_int_equal(vimg_opts_get_bool(opts, "k", true, &b, NULL), 0);
        assert_false(b);
    }
    vimg_opts_free(opts);
}

static void
test_opts_get_bool_is_case_sensitive(void **state)
{
    struct vimg_opts *opts = parse_ok("lazy_refcounts=ON", NULL);
    struct vimg_error err = { 0 };
    bool b;

    (void)state;
    assert_int_equal(vimg_opts_get_bool(opts, "lazy_refcounts", false, &b, &err), -EINVAL);
    assert_int_equal(err.errnum, EINVAL);
    assert_string_equal(err.msg, "Parameter 'lazy_refcounts' expects 'on' or 'off'");
    vimg_opts_free(opts);
}

static void
test_opts_get_number_accepts_strtoull_forms(void **state)
{
    struct vimg_opts *opts = parse_ok("a=16,b=0x10,c=010,d=+16,e=-1", NULL);
    uint64_t n;

    (void)state;
    assert_int_equal(vimg_opts_get_number(opts, "a", 0, &n, NULL), 0);
    assert_int_equal(n, 16);
    assert_int_equal(vimg_opts_get_number(opts, "b", 0, &n, NULL), 0);
    assert_int_equal(n, 16);
    assert_int_equal(vimg_opts_get_number(opts, "c", 0, &n, NULL), 0);
    assert_int_equal(n, 8);
    assert_int_equal(vimg_opts_get_number(opts, "d", 0, &n, NULL), 0);
    assert_int_equal(n, 16);
    /* qemu-img -o refcount_bits=-1 prints refcount_bits=-1: strtoull wraps it. */
    assert_int_equal(vimg_opts_get_number(opts, "e", 0, &n, NULL), 0);
    assert_true(n == UINT64_MAX);
    vimg_opts_free(opts);
}

static void
test_opts_get_number_rejects_non_numbers(void **state)
{
    static const char *const bad[] = { "", "abc", "1k", " 16", "16 ", "0x" };
    struct vimg_opts *opts = vimg_opts_new();
    struct vimg_error err;
    uint64_t n;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        vimg_opts_set(opts, "refcount_bits", bad[i], NULL);
        memset(&err, 0, sizeof(err));
        assert_int_equal(vimg_opts_get_number(opts, "refcount_bits", 0, &n, &err), -EINVAL);
        assert_int_equal(err.errnum, EINVAL);
        assert_string_equal(err.msg, "Parameter 'refcount_bits' expects a number");
    }
    vimg_opts_free(opts);
}

static void
test_opts_get_number_rejects_overflow_as_too_large(void **state)
{
    struct vimg_opts *opts = parse_ok("refcount_bits=18446744073709551616", NULL);
    struct vimg_error err = { 0 };
    uint64_t n;

    (void)state;
    assert_int_equal(vimg_opts_get_number(opts, "refcount_bits", 0, &n, &err), -EINVAL);
    assert_int_equal(err.errnum, EINVAL);
    assert_string_equal(err.msg, "Value '18446744073709551616' is too large for parameter "
                                 "'refcount_bits'");
    vimg_opts_free(opts);
}

static void
test_opts_get_enum_returns_index_or_qemu_text(void **state)
{
    static const char *const values[] = { "threads", "native", "io_uring", NULL };
    struct vimg_opts *opts = parse_ok("aio=native,locking=maybe", NULL);
    struct vimg_error err = { 0 };
    int e = -1;

    (void)state;
    assert_int_equal(vimg_opts_get_enum(opts, "aio", values, 0, &e, NULL), 0);
    assert_int_equal(e, 1);
    assert_int_equal(vimg_opts_get_enum(opts, "locking", values, 0, &e, &err), -EINVAL);
    assert_int_equal(err.errnum, EINVAL);
    assert_string_equal(err.msg, "invalid parameter value: maybe");
    vimg_opts_free(opts);
}

/* ---- vimg_parse_size, against qemu-img ---- */

struct size_case {
    const char *str;
    int ret;
    uint64_t value;
};

static void
check_sizes(const struct size_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0xdeadbeef;
        int ret = vimg_parse_size(cases[i].str, &v);

        if (ret != cases[i].ret || (ret == 0 && v != cases[i].value))
            fail_msg("size '%s': got %d/%llu, want %d/%llu", cases[i].str, ret,
                     (unsigned long long)v, cases[i].ret,
                     (unsigned long long)cases[i].value);
    }
}

static void
test_opts_size_accepts_integers_and_suffixes(void **state)
{
    static const struct size_case cases[] = {
        { "0", 0, 0 },
        { "1", 0, 1 },
        { "1b", 0, 1 },
        { "1B", 0, 1 },
        { "64k", 0, 65536 },
        { "64K", 0, 65536 },
        { "1M", 0, 1ULL << 20 },
        { "1g", 0, 1ULL << 30 },
        { "2T", 0, 2ULL << 40 },
        { "1P", 0, 1ULL << 50 },
        { "15E", 0, 15ULL << 60 },
        { "012", 0, 12 },             /* decimal, not octal */
        { "010k", 0, 10240 },
        { "18446744073709551615", 0, UINT64_MAX },
        { "18446744073709551615b", 0, UINT64_MAX },
        { "17592186044416k", 0, 17592186044416ULL << 10 },
    };

    (void)state;
    check_sizes(cases, sizeof(cases) / sizeof(cases[0]));
}

static void
test_opts_size_accepts_hex_with_suffix(void **state)
{
    static const struct size_case cases[] = {
        { "0x100000", 0, 0x100000 },
        { "0X10", 0, 16 },
        { "0x1B", 0, 27 },            /* B and E are hex digits after 0x */
        { "0x1e", 0, 30 },
        { "0x1k", 0, 1024 },
        { "0xfk", 0, 15360 },
        { "0x1g", 0, 1ULL << 30 },
        { "0x1p", 0, 1ULL << 50 },
        { "0xffffffffffffffff", 0, UINT64_MAX },
        { "+0x10", 0, 16 },
    };

    (void)state;
    check_sizes(cases, sizeof(cases) / sizeof(cases[0]));
}

static void
test_opts_size_accepts_fractional_suffix(void **state)
{
    static const struct size_case cases[] = {
        { "1.5k", 0, 1536 },
        { "1.5K", 0, 1536 },
        { "0.5k", 0, 512 },
        { "1.k", 0, 1024 },
        { "1.", 0, 1 },
        { "1.0", 0, 1 },
        { "1.0b", 0, 1 },
        { "1.0E", 0, 1ULL << 60 },
        { "0.5e", 0, 1ULL << 59 },
        { "1.5p", 0, 1688849860263936ULL },
        { "12345.6789M", 0, 12945382598ULL },
        { "4.000000001G", 0, 4294967297ULL },
    };

    (void)state;
    check_sizes(cases, sizeof(cases) / sizeof(cases[0]));
}

static void
test_opts_size_rounds_fraction_half_up(void **state)
{
    static const struct size_case cases[] = {
        { "1.1k", 0, 1126 },          /* 1126.4 */
        { "1.7k", 0, 1741 },          /* 1740.8 */
        { "0.9k", 0, 922 },
        { "0.2M", 0, 209715 },
        { "0.6M", 0, 629146 },
        { "1.999k", 0, 2047 },
        { "0.00048828125k", 0, 1 },   /* exactly 0.5 */
        { "0.00146484375k", 0, 2 },   /* 1.5 */
        { "0.00244140625k", 0, 3 },   /* 2.5 */
        { "0.0004k", 0, 0 },
        { "17592186044415.99999k", 0, 17592186044416ULL << 10 },
    };

    (void)state;
    check_sizes(cases, sizeof(cases) / sizeof(cases[0]));
}

/* QEMU reads the fraction as a double: these follow its precision. */
static void
test_opts_size_matches_qemu_double_precision(void **state)
{
    static const struct size_case cases[] = {
        { "1.1E", 0, 1268213655067531680ULL },
        { "1.01E", 0, 1164450719652915446ULL },
        { "3.3E", 0, 3804640965202595008ULL },
        { "1.2345678901234567E", 0, 1423359869420436224ULL },
        { "15.9999999999999999E", 0, UINT64_MAX - 127 },
        { "1.9999999999999999k", 0, 2048 },
        { "1.99999999999999990k", 0, 2048 },
        /* The fraction rounds to 1.0 and QEMU drops it. */
        { "1.99999999999999999k", 0, 1024 },
        { "1.99999999999999998k", 0, 1024 },
        { "15.99999999999999999E", 0, 15ULL << 60 },
        { "0.99999999999999999k", 0, 0 },
        { "1.99999999999999999", 0, 1 },
        /* Below 2^-64 a fraction is no fraction, even for bytes. */
        { "1.00000000000000000005b", 0, 1 },
        { "1.0000000000000000000542b", 0, 1 },
        { "1.0000000000000000000000001", 0, 1 },
        { "0.000000000000000001E", 0, 1 },
        { "0.0000000000000000001E", 0, 0 },
    };

    (void)state;
    check_sizes(cases, sizeof(cases) / sizeof(cases[0]));
}

static void
test_opts_size_accepts_leading_space_and_plus(void **state)
{
    static const struct size_case cases[] = {
        { " 1k", 0, 1024 },
        { "\t1k", 0, 1024 },
        { "\n1k", 0, 1024 },
        { "\v\f\r1k", 0, 1024 },
        { "+1k", 0, 1024 },
        { " +1k", 0, 1024 },
        { " 0x10", 0, 16 },
    };

    (void)state;
    check_sizes(cases, sizeof(cases) / sizeof(cases[0]));
}

static void
test_opts_size_rejects_malformed(void **state)
{
    static const struct size_case cases[] = {
        { "", -EINVAL, 0 },
        { " ", -EINVAL, 0 },
        { "1k ", -EINVAL, 0 },        /* trailing space */
        { "1.5 k", -EINVAL, 0 },
        { "+ 1k", -EINVAL, 0 },
        { "++1", -EINVAL, 0 },
        { "-1", -EINVAL, 0 },
        { "-0", -EINVAL, 0 },
        { "1.5", -EINVAL, 0 },        /* a fraction of a byte */
        { "0.5", -EINVAL, 0 },
        { "1.5b", -EINVAL, 0 },
        { "1.25b", -EINVAL, 0 },
        { "0.0625b", -EINVAL, 0 },
        { "1.9999999999b", -EINVAL, 0 },
        { "1.00000000000000001b", -EINVAL, 0 },
        { "1.00000000000000000006b", -EINVAL, 0 },
        { "1e3", -EINVAL, 0 },
        { "1E5", -EINVAL, 0 },
        { "1.5e3", -EINVAL, 0 },
        { "1.5e-3k", -EINVAL, 0 },
        { "1.5ek", -EINVAL, 0 },
        { "1kb", -EINVAL, 0 },
        { "1KiB", -EINVAL, 0 },
        { "1.5x", -EINVAL, 0 },
        { ".5k", -EINVAL, 0 },
        { "1. 5k", -EINVAL, 0 },
        { "1.+5k", -EINVAL, 0 },
        { "0x", -EINVAL, 0 },
        { "0xk", -EINVAL, 0 },
        { "0x.5k", -EINVAL, 0 },
        { "0x1.5", -EINVAL, 0 },
        { "0x+1", -EINVAL, 0 },
        { "0x 1", -EINVAL, 0 },
        { "00x10", -EINVAL, 0 },
        { "0b1", -EINVAL, 0 },
        { "1,5k", -EINVAL, 0 },
        { "inf", -EINVAL, 0 },
        { "nan", -EINVAL, 0 },
        { "1.inf", -EINVAL, 0 },
    };

    (void)state;
    check_sizes(cases, sizeof(cases) / sizeof(cases[0]));
}

static void
test_opts_size_rejects_2_pow_64_as_out_of_range(void **state)
{
    static const struct size_case cases[] = {
        { "16E", -ERANGE, 0 },
        { "16.0E", -ERANGE, 0 },
        { "16384P", -ERANGE, 0 },
        { "18446744073709551616", -ERANGE, 0 },
        { "99999999999999999999999999999", -ERANGE, 0 },
        { "0x10000000000000000", -ERANGE, 0 },
        { "0xfffffffffffffffk", -ERANGE, 0 },
        { "18446744073709551615.k", -ERANGE, 0 },
        { "1234567890123456789.5k", -ERANGE, 0 },
    };

    (void)state;
    check_sizes(cases, sizeof(cases) / sizeof(cases[0]));
}

/* An integer part past 2^64 with anything after it is not a size at all. */
static void
test_opts_size_rejects_overflow_followed_by_text(void **state)
{
    static const struct size_case cases[] = {
        { "18446744073709551616k", -EINVAL, 0 },
        { "18446744073709551616b", -EINVAL, 0 },
        { "100000000000000000000b", -EINVAL, 0 },
        { "18446744073709551616.", -EINVAL, 0 },
        { "18446744073709551616.0", -EINVAL, 0 },
        { "99999999999999999999.5k", -EINVAL, 0 },
        { "18446744073709551616x", -EINVAL, 0 },
        { "0x10000000000000000k", -EINVAL, 0 },
    };

    (void)state;
    check_sizes(cases, sizeof(cases) / sizeof(cases[0]));
}

static void
test_opts_size_reads_very_long_fractions(void **state)
{
    char buf[1200];
    uint64_t v;

    (void)state;
    /* "0." + 1000 nines + "k": the fraction rounds to 1.0 and is dropped. */
    strcpy(buf, "0.");
    memset(buf + 2, '9', 1000);
    strcpy(buf + 1002, "k");
    assert_int_equal(vimg_parse_size(buf, &v), 0);
    assert_int_equal(v, 0);
    /* "1." + 1000 zeros + "1b": below 2^-64, so still a whole byte. */
    strcpy(buf, "1.");
    memset(buf + 2, '0', 1000);
    strcpy(buf + 1002, "1b");
    assert_int_equal(vimg_parse_size(buf, &v), 0);
    assert_int_equal(v, 1);
    /* "0.5" + 1000 zeros + "1" of a KiB: past a double's precision, so 512. */
    strcpy(buf, "0.5");
    memset(buf + 3, '0', 1000);
    strcpy(buf + 1003, "1k");
    assert_int_equal(vimg_parse_size(buf, &v), 0);
    assert_int_equal(v, 512);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opts_parse_reads_key_value_pairs_in_order),
        cmocka_unit_test(test_opts_parse_double_comma_is_a_literal_comma),
        cmocka_unit_test(test_opts_parse_first_bare_element_is_implied_key),
        cmocka_unit_test(test_opts_parse_implied_key_only_applies_first),
        cmocka_unit_test(test_opts_parse_bare_key_means_on),
        cmocka_unit_test(test_opts_parse_dotted_keys_create_nested_dicts),
        cmocka_unit_test(test_opts_parse_later_value_wins),
        cmocka_unit_test(test_opts_parse_empty_string_gives_empty_tree),
        cmocka_unit_test(test_opts_parse_rejects_value_then_dict),
        cmocka_unit_test(test_opts_parse_rejects_dict_then_value),
        cmocka_unit_test(test_opts_parse_rejects_empty_key),
        cmocka_unit_test(test_opts_set_default_keeps_existing_value),
        cmocka_unit_test(test_opts_set_rejects_path_through_a_string),
        cmocka_unit_test(test_opts_merge_src_wins_and_src_is_unchanged),
        cmocka_unit_test(test_opts_merge_reports_inconsistent_use),
        cmocka_unit_test(test_opts_merge_keeps_paths_longer_than_1024_bytes),
        cmocka_unit_test(test_opts_dup_copies_values_and_used_marks),
        cmocka_unit_test(test_opts_del_removes_leaf_and_dict),
        cmocka_unit_test(test_opts_find_unused_names_first_unread_key),
        cmocka_unit_test(test_opts_find_unused_reports_keys_deeper_than_1024_bytes),
        cmocka_unit_test(test_opts_peek_does_not_mark_used),
        cmocka_unit_test(test_opts_find_unused_truncates_long_key),
        cmocka_unit_test(test_opts_set_clears_used_mark),
        cmocka_unit_test(test_opts_getters_return_default_when_absent),
        cmocka_unit_test(test_opts_get_size_accepts_fractional_suffix),
        cmocka_unit_test(test_opts_get_size_rejects_garbage_with_qemu_text),
        cmocka_unit_test(test_opts_get_size_rejects_overflow_as_out_of_range),
        cmocka_unit_test(test_opts_get_bool_accepts_qemu_spellings),
        cmocka_unit_test(test_opts_get_bool_is_case_sensitive),
        cmocka_unit_test(test_opts_get_number_accepts_strtoull_forms),
        cmocka_unit_test(test_opts_get_number_rejects_non_numbers),
        cmocka_unit_test(test_opts_get_number_rejects_overflow_as_too_large),
        cmocka_unit_test(test_opts_get_enum_returns_index_or_qemu_text),
        cmocka_unit_test(test_opts_size_accepts_integers_and_suffixes),
        cmocka_unit_test(test_opts_size_accepts_hex_with_suffix),
        cmocka_unit_test(test_opts_size_accepts_fractional_suffix),
        cmocka_unit_test(test_opts_size_rounds_fraction_half_up),
        cmocka_unit_test(test_opts_size_matches_qemu_double_precision),
        cmocka_unit_test(test_opts_size_accepts_leading_space_and_plus),
        cmocka_unit_test(test_opts_size_rejects_malformed),
        cmocka_unit_test(test_opts_size_rejects_2_pow_64_as_out_of_range),
        cmocka_unit_test(test_opts_size_rejects_overflow_followed_by_text),
        cmocka_unit_test(test_opts_size_reads_very_long_fractions),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
