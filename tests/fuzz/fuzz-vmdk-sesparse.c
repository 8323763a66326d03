/*
 * libFuzzer target for the vmdk driver's SESparse extent parser
 * (src/formats/vmdk.c): the constant and volatile headers, the 64-bit grain
 * directory and grain tables, the allocated-grain cluster encoding and
 * check's grain walk. The input is the extent file "x-sesparse.vmdk",
 * written into a private directory beside a fixed descriptor "x.vmdk"
 * (createType="seSparse", one SESPARSE extent line) that is then opened
 * read-only as a vmdk image. fuzz-vmdk never reaches this parser (it takes
 * only KDMV/COWD files) and fuzz-vmdk-desc's directory holds no SESparse
 * extent.
 */
/* The shared body's fuzz_format() opens a memfd; this target needs a directory instead. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "fuzz-format.h"

#include <fcntl.h>

static char dir[64];
static char desc_path[128];
static char extent_path[128];

static void
make_dir(void)
{
    static const char desc[] =
        "# Disk DescriptorFile\n"
        "version=1\n"
        "CID=5eb1a2c3\n"
        "parentCID=ffffffff\n"
        "createType=\"seSparse\"\n"
        "\n"
        "RW 8192 SESPARSE \"x-sesparse.vmdk\"\n";
    int fd;

    snprintf(dir, sizeof(dir), "/tmp/fuzz-vmdk-sesparse.XXXXXX");
    if (!mkdtemp(dir))
        abort();
    snprintf(desc_path, sizeof(desc_path), "%s/x.vmdk", dir);
    snprintf(extent_path, sizeof(extent_path), "%s/x-sesparse.vmdk", dir);
    if ((fd = open(desc_path, O_CREAT | O_WRONLY | O_TRUNC, 0600)) < 0 ||
        write(fd, desc, sizeof(desc) - 1) != (ssize_t)(sizeof(desc) - 1))
        abort();
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0])
        make_dir();
    return fuzz_file(extent_path, desc_path, "vmdk", data, size);
}
