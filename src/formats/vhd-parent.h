/*
 * Parent paths of differencing VHD and VHDX images: the locators store
 * Windows paths in UTF-16 (or UTF-8 file URLs); these helpers turn them into
 * paths this host can open and pick the first that exists.
 */
#ifndef VIMG_FORMATS_VHD_PARENT_H
#define VIMG_FORMATS_VHD_PARENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * UTF-16 (big-endian if is_be) of len bytes to a malloc'd UTF-8 string,
 * stopping at the first NUL unit; NULL for bad surrogates or no memory.
 */
char *vhd_parent_utf16_to_utf8(const uint8_t *p, size_t len, bool is_be);

/*
 * A locator path as this host spells it: "\\?\" and a drive letter dropped,
 * backslashes turned into slashes, a leading "./" dropped; "file://host"
 * URLs lose their scheme and host and have %XX decoded. Changes s in place.
 */
void vhd_parent_path_to_host(char *s);

/* Whether path (relative ones against the directory of image) names an existing file. */
bool vhd_parent_exists(const char *image, const char *path);

/* Whether path (relative ones against the directory of image) is image itself. */
bool vhd_parent_is_self(const char *image, const char *path);

#endif
