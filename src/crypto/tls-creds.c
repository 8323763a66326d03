/*
 * The TLS credentials registry behind --object tls-creds-x509,... and
 * --object tls-creds-psk,...: a directory of PEM files (QEMU's names:
 * ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
 * client-key.pem) or a PSK key file (keys.psk, "username:hexkey" lines),
 * an endpoint and peer verification. The files are checked when the object
 * is created, as QEMU loads them then; GnuTLS reads them when a session
 * starts (src/nbd/tls.c, the nbd client's libnbd).
 * x509 with sanity-check=on (the default) also checks the certificates
 * then, in the order and words qemu-nbd/qemu-img 7.2 are seen to use: our
 * own certificate (server-cert.pem, or client-cert.pem if there is one)
 * for its dates, for not being a CA, for a critical key usage without
 * digital signature and a critical purpose without TLS server/client; each
 * CA certificate for its dates, for being a CA and for a critical key usage
 * without certificate signing; then our own certificate against the CAs
 * (not against ca-crl.pem: qemu-nbd serves a certificate its own CRL
 * revokes). Non-critical usage and purpose pass. The peer's certificate is
 * checked against ca-crl.pem by the nbd client (src/nbd/libnbd-client.c).
 * Leaves out: tls-creds-anon, passwordid, DH parameters.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vimg/object.h>
#include <vimg/opts.h>

#include "config.h"
#include "crypto/tls-creds.h"

#ifdef VIMG_HAVE_GNUTLS
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#endif

struct tls_creds_entry {
    char *id;
    struct vimg_tls_creds creds;
    struct tls_creds_entry *next;
};

static pthread_mutex_t tls_creds_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tls_creds_entry *tls_creds_list;     /* protected by tls_creds_lock */

static int
tls_creds_check_file(const char *dir, const char *name, struct vimg_error *err)
{
    char path[4096];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (access(path, R_OK) < 0)
        return vimg_error_set(err, errno, "Unable to access credentials %s: %s", path,
                              strerror(errno));
    return 0;
}

/* The files QEMU insists on when it loads the credentials. */
static int
tls_creds_check_files(const struct vimg_tls_creds *c, struct vimg_error *err)
{
    int ret;

    if (c->type == VIMG_TLS_CREDS_PSK)
        return tls_creds_check_file(c->dir, "keys.psk", err);
    if ((ret = tls_creds_check_file(c->dir, "ca-cert.pem", err)) < 0)
        return ret;
    if (!c->is_server)
        return 0;
    if ((ret = tls_creds_check_file(c->dir, "server-cert.pem", err)) < 0)
        return ret;
    return tls_creds_check_file(c->dir, "server-key.pem", err);
}

#ifdef VIMG_HAVE_GNUTLS
struct tls_certs {
    gnutls_x509_crt_t *crts;
    unsigned n;
};

static void
tls_certs_free(struct tls_certs *l)
{
    for (unsigned i = 0; i < l->n; i++)
        gnutls_x509_crt_deinit(l->crts[i]);
    gnutls_free(l->crts);
    l->crts = NULL;
    l->n = 0;
}

/* Our own certificate (the file's first), in QEMU's words: "Unable to import WHO certificate". */
static int
tls_certs_load_own(const char *path, const char *who, struct tls_certs *l,
                   struct vimg_error *err)
{
    gnutls_datum_t data = { NULL, 0 };
    int g;

