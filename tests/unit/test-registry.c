/*
 * Unit tests for src/core/registry.c: every driver table has a unique name,
 * the list is sorted by name, and each table has the operations its kind
 * needs (STYLE.md, "Drivers"): open for all, a probe for formats (unless
 * QEMU never probes them), a length for protocols (unless a filter).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/driver.h"

/*
 * Formats that QEMU never probes: they are only opened by name, so they
 * have no probe. Filters are exempt as well (is_filter).
 */
static const char *const never_probed[] = {
    "blkdebug", "blklogwrites", "blkreplay", "blkverify", "compress", "copy-before-write",
    "copy-on-read", "null-aio", "null-co", "preallocate", "quorum", "replication",
    "snapshot-access", "throttle",
};

static size_t
n_drivers(void)
{
    size_t n = 0;

    while (vimg_driver_at(n))
        n++;
    return n;
}

static bool
is_never_probed(const char *name)
{
    for (size_t i = 0; i < sizeof(never_probed) / sizeof(never_probed[0]); i++)
        if (strcmp(never_probed[i], name) == 0)
            return true;
    return false;
}

static void
test_registry_lists_drivers_through_public_and_core_calls(void **state)
{
    (void)state;
    assert_true(n_drivers() > 0);
    assert_int_equal(vimg_driver_count(), n_drivers());
    for (size_t i = 0; i < n_drivers(); i++) {
        assert_string_equal(vimg_driver_name(i), vimg_driver_at(i)->name);
        assert_ptr_equal(vimg_driver_find(vimg_driver_at(i)->name), vimg_driver_at(i));
        assert_true(vimg_format_exists(vimg_driver_at(i)->name));
    }
    assert_null(vimg_driver_at(n_drivers()));
    assert_null(vimg_driver_name(n_drivers()));
    assert_null(vimg_driver_find("no-such-driver"));
    assert_false(vimg_format_exists("no-such-driver"));
}

static void
test_registry_names_are_unique_and_sorted(void **state)
{
    (void)state;
    for (size_t i = 0; i < n_drivers(); i++) {
        const char *name = vimg_driver_at(i)->name;

        assert_non_null(name);
        assert_true(name[0] != '\0');
        if (i > 0 && strcmp(vimg_driver_at(i - 1)->name, name) >= 0)
            fail_msg("driver '%s' is listed after '%s'", name, vimg_driver_at(i - 1)->name);
    }
}

static void
test_registry_every_driver_can_open(void **state)
{
    (void)state;
    for (size_t i = 0; i < n_drivers(); i++)
        if (!vimg_driver_at(i)->open)
            fail_msg("driver '%s' has no open", vimg_driver_at(i)->name);
}

static void
test_registry_formats_probe_unless_never_probed(void **state)
{
    (void)state;
    for (size_t i = 0; i < n_drivers(); i++) {
        const struct vimg_driver *drv = vimg_driver_at(i);

        if (drv->kind != VIMG_DRIVER_FORMAT)
            continue;
        if (!drv->probe && !drv->is_filter && !is_never_probed(drv->name))
            fail_msg("format '%s' has no probe", drv->name);
        if (drv->probe_device)
            fail_msg("format '%s' has probe_device, which is for protocols", drv->name);
        if (drv->protocols)
            fail_msg("format '%s' claims URI prefixes", drv->name);
    }
}

static void
test_registry_protocols_have_length(void **state)
{
    (void)state;
    for (size_t i = 0; i < n_drivers(); i++) {
        const struct vimg_driver *drv = vimg_driver_at(i);

        if (drv->kind != VIMG_DRIVER_PROTOCOL)
            continue;
        /* The core asks a filter's file child (core/io.c, vimg_node_length). */
        if (!drv->length && !drv->is_filter)
            fail_msg("protocol '%s' has no length", drv->name);
        if (drv->probe)
            fail_msg("protocol '%s' has a header probe, which is for formats", drv->name);
    }
}

static void
test_registry_kinds_are_known(void **state)
{
    (void)state;
    for (size_t i = 0; i < n_drivers(); i++) {
        const struct vimg_driver *drv = vimg_driver_at(i);

        if (drv->kind != VIMG_DRIVER_FORMAT && drv->kind != VIMG_DRIVER_PROTOCOL)
            fail_msg("driver '%s' has kind %d", drv->name, (int)drv->kind);
    }
}

/* Options a driver declares for create are named, and only with create. */
static void
test_registry_create_options_are_named_and_unique(void **state)
{
    (void)state;
    for (size_t i = 0; i < n_drivers(); i++) {
        const struct vimg_driver *drv = vimg_driver_at(i);
        const struct vimg_opt_desc *d = drv->create_opts;

        if (d && !drv->create)
            fail_msg("driver '%s' has create options but no create", drv->name);
        for (; d && d->name; d++) {
            if (!d->help)
                fail_msg("option '%s' of '%s' has no help text", d->name, drv->name);
            for (const struct vimg_opt_desc *e = drv->create_opts; e < d; e++)
                if (strcmp(e->name, d->name) == 0)
                    fail_msg("option '%s' of '%s' is listed twice", d->name, drv->name);
        }
    }
}

/* Every URI prefix a protocol claims leads back to it. */
static void
test_registry_protocol_prefixes_find_their_driver(void **state)
{
    char filename[128];

    (void)state;
    for (size_t i = 0; i < n_drivers(); i++) {
        const struct vimg_driver *drv = vimg_driver_at(i);

        for (const char *const *p = drv->protocols; p && *p; p++) {
            snprintf(filename, sizeof(filename), "%s://host/x", *p);
            if (vimg_protocol_for(filename) != drv)
                fail_msg("'%s' does not find protocol '%s'", filename, drv->name);
        }
    }
    assert_null(vimg_protocol_for("dir/with:colon"));
    assert_null(vimg_protocol_for("plain-file"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_lists_drivers_through_public_and_core_calls),
        cmocka_unit_test(test_registry_names_are_unique_and_sorted),
        cmocka_unit_test(test_registry_every_driver_can_open),
        cmocka_unit_test(test_registry_formats_probe_unless_never_probed),
        cmocka_unit_test(test_registry_protocols_have_length),
        cmocka_unit_test(test_registry_kinds_are_known),
        cmocka_unit_test(test_registry_create_options_are_named_and_unique),
        cmocka_unit_test(test_registry_protocol_prefixes_find_their_driver),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
