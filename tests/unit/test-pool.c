/*
 * Unit tests for src/core/pool.c: every job runs exactly once, wait returns
 * only when all jobs are done, many producers can share a small queue, and
 * free finishes queued jobs before it stops the workers.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

#include <vimg/pool.h>

enum { N_JOBS = 2000, N_PRODUCERS = 8 };

static void
sleep_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };

    nanosleep(&ts, NULL);
}

static void
count_job(void *arg)
{
    atomic_int *counter = arg;

    atomic_fetch_add(counter, 1);
}

struct slow_job {
    atomic_int *done;
    int index;
    int runs;
};

static void
slow_job(void *arg)
{
    struct slow_job *job = arg;

    sleep_us(200 + (job->index % 7) * 100);
    job->runs++;
    atomic_fetch_add(job->done, 1);
}

static void
test_pool_runs_every_job(void **state)
{
    struct vimg_pool *pool = vimg_pool_new(4, 0, NULL);
    atomic_int counter = 0;

    (void)state;
    assert_non_null(pool);
    for (int i = 0; i < N_JOBS; i++)
        assert_int_equal(vimg_pool_submit(pool, count_job, &counter), 0);
    vimg_pool_wait(pool);
    assert_int_equal(atomic_load(&counter), N_JOBS);
    vimg_pool_free(pool);
}

static void
test_pool_wait_returns_after_slow_jobs_finish(void **state)
{
    struct vimg_pool *pool = vimg_pool_new(3, 2, NULL);
    struct slow_job jobs[60];
    atomic_int done = 0;

    (void)state;
    assert_non_null(pool);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 60; i++) {
            jobs[i] = (struct slow_job){ &done, i, 0 };
            assert_int_equal(vimg_pool_submit(pool, slow_job, &jobs[i]), 0);
        }
        vimg_pool_wait(pool);
        assert_int_equal(atomic_load(&done), 60 * (round + 1));
        for (int i = 0; i < 60; i++)
            assert_int_equal(jobs[i].runs, 1);
    }
    vimg_pool_free(pool);
}

static void
test_pool_wait_on_idle_pool_returns(void **state)
{
    struct vimg_pool *pool = vimg_pool_new(2, 0, NULL);

    (void)state;
    assert_non_null(pool);
    vimg_pool_wait(pool);
    vimg_pool_wait(pool);
    vimg_pool_free(pool);
}

struct producer {
    struct vimg_pool *pool;
    atomic_int *counter;
    int n_failed;
};

static void *
produce(void *arg)
{
    struct producer *p = arg;

    for (int i = 0; i < N_JOBS; i++)
        if (vimg_pool_submit(p->pool, count_job, p->counter) < 0)
            p->n_failed++;
    return NULL;
}

static void
test_pool_many_producers_share_a_small_queue(void **state)
{
    struct vimg_pool *pool = vimg_pool_new(2, 1, NULL);
    struct producer producers[N_PRODUCERS];
    pthread_t threads[N_PRODUCERS];
    atomic_int counter = 0;

    (void)state;
    assert_non_null(pool);
    for (int i = 0; i < N_PRODUCERS; i++) {
        producers[i] = (struct producer){ pool, &counter, 0 };
        assert_int_equal(pthread_create(&threads[i], NULL, produce, &producers[i]), 0);
    }
    for (int i = 0; i < N_PRODUCERS; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(producers[i].n_failed, 0);
    }
    vimg_pool_wait(pool);
    assert_int_equal(atomic_load(&counter), N_PRODUCERS * N_JOBS);
    vimg_pool_free(pool);
}

static void
test_pool_free_finishes_queued_jobs(void **state)
{
    struct vimg_pool *pool = vimg_pool_new(1, 64, NULL);
    struct slow_job jobs[32];
    atomic_int done = 0;

    (void)state;
    assert_non_null(pool);
    for (int i = 0; i < 32; i++) {
        jobs[i] = (struct slow_job){ &done, i, 0 };
        assert_int_equal(vimg_pool_submit(pool, slow_job, &jobs[i]), 0);
    }
    vimg_pool_free(pool);
    assert_int_equal(atomic_load(&done), 32);
}

static void
test_pool_zero_threads_means_one(void **state)
{
    struct vimg_pool *pool = vimg_pool_new(0, 0, NULL);
    atomic_int counter = 0;

    (void)state;
    assert_non_null(pool);
    for (int i = 0; i < 10; i++)
        assert_int_equal(vimg_pool_submit(pool, count_job, &counter), 0);
    vimg_pool_wait(pool);
    assert_int_equal(atomic_load(&counter), 10);
    vimg_pool_free(pool);
}

static void
test_pool_free_accepts_null(void **state)
{
    (void)state;
    vimg_pool_free(NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_runs_every_job),
        cmocka_unit_test(test_pool_wait_returns_after_slow_jobs_finish),
        cmocka_unit_test(test_pool_wait_on_idle_pool_returns),
        cmocka_unit_test(test_pool_many_producers_share_a_small_queue),
        cmocka_unit_test(test_pool_free_finishes_queued_jobs),
        cmocka_unit_test(test_pool_zero_threads_means_one),
        cmocka_unit_test(test_pool_free_accepts_null),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