    if ((g = gnutls_load_file(path, &data)) < 0)
        return vimg_error_set(err, EIO, "Cannot load %s certificate %s: %s", who, path,
                              gnutls_strerror(g));
    if (!(l->crts = gnutls_malloc(sizeof(*l->crts)))) {
        gnutls_free(data.data);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    if ((g = gnutls_x509_crt_init(&l->crts[0])) == 0) {
        l->n = 1;
        g = gnutls_x509_crt_import(l->crts[0], &data, GNUTLS_X509_FMT_PEM);
    }
    gnutls_free(data.data);
    if (g < 0)
        return vimg_error_set(err, EINVAL, "Unable to import %s certificate %s: %s", who, path,
                              gnutls_strerror(g));
    return 0;
}

static int
tls_certs_load_cas(const char *path, struct tls_certs *l, struct vimg_error *err)
{
    gnutls_datum_t data = { NULL, 0 };
    int g;

    if ((g = gnutls_load_file(path, &data)) < 0)
        return vimg_error_set(err, EIO, "Cannot load CA certificate %s: %s", path,
                              gnutls_strerror(g));
    g = gnutls_x509_crt_list_import2(&l->crts, &l->n, &data, GNUTLS_X509_FMT_PEM, 0);
    gnutls_free(data.data);
    if (g < 0 || l->n == 0) {
        if (g >= 0)
            gnutls_free(l->crts);
        l->crts = NULL;
        l->n = 0;
        return vimg_error_set(err, EINVAL, "Unable to import CA certificate list %s", path);
    }
    return 0;
}

static int
tls_check_times(gnutls_x509_crt_t crt, const char *what, const char *path,
                struct vimg_error *err)
{
    time_t now = time(NULL);

