/*
 * qcow2-race: reads racing discards that free the clusters being read.
 * Usage: qcow2-race IMAGE SECONDS
 *
 * IMAGE is a qcow2 image of at least 4 MiB whose first cluster (of size
 * cluster_size) the helper fills with 0xaa. Reader threads read that cluster
 * again and again; a writer thread discards it, writes 0xbb to clusters at
 * 1 MiB and up (their host clusters are the ones the discard just freed),
 * discards those and writes 0xaa to the first cluster again. Every read must
 * see the first cluster whole as it was at one moment: all 0xaa or all zeros.
 * A read that sees 0xbb read a host cluster freed and handed out again while
 * it was in flight. Another thread keeps writing 0xaa over the first cluster
 * (in place, outside the driver's lock, while it is allocated); the writer
 * reads its 0xbb clusters back, so a write that lands in a cluster freed
 * under it shows too. Exits 1 naming the first bad read, 0 after SECONDS.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <vimg/node.h>

#define N_READERS 6
#define N_OTHER 4

struct race {
    struct vimg_node *node;
    uint64_t cluster;
    atomic_bool stop;
    atomic_int failed;
    atomic_ulong reads, rounds;
    char msg[600];
    pthread_mutex_t msg_lock;
};

static void
race_fail(struct race *r, const char *fmt, unsigned long a, unsigned long b)
{
    pthread_mutex_lock(&r->msg_lock);
    if (!atomic_load(&r->failed))
        snprintf(r->msg, sizeof(r->msg), fmt, a, b);
    atomic_store(&r->failed, 1);
    atomic_store(&r->stop, true);
    pthread_mutex_unlock(&r->msg_lock);
}

static void *
reader(void *arg)
{
    struct race *r = arg;
    uint8_t *buf = malloc(r->cluster);
    struct vimg_error err = { 0 };

    while (buf && !atomic_load(&r->stop)) {
        uint64_t n_aa = 0, n_zero = 0;
        if (vimg_node_pread(r->node, 0, buf, r->cluster, 0, &err) < 0) {
            race_fail(r, "read failed (%lu, %lu)", 0, 0);
            break;
        }
        for (uint64_t i = 0; i < r->cluster; i++) {
            n_aa += buf[i] == 0xaa;
            n_zero += buf[i] == 0;
        }
        if (n_aa != r->cluster && n_zero != r->cluster) {
            race_fail(r, "a read of the first cluster saw %lu bytes of 0xaa and %lu zeros, "
                      "the rest another cluster's data", (unsigned long)n_aa,
                      (unsigned long)n_zero);
            break;
        }
        atomic_fetch_add(&r->reads, 1);
    }
    free(buf);
    return NULL;
}

static void *
writer(void *arg)
{
    struct race *r = arg;
    uint8_t *aa = malloc(r->cluster), *bb = malloc(r->cluster), *check = malloc(r->cluster);
    struct vimg_error err = { 0 };
    const char *what = NULL;

    if (!aa || !bb || !check) {
        race_fail(r, "out of memory (%lu, %lu)", 0, 0);
        goto out;
    }
    memset(aa, 0xaa, r->cluster);
    memset(bb, 0xbb, r->cluster);
    while (!atomic_load(&r->stop)) {
        if (vimg_node_discard(r->node, 0, r->cluster, &err) < 0) {
            what = "discard";
            break;
        }
        for (int i = 0; i < N_OTHER && !what; i++)
            if (vimg_node_pwrite(r->node, (1 << 20) + i * r->cluster, bb, r->cluster, 0,
                                 &err) < 0)
                what = "write";
        /* An in-place write to the first cluster must not have landed in these. */
        for (int i = 0; i < N_OTHER && !what; i++) {
            if (vimg_node_pread(r->node, (1 << 20) + i * r->cluster, check, r->cluster, 0,
                                &err) < 0)
                what = "read";
            else if (memcmp(check, bb, r->cluster) != 0)
                race_fail(r, "cluster %lu of 0xbb read back other data (round %lu): a "
                          "write to a freed cluster landed in it", (unsigned long)i + 1,
                          atomic_load(&r->rounds));
        }
        if (atomic_load(&r->stop))
            break;
        if (!what && vimg_node_discard(r->node, 1 << 20, N_OTHER * r->cluster, &err) < 0)
            what = "discard";
        if (!what && vimg_node_pwrite(r->node, 0, aa, r->cluster, 0, &err) < 0)
            what = "write";
        if (what)
            break;
        atomic_fetch_add(&r->rounds, 1);
    }
    if (what) {
        fprintf(stderr, "qcow2-race: %s: %s\n", what, err.msg);
        race_fail(r, "the writer failed (%lu, %lu)", 0, 0);
    }
