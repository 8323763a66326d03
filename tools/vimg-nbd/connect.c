/*
 * vimg-nbd -c DEV / -d DEV: a kernel NBD device (/dev/nbdN) as the client of
 * the export, as qemu-nbd does. The server serves one end of a socket pair;
 * a thread does the client handshake on the other end, hands it to the
 * kernel with the ioctls of <linux/nbd.h> and waits in NBD_DO_IT until the
 * device is disconnected (vimg-nbd -d DEV). Messages and exit codes are
 * qemu-nbd's; errors in the device thread end the process, as there.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/nbd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <vimg/nbd.h>

#include "vimg-nbd.h"

#define NBD_DEVICE_SECTOR 512

struct nbd_device {
    const char *path;
    const char *export_name;
    int sock;                       /* the client end of the socket pair */
    bool is_verbose;
    pthread_t thread;
};

static void
device_fail(const char *fmt, const char *path, int e)
{
    tool_error(fmt, path, strerror(e));
    exit(EXIT_FAILURE);
}

/* Hands the negotiated socket to the kernel (qemu-nbd's order of ioctls). */
static void
device_setup(int dev_fd, int sock, uint64_t size, uint16_t flags)
{
    int ro = (flags & NBD_FLAG_READ_ONLY) != 0;

    if (ioctl(dev_fd, NBD_SET_SOCK, sock) < 0) {
        tool_error("Failed to set NBD socket");
        exit(EXIT_FAILURE);
    }
    if (ioctl(dev_fd, NBD_SET_BLKSIZE, (unsigned long)NBD_DEVICE_SECTOR) < 0) {
        tool_error("Failed setting NBD block size");
        exit(EXIT_FAILURE);
    }
    if (ioctl(dev_fd, NBD_SET_SIZE_BLOCKS, (unsigned long)(size / NBD_DEVICE_SECTOR)) < 0) {
        tool_error("Failed setting size (in blocks)");
        exit(EXIT_FAILURE);
    }
    if (ioctl(dev_fd, NBD_SET_FLAGS, (unsigned long)flags) < 0 && errno != ENOTTY) {
        tool_error("Failed setting flags");
        exit(EXIT_FAILURE);
    }
    if (ioctl(dev_fd, BLKROSET, &ro) < 0) {
        tool_error("Failed setting read-only attribute");
        exit(EXIT_FAILURE);
    }
}

static void *
device_thread(void *arg)
{
    struct nbd_device *d = arg;
    struct vimg_error err = { 0 };
    uint64_t size;
    uint16_t flags;
    int dev_fd;

    if ((dev_fd = open(d->path, O_RDWR | O_CLOEXEC)) < 0)
        device_fail("Failed to open %s: %s", d->path, errno);
    if (vimg_nbd_client_handshake(d->sock, d->export_name, &size, &flags, &err) < 0) {
        tool_error("%s", err.msg);
        exit(EXIT_FAILURE);
    }
    device_setup(dev_fd, d->sock, size, flags);
    if (d->is_verbose)
        fprintf(stderr, "NBD device %s is now connected to %s\n", d->path, d->export_name);
    /* Serves the device until it is disconnected. */
    if (ioctl(dev_fd, NBD_DO_IT) < 0 && errno != EPIPE && errno != ECONNRESET)
        tool_error("NBD_DO_IT on %s: %s", d->path, strerror(errno));
    ioctl(dev_fd, NBD_CLEAR_QUE);
    ioctl(dev_fd, NBD_CLEAR_SOCK);
    close(dev_fd);
    close(d->sock);
    return NULL;
}

int
nbd_tool_device_start(const char *path, const char *export_name, int sock, bool is_verbose,
                      struct nbd_device **out)
{
    struct nbd_device *d = calloc(1, sizeof(*d));
    int e;

    if (!d) {
        tool_error("Out of memory");
        return -1;
    }
    *d = (struct nbd_device){ .path = path, .export_name = export_name, .sock = sock,
                              .is_verbose = is_verbose };
    if ((e = pthread_create(&d->thread, NULL, device_thread, d)) != 0) {
        tool_error("Failed to start the NBD device thread: %s", strerror(e));
        free(d);
        return -1;
    }
    *out = d;
    return 0;
}

void
nbd_tool_device_wait(struct nbd_device *d)
{
    pthread_join(d->thread, NULL);
    free(d);
}

int
nbd_tool_disconnect(const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);

    if (fd < 0) {
        tool_error("Cannot open %s: %s", path, strerror(errno));
        return 1;
    }
    /* As qemu-nbd: a device that is not connected (or not a device) still "disconnects". */
    ioctl(fd, NBD_DISCONNECT);
    ioctl(fd, NBD_CLEAR_SOCK);
    close(fd);
    printf("%s disconnected\n", path);
    return 0;
}