    if (gnutls_x509_crt_get_expiration_time(crt) < now)
        return vimg_error_set(err, EACCES, "The %s certificate %s has expired", what, path);
    if (gnutls_x509_crt_get_activation_time(crt) > now)
        return vimg_error_set(err, EACCES, "The %s certificate %s is not yet active", what,
                              path);
    return 0;
}

/* Our own certificate: dates, not a CA, critical usage and purpose. */
static int
tls_check_own(gnutls_x509_crt_t crt, bool is_server, const char *path, struct vimg_error *err)
{
    const char *role = is_server ? "server" : "client";
    const char *want = is_server ? GNUTLS_KP_TLS_WWW_SERVER : GNUTLS_KP_TLS_WWW_CLIENT;
    unsigned critical = 0, usage = 0;
    bool has_purpose = false, is_allowed = false, is_critical = false;
    int ret;

    if ((ret = tls_check_times(crt, role, path, err)) < 0)
        return ret;
    if (gnutls_x509_crt_get_basic_constraints(crt, &critical, NULL, NULL) > 0)
        return vimg_error_set(err, EACCES, "The certificate %s basic constraints show a CA, "
                              "but we need one for a %s", path, role);
    if (gnutls_x509_crt_get_key_usage(crt, &usage, &critical) >= 0 && critical &&
        !(usage & GNUTLS_KEY_DIGITAL_SIGNATURE))
        return vimg_error_set(err, EACCES, "Certificate %s usage does not permit digital "
                              "signature", path);
    for (unsigned i = 0;; i++) {
        char oid[256];
        size_t len = sizeof(oid);
        critical = 0;
        if (gnutls_x509_crt_get_key_purpose_oid(crt, i, oid, &len, &critical) < 0)
            break;
        has_purpose = true;
        is_critical |= critical != 0;
        is_allowed |= strcmp(oid, want) == 0 || strcmp(oid, GNUTLS_KP_ANY) == 0;
    }
    if (has_purpose && is_critical && !is_allowed)
        return vimg_error_set(err, EACCES, "Certificate %s purpose does not allow use with a "
                              "TLS %s", path, role);
    return 0;
}

static int
tls_check_ca(gnutls_x509_crt_t crt, const char *path, struct vimg_error *err)
{
    unsigned critical = 0, usage = 0;
    int ret;

    if ((ret = tls_check_times(crt, "CA", path, err)) < 0)
        return ret;
    if (gnutls_x509_crt_get_basic_constraints(crt, &critical, NULL, NULL) == 0)
        return vimg_error_set(err, EACCES, "The certificate %s basic constraints do not "
                              "show a CA", path);
    if (gnutls_x509_crt_get_key_usage(crt, &usage, &critical) >= 0 && critical &&
        !(usage & GNUTLS_KEY_KEY_CERT_SIGN))
        return vimg_error_set(err, EACCES, "Certificate %s usage does not permit "
                              "certificate signing", path);
    return 0;
}

const char *
vimg_tls_status_reason(unsigned status)
{
    const char *why = "Invalid certificate";

    if (status & GNUTLS_CERT_INVALID)
        why = "The certificate is not trusted";
    if (status & GNUTLS_CERT_SIGNER_NOT_FOUND)
        why = "The certificate hasn't got a known issuer";
    if (status & GNUTLS_CERT_REVOKED)
        why = "The certificate has been revoked";
    if (status & GNUTLS_CERT_INSECURE_ALGORITHM)
        why = "The certificate uses an insecure algorithm";
    return why;
}

static int
tls_check_chain(gnutls_x509_crt_t crt, const struct tls_certs *cas, const char *path,
                const char *ca_path, struct vimg_error *err)
{
    unsigned status = 0;
    int g;

    g = gnutls_x509_crt_list_verify(&crt, 1, cas->crts, cas->n, NULL, 0, 0, &status);
    if (g < 0)
        return vimg_error_set(err, EACCES, "Unable to verify certificate %s against %s: %s",
                              path, ca_path, gnutls_strerror(g));
    if (status)
        return vimg_error_set(err, EACCES, "Our own certificate %s failed validation "
                              "against %s: %s", path, ca_path, vimg_tls_status_reason(status));
    return 0;
}

/* A server's ca-crl.pem must load when the object is created (a client's loads on connect). */
static int
tls_creds_check_crl(const struct vimg_tls_creds *c, struct vimg_error *err)
{
    gnutls_certificate_credentials_t x509;
    char path[4096];
    int g, ret = 0;

    snprintf(path, sizeof(path), "%s/ca-crl.pem", c->dir);
    if (!c->is_server || access(path, F_OK) < 0)
        return 0;
    if ((g = gnutls_certificate_allocate_credentials(&x509)) < 0)
        return vimg_error_set(err, ENOMEM, "Cannot allocate credentials: %s",
                              gnutls_strerror(g));
    if ((g = gnutls_certificate_set_x509_crl_file(x509, path, GNUTLS_X509_FMT_PEM)) < 0)
        ret = vimg_error_set(err, EINVAL, "Cannot load CRL '%s': %s", path, gnutls_strerror(g));
    gnutls_certificate_free_credentials(x509);
    return ret;
}

/* sanity-check=on: QEMU's checks of the x509 files when the object is created. */
static int
tls_creds_sanity_check(const struct vimg_tls_creds *c, struct vimg_error *err)
{
    struct tls_certs own = { NULL, 0 }, cas = { NULL, 0 };
    char ca_path[4096], path[4096], key[4096];
    const char *who = c->is_server ? "server" : "client";
    int ret;

    snprintf(ca_path, sizeof(ca_path), "%s/ca-cert.pem", c->dir);
    snprintf(path, sizeof(path), "%s/%s-cert.pem", c->dir, who);
    snprintf(key, sizeof(key), "%s/%s-key.pem", c->dir, who);
    if (!c->is_server && (access(path, R_OK) < 0 || access(key, R_OK) < 0))
        path[0] = '\0';
    if (path[0] && (ret = tls_certs_load_own(path, who, &own, err)) < 0)
        goto out;
    if ((ret = tls_certs_load_cas(ca_path, &cas, err)) < 0)
        goto out;
    if (own.n > 0 && (ret = tls_check_own(own.crts[0], c->is_server, path, err)) < 0)
        goto out;
    for (unsigned i = 0; i < cas.n; i++)
        if ((ret = tls_check_ca(cas.crts[i], ca_path, err)) < 0)
            goto out;
    if (own.n > 0)
        ret = tls_check_chain(own.crts[0], &cas, path, ca_path, err);
out:
    tls_certs_free(&own);
    tls_certs_free(&cas);
    return ret;
}
#endif

static int
tls_creds_parse(struct vimg_opts *o, const char *type, struct vimg_tls_creds *c,
                struct vimg_error *err)
{
    static const char *const endpoints[] = { "client", "server", NULL };
    const char *dir, *user, *prio;
    bool is_sane_check = true;
    int endpoint;
    char key[128];
    int ret;

