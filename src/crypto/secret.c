/*
 * The secrets registry behind --object secret,...: data given inline or read
 * from a file, raw or base64. Process-wide, protected by one mutex.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/object.h>
#include <vimg/opts.h>

#include "crypto/tls-creds.h"

struct secret {
    char *id;
    char *data;
    size_t len;
    struct secret *next;
};

static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;
static struct secret *secrets;          /* protected by secrets_lock */

static int
base64_value(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

static int
base64_decode(const char *in, char **out, size_t *out_len, struct vimg_error *err)
{
    size_t n = strlen(in), len = 0;
    char *buf = malloc(n / 4 * 3 + 4);
    unsigned acc = 0;
    int bits = 0;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (size_t i = 0; i < n; i++) {
        int v;
        if (in[i] == '=')
            break;
        if ((v = base64_value((unsigned char)in[i])) < 0) {
            free(buf);
            return vimg_error_set(err, EINVAL, "Base64 data contains invalid characters");
        }
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[len++] = (char)((acc >> bits) & 0xff);
        }
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

static int
read_file(const char *path, char **out, size_t *out_len, struct vimg_error *err)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;

    if (!f)
        return vimg_error_set(err, errno, "Unable to read %s: Failed to open file \u201c%s\u201d: "
                              "%s", path, path, strerror(errno));
    for (;;) {
        if (len + 4096 + 1 > cap) {
            char *p = realloc(buf, cap = cap ? cap * 2 : 8192);
            if (!p) {
                free(buf);
                fclose(f);
                return vimg_error_set(err, ENOMEM, "Out of memory");
            }
            buf = p;
        }
        size_t n = fread(buf + len, 1, 4096, f);
        len += n;
        if (n < 4096)
            break;
    }
    fclose(f);
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

static int
secret_load(struct vimg_opts *o, char **data, size_t *len, struct vimg_error *err)
{
    const char *inline_data = vimg_opts_get(o, "data");
    const char *file = vimg_opts_get(o, "file");
    const char *format = vimg_opts_get(o, "format");
    char *raw = NULL;
    size_t raw_len = 0;
    int ret;

    if (format && strcmp(format, "raw") && strcmp(format, "base64"))
        return vimg_error_set(err, EINVAL, "Parameter 'format' does not accept value '%s'",
                              format);
    if (inline_data && file)
        return vimg_error_set(err, EINVAL, "'file' and 'data' are mutually exclusive");
    if (!inline_data && !file)
        return vimg_error_set(err, EINVAL, "Either 'file' or 'data' must be provided");
    if (file) {
        if ((ret = read_file(file, &raw, &raw_len, err)) < 0)
            return ret;
    } else {
        raw = strdup(inline_data);
        raw_len = strlen(inline_data);
        if (!raw)
            return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    if (format && strcmp(format, "base64") == 0) {
        ret = base64_decode(raw, data, len, err);
        free(raw);
        return ret;
    }
    *data = raw;
    *len = raw_len;
    return 0;
}

int
vimg_object_add(const char *spec, struct vimg_error *err)
{
    struct vimg_opts *o = vimg_opts_new();
    struct secret *s = NULL;
    const char *type, *id;
    char key[128];
    int ret;

    if (!o)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vimg_opts_parse(o, spec, "qom-type", err)) < 0)
        goto out;
    type = vimg_opts_get(o, "qom-type");
    id = vimg_opts_get(o, "id");
    if (!type) {
        ret = vimg_error_set(err, EINVAL, "Parameter 'qom-type' is missing");
        goto out;
    }
    if (strcmp(type, "tls-creds-x509") == 0 || strcmp(type, "tls-creds-psk") == 0) {
        ret = vimg_tls_creds_add(o, type, id, err);
        goto out;
    }
    if (strncmp(type, "authz-", 6) == 0) {
        ret = vimg_authz_add(o, type, id, err);
        goto out;
    }
    if (strcmp(type, "secret") != 0) {
        ret = vimg_error_set(err, EINVAL, "Parameter 'qom-type' does not accept value '%s'",
                             type);
        goto out;
    }
    if (!id) {
        ret = vimg_error_set(err, EINVAL, "Parameter 'id' is missing");
        goto out;
    }
    vimg_opts_get(o, "data");
    vimg_opts_get(o, "file");
    vimg_opts_get(o, "format");
    vimg_opts_get(o, "keyid");
    vimg_opts_get(o, "iv");
    if (vimg_opts_find_unused(o, key, sizeof(key))) {
        ret = vimg_error_set(err, EINVAL, "Parameter '%s' is unexpected", key);
        goto out;
    }
    if (!(s = calloc(1, sizeof(*s))) || !(s->id = strdup(id))) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    if ((ret = secret_load(o, &s->data, &s->len, err)) < 0)
        goto out;
    pthread_mutex_lock(&secrets_lock);
    for (struct secret *p = secrets; p; p = p->next) {
        if (strcmp(p->id, id) == 0) {
            pthread_mutex_unlock(&secrets_lock);
            ret = vimg_error_set(err, EEXIST, "attempt to add duplicate property '%s' to "
                                 "object (type 'container')", id);
            goto out;
        }
    }
    s->next = secrets;
    secrets = s;
    s = NULL;
    pthread_mutex_unlock(&secrets_lock);
out:
    if (s) {
        free(s->id);
        free(s->data);
        free(s);
    }
    vimg_opts_free(o);
    return ret;
}

int
vimg_secret_lookup(const char *id, char **data, size_t *len, struct vimg_error *err)
{
    int ret = vimg_error_set(err, ENOENT, "No secret with id '%s'", id);

    pthread_mutex_lock(&secrets_lock);
    for (struct secret *p = secrets; p; p = p->next) {
        if (strcmp(p->id, id) == 0) {
            *data = malloc(p->len + 1);
            if (!*data) {
                ret = vimg_error_set(err, ENOMEM, "Out of memory");
                break;
            }
            memcpy(*data, p->data, p->len + 1);
            *len = p->len;
            ret = 0;
            break;
        }
    }
    pthread_mutex_unlock(&secrets_lock);
    return ret;
}

void
vimg_objects_clear(void)
{
    vimg_tls_creds_clear();
    vimg_authz_clear();
    pthread_mutex_lock(&secrets_lock);
    while (secrets) {
        struct secret *next = secrets->next;
        free(secrets->id);
        free(secrets->data);
        free(secrets);
        secrets = next;
    }
    pthread_mutex_unlock(&secrets_lock);
}
