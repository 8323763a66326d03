/* vimg resize: qemu-img resize. Placeholder until its implementation lands (issue #2). */
#include "vimg.h"

int
cmd_resize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tool_error("'resize' is not implemented yet");
    return 1;
}
