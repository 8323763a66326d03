/* vimg map: qemu-img map. Placeholder until its implementation lands (issue #2). */
#include "vimg.h"

int
cmd_map(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tool_error("'map' is not implemented yet");
    return 1;
}
