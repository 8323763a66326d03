/*
 * Test helper: opens an image through libvimg with the given permissions and
 * holds it until its standard input closes, so tests can see how vimg's
 * locks meet QEMU's. Prints "ready" once open, or the error and exits 1.
 *
 *   vimg-hold [-w] [-r] [-n] [-U] [-f FMT] FILE
 *     -w read-write   -r take resize   -n share nothing   -U force share
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <vimg/node.h>

int
main(int argc, char **argv)
{
    struct vimg_error err = { 0 };
    struct vimg_node *node;
    const char *fmt = NULL;
    unsigned flags = 0;
    char buf[64];
    int c;

    while ((c = getopt(argc, argv, "wrnUf:")) != -1) {
        switch (c) {
        case 'w': flags |= VIMG_OPEN_RDWR; break;
        case 'r': flags |= VIMG_OPEN_RESIZE; break;
        case 'n': flags |= VIMG_OPEN_NO_SHARE; break;
        case 'U': flags |= VIMG_OPEN_FORCE_SHARE; break;
        case 'f': fmt = optarg; break;
        default: return 2;
        }
    }
    if (optind != argc - 1)
        return 2;
    if (vimg_open(&node, argv[optind], fmt, NULL, flags, &err) < 0) {
        fprintf(stderr, "vimg-hold: Could not open '%s': %s\n", argv[optind], err.msg);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    while (read(0, buf, sizeof(buf)) > 0)
        ;
    vimg_close(node);
    return 0;
}
