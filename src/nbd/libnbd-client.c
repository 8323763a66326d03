/*
 * Helpers for libnbd client handles (see libnbd-client.h).
 */
#include <stdio.h>
#include <string.h>

#include "nbd/libnbd-client.h"

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
