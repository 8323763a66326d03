/*
 * User-creatable objects (--object): secrets now, TLS credentials later.
 * A process-wide registry with its own lock.
 */
#ifndef VIMG_OBJECT_H
#define VIMG_OBJECT_H

#include <stdbool.h>
#include <stddef.h>

#include <vimg/error.h>

/* Parses "secret,id=ID,data=...|file=...[,format=raw|base64]" and registers it. */
int vimg_object_add(const char *spec, struct vimg_error *err);
/* The secret's bytes (malloc'd, NUL-terminated) and their length. */
int vimg_secret_lookup(const char *id, char **data, size_t *len, struct vimg_error *err);
void vimg_objects_clear(void);

/* --object tls-creds-x509,id=ID,dir=DIR,endpoint=client|server[,verify-peer=on|off]
 * and tls-creds-psk,id=ID,dir=DIR,endpoint=...[,username=NAME] */
enum vimg_tls_creds_type {
    VIMG_TLS_CREDS_X509,
    VIMG_TLS_CREDS_PSK,
};

struct vimg_tls_creds {
    enum vimg_tls_creds_type type;
    bool is_server;             /* endpoint=server */
    bool verify_peer;           /* x509: demand and check the peer's certificate */
    char *dir;
    char *username;             /* psk client identity; NULL: "qemu" */
    char *priority;             /* GnuTLS priority string; NULL: the default */
};

/* Copies the credentials registered as id; release them with vimg_tls_creds_release. */
int vimg_tls_creds_lookup(const char *id, struct vimg_tls_creds *out, struct vimg_error *err);
void vimg_tls_creds_release(struct vimg_tls_creds *creds);

/* --object authz-simple,id=ID,identity=NAME and authz-list,id=ID[,policy=allow|deny]
 * [,rules.N.match=M,rules.N.policy=allow|deny[,rules.N.format=exact|glob]]:
 * *is_allowed says whether identity passes object id; ENOENT when there is none. */
int vimg_authz_is_allowed(const char *id, const char *identity, bool *is_allowed,
                          struct vimg_error *err);

#endif
