/* libFuzzer target for the bochs driver's header and table parsers (src/formats/bochs.c). */
#include "fuzz-format.h"

FUZZ_FORMAT_TARGET("bochs")
