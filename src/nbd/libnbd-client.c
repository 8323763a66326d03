/*
 * Helpers for libnbd client handles (see libnbd-client.h).
 *
 * x509 TLS is done here, not by libnbd: libnbd 1.14 checks the server's
 * certificate against no name on a socket it is handed, and has no way to
 * override the name (tls-hostname). So, in the order qemu-img 7.2 is seen to
 * check: NBD_OPT_STARTTLS (client.c), the GnuTLS handshake,
 * the CA check, then the certificate against tls-hostname, or the host of a
 * TCP address; over a unix socket without tls-hostname there is no name, and
 * that fails. Messages are qemu-img's. The TLS session then carries the
 * rest of the negotiation and transmission for libnbd, which talks plain NBD
 * on one end of a socket pair, after a greeting made up here. Two threads
 * relay, one per direction, the mix GnuTLS allows on one session.
 * PSK credentials, and builds without GnuTLS, leave TLS to libnbd.
 * Leaves out: CRLs (ca-crl.pem), as qemu-img 7.2 does: a client ignores it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "nbd/internal.h"
#include "nbd/libnbd-client.h"
#include "crypto/tls-creds.h"

#ifdef VIMG_HAVE_GNUTLS
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#endif

int
vimg_nbd_client_set_tls(struct nbd_handle *h, const struct vimg_tls_creds *c)
{
    char path[4096];

    if (nbd_set_tls(h, LIBNBD_TLS_REQUIRE) < 0)
        return -1;
    if (c->type == VIMG_TLS_CREDS_PSK) {
        snprintf(path, sizeof(path), "%s/keys.psk", c->dir);
        return nbd_set_tls_psk_file(h, path) < 0 ||
               nbd_set_tls_username(h, c->username ? c->username : "qemu") < 0 ? -1 : 0;
    }
    return nbd_set_tls_certificates(h, c->dir) < 0 ||
           nbd_set_tls_verify_peer(h, c->verify_peer) < 0 ? -1 : 0;
}

int
vimg_nbd_client_debug_capture(void *user_data, const char *context, const char *msg)
{
    static const char key[] = "server error message: ";
    char *saved = user_data;
    const char *p = strstr(msg, key);

    (void)context;
    if (p)
        snprintf(saved, VIMG_ERROR_MSG_MAX, "%s", p + strlen(key));
    return 0;
}

/* libnbd's own TLS, or none: libnbd owns fd from here on. */
static int
client_connect_plain(struct nbd_handle *h, int fd, const struct vimg_tls_creds *tls)
{
    if (tls && vimg_nbd_client_set_tls(h, tls) < 0) {
        close(fd);
        return 1;
    }
    return nbd_connect_socket(h, fd) < 0 ? 1 : 0;
}

#ifdef VIMG_HAVE_GNUTLS

#define RELAY_BUF_SIZE  (64u << 10)

struct vimg_nbd_relay {
    int net_fd;                 /* the server; the TLS session runs on it */
    int local_fd;               /* our end of the socket pair, libnbd has the other */
    gnutls_session_t session;
    gnutls_certificate_credentials_t x509;
    bool has_threads;
    pthread_t up, down;         /* libnbd to server, server to libnbd */
    _Atomic int recv_errno;     /* why down stopped, if not at a clean end; set before
                                 * libnbd sees the end, so libnbd's failure can tell it */
};

static int
relay_fail(struct vimg_error *err, int gnutls_ret, const char *what)
{
    return vimg_error_set(err, EIO, "%s: %s", what, gnutls_strerror(gnutls_ret));
}

/* The client's credentials from dir: the CA, and a certificate of our own if there is one. */
static int
relay_load_x509(struct vimg_nbd_relay *r, const struct vimg_tls_creds *c, struct vimg_error *err)
{
    char ca[4096], cert[4096], key[4096];
    int g;

    snprintf(ca, sizeof(ca), "%s/ca-cert.pem", c->dir);
    snprintf(cert, sizeof(cert), "%s/client-cert.pem", c->dir);
    snprintf(key, sizeof(key), "%s/client-key.pem", c->dir);
    if ((g = gnutls_certificate_allocate_credentials(&r->x509)) < 0)
        return relay_fail(err, g, "Cannot allocate credentials");
    if ((g = gnutls_certificate_set_x509_trust_file(r->x509, ca, GNUTLS_X509_FMT_PEM)) < 0)
        return relay_fail(err, g, "Cannot load CA certificate");
    if (access(cert, R_OK) == 0 && access(key, R_OK) == 0 &&
        (g = gnutls_certificate_set_x509_key_file(r->x509, cert, key,
                                                  GNUTLS_X509_FMT_PEM)) < 0)
        return relay_fail(err, g, "Cannot load certificate");
    return 0;
}

