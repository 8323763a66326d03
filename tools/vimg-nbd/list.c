/* vimg-nbd -L: lists a server's exports in qemu-nbd -L's words. */
#include <inttypes.h>
#include <stdio.h>

#include <vimg/nbd.h>

#include "vimg-nbd.h"

/* Transmission flag names by bit, as qemu-nbd -L prints them (bit 0 is not named). */
static const char *const flag_names[16] = {
    NULL, "readonly", "flush", "fua", "rotational", "trim", "zeroes", "df",
    "multi", "resize", "cache", "fast-zero",
};

static void
print_export(const struct vimg_nbd_export_info *e)
{
    printf(" export: '%s'\n", e->name);
    if (e->description)
        printf("  description: %s\n", e->description);
    printf("  size:  %" PRIu64 "\n", e->size);
    printf("  flags: 0x%x (", e->flags);
    for (int bit = 0; bit < 16; bit++)
        if ((e->flags & (1u << bit)) && flag_names[bit])
            printf(" %s", flag_names[bit]);
    printf(" )\n");
    if (e->min_block) {
        printf("  min block: %" PRIu32 "\n", e->min_block);
        printf("  opt block: %" PRIu32 "\n", e->opt_block);
        printf("  max block: %" PRIu32 "\n", e->max_block);
    }
    if (e->n_contexts) {
        printf("  available meta contexts: %u\n", e->n_contexts);
        for (unsigned i = 0; i < e->n_contexts; i++)
            printf("   %s\n", e->contexts[i]);
    }
}

int
nbd_tool_list(const char *host, const char *port, const char *path, const char *tls_creds,
              const char *tls_hostname)
{
    struct vimg_nbd_export_info *list;
    struct vimg_error err = { 0 };
    unsigned n;

    if (vimg_nbd_list_tls(host, port, path, tls_creds, tls_hostname, &list, &n, &err) < 0) {
        tool_error("%s", err.msg);
        return 1;
    }
    printf("exports available: %u\n", n);
    for (unsigned i = 0; i < n; i++)
        print_export(&list[i]);
    vimg_nbd_list_free(list, n);
    return 0;
}
