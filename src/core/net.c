/*
 * Connecting to a TCP server by name, for the protocol drivers and the NBD
 * client code: every address getaddrinfo gives, in order, until one answers.
 * The messages are qemu-img's.
 */
#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/driver.h"

int
vimg_tcp_connect(const char *host, const char *port, struct vimg_error *err)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res, *ai;
    int fd = -1, e = ECONNREFUSED, r;

    r = getaddrinfo(host, port, &hints, &res);
    if (r != 0)
        return vimg_error_set(err, EHOSTUNREACH, "address resolution failed for %s:%s: %s",
                              host, port, gai_strerror(r));
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return vimg_error_set(err, e, "Failed to connect to '%s:%s': %s", host, port,
                              strerror(e));
    return fd;
}
