/* libFuzzer target for the vdi driver's header and table parsers (src/formats/vdi.c). */
#include "fuzz-format.h"

FUZZ_FORMAT_TARGET("vdi")