    c->type = strcmp(type, "tls-creds-psk") == 0 ? VIMG_TLS_CREDS_PSK : VIMG_TLS_CREDS_X509;
    if (vimg_opts_get_enum(o, "endpoint", endpoints, 0, &endpoint, NULL) < 0)
        return vimg_error_set(err, EINVAL, "Parameter 'endpoint' does not accept value '%s'",
                              vimg_opts_get(o, "endpoint"));
    if ((ret = vimg_opts_get_bool(o, "verify-peer", true, &c->verify_peer, err)) < 0)
        return ret;
    if (c->type == VIMG_TLS_CREDS_X509 &&
        (ret = vimg_opts_get_bool(o, "sanity-check", true, &is_sane_check, err)) < 0)
        return ret;
    c->is_server = endpoint == 1;
    dir = vimg_opts_get(o, "dir");
    user = c->type == VIMG_TLS_CREDS_PSK ? vimg_opts_get(o, "username") : NULL;
    prio = vimg_opts_get(o, "priority");
    if (vimg_opts_find_unused(o, key, sizeof(key)))
        return vimg_error_set(err, EINVAL, "Parameter '%s' is unexpected", key);
    if (!dir)
        return vimg_error_set(err, EINVAL, "Missing 'dir' property value");
    c->dir = strdup(dir);
    c->username = user ? strdup(user) : NULL;
    c->priority = prio ? strdup(prio) : NULL;
    if (!c->dir || (user && !c->username) || (prio && !c->priority))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = tls_creds_check_files(c, err)) < 0)
        return ret;
#ifdef VIMG_HAVE_GNUTLS
    if (c->type == VIMG_TLS_CREDS_X509 && is_sane_check &&
        (ret = tls_creds_sanity_check(c, err)) < 0)
        return ret;
    if (c->type == VIMG_TLS_CREDS_X509)
        return tls_creds_check_crl(c, err);
#endif
    return 0;
}

int
vimg_tls_creds_add(struct vimg_opts *o, const char *type, const char *id,
                   struct vimg_error *err)
{
    struct tls_creds_entry *e;
    int ret;

    if (!id)
        return vimg_error_set(err, EINVAL, "Parameter 'id' is missing");
    e = calloc(1, sizeof(*e));
    if (!e || !(e->id = strdup(id))) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto fail;
    }
    if ((ret = tls_creds_parse(o, type, &e->creds, err)) < 0)
        goto fail;
    pthread_mutex_lock(&tls_creds_lock);
    for (struct tls_creds_entry *p = tls_creds_list; p; p = p->next) {
        if (strcmp(p->id, id) == 0) {
            pthread_mutex_unlock(&tls_creds_lock);
            ret = vimg_error_set(err, EEXIST, "attempt to add duplicate property '%s' to "
                                 "object (type 'container')", id);
            goto fail;
        }
    }
    e->next = tls_creds_list;
    tls_creds_list = e;
    pthread_mutex_unlock(&tls_creds_lock);
    return 0;
fail:
    if (e) {
        vimg_tls_creds_release(&e->creds);
        free(e->id);
        free(e);
    }
    return ret;
}

static char *
tls_creds_dup(const char *s, bool *is_oom)
{
    char *d = s ? strdup(s) : NULL;

    *is_oom |= s && !d;
    return d;
}

int
vimg_tls_creds_lookup(const char *id, struct vimg_tls_creds *out, struct vimg_error *err)
{
    int ret = vimg_error_set(err, ENOENT, "No TLS credentials with id '%s'", id);
    bool is_oom = false;

    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&tls_creds_lock);
    for (struct tls_creds_entry *p = tls_creds_list; p; p = p->next) {
        if (strcmp(p->id, id) != 0)
            continue;
        *out = p->creds;
        out->dir = tls_creds_dup(p->creds.dir, &is_oom);
        out->username = tls_creds_dup(p->creds.username, &is_oom);
        out->priority = tls_creds_dup(p->creds.priority, &is_oom);
        ret = 0;
        break;
    }
    pthread_mutex_unlock(&tls_creds_lock);
    if (is_oom) {
        vimg_tls_creds_release(out);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    if (ret == 0 && err)
        memset(err, 0, sizeof(*err));
    return ret;
}

void
vimg_tls_creds_release(struct vimg_tls_creds *c)
{
    free(c->dir);
    free(c->username);
    free(c->priority);
    c->dir = c->username = c->priority = NULL;
}

