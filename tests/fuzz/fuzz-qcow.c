/* libFuzzer target for the qcow driver's header and table parsers (src/formats/qcow.c). */
#include "fuzz-format.h"

FUZZ_FORMAT_TARGET("qcow")
