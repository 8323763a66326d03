/*
 * TLS for the NBD server (doc/proto.md "TLS support", "NBD_OPT_STARTTLS"):
 * the server's credentials from a tls-creds-x509 or tls-creds-psk object,
 * and one GnuTLS session per connection that replaces the plain socket
 * after NBD_OPT_STARTTLS. The connection's reader thread receives while
 * workers send under the send lock, the one mix of threads GnuTLS allows
 * on a session.
 * --tls-authz: with x509 peer verification on, the client certificate's
 * distinguished name (GnuTLS's gnutls_x509_crt_get_dn form, as QEMU checks
 * it) must pass the authz object, looked up per connection as qemu-nbd does.
 * Failures are "option negotiation failed: ..." as qemu-nbd reports them.
 * Leaves out: CRLs, DH parameter files (ECDHE needs none).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <vimg/object.h>

#include "config.h"
#include "nbd/internal.h"

#ifdef VIMG_HAVE_GNUTLS
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

/* QEMU's defaults: NORMAL, plus the PSK key exchanges for PSK credentials. */
#define NBD_TLS_PRIORITY_PSK    "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"

struct nbd_tls {
    struct vimg_tls_creds creds;
    char *authz;                    /* --tls-authz object id; NULL: none */
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk;
};

static int
nbd_tls_fail(struct vimg_error *err, int gnutls_ret, const char *what, const char *path)
{
    return vimg_error_set(err, EINVAL, "%s%s%s: %s", what, path ? " " : "", path ? path : "",
                          gnutls_strerror(gnutls_ret));
}

static int
nbd_tls_load_x509(struct nbd_tls *t, struct vimg_error *err)
{
    char ca[4096], cert[4096], key[4096];
    int r;

    snprintf(ca, sizeof(ca), "%s/ca-cert.pem", t->creds.dir);
    snprintf(cert, sizeof(cert), "%s/server-cert.pem", t->creds.dir);
    snprintf(key, sizeof(key), "%s/server-key.pem", t->creds.dir);
    if ((r = gnutls_certificate_allocate_credentials(&t->x509)) < 0)
        return nbd_tls_fail(err, r, "Cannot allocate credentials", NULL);
    if ((r = gnutls_certificate_set_x509_trust_file(t->x509, ca, GNUTLS_X509_FMT_PEM)) < 0)
        return nbd_tls_fail(err, r, "Cannot load CA certificate", ca);
    snprintf(cert, sizeof(cert), "%s/ca-crl.pem", t->creds.dir);   /* checked by tls-creds.c */
    if (access(cert, F_OK) == 0 &&
        (r = gnutls_certificate_set_x509_crl_file(t->x509, cert, GNUTLS_X509_FMT_PEM)) < 0)
        return nbd_tls_fail(err, r, "Cannot load CRL", cert);
    snprintf(cert, sizeof(cert), "%s/server-cert.pem", t->creds.dir);
    if ((r = gnutls_certificate_set_x509_key_file(t->x509, cert, key,
                                                  GNUTLS_X509_FMT_PEM)) < 0)
        return nbd_tls_fail(err, r, "Cannot load certificate", cert);
    return 0;
}

static int
nbd_tls_load_psk(struct nbd_tls *t, struct vimg_error *err)
{
    char path[4096];
    int r;

    snprintf(path, sizeof(path), "%s/keys.psk", t->creds.dir);
    if ((r = gnutls_psk_allocate_server_credentials(&t->psk)) < 0)
        return nbd_tls_fail(err, r, "Cannot allocate credentials", NULL);
    if ((r = gnutls_psk_set_server_credentials_file(t->psk, path)) < 0)
        return nbd_tls_fail(err, r, "Cannot set PSK credentials file", path);
    return 0;
}

int
nbd_tls_new(const char *creds_id, const char *authz_id, struct nbd_tls **out,
            struct vimg_error *err)
{
    struct nbd_tls *t = calloc(1, sizeof(*t));
    int ret;

    if (!t || (authz_id && !(t->authz = strdup(authz_id)))) {
        free(t);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    if ((ret = vimg_tls_creds_lookup(creds_id, &t->creds, err)) < 0) {
        vimg_error_prefix(err, "Failed to get TLS creds: ");
        goto fail;
    }
    if (!t->creds.is_server) {
        ret = vimg_error_set(err, EINVAL, "Expected TLS credentials for a server endpoint");
        goto fail;
    }
    ret = t->creds.type == VIMG_TLS_CREDS_PSK ? nbd_tls_load_psk(t, err)
                                               : nbd_tls_load_x509(t, err);
    if (ret < 0)
        goto fail;
    *out = t;
    return 0;
fail:
    nbd_tls_free(t);
    return ret;
}

void
nbd_tls_free(struct nbd_tls *t)
{
    if (!t)
        return;
    if (t->x509)
        gnutls_certificate_free_credentials(t->x509);
    if (t->psk)
        gnutls_psk_free_server_credentials(t->psk);
    vimg_tls_creds_release(&t->creds);
    free(t->authz);
    free(t);
}

static int
nbd_tls_setup_session(const struct nbd_tls *t, gnutls_session_t s, struct vimg_error *err)
{
    const char *prio = t->creds.priority;
    int r;

    if (t->creds.type == VIMG_TLS_CREDS_PSK) {
        r = gnutls_priority_set_direct(s, prio ? prio : NBD_TLS_PRIORITY_PSK, NULL);
        if (r == 0)
            r = gnutls_credentials_set(s, GNUTLS_CRD_PSK, t->psk);
    } else {
        r = prio ? gnutls_priority_set_direct(s, prio, NULL) : gnutls_set_default_priority(s);
        if (r == 0)
            r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, t->x509);
        if (r == 0 && t->creds.verify_peer)
            gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
    }
    if (r < 0)
        return nbd_tls_fail(err, r, "Cannot set up the TLS session", NULL);
    return 0;
}

