/*
 * Unit tests for src/core/opts-json.c: json:{...} text into the options tree
 * and back. Error texts are qemu-img 7.2's (`qemu-img info 'json:...'`).
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

#include <vimg/opts.h>

static struct vimg_opts *
json_ok(const char *text)
{
    struct vimg_opts *opts = vimg_opts_new();
    struct vimg_error err = { 0 };

    assert_non_null(opts);
    assert_int_equal(vimg_opts_parse_json(opts, text, &err), 0);
    assert_int_equal(err.errnum, 0);
    return opts;
}

static void
assert_json_fails(const char *text, const char *msg)
{
    struct vimg_opts *opts = vimg_opts_new();
    struct vimg_error err = { 0 };

    assert_int_equal(vimg_opts_parse_json(opts, text, &err), -EINVAL);
    assert_int_equal(err.errnum, EINVAL);
    if (!strstr(err.msg, msg))
        fail_msg("'%s': got \"%s\", want \"%s\"", text, err.msg, msg);
    vimg_opts_free(opts);
}

static void
assert_to_json(const struct vimg_opts *opts, const char *expected)
{
    char *json = vimg_opts_to_json(opts);

    assert_non_null(json);
    assert_string_equal(json, expected);
    free(json);
}

static void
test_json_nested_objects_equal_dotted_keys(void **state)
{
    struct vimg_opts *nested = json_ok("{\"driver\": \"qcow2\", \"file\": {\"driver\": \"file\","
                                       " \"filename\": \"a.qcow2\"}}");
    struct vimg_opts *dotted = json_ok("{\"driver\": \"qcow2\", \"file.driver\": \"file\","
                                       " \"file.filename\": \"a.qcow2\"}");
    struct vimg_opts *keyval = vimg_opts_new();
    char *a, *b, *c;

    (void)state;
    assert_int_equal(vimg_opts_parse(keyval, "driver=qcow2,file.driver=file,"
                                             "file.filename=a.qcow2", NULL, NULL), 0);
    a = vimg_opts_to_json(nested);
    b = vimg_opts_to_json(dotted);
    c = vimg_opts_to_json(keyval);
    assert_string_equal(a, b);
    assert_string_equal(a, c);
    assert_string_equal(vimg_opts_peek(dotted, "file.filename"), "a.qcow2");
    free(a);
    free(b);
    free(c);
    vimg_opts_free(nested);
    vimg_opts_free(dotted);
    vimg_opts_free(keyval);
}

static void
test_json_mixed_nesting_and_dots_merge(void **state)
{
    struct vimg_opts *opts = json_ok("{\"a.b\": 1, \"a\": {\"c\": 2}}");

    (void)state;
    assert_to_json(opts, "{\"a\":{\"b\":\"1\",\"c\":\"2\"}}");
    vimg_opts_free(opts);
}

static void
test_json_arrays_become_numbered_keys(void **state)
{
    struct vimg_opts *opts = json_ok("{\"children\": [{\"filename\": \"a\"}, "
                                     "{\"filename\": \"b\"}], \"l\": [1, [2, 3]]}");

    (void)state;
    assert_string_equal(vimg_opts_peek(opts, "children.0.filename"), "a");
    assert_string_equal(vimg_opts_peek(opts, "children.1.filename"), "b");
    assert_string_equal(vimg_opts_peek(opts, "l.1.0"), "2");
    assert_string_equal(vimg_opts_peek(opts, "l.1.1"), "3");
    vimg_opts_free(opts);
}

static void
test_json_scalars_become_strings(void **state)
{
    struct vimg_opts *opts = json_ok("{\"i\": 512, \"n\": -3, \"r\": 1.5, \"t\": true, "
                                     "\"f\": false, \"z\": null, \"s\": \"x\","
                                     " \"big\": 9223372036854775807}");

    (void)state;
    assert_string_equal(vimg_opts_peek(opts, "i"), "512");
    assert_string_equal(vimg_opts_peek(opts, "n"), "-3");
    assert_string_equal(vimg_opts_peek(opts, "r"), "1.5");
    assert_string_equal(vimg_opts_peek(opts, "t"), "on");
    assert_string_equal(vimg_opts_peek(opts, "f"), "off");
    assert_string_equal(vimg_opts_peek(opts, "z"), "");
    assert_string_equal(vimg_opts_peek(opts, "s"), "x");
    assert_string_equal(vimg_opts_peek(opts, "big"), "9223372036854775807");
    vimg_opts_free(opts);
}

static void
test_json_booleans_read_by_get_bool(void **state)
{
    struct vimg_opts *opts = json_ok("{\"read-only\": true, \"cache\": {\"direct\": false}}");
    bool b;

    (void)state;
    assert_int_equal(vimg_opts_get_bool(opts, "read-only", false, &b, NULL), 0);
    assert_true(b);
    assert_int_equal(vimg_opts_get_bool(opts, "cache.direct", true, &b, NULL), 0);
    assert_false(b);
    vimg_opts_free(opts);
}

static void
test_json_empty_object_gives_empty_tree(void **state)
{
    struct vimg_opts *opts = json_ok(" {} ");

    (void)state;
    assert_true(vimg_opts_is_empty(opts));
    assert_to_json(opts, "{}");
    vimg_opts_free(opts);
}

/* {"": {"a": 1}} once lost its empty key and came back as {"a": 1}. */
static void
test_json_empty_key_round_trips(void **state)
{
    struct vimg_opts *opts = vimg_opts_new();
    struct vimg_opts *back;
    char *json;

    (void)state;
    assert_int_equal(vimg_opts_parse(opts, ".a=1,b..c=2", NULL, NULL), 0);
    json = vimg_opts_to_json(opts);
    assert_string_equal(json, "{\"\":{\"a\":\"1\"},\"b\":{\"\":{\"c\":\"2\"}}}");
    back = json_ok(json);
    assert_to_json(back, json);
    free(json);
    vimg_opts_free(opts);
    vimg_opts_free(back);
}

