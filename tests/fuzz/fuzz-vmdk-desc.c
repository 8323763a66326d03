/*
 * libFuzzer target for the vmdk text descriptor parser (src/formats/vmdk.c):
 * the input is a descriptor file, written into a private directory that
 * also holds a flat extent "flat.img" (1 MiB) and a sparse extent
 * "sparse.vmdk" (a 4 MiB monolithicSparse image with one grain written), so
 * that extent lines naming them open, with any sizes and offsets. Inputs
 * naming a file outside that directory (an absolute path, "..") are skipped:
 * the descriptor would otherwise open the fuzzer's own files.
 */
/* The shared body's fuzz_format() opens a memfd; this target needs a directory instead. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "fuzz-format.h"

#include <fcntl.h>

static char dir[64];
static char path[128];

static void
make_dir(void)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *opts = vimg_opts_new();
    struct vimg_node *node;
    char p[160];
    uint8_t grain[65536];
    int fd;

    snprintf(dir, sizeof(dir), "/tmp/fuzz-vmdk-desc.XXXXXX");
    if (!opts || !mkdtemp(dir))
        abort();
    snprintf(p, sizeof(p), "%s/flat.img", dir);
    if ((fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0600)) < 0 || ftruncate(fd, 1 << 20) < 0)
        abort();
    close(fd);
    snprintf(p, sizeof(p), "%s/sparse.vmdk", dir);
    if (vimg_opts_set(opts, "size", "4M", &err) < 0 || vimg_create(p, "vmdk", opts, &err) < 0 ||
        vimg_open(&node, p, "vmdk", NULL, VIMG_OPEN_RDWR, &err) < 0)
        abort();
    memset(grain, 0x5a, sizeof(grain));
    if (vimg_node_pwrite(node, 65536, grain, sizeof(grain), 0, &err) < 0)
        abort();
    vimg_close(node);
    vimg_opts_free(opts);
    snprintf(path, sizeof(path), "%s/desc.vmdk", dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (memmem(data, size, "/", 1) || memmem(data, size, "..", 2))
        return 0;
    if (!dir[0])
        make_dir();
    return fuzz_file(path, path, "vmdk", data, size);
}