void
vimg_tls_creds_clear(void)
{
    pthread_mutex_lock(&tls_creds_lock);
    while (tls_creds_list) {
        struct tls_creds_entry *next = tls_creds_list->next;
        vimg_tls_creds_release(&tls_creds_list->creds);
        free(tls_creds_list->id);
        free(tls_creds_list);
        tls_creds_list = next;
    }
    pthread_mutex_unlock(&tls_creds_lock);
}

/*
 * Authorization objects for --tls-authz (QEMU's authz-simple and authz-list):
 * an x509 client is let in when its certificate's distinguished name, as
 * GnuTLS writes it ("C=GB,O=Acme,CN=client"), passes the object. authz-list
 * tries its rules in order (format=exact: equal; glob: '*' and '?'
 * wildcards) and the first match decides; no match: the list's policy
 * (default deny). authz-listfile and authz-pam are refused as qemu-nbd 7.2
 * refuses them ("invalid object type").
 */
struct authz_rule {
    char *match;
    bool is_allow;
    bool is_glob;
};

struct authz_entry {
    char *id;
    bool is_allow;              /* authz-list: the policy when no rule matches */
    size_t n_rules;
    struct authz_rule *rules;   /* authz-simple: one exact allow rule */
    struct authz_entry *next;
};

static struct authz_entry *authz_list;     /* protected by tls_creds_lock */

static void
authz_entry_free(struct authz_entry *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->n_rules; i++)
        free(e->rules[i].match);
    free(e->rules);
    free(e->id);
    free(e);
}

static int
authz_policy(struct vimg_opts *o, const char *path, bool *is_allow, struct vimg_error *err)
{
    static const char *const policies[] = { "deny", "allow", NULL };
    int v;

    if (vimg_opts_get_enum(o, path, policies, 0, &v, NULL) < 0)
        return vimg_error_set(err, EINVAL, "Parameter 'policy' does not accept value '%s'",
                              vimg_opts_get(o, path));
    *is_allow = v == 1;
    return 0;
}

static int
authz_parse_rules(struct vimg_opts *o, struct authz_entry *e, struct vimg_error *err)
{
    static const char *const formats[] = { "exact", "glob", NULL };
    struct vimg_opts *rules;
    char path[64];
    int ret, v;

    if (!vimg_opts_has(o, "rules"))
        return 0;
    if (!(rules = vimg_opts_get_dict(o, "rules")))
        return vimg_error_set(err, EINVAL, "Invalid parameter type for 'rules', expected: "
                              "array");
    e->n_rules = vimg_opts_count(rules);
    if (!(e->rules = calloc(e->n_rules ? e->n_rules : 1, sizeof(*e->rules))))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (size_t i = 0; i < e->n_rules; i++) {
        struct authz_rule *r = &e->rules[i];
        const char *match;
        snprintf(path, sizeof(path), "%zu", i);
        if (!vimg_opts_has(rules, path))
            return vimg_error_set(err, EINVAL, "Parameter 'rules.%zu' missing", i);
        snprintf(path, sizeof(path), "rules.%zu.match", i);
        if (!(match = vimg_opts_get(o, path)))
            return vimg_error_set(err, EINVAL, "Parameter '%s' is missing", path);
        if (!(r->match = strdup(match)))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        snprintf(path, sizeof(path), "rules.%zu.policy", i);
        if (!vimg_opts_has(o, path))
            return vimg_error_set(err, EINVAL, "Parameter '%s' is missing", path);
        if ((ret = authz_policy(o, path, &r->is_allow, err)) < 0)
            return ret;
        snprintf(path, sizeof(path), "rules.%zu.format", i);
        if (vimg_opts_get_enum(o, path, formats, 0, &v, NULL) < 0)
            return vimg_error_set(err, EINVAL, "Parameter 'format' does not accept value "
                                  "'%s'", vimg_opts_get(o, path));
        r->is_glob = v == 1;
        snprintf(path, sizeof(path), "rules.%zu", i);
        vimg_opts_get_dict(o, path);
    }
    return 0;
}