static int
relay_handshake(struct vimg_nbd_relay *r, const struct vimg_tls_creds *c, struct vimg_error *err)
{
    int g;

    if ((g = gnutls_init(&r->session, GNUTLS_CLIENT | GNUTLS_NO_SIGNAL)) < 0) {
        r->session = NULL;
        return relay_fail(err, g, "Cannot start a TLS session");
    }
    g = c->priority ? gnutls_priority_set_direct(r->session, c->priority, NULL)
                    : gnutls_set_default_priority(r->session);
    if (g == 0)
        g = gnutls_credentials_set(r->session, GNUTLS_CRD_CERTIFICATE, r->x509);
    if (g < 0)
        return relay_fail(err, g, "Cannot set up the TLS session");
    gnutls_transport_set_int(r->session, r->net_fd);
    do {
        g = gnutls_handshake(r->session);
    } while (g == GNUTLS_E_INTERRUPTED || g == GNUTLS_E_AGAIN);
    return g < 0 ? relay_fail(err, g, "TLS handshake failed") : 0;
}

/* The chain's verdict, in qemu-img's words; the later checks name the likelier cause. */
static int
relay_check_status(unsigned status, struct vimg_error *err)
{
    if (status == 0)
        return 0;
    return vimg_error_set(err, EACCES, "%s", vimg_tls_status_reason(status));
}

static int
relay_verify(struct vimg_nbd_relay *r, const char *hostname, struct vimg_error *err)
{
    const gnutls_datum_t *certs;
    unsigned status = 0, n = 0;
    gnutls_x509_crt_t crt;
    int g, ret;

    if ((g = gnutls_certificate_verify_peers2(r->session, &status)) < 0)
        return relay_fail(err, g, "Verify failed");
    if ((ret = relay_check_status(status, err)) < 0)
        return ret;
    if (!(certs = gnutls_certificate_get_peers(r->session, &n)) || n == 0)
        return vimg_error_set(err, EACCES, "No certificate peer");
    if (!hostname)
        return vimg_error_set(err, EACCES, "No hostname for certificate validation");
    if ((g = gnutls_x509_crt_init(&crt)) < 0)
        return relay_fail(err, g, "Cannot initialize certificate");
    g = gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER);
    ret = g < 0 ? relay_fail(err, g, "Cannot import certificate") : 0;
    if (ret == 0 && !gnutls_x509_crt_check_hostname(crt, hostname))
        ret = vimg_error_set(err, EACCES, "Certificate does not match the hostname %s",
                             hostname);
    gnutls_x509_crt_deinit(crt);
    return ret;
}

static int
relay_send_local(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int
relay_recv_local(int fd, char *buf, size_t len)
{
    ssize_t n;

    do {
        n = recv(fd, buf, len, 0);
    } while (n < 0 && errno == EINTR);
    return (int)n;
}

/* libnbd to the server, less libnbd's client flags: the server had ours already. */
static void *
relay_up(void *opaque)
{
    struct vimg_nbd_relay *r = opaque;
    char *buf = malloc(RELAY_BUF_SIZE);
    size_t skip = 4;
    int n;

    while (buf && (n = relay_recv_local(r->local_fd, buf, RELAY_BUF_SIZE)) > 0) {
        size_t done = skip < (size_t)n ? skip : (size_t)n;
        skip -= done;
        while (done < (size_t)n) {
            ssize_t m = gnutls_record_send(r->session, buf + done, (size_t)n - done);
            if (m == GNUTLS_E_INTERRUPTED || m == GNUTLS_E_AGAIN)
                continue;
            if (m < 0)
                goto out;
            done += (size_t)m;
        }
    }
    gnutls_bye(r->session, GNUTLS_SHUT_WR);
out:
    shutdown(r->net_fd, SHUT_WR);
    free(buf);
    return NULL;
}

static void *
relay_down(void *opaque)
{
    struct vimg_nbd_relay *r = opaque;
    char *buf = malloc(RELAY_BUF_SIZE);
    ssize_t n;

    while (buf) {
        n = gnutls_record_recv(r->session, buf, RELAY_BUF_SIZE);
        if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN)
            continue;
        if (n < 0)      /* qemu-img's errno for it: a cut connection, or any other */
            r->recv_errno = n == GNUTLS_E_PREMATURE_TERMINATION ? ECONNABORTED : EIO;
        if (n <= 0 || relay_send_local(r->local_fd, buf, (size_t)n) < 0)
            break;
    }
    shutdown(r->local_fd, SHUT_WR);     /* libnbd sees the server's end */
    free(buf);
    return NULL;
}

