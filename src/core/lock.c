/*
 * Image locking compatible with QEMU's file driver: for each permission bit i
 * a holder keeps a shared lock on byte 100+i while it uses the permission and
 * on byte 200+i while it refuses to share it. Conflicts are found by asking
 * whether another open file description holds the opposite byte. OFD locks
 * (F_OFD_*) where the kernel has them, POSIX locks otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "core/driver.h"

#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

static const char *const perm_names[VIMG_PERM_BITS] = {
    "consistent read", "write", "write unchanged", "resize",
};

static int
lock_byte(int fd, bool use_ofd, off_t byte, short type)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_type = type,
    };

    if (fcntl(fd, use_ofd ? F_OFD_SETLK : F_SETLK, &fl) < 0)
        return -errno;
    return 0;
}

/* 1 when another holder has byte, 0 when not, -errno on failure. */
static int
lock_byte_taken(int fd, bool use_ofd, off_t byte)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_type = F_WRLCK,
    };

    if (fcntl(fd, use_ofd ? F_OFD_GETLK : F_GETLK, &fl) < 0)
        return -errno;
    return fl.l_type != F_UNLCK;
}

bool
vimg_lock_ofd_available(int fd)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = 0,
        .l_len = 0,
        .l_type = F_RDLCK,
    };

    return fcntl(fd, F_OFD_GETLK, &fl) == 0;
}

int
vimg_lock_apply(int fd, bool use_ofd, unsigned perm, unsigned shared, struct vimg_error *err)
{
    for (int i = 0; i < VIMG_PERM_BITS; i++) {
        unsigned bit = 1u << i;
        int ret = lock_byte(fd, use_ofd, LOCK_PERM_BASE + i, (perm & bit) ? F_RDLCK : F_UNLCK);
        if (ret == 0)
            ret = lock_byte(fd, use_ofd, LOCK_SHARED_BASE + i,
                            (shared & bit) ? F_UNLCK : F_RDLCK);
        if (ret < 0)
            return vimg_error_set(err, -ret, "Failed to lock byte %d", LOCK_PERM_BASE + i);
    }
    return 0;
}

int
vimg_lock_check(int fd, bool use_ofd, unsigned perm, unsigned shared, const char *filename,
                struct vimg_error *err)
{
    for (int i = 0; i < VIMG_PERM_BITS; i++) {
        unsigned bit = 1u << i;
        int taken;

        if (perm & bit) {
            taken = lock_byte_taken(fd, use_ofd, LOCK_SHARED_BASE + i);
            if (taken != 0)
                return vimg_error_set(err, EAGAIN, "Failed to get \"%s\" lock\n"
                                      "Is another process using the image [%s]?",
                                      perm_names[i], filename);
        }
        if (!(shared & bit)) {
            taken = lock_byte_taken(fd, use_ofd, LOCK_PERM_BASE + i);
            if (taken != 0)
                return vimg_error_set(err, EAGAIN, "Failed to get shared \"%s\" lock\n"
                                      "Is another process using the image [%s]?",
                                      perm_names[i], filename);
        }
    }
    return 0;
}
