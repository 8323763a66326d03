/*
 * qcow2 compressed clusters (spec "Compressed Clusters Descriptor",
 * "compression_type"): raw deflate without zlib header ("zlib" in QEMU's
 * words) and, when libzstd is there, zstd. A compressed cluster's data may
 * be followed by unrelated bytes up to the end of its last sector:
 * decompression stops once a whole cluster has come out.
 */
#include <errno.h>
#include <string.h>

#include <zlib.h>

#include "config.h"
#include "formats/qcow2/qcow2.h"

#ifdef VIMG_HAVE_ZSTD
#include <zstd.h>
#endif

static int
qcow2_inflate(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
              struct vimg_error *err)
{
    z_stream z;
    int zr;

    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -15) != Z_OK)
        return vimg_error_set(err, ENOMEM, "Could not initialise zlib");
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    zr = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    /* Output full is success even when the stream goes on (trailing bytes of the sector). */
    if ((zr == Z_STREAM_END || zr == Z_BUF_ERROR || zr == Z_OK) && z.avail_out == 0)
        return 0;
    return vimg_error_set(err, EIO, "Could not decompress a zlib-compressed cluster "
                          "(zlib status %d, %u bytes missing)", zr, z.avail_out);
}

#ifdef VIMG_HAVE_ZSTD
static int
qcow2_unzstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
             struct vimg_error *err)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    ZSTD_inBuffer ib = { in, in_len, 0 };
    ZSTD_outBuffer ob = { out, out_len, 0 };
    size_t zr = 0;

    if (!dctx)
        return vimg_error_set(err, ENOMEM, "Could not initialise zstd");
    while (ob.pos < ob.size && ib.pos < ib.size) {
        zr = ZSTD_decompressStream(dctx, &ob, &ib);
        if (ZSTD_isError(zr) || zr == 0)
            break;
    }
    ZSTD_freeDCtx(dctx);
    if (ob.pos == ob.size && !ZSTD_isError(zr))
        return 0;
    return vimg_error_set(err, EIO, "Could not decompress a zstd-compressed cluster (%s)",
                          ZSTD_isError(zr) ? ZSTD_getErrorName(zr) : "truncated data");
}
#endif

int
qcow2_decompress(uint8_t type, const uint8_t *in, size_t in_len, uint8_t *out,
                 size_t out_len, struct vimg_error *err)
{
    if (type == QCOW2_COMPRESSION_ZLIB)
        return qcow2_inflate(in, in_len, out, out_len, err);
#ifdef VIMG_HAVE_ZSTD
    if (type == QCOW2_COMPRESSION_ZSTD)
        return qcow2_unzstd(in, in_len, out, out_len, err);
#endif
    return vimg_error_set(err, ENOTSUP, "Compression type %u is not supported by this build",
                          type);
}
