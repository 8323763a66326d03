/* The vimg-nbd tool's parts: serving (main.c) and listing (list.c). */
#ifndef VIMG_TOOLS_VIMG_NBD_H
#define VIMG_TOOLS_VIMG_NBD_H

#include "../common.h"

/* vimg-nbd -L: prints the exports of the server at path, or host:port; returns the exit code. */
int nbd_tool_list(const char *host, const char *port, const char *path);

#endif
