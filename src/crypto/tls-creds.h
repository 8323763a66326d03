/* The TLS credentials registry's entry points for --object (src/crypto/secret.c). */
#ifndef VIMG_CRYPTO_TLS_CREDS_H
#define VIMG_CRYPTO_TLS_CREDS_H

#include <vimg/error.h>
#include <vimg/opts.h>

/* Registers a tls-creds-x509 or tls-creds-psk object; o holds its remaining properties. */
int vimg_tls_creds_add(struct vimg_opts *o, const char *type, const char *id,
                       struct vimg_error *err);
void vimg_tls_creds_clear(void);
/* Registers an authz-simple or authz-list object (authz-listfile, authz-pam: refused). */
int vimg_authz_add(struct vimg_opts *o, const char *type, const char *id,
                   struct vimg_error *err);
void vimg_authz_clear(void);

/* A GnuTLS verification status (gnutls_certificate_status_t bits) in QEMU's words. */
const char *vimg_tls_status_reason(unsigned status);

#endif
