/*
 * Parallel sector encryption. Pieces of one call share a small completion
 * record (a count under a mutex and a condition variable), so that callers
 * sharing the pool do not wait for each other's work.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include <vimg/pool.h>

#include "crypto/sector-pool.h"

/* Buffers below this size stay on the caller's thread; larger ones go in pieces. */
#define SECTOR_POOL_MIN (128u << 10)
#define SECTOR_POOL_PIECE (64u << 10)
#define SECTOR_POOL_MAX_WORKERS 8u

struct vimg_sector_pool {
    pthread_mutex_t lock;       /* protects the creation of workers */
    struct vimg_pool *workers;  /* NULL until first needed */
    bool has_failed;            /* workers could not start: stay single-threaded */
};

struct sector_call {
    pthread_mutex_t lock;       /* protects n_left, ret, err */
    pthread_cond_t done;
    size_t n_left;
    int ret;
    struct vimg_error err;
};

struct sector_piece {
    struct sector_call *call;
    struct vimg_sector_cipher *cipher;
    bool is_enc;
    uint64_t sector;
    uint8_t *buf;
    size_t len;
};

struct vimg_sector_pool *
vimg_sector_pool_new(void)
{
    struct vimg_sector_pool *p = calloc(1, sizeof(*p));

    if (p)
        pthread_mutex_init(&p->lock, NULL);
    return p;
}

void
vimg_sector_pool_free(struct vimg_sector_pool *p)
{
    if (!p)
        return;
    vimg_pool_free(p->workers);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

static struct vimg_pool *
sector_pool_workers(struct vimg_sector_pool *p)
{
    struct vimg_pool *w;

    pthread_mutex_lock(&p->lock);
    if (!p->workers && !p->has_failed) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        struct vimg_error err;
        if (n < 1)
            n = 1;
        if (n > (long)SECTOR_POOL_MAX_WORKERS)
            n = SECTOR_POOL_MAX_WORKERS;
        p->workers = vimg_pool_new((unsigned)n, 4 * (unsigned)n, &err);
        p->has_failed = !p->workers;
    }
    w = p->workers;
    pthread_mutex_unlock(&p->lock);
    return w;
}

static void
sector_piece_run(void *arg)
{
    struct sector_piece *piece = arg;
    struct sector_call *call = piece->call;
    struct vimg_error err = { 0 };
    int ret = piece->is_enc
        ? vimg_sector_encrypt(piece->cipher, piece->sector, piece->buf, piece->len, &err)
        : vimg_sector_decrypt(piece->cipher, piece->sector, piece->buf, piece->len, &err);

    pthread_mutex_lock(&call->lock);
    if (ret < 0 && call->ret == 0) {
        call->ret = ret;
        call->err = err;
    }
    if (--call->n_left == 0)
        pthread_cond_signal(&call->done);
    pthread_mutex_unlock(&call->lock);
}

int
vimg_sector_pool_crypt(struct vimg_sector_pool *p, struct vimg_sector_cipher *c, bool is_enc,
                       uint64_t sector, uint8_t *buf, size_t len, struct vimg_error *err)
{
    size_t n_pieces = (len + SECTOR_POOL_PIECE - 1) / SECTOR_POOL_PIECE;
    struct vimg_pool *workers = p && len >= SECTOR_POOL_MIN ? sector_pool_workers(p) : NULL;
    struct sector_piece *pieces = workers ? calloc(n_pieces, sizeof(*pieces)) : NULL;
    struct sector_call call = { .n_left = n_pieces };

    if (!pieces)
        return is_enc ? vimg_sector_encrypt(c, sector, buf, len, err)
                      : vimg_sector_decrypt(c, sector, buf, len, err);
    pthread_mutex_init(&call.lock, NULL);
    pthread_cond_init(&call.done, NULL);
    for (size_t i = 0; i < n_pieces; i++) {
        size_t off = i * SECTOR_POOL_PIECE;
        pieces[i] = (struct sector_piece){
            .call = &call, .cipher = c, .is_enc = is_enc,
            .sector = sector + off / VIMG_CRYPT_SECTOR_SIZE, .buf = buf + off,
            .len = len - off < SECTOR_POOL_PIECE ? len - off : SECTOR_POOL_PIECE,
        };
        /* The last piece is ours: this thread works too instead of only waiting. */
        if (i + 1 == n_pieces || vimg_pool_submit(workers, sector_piece_run, &pieces[i]) < 0)
            sector_piece_run(&pieces[i]);
    }
    pthread_mutex_lock(&call.lock);
    while (call.n_left)
        pthread_cond_wait(&call.done, &call.lock);
    pthread_mutex_unlock(&call.lock);
    pthread_cond_destroy(&call.done);
    pthread_mutex_destroy(&call.lock);
    free(pieces);
    if (call.ret < 0)
        *err = call.err;
    return call.ret;
}
