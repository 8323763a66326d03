/*
 * libFuzzer target for the NBD server (src/nbd/handshake.c, transmission.c,
 * wire.c): the input is what a client sends, from the client flags through
 * option haggling to transmission requests and their payloads. It goes
 * through a socketpair to vimg_nbd_server_serve, serving a 1 MiB raw image
 * with allocation depth; a thread drains the replies. Beyond "no crash,
 * leak or UB": the serve call returns 0 or -errno with a message, and the
 * image never grows past its size (no write outside the export).
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vimg/nbd.h>
#include <vimg/node.h>

#define FUZZ_CHECK(cond)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                     \
            abort();                                                            \
        }                                                                       \
    } while (0)

#define FUZZ_IMAGE_SIZE (1u << 20)

static struct vimg_nbd_server *fuzz_server;
static struct vimg_node *fuzz_node;
static char fuzz_path[64];

static void *
fuzz_drain(void *arg)
{
    int fd = *(int *)arg;
    char buf[65536];

    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    return NULL;
}

struct fuzz_feed {
    int fd;
    const uint8_t *data;
    size_t size;
};

/* Writes the input, then half-closes, so the server sees EOF after it. */
static void *
fuzz_feed(void *arg)
{
    struct fuzz_feed *f = arg;
    size_t done = 0;

    while (done < f->size) {
        ssize_t n = send(f->fd, f->data + done, f->size - done, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    shutdown(f->fd, SHUT_WR);
    return NULL;
}

static void
fuzz_setup(void)
{
    struct vimg_error err = { 0 };
    struct vimg_node *node = NULL;
    struct vimg_nbd_export exp = { .name = "", .description = "fuzz",
                                   .has_allocation_depth = true,
                                   .discard = VIMG_NBD_DISCARD_UNMAP };
    int fd;

    snprintf(fuzz_path, sizeof(fuzz_path), "/tmp/fuzz-nbd-XXXXXX");
    fd = mkstemp(fuzz_path);
    FUZZ_CHECK(fd >= 0 && ftruncate(fd, FUZZ_IMAGE_SIZE) == 0);
    close(fd);
    FUZZ_CHECK(vimg_open(&node, fuzz_path, "raw", NULL, VIMG_OPEN_RDWR, &err) == 0);
    unlink(fuzz_path);
    exp.node = fuzz_node = node;
    fuzz_server = vimg_nbd_server_new(&exp, 4, NULL, &err);
    FUZZ_CHECK(fuzz_server != NULL);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vimg_error err = { 0 };
    struct fuzz_feed feed = { .data = data, .size = size };
    pthread_t drainer, feeder;
    int sv[2], ret;

    if (!fuzz_server)
        fuzz_setup();
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    feed.fd = sv[0];
    FUZZ_CHECK(pthread_create(&drainer, NULL, fuzz_drain, &sv[0]) == 0);
    FUZZ_CHECK(pthread_create(&feeder, NULL, fuzz_feed, &feed) == 0);
    ret = vimg_nbd_server_serve(fuzz_server, sv[1], &err);
    FUZZ_CHECK(ret == 0 || (ret < 0 && err.errnum == -ret && err.msg[0]));
    pthread_join(feeder, NULL);
    pthread_join(drainer, NULL);
    close(sv[0]);
    FUZZ_CHECK(vimg_node_length(fuzz_node, &err) == FUZZ_IMAGE_SIZE);
    return 0;
}