/* --tls-authz: the distinguished name of the client's certificate must pass the object. */
static int
nbd_tls_authz(const struct nbd_tls *t, gnutls_session_t s, struct vimg_error *err)
{
    const gnutls_datum_t *certs;
    unsigned n = 0;
    gnutls_x509_crt_t crt;
    char dn[1024];
    size_t len = sizeof(dn);
    bool is_allowed = false;
    int r;

    if (!(certs = gnutls_certificate_get_peers(s, &n)) || n == 0)
        return vimg_error_set(err, EACCES, "No certificate peer");
    if ((r = gnutls_x509_crt_init(&crt)) < 0)
        return nbd_tls_fail(err, r, "Cannot initialize certificate", NULL);
    r = gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER);
    if (r == 0)
        r = gnutls_x509_crt_get_dn(crt, dn, &len);
    gnutls_x509_crt_deinit(crt);
    if (r < 0)
        return nbd_tls_fail(err, r, "Cannot read the client's certificate", NULL);
    if ((r = vimg_authz_is_allowed(t->authz, dn, &is_allowed, err)) < 0)
        return r;
    if (!is_allowed)
        return vimg_error_set(err, EACCES, "TLS x509 authz check for %s is denied", dn);
    return 0;
}

static int
nbd_tls_verify(const struct nbd_tls *t, gnutls_session_t s, struct vimg_error *err)
{
    unsigned status = 0;
    int r;

    if (t->creds.type == VIMG_TLS_CREDS_PSK || !t->creds.verify_peer)
        return 0;
    if ((r = gnutls_certificate_verify_peers2(s, &status)) < 0)
        return nbd_tls_fail(err, r, "Cannot verify the client's certificate", NULL);
    if (status & GNUTLS_CERT_REVOKED)
        return vimg_error_set(err, EACCES, "The certificate has been revoked");
    if (status)
        return vimg_error_set(err, EACCES, "The client's certificate is not trusted "
                              "(status 0x%x)", status);
    return t->authz ? nbd_tls_authz(t, s, err) : 0;
}

int
nbd_tls_start(struct nbd_conn *conn, struct vimg_error *err)
{
    const struct nbd_tls *t = conn->server->tls;
    gnutls_session_t s;
    int r, ret;

    if ((r = gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NO_SIGNAL)) < 0)
        return nbd_tls_fail(err, r, "Cannot start a TLS session", NULL);
    if ((ret = nbd_tls_setup_session(t, s, err)) < 0)
        goto fail;
    gnutls_transport_set_int(s, conn->fd);
    /* GNUTLS_E_AGAIN is the --handshake-limit timeout (SO_RCVTIMEO): not retried. */
    do {
        r = gnutls_handshake(s);
    } while (r == GNUTLS_E_INTERRUPTED);
    if (r < 0) {
        ret = nbd_tls_fail(err, r, "TLS handshake failed", NULL);
        goto fail;
    }
    if ((ret = nbd_tls_verify(t, s, err)) < 0)
        goto fail;
    conn->tls = s;
    return 0;
fail:
    gnutls_deinit(s);
    vimg_error_prefix(err, "option negotiation failed: ");
    return ret;
}

void
nbd_tls_end(struct nbd_conn *conn)
{
    if (!conn->tls)
        return;
    /* Best effort: the client may be gone already. */
    gnutls_bye(conn->tls, GNUTLS_SHUT_WR);
    gnutls_deinit(conn->tls);
    conn->tls = NULL;
}

ssize_t
nbd_tls_recv(struct nbd_conn *conn, void *buf, size_t len)
{
    ssize_t n;

    do {
        n = gnutls_record_recv(conn->tls, buf, len);
    } while (n == GNUTLS_E_INTERRUPTED);
    if (n == GNUTLS_E_PREMATURE_TERMINATION)
        return 0;
    if (n == GNUTLS_E_AGAIN)
        return -EAGAIN;     /* the receive timeout of --handshake-limit */
    return n < 0 ? -EIO : n;
}

ssize_t
nbd_tls_send(struct nbd_conn *conn, const void *buf, size_t len)
{
    ssize_t n;

    do {
        n = gnutls_record_send(conn->tls, buf, len);
    } while (n == GNUTLS_E_INTERRUPTED);
    return n < 0 ? -EIO : n;
}

#else

int
nbd_tls_new(const char *creds_id, const char *authz_id, struct nbd_tls **out,
            struct vimg_error *err)
{
    (void)out, (void)authz_id;
    return vimg_error_set(err, ENOTSUP, "tls-creds '%s': vimg was built without GnuTLS",
                          creds_id);
}

void
nbd_tls_free(struct nbd_tls *t)
{
    (void)t;
}

int
nbd_tls_start(struct nbd_conn *conn, struct vimg_error *err)
{
    (void)conn;
    return vimg_error_set(err, ENOTSUP, "vimg was built without GnuTLS");
}

void
nbd_tls_end(struct nbd_conn *conn)
{
    (void)conn;
}

ssize_t
nbd_tls_recv(struct nbd_conn *conn, void *buf, size_t len)
{
    (void)conn, (void)buf, (void)len;
    return -ENOTSUP;
}

ssize_t
nbd_tls_send(struct nbd_conn *conn, const void *buf, size_t len)
{
    (void)conn, (void)buf, (void)len;
    return -ENOTSUP;
}

#endif