out:
    free(aa);
    free(bb);
    free(check);
    return NULL;
}

/* Writes 0xaa over the first cluster again and again: in place while it is allocated. */
static void *
overwriter(void *arg)
{
    struct race *r = arg;
    uint8_t *aa = malloc(r->cluster);
    struct vimg_error err = { 0 };

    if (aa)
        memset(aa, 0xaa, r->cluster);
    while (aa && !atomic_load(&r->stop)) {
        if (vimg_node_pwrite(r->node, 0, aa, r->cluster, 0, &err) < 0) {
            fprintf(stderr, "qcow2-race: write: %s\n", err.msg);
            race_fail(r, "the overwriter failed (%lu, %lu)", 0, 0);
        }
    }
    free(aa);
    return NULL;
}

int
main(int argc, char **argv)
{
    struct vimg_error err = { 0 };
    struct race r = { 0 };
    pthread_t tr[N_READERS], tw, to;
    uint8_t *buf;
    int ret;

    if (argc != 3) {
        fprintf(stderr, "usage: qcow2-race IMAGE SECONDS\n");
        return 2;
    }
    if (vimg_open(&r.node, argv[1], "qcow2", NULL, VIMG_OPEN_RDWR, &err) < 0) {
        fprintf(stderr, "qcow2-race: %s\n", err.msg);
        return 1;
    }
    r.cluster = vimg_node_cluster_size(r.node) ? vimg_node_cluster_size(r.node) : 65536;
    pthread_mutex_init(&r.msg_lock, NULL);
    if (!(buf = malloc(r.cluster)))
        return 1;
    memset(buf, 0xaa, r.cluster);
    ret = vimg_node_pwrite(r.node, 0, buf, r.cluster, 0, &err);
    free(buf);
    if (ret < 0) {
        fprintf(stderr, "qcow2-race: %s\n", err.msg);
        vimg_close(r.node);
        return 1;
    }
    for (int i = 0; i < N_READERS; i++)
        pthread_create(&tr[i], NULL, reader, &r);
    pthread_create(&tw, NULL, writer, &r);
    pthread_create(&to, NULL, overwriter, &r);
    for (long ticks = atol(argv[2]) * 10; ticks > 0 && !atomic_load(&r.stop); ticks--) {
        struct timespec tick = { .tv_sec = 0, .tv_nsec = 100000000 };
        nanosleep(&tick, NULL);
    }
    atomic_store(&r.stop, true);
    for (int i = 0; i < N_READERS; i++)
        pthread_join(tr[i], NULL);
    pthread_join(tw, NULL);
    pthread_join(to, NULL);
    ret = vimg_node_flush(r.node, &err);
    vimg_close(r.node);
    if (atomic_load(&r.failed)) {
        fprintf(stderr, "qcow2-race: %s\n", r.msg);
        return 1;
    }
    if (ret < 0) {
        fprintf(stderr, "qcow2-race: %s\n", err.msg);
        return 1;
    }
    printf("%lu reads, %lu discard rounds\n", (unsigned long)atomic_load(&r.reads),
           (unsigned long)atomic_load(&r.rounds));
    return 0;
}
