/* vimg measure: qemu-img measure. Placeholder until its implementation lands (issue #2). */
#include "vimg.h"

int
cmd_measure(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tool_error("'measure' is not implemented yet");
    return 1;
}