int
vimg_nbd_relay_recv_errno(const struct vimg_nbd_relay *r)
{
    return r ? r->recv_errno : 0;
}

void
vimg_nbd_relay_free(struct vimg_nbd_relay *r)
{
    if (!r)
        return;
    if (r->has_threads) {
        /* libnbd has closed its end: up forwards what was left and stops; down is
         * woken from a server that may not close. */
        pthread_join(r->up, NULL);
        shutdown(r->net_fd, SHUT_RD);
        pthread_join(r->down, NULL);
    }
    if (r->session)
        gnutls_deinit(r->session);
    if (r->x509)
        gnutls_certificate_free_credentials(r->x509);
    if (r->local_fd >= 0)
        close(r->local_fd);
    if (r->net_fd >= 0)
        close(r->net_fd);
    free(r);
}

/* The greeting libnbd gets: the server's, with the flags that give its answer ours. */
static int
relay_start(struct vimg_nbd_relay *r, uint32_t client_flags, int *libnbd_fd,
            struct vimg_error *err)
{
    uint8_t hello[18];
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return vimg_error_set(err, errno, "Failed to create socket pair: %s", strerror(errno));
    r->local_fd = sv[0];
    memcpy(hello, "NBDMAGIC", 8);
    nbd_put_be64(hello + 8, NBD_OPTS_MAGIC);
    nbd_put_be16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE |
                 (client_flags & NBD_FLAG_C_NO_ZEROES ? NBD_FLAG_NO_ZEROES : 0));
    /* 18 bytes fit in an empty socket buffer: this does not block. */
    if (relay_send_local(sv[0], (const char *)hello, sizeof(hello)) < 0) {
        close(sv[1]);
        return vimg_error_set(err, errno, "Failed to write to socket pair: %s",
                              strerror(errno));
    }
    if (pthread_create(&r->up, NULL, relay_up, r) != 0) {
        close(sv[1]);
        return vimg_error_set(err, EAGAIN, "Failed to start the TLS relay");
    }
    if (pthread_create(&r->down, NULL, relay_down, r) != 0) {
        close(sv[1]);
        pthread_join(r->up, NULL);
        return vimg_error_set(err, EAGAIN, "Failed to start the TLS relay");
    }
    r->has_threads = true;
    *libnbd_fd = sv[1];
    return 0;
}

static int
client_connect_x509(struct nbd_handle *h, int fd, const struct vimg_tls_creds *tls,
                    const char *hostname, struct vimg_nbd_relay **relay,
                    struct vimg_error *err)
{
    struct vimg_nbd_relay *r = calloc(1, sizeof(*r));
    uint32_t client_flags;
    int libnbd_fd = -1, ret;

    if (!r) {
        close(fd);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    r->net_fd = fd;
    r->local_fd = -1;
    if ((ret = nbd_client_starttls(fd, &client_flags, err)) < 0 ||
        (ret = relay_load_x509(r, tls, err)) < 0 ||
        (ret = relay_handshake(r, tls, err)) < 0 ||
        (tls->verify_peer && (ret = relay_verify(r, hostname, err)) < 0) ||
        (ret = relay_start(r, client_flags, &libnbd_fd, err)) < 0) {
        vimg_nbd_relay_free(r);
        return ret;
    }
    *relay = r;
    return nbd_connect_socket(h, libnbd_fd) < 0 ? 1 : 0;
}

int
vimg_nbd_client_connect(struct nbd_handle *h, int fd, const struct vimg_tls_creds *tls,
                        const char *hostname, struct vimg_nbd_relay **relay,
                        struct vimg_error *err)
{
    *relay = NULL;
    if (tls && tls->type == VIMG_TLS_CREDS_X509)
        return client_connect_x509(h, fd, tls, hostname, relay, err);
    return client_connect_plain(h, fd, tls);
}

#else

int
vimg_nbd_relay_recv_errno(const struct vimg_nbd_relay *r)
{
    (void)r;
    return 0;
}

void
vimg_nbd_relay_free(struct vimg_nbd_relay *r)
{
    (void)r;
}

int
vimg_nbd_client_connect(struct nbd_handle *h, int fd, const struct vimg_tls_creds *tls,
                        const char *hostname, struct vimg_nbd_relay **relay,
                        struct vimg_error *err)
{
    (void)hostname, (void)err;
    *relay = NULL;
    return client_connect_plain(h, fd, tls);
}

#endif
