/* libFuzzer target for the dmg driver's header and table parsers (src/formats/dmg.c). */
#include "fuzz-format.h"

FUZZ_FORMAT_TARGET("dmg")
