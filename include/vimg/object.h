/*
 * User-creatable objects (--object): secrets now, TLS credentials later.
 * A process-wide registry with its own lock.
 */
#ifndef VIMG_OBJECT_H
#define VIMG_OBJECT_H

#include <stddef.h>

#include <vimg/error.h>

/* Parses "secret,id=ID,data=...|file=...[,format=raw|base64]" and registers it. */
int vimg_object_add(const char *spec, struct vimg_error *err);
/* The secret's bytes (malloc'd, NUL-terminated) and their length. */
int vimg_secret_lookup(const char *id, char **data, size_t *len, struct vimg_error *err);
void vimg_objects_clear(void);

#endif
