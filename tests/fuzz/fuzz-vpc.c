/* libFuzzer target for the vpc driver: footer, dynamic header, BAT (src/formats/vpc.c). */
#include "fuzz-format.h"

FUZZ_FORMAT_TARGET("vpc")