int
vimg_authz_add(struct vimg_opts *o, const char *type, const char *id, struct vimg_error *err)
{
    struct authz_entry *e;
    char key[128];
    int ret;

    if (!id)
        return vimg_error_set(err, EINVAL, "Parameter 'id' is missing");
    if (strcmp(type, "authz-listfile") == 0 || strcmp(type, "authz-pam") == 0) {
        const char *need = strcmp(type, "authz-pam") == 0 ? "service" : "filename";
        if (!vimg_opts_has(o, need))
            return vimg_error_set(err, EINVAL, "Parameter '%s' is missing", need);
        return vimg_error_set(err, ENOTSUP, "invalid object type: %s", type);
    }
    if (!(e = calloc(1, sizeof(*e))) || !(e->id = strdup(id))) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto fail;
    }
    if (strcmp(type, "authz-simple") == 0) {
        const char *identity = vimg_opts_get(o, "identity");
        if (!identity) {
            ret = vimg_error_set(err, EINVAL, "Parameter 'identity' is missing");
            goto fail;
        }
        e->n_rules = 1;
        if (!(e->rules = calloc(1, sizeof(*e->rules))) ||
            !(e->rules[0].match = strdup(identity))) {
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
            goto fail;
        }
        e->rules[0].is_allow = true;
    } else if (strcmp(type, "authz-list") != 0) {
        ret = vimg_error_set(err, EINVAL, "Parameter 'qom-type' does not accept value '%s'",
                             type);
        goto fail;
    } else if ((ret = authz_policy(o, "policy", &e->is_allow, err)) < 0 ||
               (ret = authz_parse_rules(o, e, err)) < 0) {
        goto fail;
    }
    if (vimg_opts_find_unused(o, key, sizeof(key))) {
        ret = vimg_error_set(err, EINVAL, "Parameter '%s' is unexpected", key);
        goto fail;
    }
    pthread_mutex_lock(&tls_creds_lock);
    for (struct authz_entry *p = authz_list; p; p = p->next) {
        if (strcmp(p->id, id) == 0) {
            pthread_mutex_unlock(&tls_creds_lock);
            ret = vimg_error_set(err, EEXIST, "attempt to add duplicate property '%s' to "
                                 "object (type 'container')", id);
            goto fail;
        }
    }
    e->next = authz_list;
    authz_list = e;
    pthread_mutex_unlock(&tls_creds_lock);
    return 0;
fail:
    authz_entry_free(e);
    return ret;
}

/* Glob as QEMU's authz-list: '*' any run of characters, '?' any one character. */
static bool
authz_glob(const char *pat, const char *s)
{
    const char *star = NULL, *resume = NULL;

    while (*s) {
        if (*pat == '*') {
            star = pat++;
            resume = s;
        } else if (*pat == '?' || *pat == *s) {
            pat++;
            s++;
        } else if (star) {
            pat = star + 1;
            s = ++resume;
        } else {
            return false;
        }
    }
    while (*pat == '*')
        pat++;
    return *pat == '\0';
}

int
vimg_authz_is_allowed(const char *id, const char *identity, bool *is_allowed,
                      struct vimg_error *err)
{
    int ret = vimg_error_set(err, ENOENT, "Cannot find QAuthZ object ID %s", id);

    pthread_mutex_lock(&tls_creds_lock);
    for (struct authz_entry *p = authz_list; p; p = p->next) {
        if (strcmp(p->id, id) != 0)
            continue;
        *is_allowed = p->is_allow;
        for (size_t i = 0; i < p->n_rules; i++) {
            const struct authz_rule *r = &p->rules[i];
            if (r->is_glob ? authz_glob(r->match, identity) : strcmp(r->match, identity) == 0) {
                *is_allowed = r->is_allow;
                break;
            }
        }
        ret = 0;
        break;
    }
    pthread_mutex_unlock(&tls_creds_lock);
    if (ret == 0 && err)
        memset(err, 0, sizeof(*err));
    return ret;
}

void
vimg_authz_clear(void)
{
    pthread_mutex_lock(&tls_creds_lock);
    while (authz_list) {
        struct authz_entry *next = authz_list->next;
        authz_entry_free(authz_list);
        authz_list = next;
    }
    pthread_mutex_unlock(&tls_creds_lock);
}
