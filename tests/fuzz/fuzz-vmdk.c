/*
 * libFuzzer target for the vmdk driver's sparse extent parsers
 * (src/formats/vmdk.c): the hosted sparse header ("KDMV") with its embedded
 * descriptor, grain directories and tables, grain markers and compressed
 * grains, the footer of stream-optimized images, and COWD headers. Text
 * descriptors, which name other files, are fuzz-vmdk-desc's: inputs that
 * are not a sparse extent are skipped here.
 */
#include "fuzz-format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4 || (memcmp(data, "KDMV", 4) != 0 && memcmp(data, "COWD", 4) != 0))
        return 0;
    return fuzz_format("vmdk", data, size);
}
