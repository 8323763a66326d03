/*
 * A thread pool: jobs run on a fixed set of workers; submit blocks while the
 * queue is full, so a producer never runs far ahead of the workers.
 */
#ifndef VIMG_POOL_H
#define VIMG_POOL_H

#include <vimg/error.h>

struct vimg_pool;

typedef void (*vimg_job_fn)(void *arg);

/* n_threads workers and a queue of queue_len jobs (0 = 2 * n_threads). */
struct vimg_pool *vimg_pool_new(unsigned n_threads, unsigned queue_len, struct vimg_error *err);
/* Queues fn(arg); waits for room. Returns 0, or -errno when the pool is shutting down. */
int vimg_pool_submit(struct vimg_pool *pool, vimg_job_fn fn, void *arg);
/* Waits until every job submitted so far has finished. */
void vimg_pool_wait(struct vimg_pool *pool);
/* Waits for the queued jobs, stops the workers and frees the pool. */
void vimg_pool_free(struct vimg_pool *pool);

#endif
