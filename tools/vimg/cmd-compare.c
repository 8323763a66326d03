/* vimg compare: qemu-img compare. Placeholder until its implementation lands (issue #2). */
#include "vimg.h"

int
cmd_compare(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tool_error("'compare' is not implemented yet");
    return 1;
}