/* Paths once went through a 1024-byte buffer and were cut short. */
static void
test_json_keeps_paths_longer_than_1024_bytes(void **state)
{
    enum { DEPTH = 300 };
    char *text = malloc(DEPTH * 12 + 16), *path = malloc(DEPTH * 6), *p = text, *q = path;
    struct vimg_opts *opts;

    (void)state;
    for (size_t i = 0; i < DEPTH; i++) {
        p += sprintf(p, "{\"key%zu\":", i % 10);
        q += sprintf(q, "%skey%zu", i ? "." : "", i % 10);
    }
    p += sprintf(p, "\"v\"");
    memset(p, '}', DEPTH);
    p[DEPTH] = '\0';
    assert_true(strlen(path) > 1024);
    opts = json_ok(text);
    assert_string_equal(vimg_opts_peek(opts, path), "v");
    vimg_opts_free(opts);
    free(path);
    free(text);
}

static void
test_json_to_json_keeps_insertion_order(void **state)
{
    struct vimg_opts *opts = vimg_opts_new();

    (void)state;
    vimg_opts_set(opts, "z", "1", NULL);
    vimg_opts_set(opts, "a.y", "2", NULL);
    vimg_opts_set(opts, "a.b", "3", NULL);
    vimg_opts_set(opts, "m", "quote\"back\\slash", NULL);
    assert_to_json(opts, "{\"z\":\"1\",\"a\":{\"y\":\"2\",\"b\":\"3\"},"
                         "\"m\":\"quote\\\"back\\\\slash\"}");
    vimg_opts_free(opts);
}

/* A value that is not UTF-8 was once dropped from the text silently. */
static void
test_json_to_json_refuses_non_utf8(void **state)
{
    struct vimg_opts *opts = vimg_opts_new();
    char *json;

    (void)state;
    vimg_opts_set(opts, "a", "ok", NULL);
    vimg_opts_set(opts, "b", "\xb0", NULL);
    json = vimg_opts_to_json(opts);
    assert_null(json);
    vimg_opts_free(opts);
}

static void
test_json_rejects_non_object(void **state)
{
    (void)state;
    assert_json_fails("[1]", "Invalid JSON object given");
    assert_json_fails("\"str\"", "Invalid JSON object given");
    assert_json_fails("42", "Invalid JSON object given");
}

static void
test_json_rejects_syntax_errors_with_qemu_text(void **state)
{
    (void)state;
    assert_json_fails("{\"driver\":\"raw\", \"file\": ",
                      "Could not parse the JSON options: JSON parse error, premature EOI");
    assert_json_fails("{\"driver\" \"raw\"}", "JSON parse error, missing : in object pair");
    assert_json_fails("{\"driver\":\"raw\"} x", "Expecting at most one JSON value");
    assert_json_fails("{\"a\":1}}", "Expecting at most one JSON value");
    assert_json_fails("{\"driver\":tru}", "JSON parse error, invalid keyword 'tru'");
    assert_json_fails("{\"a\":nul}", "JSON parse error, invalid keyword 'nul'");
    assert_json_fails("{\"driver\":@}", "JSON parse error, stray '@'");
    assert_json_fails("{\"a\":1,}", "JSON parse error, expecting value");
    assert_json_fails("{\"a\":[1,2}", "JSON parse error, expected separator in list");
    assert_json_fails("{\"a\":\"\\x\"}", "JSON parse error, invalid escape sequence in string");
    assert_json_fails("{\"a\":1,\"a\":2}", "JSON parse error, duplicate key");
    assert_json_fails("", "Could not parse the JSON options: Expecting a JSON value");
}

static void
test_json_rejects_inconsistent_use(void **state)
{
    (void)state;
    assert_json_fails("{\"a\": 1, \"a.b\": 2}", "Parameter 'a' used inconsistently");
    assert_json_fails("{\"a.b\": 1, \"a\": 2}", "Parameter 'a' used inconsistently");
}

static void
test_json_rejects_empty_leaf_key(void **state)
{
    (void)state;
    assert_json_fails("{\"\": \"x\"}", "Invalid parameter ''");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_nested_objects_equal_dotted_keys),
        cmocka_unit_test(test_json_mixed_nesting_and_dots_merge),
        cmocka_unit_test(test_json_arrays_become_numbered_keys),
        cmocka_unit_test(test_json_scalars_become_strings),
        cmocka_unit_test(test_json_booleans_read_by_get_bool),
        cmocka_unit_test(test_json_empty_object_gives_empty_tree),
        cmocka_unit_test(test_json_empty_key_round_trips),
        cmocka_unit_test(test_json_keeps_paths_longer_than_1024_bytes),
        cmocka_unit_test(test_json_to_json_keeps_insertion_order),
        cmocka_unit_test(test_json_to_json_refuses_non_utf8),
        cmocka_unit_test(test_json_rejects_non_object),
        cmocka_unit_test(test_json_rejects_syntax_errors_with_qemu_text),
        cmocka_unit_test(test_json_rejects_inconsistent_use),
        cmocka_unit_test(test_json_rejects_empty_leaf_key),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
