/*
 * Parent paths of differencing VHD and VHDX images (see vhd-parent.h).
 */
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/driver.h"
#include "formats/vhd-parent.h"

static unsigned
unit_at(const uint8_t *p, bool is_be)
{
    return is_be ? (unsigned)(p[0] << 8 | p[1]) : (unsigned)(p[0] | p[1] << 8);
}

char *
vhd_parent_utf16_to_utf8(const uint8_t *p, size_t len, bool is_be)
{
    char *out = malloc(len / 2 * 3 + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i + 1 < len; i += 2) {
        uint32_t c = unit_at(p + i, is_be);

        if (c == 0)
            break;
        if (c >= 0xd800 && c < 0xdc00) {
            uint32_t lo = i + 3 < len ? unit_at(p + i + 2, is_be) : 0;
            if (lo < 0xdc00 || lo >= 0xe000)
                goto bad;
            c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
            i += 2;
        } else if (c >= 0xdc00 && c < 0xe000) {
            goto bad;
        }
        if (c < 0x80) {
            *o++ = (char)c;
        } else if (c < 0x800) {
            *o++ = (char)(0xc0 | c >> 6);
            *o++ = (char)(0x80 | (c & 0x3f));
        } else if (c < 0x10000) {
            *o++ = (char)(0xe0 | c >> 12);
            *o++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *o++ = (char)(0x80 | (c & 0x3f));
        } else {
            *o++ = (char)(0xf0 | c >> 18);
            *o++ = (char)(0x80 | ((c >> 12) & 0x3f));
            *o++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *o++ = (char)(0x80 | (c & 0x3f));
        }
    }
    *o = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

void
vhd_parent_path_to_host(char *s)
{
    char *r = s, *w = s;
    size_t skip;

    if (strncmp(s, "file://", 7) == 0) {
        /* file://host/path or file:///path: the path, %XX decoded. */
        r = strchr(s + 7, '/');
        if (!r) {
            *s = '\0';
            return;
        }
        while (*r) {
            if (r[0] == '%' && vimg_hex_digit(r[1]) >= 0 && vimg_hex_digit(r[2]) >= 0 &&
                (vimg_hex_digit(r[1]) | vimg_hex_digit(r[2])) != 0) {
                *w++ = (char)(vimg_hex_digit(r[1]) << 4 | vimg_hex_digit(r[2]));
                r += 3;
            } else {
                *w++ = *r++;
            }
        }
        *w = '\0';
        return;
    }
    if (strncmp(r, "\\\\?\\", 4) == 0)
        r += 4;
    /* A drive letter means nothing here: "C:\dir\f.vhd" is tried as "/dir/f.vhd". */
    if (((r[0] >= 'A' && r[0] <= 'Z') || (r[0] >= 'a' && r[0] <= 'z')) && r[1] == ':')
        r += 2;
    for (; *r; r++)
        *w++ = *r == '\\' ? '/' : *r;
    *w = '\0';
    skip = 0;
    while (s[skip] == '.' && s[skip + 1] == '/')
        skip += 2;
    if (skip) {
        size_t len = strlen(s + skip);
        for (size_t i = 0; i <= len; i++)
            s[i] = s[skip + i];
    }
}

/* path against the directory of image, malloc'd. */
static char *
resolve(const char *image, const char *path)
{
    char *copy, *out = NULL;

    if (path[0] == '/')
        return strdup(path);
    if (!(copy = strdup(image)))
        return NULL;
    if (asprintf(&out, "%s/%s", dirname(copy), path) < 0)
        out = NULL;
    free(copy);
    return out;
}

bool
vhd_parent_exists(const char *image, const char *path)
{
    char *full = resolve(image, path);
    struct stat st;
    bool ok = full && *path && stat(full, &st) == 0 && !S_ISDIR(st.st_mode);

    free(full);
    return ok;
}

bool
vhd_parent_is_self(const char *image, const char *path)
{
    char *full = resolve(image, path);
    struct stat a, b;
    bool same = full && stat(full, &a) == 0 && stat(image, &b) == 0 &&
                a.st_dev == b.st_dev && a.st_ino == b.st_ino;

    free(full);
    return same;
}
