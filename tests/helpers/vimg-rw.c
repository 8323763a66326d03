/*
 * vimg-rw: drives the library's request path for format tests while vimg-io
 * is not there. Usage: vimg-rw [-f FMT] IMAGE CMD...
 *   w:OFF:LEN:BYTE   write LEN bytes of BYTE at OFF
 *   z:OFF:LEN        write zeros;  zu:OFF:LEN  the same, may unmap
 *   d:OFF:LEN        discard
 *   t:SIZE           grow to SIZE
 *   cat              guest content to stdout
 *   par:THREADS:LEN  THREADS threads write interleaved 512-byte chunks over
 *                    [0, LEN), chunk i holding byte (i * 7 + 1), then check
 *                    every chunk reads back
 * Numbers take 0x for hex. Exits 1 with the error on the first failure.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/node.h>

struct par_job {
    struct vimg_node *node;
    unsigned index, n_threads;
    uint64_t len;
    int ret;
    struct vimg_error err;
};

static void *
par_worker(void *arg)
{
    struct par_job *j = arg;
    uint8_t buf[512];

    for (uint64_t c = j->index; c * 512 < j->len; c += j->n_threads) {
        memset(buf, (int)((c * 7 + 1) & 0xff), sizeof(buf));
        if ((j->ret = vimg_node_pwrite(j->node, c * 512, buf, sizeof(buf), 0, &j->err)) < 0)
            break;
    }
    return NULL;
}

static int
run_par(struct vimg_node *node, unsigned n_threads, uint64_t len, struct vimg_error *err)
{
    struct par_job jobs[16];
    pthread_t tids[16];
    uint8_t buf[512];

    if (n_threads == 0 || n_threads > 16)
        n_threads = 4;
    for (unsigned i = 0; i < n_threads; i++) {
        jobs[i] = (struct par_job){ .node = node, .index = i, .n_threads = n_threads,
                                    .len = len };
        pthread_create(&tids[i], NULL, par_worker, &jobs[i]);
    }
    for (unsigned i = 0; i < n_threads; i++)
        pthread_join(tids[i], NULL);
    for (unsigned i = 0; i < n_threads; i++) {
        if (jobs[i].ret < 0) {
            *err = jobs[i].err;
            return jobs[i].ret;
        }
    }
    for (uint64_t c = 0; c * 512 < len; c++) {
        int ret = vimg_node_pread(node, c * 512, buf, sizeof(buf), 0, err);
        if (ret < 0)
            return ret;
        for (size_t k = 0; k < sizeof(buf); k++) {
            if (buf[k] != (uint8_t)(c * 7 + 1)) {
                snprintf(err->msg, sizeof(err->msg), "chunk %llu reads back wrong",
                         (unsigned long long)c);
                return -1;
            }
        }
    }
    return 0;
}

static int
run_cat(struct vimg_node *node, struct vimg_error *err)
{
    int64_t len = vimg_node_length(node, err);
    static uint8_t buf[1 << 20];

    if (len < 0)
        return (int)len;
    for (uint64_t off = 0; off < (uint64_t)len;) {
        uint64_t n = (uint64_t)len - off < sizeof(buf) ? (uint64_t)len - off : sizeof(buf);
        int ret = vimg_node_pread(node, off, buf, n, 0, err);
        if (ret < 0)
            return ret;
        fwrite(buf, 1, n, stdout);
        off += n;
    }
    return 0;
}

static int
run_cmd(struct vimg_node *node, const char *cmd, struct vimg_error *err)
{
    unsigned long long a = 0, b = 0, c = 0;
    char op[8] = "";
    uint8_t *buf;
    int ret;

    if (strcmp(cmd, "cat") == 0)
        return run_cat(node, err);
    if (sscanf(cmd, "%7[a-z]:%lli:%lli:%lli", op, &a, &b, &c) < 2) {
        snprintf(err->msg, sizeof(err->msg), "bad command '%s'", cmd);
        return -1;
    }
    if (strcmp(op, "w") == 0) {
        if (!(buf = malloc(b ? b : 1)))
            return -1;
        memset(buf, (int)c, b);
        ret = vimg_node_pwrite(node, a, buf, b, 0, err);
        free(buf);
        return ret;
    }
    if (strcmp(op, "z") == 0 || strcmp(op, "zu") == 0)
        return vimg_node_pwrite_zeroes(node, a, b, op[1] ? VIMG_REQ_MAY_UNMAP : 0, err);
    if (strcmp(op, "d") == 0)
        return vimg_node_discard(node, a, b, err);
    if (strcmp(op, "t") == 0)
        return vimg_node_truncate(node, a, false, NULL, err);
    if (strcmp(op, "par") == 0)
        return run_par(node, (unsigned)a, b, err);
    snprintf(err->msg, sizeof(err->msg), "unknown command '%s'", op);
    return -1;
}

int
main(int argc, char **argv)
{
    struct vimg_error err = { 0 };
    struct vimg_node *node;
    const char *fmt = NULL;
    int i = 1, ret = 0;

    if (argc > 2 && strcmp(argv[1], "-f") == 0) {
        fmt = argv[2];
        i = 3;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: vimg-rw [-f FMT] IMAGE CMD...\n");
        return 2;
    }
    if (vimg_open(&node, argv[i], fmt, NULL, VIMG_OPEN_RDWR | VIMG_OPEN_RESIZE, &err) < 0) {
        fprintf(stderr, "vimg-rw: %s\n", err.msg);
        return 1;
    }
    for (i++; i < argc && ret == 0; i++)
        ret = run_cmd(node, argv[i], &err);
    if (ret == 0)
        ret = vimg_node_flush(node, &err);
    if (ret < 0)
        fprintf(stderr, "vimg-rw: %s\n", err.msg);
    vimg_close(node);
    return ret < 0 ? 1 : 0;
}
