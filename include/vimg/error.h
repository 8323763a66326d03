/* Error objects: an errno and one line saying what, where and why. */
#ifndef VIMG_ERROR_H
#define VIMG_ERROR_H

#include <stdarg.h>

#define VIMG_ERROR_MSG_MAX 512

struct vimg_error {
    int  errnum;                    /* positive errno; 0 = no error */
    char msg[VIMG_ERROR_MSG_MAX];   /* one line: no newline, no final period */
};

/* Fills *err (when not NULL) and returns -errnum, so a failure path is one statement. */
int vimg_error_set(struct vimg_error *err, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int vimg_error_setv(struct vimg_error *err, int errnum, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Like vimg_error_set, with ": strerror(errnum)" appended. */
int vimg_error_set_errno(struct vimg_error *err, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Puts "<prefix>" in front of the message already in *err. */
void vimg_error_prefix(struct vimg_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void vimg_error_clear(struct vimg_error *err);

#endif
