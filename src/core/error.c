/* Error objects (include/vimg/error.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <vimg/error.h>

int
vimg_error_setv(struct vimg_error *err, int errnum, const char *fmt, va_list ap)
{
    if (errnum <= 0)
        errnum = EIO;
    if (err) {
        err->errnum = errnum;
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    }
    return -errnum;
}

int
vimg_error_set(struct vimg_error *err, int errnum, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vimg_error_setv(err, errnum, fmt, ap);
    va_end(ap);
    return -(errnum > 0 ? errnum : EIO);
}

int
vimg_error_set_errno(struct vimg_error *err, int errnum, const char *fmt, ...)
{
    va_list ap;
    size_t len;

    va_start(ap, fmt);
    vimg_error_setv(err, errnum, fmt, ap);
    va_end(ap);
    if (err) {
        len = strlen(err->msg);
        snprintf(err->msg + len, sizeof(err->msg) - len, ": %s", strerror(err->errnum));
    }
    return -(errnum > 0 ? errnum : EIO);
}

void
vimg_error_prefix(struct vimg_error *err, const char *fmt, ...)
{
    char prefix[VIMG_ERROR_MSG_MAX];
    char old[VIMG_ERROR_MSG_MAX];
    va_list ap;

    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    size_t plen = strnlen(prefix, sizeof(err->msg) - 1);
    size_t olen = strnlen(old, sizeof(old) - 1);
    if (plen + olen > sizeof(err->msg) - 1)
        olen = sizeof(err->msg) - 1 - plen;
    memcpy(err->msg, prefix, plen);
    memcpy(err->msg + plen, old, olen);
    err->msg[plen + olen] = '\0';
}

void
vimg_error_clear(struct vimg_error *err)
{
    if (err) {
        err->errnum = 0;
        err->msg[0] = '\0';
    }
}
