/* libFuzzer target for the qed driver's header and table parsers (src/formats/qed.c). */
#include "fuzz-format.h"

FUZZ_FORMAT_TARGET("qed")
