/* vimg bench: qemu-img bench. Placeholder until its implementation lands (issue #2). */
#include "vimg.h"

int
cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tool_error("'bench' is not implemented yet");
    return 1;
}
