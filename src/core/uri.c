/*
 * Pieces of URI parsing that protocol drivers share (RFC 3986): %XX
 * decoding and the HOST[:PORT] / [V6HOST][:PORT] split of an authority.
 * What a driver accepts beyond that (default ports, empty hosts, user@,
 * query keys) and the words it answers with stay in the driver.
 */
#include <stdlib.h>
#include <string.h>

#include "core/driver.h"

int
vimg_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

char *
vimg_uri_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len &&
            (hi = vimg_hex_digit(s[i + 1])) >= 0 && (lo = vimg_hex_digit(s[i + 2])) >= 0) {
            *o++ = (char)(hi * 16 + lo);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

int
vimg_uri_split_host(const char *auth, size_t len, const char **host, size_t *host_len,
                    const char **port)
{
    const char *end = auth + len;

    *port = NULL;
    if (len && auth[0] == '[') {
        const char *close = memchr(auth, ']', len);
        if (!close || (close + 1 < end && close[1] != ':'))
            return -1;
        *host = auth + 1;
        *host_len = (size_t)(close - auth - 1);
        if (close + 1 < end)
            *port = close + 2;
    } else {
        const char *colon = memchr(auth, ':', len);
        *host = auth;
        *host_len = (size_t)((colon ? colon : end) - auth);
        if (colon)
            *port = colon + 1;
    }
    return 0;
}
