/* libFuzzer target for the cloop driver's header and table parsers (src/formats/cloop.c). */
#include "fuzz-format.h"

FUZZ_FORMAT_TARGET("cloop")
