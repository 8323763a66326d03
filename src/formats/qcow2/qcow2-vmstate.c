/*
 * qcow2 VM state (SPECS.md "qcow2": docs/interop/qcow2.rst, "Cluster
 * mapping"). The spec only sizes the state a snapshot saved; where a running
 * image keeps its own is QEMU's convention, which this follows: the state
 * lies in the guest address space from the first offset that the L2 tables
 * of the virtual disk no longer cover (what qemu-io `info` calls "vm state
 * offset"), so it is read and written through the ordinary cluster mapping
 * and allocating write paths. A shrink or growth of the disk moves it.
 */
#include <errno.h>
#include <inttypes.h>

#include "formats/qcow2/qcow2.h"

/* QEMU's BDRV_MAX_LENGTH: the VM state may not end past it either. */
#define QCOW2_VMSTATE_MAX_END UINT64_C(0x7fffffffc0000000)

static uint64_t
qcow2_vmstate_offset(const struct qcow2_state *s)
{
    return qcow2_align_up(s->hdr.size, (uint64_t)s->l2_entries * s->cluster_size);
}

/*
 * Makes the L1 table reach guest offset end. As QEMU's, it grows by half
 * again until it is large enough, so a state written piece by piece does
 * not move the table at every L2 table it adds. Lock held.
 */
static int
qcow2_vmstate_grow_l1(struct vimg_node *node, uint64_t end, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cover = (uint64_t)s->l2_entries * s->cluster_size;
    uint64_t needed = end / cover + (end % cover ? 1 : 0);
    uint64_t size;

    if (needed <= s->l1_size)
        return 0;
    if (needed > INT32_MAX / sizeof(uint64_t))
        return vimg_error_set(err, EFBIG, "L1 table of %" PRIu64 " entries is too large "
                              "(at most %u)", needed, QCOW2_MAX_L1_BYTES / 8);
    size = s->l1_size ? s->l1_size : 1;
    while (size < needed)
        size = (size * 3 + 1) / 2;
    return qcow2_grow_l1(node, size, err);
}

int
qcow2_rw_vmstate(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                 const struct iovec *iov, int n_iov, bool is_write, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t base;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    base = qcow2_vmstate_offset(s);
    if (base > QCOW2_VMSTATE_MAX_END || offset > QCOW2_VMSTATE_MAX_END - base ||
        bytes > QCOW2_VMSTATE_MAX_END - base - offset)
        ret = vimg_error_set(err, EIO, "VM state range 0x%" PRIx64 "+%" PRIu64 " at image "
                             "offset 0x%" PRIx64 " ends past the maximum image length (0x%"
                             PRIx64 ")", offset, bytes, base, QCOW2_VMSTATE_MAX_END);
    else if (is_write && bytes)
        ret = qcow2_vmstate_grow_l1(node, base + offset + bytes, err);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0 || bytes == 0)
        return ret;
    if (is_write)
        return qcow2_write(node, base + offset, bytes, iov, n_iov, err);
    return qcow2_read(node, base + offset, bytes, iov, n_iov, err);
}
