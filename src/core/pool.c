/* The thread pool (include/vimg/pool.h): a bounded ring of jobs and a condition per side. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include <vimg/pool.h>

struct job {
    vimg_job_fn fn;
    void *arg;
};

struct vimg_pool {
    pthread_mutex_t lock;       /* protects everything below */
    pthread_cond_t has_job;     /* a job was queued, or the pool is stopping */
    pthread_cond_t has_room;    /* a job was taken from the queue */
    pthread_cond_t is_idle;     /* n_pending reached 0 */
    struct job *queue;
    unsigned queue_len, head, n_queued;
    unsigned n_pending;         /* queued plus running */
    bool is_stopping;
    pthread_t *threads;
    unsigned n_threads;
};

static void *
pool_worker(void *opaque)
{
    struct vimg_pool *pool = opaque;

    pthread_mutex_lock(&pool->lock);
    for (;;) {
        struct job job;
        while (pool->n_queued == 0 && !pool->is_stopping)
            pthread_cond_wait(&pool->has_job, &pool->lock);
        if (pool->n_queued == 0)
            break;
        job = pool->queue[pool->head];
        pool->head = (pool->head + 1) % pool->queue_len;
        pool->n_queued--;
        pthread_cond_signal(&pool->has_room);
        pthread_mutex_unlock(&pool->lock);
        job.fn(job.arg);
        pthread_mutex_lock(&pool->lock);
        if (--pool->n_pending == 0)
            pthread_cond_broadcast(&pool->is_idle);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

struct vimg_pool *
vimg_pool_new(unsigned n_threads, unsigned queue_len, struct vimg_error *err)
{
    struct vimg_pool *pool = calloc(1, sizeof(*pool));

    if (n_threads == 0)
        n_threads = 1;
    if (queue_len == 0)
        queue_len = 2 * n_threads;
    if (!pool || !(pool->queue = calloc(queue_len, sizeof(*pool->queue))) ||
        !(pool->threads = calloc(n_threads, sizeof(*pool->threads)))) {
        if (pool)
            free(pool->queue);
        free(pool);
        vimg_error_set(err, ENOMEM, "Out of memory");
        return NULL;
    }
    pool->queue_len = queue_len;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->has_job, NULL);
    pthread_cond_init(&pool->has_room, NULL);
    pthread_cond_init(&pool->is_idle, NULL);
    for (; pool->n_threads < n_threads; pool->n_threads++) {
        int ret = pthread_create(&pool->threads[pool->n_threads], NULL, pool_worker, pool);
        if (ret != 0) {
            vimg_error_set(err, ret, "Could not start a worker thread");
            vimg_pool_free(pool);
            return NULL;
        }
    }
    return pool;
}

int
vimg_pool_submit(struct vimg_pool *pool, vimg_job_fn fn, void *arg)
{
    pthread_mutex_lock(&pool->lock);
    while (pool->n_queued == pool->queue_len && !pool->is_stopping)
        pthread_cond_wait(&pool->has_room, &pool->lock);
    if (pool->is_stopping) {
        pthread_mutex_unlock(&pool->lock);
        return -ESHUTDOWN;
    }
    pool->queue[(pool->head + pool->n_queued) % pool->queue_len] = (struct job){ fn, arg };
    pool->n_queued++;
    pool->n_pending++;
    pthread_cond_signal(&pool->has_job);
    pthread_mutex_unlock(&pool->lock);
    return 0;
}

void
vimg_pool_wait(struct vimg_pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    while (pool->n_pending > 0)
        pthread_cond_wait(&pool->is_idle, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}

void
vimg_pool_free(struct vimg_pool *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->lock);
    pool->is_stopping = true;
    pthread_cond_broadcast(&pool->has_job);
    pthread_cond_broadcast(&pool->has_room);
    pthread_mutex_unlock(&pool->lock);
    for (unsigned i = 0; i < pool->n_threads; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->has_job);
    pthread_cond_destroy(&pool->has_room);
    pthread_cond_destroy(&pool->is_idle);
    free(pool->threads);
    free(pool->queue);
    free(pool);
}
