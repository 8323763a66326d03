/* libFuzzer target for the parallels driver's header and table parsers (src/formats/parallels.c). */
#include "fuzz-format.h"

FUZZ_FORMAT_TARGET("parallels")
