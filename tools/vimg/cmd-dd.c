/* vimg dd: qemu-img dd. Placeholder until its implementation lands (issue #2). */
#include "vimg.h"

int
cmd_dd(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tool_error("'dd' is not implemented yet");
    return 1;
}
