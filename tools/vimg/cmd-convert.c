/* vimg convert: qemu-img convert. Placeholder until its implementation lands (issue #2). */
#include "vimg.h"

int
cmd_convert(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tool_error("'convert' is not implemented yet");
    return 1;
}
