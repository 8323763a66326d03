/* JSON output in QEMU's key order and formatting (pretty: 4-space indent). */
#ifndef VIMG_JSON_H
#define VIMG_JSON_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

void vimg_json_print(FILE *f, const json_t *value, bool is_pretty);
/* malloc'd text, or NULL when out of memory. */
char *vimg_json_dumps(const json_t *value, bool is_pretty);

#endif
