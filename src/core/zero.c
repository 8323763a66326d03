/*
 * Zero detection. The loop over 64-byte blocks ORs eight words at a time so
 * the compiler vectorises it; the first bytes are tested alone so that
 * data at the start of a buffer (the common case) returns at once.
 */
#include <stdint.h>
#include <string.h>

#include <vimg/node.h>

bool
vimg_buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t head;

    if (len == 0)
        return true;
    if (len < 64) {
        for (size_t i = 0; i < len; i++)
            if (p[i])
                return false;
        return true;
    }
    /* Reject quickly on a first, middle and last word. */
    if (p[0] || p[len - 1] || p[len / 2])
        return false;
    head = (uintptr_t)p & 7 ? 8 - ((uintptr_t)p & 7) : 0;
    for (size_t i = 0; i < head; i++)
        if (p[i])
            return false;
    p += head;
    len -= head;
    while (len >= 64) {
        uint64_t w[8];
        memcpy(w, p, 64);
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
            return false;
        p += 64;
        len -= 64;
    }
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return false;
    return true;
}
