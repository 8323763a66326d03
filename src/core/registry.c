/* The only list of drivers. Sorted by name, one per line. */
#include <string.h>

#include "config.h"
#include "core/driver.h"

extern const struct vimg_driver vimg_blkdebug_driver;
extern const struct vimg_driver vimg_bochs_driver;
extern const struct vimg_driver vimg_cloop_driver;
extern const struct vimg_driver vimg_dmg_driver;
extern const struct vimg_driver vimg_file_driver;
#ifdef VIMG_HAVE_GLUSTERFS
extern const struct vimg_driver vimg_gluster_driver;
#endif
extern const struct vimg_driver vimg_host_device_driver;
#ifdef VIMG_HAVE_LIBISCSI
extern const struct vimg_driver vimg_iscsi_driver;
#endif
extern const struct vimg_driver vimg_luks_driver;
#ifdef VIMG_HAVE_LIBNBD
extern const struct vimg_driver vimg_nbd_driver;
#endif
extern const struct vimg_driver vimg_parallels_driver;
extern const struct vimg_driver vimg_qcow_driver;
extern const struct vimg_driver vimg_qcow2_driver;
extern const struct vimg_driver vimg_qed_driver;
extern const struct vimg_driver vimg_raw_driver;
#ifdef VIMG_HAVE_LIBSSH
extern const struct vimg_driver vimg_ssh_driver;
#endif
extern const struct vimg_driver vimg_vdi_driver;
extern const struct vimg_driver vimg_vhdx_driver;
extern const struct vimg_driver vimg_vmdk_driver;
extern const struct vimg_driver vimg_vpc_driver;

static const struct vimg_driver *const drivers[] = {
    &vimg_blkdebug_driver,
    &vimg_bochs_driver,
    &vimg_cloop_driver,
    &vimg_dmg_driver,
    &vimg_file_driver,
#ifdef VIMG_HAVE_GLUSTERFS
    &vimg_gluster_driver,
#endif
    &vimg_host_device_driver,
#ifdef VIMG_HAVE_LIBISCSI
    &vimg_iscsi_driver,
#endif
    &vimg_luks_driver,
#ifdef VIMG_HAVE_LIBNBD
    &vimg_nbd_driver,
#endif
    &vimg_parallels_driver,
    &vimg_qcow_driver,
    &vimg_qcow2_driver,
    &vimg_qed_driver,
    &vimg_raw_driver,
#ifdef VIMG_HAVE_LIBSSH
    &vimg_ssh_driver,
#endif
    &vimg_vdi_driver,
    &vimg_vhdx_driver,
    &vimg_vmdk_driver,
    &vimg_vpc_driver,
};

#define N_DRIVERS (sizeof(drivers) / sizeof(drivers[0]))

const struct vimg_driver *
vimg_driver_at(size_t index)
{
    return index < N_DRIVERS ? drivers[index] : NULL;
}

size_t
vimg_driver_count(void)
{
    return N_DRIVERS;
}

const char *
vimg_driver_name(size_t index)
{
    return index < N_DRIVERS ? drivers[index]->name : NULL;
}

const struct vimg_driver *
vimg_driver_find(const char *name)
{
    for (size_t i = 0; i < N_DRIVERS; i++)
        if (strcmp(drivers[i]->name, name) == 0)
            return drivers[i];
    return NULL;
}

bool
vimg_format_exists(const char *name)
{
    return vimg_driver_find(name) != NULL;
}

/* The protocol a filename names by its "proto:" prefix, or NULL. */
const struct vimg_driver *
vimg_protocol_for(const char *filename)
{
    const char *colon = strchr(filename, ':');
    const char *slash = strchr(filename, '/');
    size_t len;

    if (!colon || (slash && slash < colon))
        return NULL;
    len = (size_t)(colon - filename);
    for (size_t i = 0; i < N_DRIVERS; i++) {
        const char *const *p = drivers[i]->protocols;
        for (; p && *p; p++) {
            size_t plen = strlen(*p);
            /* "nbd+unix" and "gluster+tcp" share their driver's prefix. */
            if (plen <= len && strncmp(filename, *p, plen) == 0 &&
                (plen == len || filename[plen] == '+'))
                return drivers[i];
        }
    }
    return NULL;
}

bool
vimg_format_can_compress(const char *name)
{
    const struct vimg_driver *drv = vimg_driver_find(name);

    return drv && drv->pwrite_compressed;
}
