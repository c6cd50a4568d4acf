/* SPDX-License-Identifier: MIT */
/*
 * test_threads.c - one pool, several threads: maps from many threads at
 * once share the workers, each thread's outcomes (codes, results,
 * failures, counters) are its own, callbacks never run two at once, a
 * callback calling back into its pool is still refused, and a thread is
 * never refused because another one is inside a long map.
 *
 * Nothing here waits on time: every wait is on a pipe, a join or a
 * barrier, and alarm() only turns a hang into a failure.
 */
#include "test.h"

#include "pmap.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <unistd.h>


/* ---- the mapped function and what each input must give ----------------- */

#define CRASHES(x) ((x) % 997 == 500)
#define FAILS(x) ((x) % 7 == 3)

static int thr_work(int x)
{
    if (CRASHES(x))
        abort();
    if (FAILS(x)) {
        pmap_fail(x % 1000, "x=%d", x);
        return 0;
    }
    return 3 * x + 1;
}
PMAP_EXPORT(thr_work, int, int);

static size_t expected_failures(const int *xs, size_t n)
{
    size_t failed = 0;
    for (size_t j = 0; j < n; j++)
        failed += CRASHES(xs[j]) || FAILS(xs[j]);
    return failed;
}

/* Checks one failure record against the input that caused it. */
static void check_failure(const pmap_failure_t *f, size_t index, int x)
{
    ASSERT_EQ(f->index, index);
    if (CRASHES(x)) {
        ASSERT_EQ(f->error, PMAP_ECRASH);
        ASSERT_EQ(f->code, SIGABRT);
    } else {
        ASSERT_EQ(f->error, PMAP_EFAIL);
        ASSERT_EQ(f->code, x % 1000);
        char want[32];
        snprintf(want, sizeof want, "x=%d", x);
        ASSERT_STR_EQ(f->message, want);
    }
}

/* Checks a map's failure list: exactly the failing inputs, in order. */
static void check_failures(const pmap_failure_t *f, size_t nf, const int *xs,
                           size_t n)
{
    ASSERT_EQ(nf, expected_failures(xs, n));
    size_t k = 0;
    for (size_t j = 0; j < n; j++) {
        if (CRASHES(xs[j]) || FAILS(xs[j]))
            check_failure(&f[k++], j, xs[j]);
    }
}

static void check_results(const int *out, const int *xs, size_t n)
{
    for (size_t j = 0; j < n; j++)
        ASSERT_EQ(out[j], CRASHES(xs[j]) || FAILS(xs[j]) ? 0 : 3 * xs[j] + 1);
}

/* ---- callbacks: never two at once, never back into their pool ----------- */

static atomic_int in_callback;

static void callback_enter(void)
{
    ASSERT_EQ(atomic_exchange(&in_callback, 1), 0);
}

static void callback_leave(void)
{
    atomic_store(&in_callback, 0);
}

#define MAX_ITEMS 48

/* One callback or stream map: its inputs and what was handed over. */
struct delivery {
    pool_t *pool;
    int xs[MAX_ITEMS];
    size_t n;
    size_t produced;
    size_t next;        /* index expected next (in order) */
};

static int on_result(void *ctx, size_t index, void *result,
                     const pmap_failure_t *failure)
{
    callback_enter();
    struct delivery *d = ctx;
    ASSERT_EQ(index, d->next);
    ASSERT(index < d->n);
    int x = d->xs[index];
    if (CRASHES(x) || FAILS(x)) {
        ASSERT(result == NULL && failure != NULL);
        check_failure(failure, index, x);
    } else {
        ASSERT(result != NULL);
        ASSERT_EQ(*(int *)result, 3 * x + 1);
    }
    if (index == 0) {
        /* Back into its own pool, on the thread driving it: refused. */
        int r;
        ASSERT_EQ(pool_call(d->pool, thr_work, &r, 1), PMAP_EBUSY);
    }
    d->next++;
    callback_leave();
    return 0;
}

static int produce(void *ctx, int *x)
{
    callback_enter();
    struct delivery *d = ctx;
    int more = d->produced < d->n;
    if (more)
        *x = d->xs[d->produced++];
    callback_leave();
    return more;
}

/* ---- one thread's maps --------------------------------------------------- */

#define THREADS 8
#define MAPS 200

struct runner {
    pthread_t thread;
    pool_t *pool;
    int t;
    pthread_barrier_t *done;
    pmap_stats_t last;      /* pool_stats' "last" after its last sync map */
    bool has_last;
};

/* pool_failures and pool_stats describe this thread's map just ended. */
static void check_last(struct runner *r, const int *xs, size_t n)
{
    const pmap_failure_t *f;
    size_t nf = pool_failures(r->pool, &f);
    check_failures(f, nf, xs, n);
    pmap_stats_t last;
    ASSERT_OK(pool_stats(r->pool, &last, NULL));
    ASSERT_EQ(last.maps, 1);
    ASSERT_EQ(last.items, n);
    ASSERT_EQ(last.failed, expected_failures(xs, n));
    r->last = last;
    r->has_last = true;
}

/* ...and a background map leaves them alone. */
static void check_last_unchanged(struct runner *r)
{
    if (!r->has_last)
        return;
    pmap_stats_t last;
    ASSERT_OK(pool_stats(r->pool, &last, NULL));
    ASSERT_EQ(last.items, r->last.items);
    ASSERT_EQ(last.failed, r->last.failed);
    ASSERT_EQ(last.batches, r->last.batches);
    ASSERT_EQ(last.wall_ns, r->last.wall_ns);
}

static void map_arrays(struct runner *r, const int *xs, size_t n)
{
    int out[MAX_ITEMS];
    int rc = pool_map(r->pool, thr_work, n, out, xs);
    ASSERT_EQ(rc, expected_failures(xs, n));
    check_results(out, xs, n);
    check_last(r, xs, n);
}

static void map_callback(struct runner *r, const int *xs, size_t n)
{
    struct delivery d = {.pool = r->pool, .n = n};
    memcpy(d.xs, xs, n * sizeof *xs);
    pool_map_options_t o = {.on_result = on_result, .ctx = &d};
    int rc = pool_map_with(r->pool, &o, thr_work, n, NULL, xs);
    ASSERT_EQ(rc, expected_failures(xs, n));
    ASSERT_EQ(d.next, n);
    check_last(r, xs, n);
}

static void map_call(struct runner *r, const int *xs)
{
    int out = -1;
    int rc = pool_call(r->pool, thr_work, &out, xs[0]);
    ASSERT_EQ(rc, expected_failures(xs, 1));
    check_results(&out, xs, 1);
    check_last(r, xs, 1);
}

static void map_async(struct runner *r, const int *xs, size_t n)
{
    int out[MAX_ITEMS];
    pmap_job_t *job = NULL;
    ASSERT_OK(pool_map_async(r->pool, NULL, &job, thr_work, n, out, xs));
    ASSERT_EQ(pmap_job_wait(job, -1), expected_failures(xs, n));
    check_results(out, xs, n);
    const pmap_failure_t *f;
    size_t nf = pmap_job_failures(job, &f);
    check_failures(f, nf, xs, n);
    pmap_stats_t s;
    ASSERT_OK(pmap_job_stats(job, &s));
    ASSERT_EQ(s.items, n);
    ASSERT_EQ(s.failed, expected_failures(xs, n));
    pmap_job_free(job);
    check_last_unchanged(r);
}

static void map_stream(struct runner *r, const int *xs, size_t n)
{
    struct delivery d = {.pool = r->pool, .n = n};
    memcpy(d.xs, xs, n * sizeof *xs);
    pool_map_options_t o = {.on_result = on_result, .ctx = &d};
    int rc = pool_map_stream(r->pool, &o, thr_work, produce, &d);
    ASSERT_EQ(rc, expected_failures(xs, n));
    ASSERT_EQ(d.produced, n);
    ASSERT_EQ(d.next, n);
    check_last(r, xs, n);
}

static void *run_maps(void *arg)
{
    struct runner *r = arg;
    for (int i = 0; i < MAPS; i++) {
        int xs[MAX_ITEMS];
        size_t n = 1 + (size_t)(r->t * 31 + i * 17) % MAX_ITEMS;
        for (size_t j = 0; j < n; j++)
            xs[j] = r->t * 100000 + i * 100 + (int)j;
        switch ((i + r->t) % 5) {
        case 0:
            map_arrays(r, xs, n);
            break;
        case 1:
            map_callback(r, xs, n);
            break;
        case 2:
            map_call(r, xs);
            break;
        case 3:
            map_async(r, xs, n);
            break;
        default:
            map_stream(r, xs, n);
        }
    }
    /* No thread leaves before all are done: on Linux, workers die with the
     * thread that forked them (README, "Threads"), which would charge a
     * crash to another thread's running item. */
    pthread_barrier_wait(r->done);
    return NULL;
}

TEST(threads_many_maps_of_every_form_on_one_pool)
{
    NEEDS_PROCESSES("callbacks of other threads' maps");
    test_arm(50);
    pool_t *pool = pool_create(3);
    ASSERT(pool != NULL);
    pthread_barrier_t done;
    ASSERT(pthread_barrier_init(&done, NULL, THREADS) == 0);
    struct runner r[THREADS];
    for (int t = 0; t < THREADS; t++) {
        r[t] = (struct runner){.pool = pool, .t = t, .done = &done};
        ASSERT(pthread_create(&r[t].thread, NULL, run_maps, &r[t]) == 0);
    }
    for (int t = 0; t < THREADS; t++)
        pthread_join(r[t].thread, NULL);
    pthread_barrier_destroy(&done);
    pmap_stats_t total;
    ASSERT_OK(pool_stats(pool, NULL, &total));
    ASSERT_EQ(total.maps, THREADS * MAPS);
    pool_destroy(pool);
    alarm(0);
}

/* ---- a long map does not keep other threads out -------------------------- */

/* Pipes the workers inherit: the held item says it runs, then waits for
 * the main thread to let it end. */
static int started[2], release_[2];

static int thr_hold(int x)
{
    char c = 'x';
    if (write(started[1], &c, 1) != 1 || read(release_[0], &c, 1) != 1)
        return -1;
    return x;
}
PMAP_EXPORT(thr_hold, int, int);

struct held_call {
    pool_t *pool;
    int rc;
    int out;
};

static void *hold_a_worker(void *arg)
{
    struct held_call *c = arg;
    c->rc = pool_call(c->pool, thr_hold, &c->out, 42);
    return NULL;
}

TEST(threads_second_thread_maps_while_a_long_map_runs)
{
    NEEDS_PROCESSES("one worker held while another serves");
    test_arm(20);
    ASSERT(pipe(started) == 0 && pipe(release_) == 0);
    struct held_call call = {pool_create(2), -1, 0};
    ASSERT(call.pool != NULL);
    pthread_t t;
    ASSERT(pthread_create(&t, NULL, hold_a_worker, &call) == 0);
    char c;
    ASSERT(read(started[0], &c, 1) == 1);
    /* That thread runs the loop: pool_poll leaves it to it, at once. */
    double wake = 0;
    ASSERT_EQ(pool_poll(call.pool, &wake), 0);
    ASSERT(wake == -1);
    /* The other thread's map runs and cannot end before we let it: ours
     * must still run, and end, on the other worker (one item: a batch
     * queued behind the held one would wait for it). */
    int xs[1] = {3}, out[1];    /* fails on purpose: pmap_fail(3, ...) */
    ASSERT_EQ(pool_map(call.pool, thr_work, 1, out, xs), 1);
    check_results(out, xs, 1);
    pmap_stats_t last;
    ASSERT_OK(pool_stats(call.pool, &last, NULL));
    ASSERT_EQ(last.items, 1);
    ASSERT_EQ(last.failed, 1);
    ASSERT(write(release_[1], &c, 1) == 1);
    pthread_join(t, NULL);
    ASSERT_OK(call.rc);
    ASSERT_EQ(call.out, 42);
    ASSERT_OK(pool_stats(call.pool, &last, NULL));
    /* Still ours, not the other thread's (which did not fail). */
    ASSERT_EQ(last.items, 1);
    ASSERT_EQ(last.failed, 1);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(call.pool, &f), 1);
    check_failure(&f[0], 0, 3);
    pool_destroy(call.pool);
    close(started[0]);
    close(started[1]);
    close(release_[0]);
    close(release_[1]);
    alarm(0);
}

/* pool_cancel from a third thread cancels the maps of both threads
 * running at that moment (their items never end by themselves). */
TEST(threads_pool_cancel_reaches_every_thread)
{
    NEEDS_PROCESSES("two held workers");
    test_arm(20);
    ASSERT(pipe(started) == 0 && pipe(release_) == 0);
    pool_t *pool = pool_create(2);
    ASSERT(pool != NULL);
    struct held_call calls[2] = {{pool, -1, 0}, {pool, -1, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        ASSERT(pthread_create(&t[i], NULL, hold_a_worker, &calls[i]) == 0);
    char c;
    for (int i = 0; i < 2; i++)
        ASSERT(read(started[0], &c, 1) == 1);   /* both items run */
    pool_cancel(pool);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        ASSERT_EQ(calls[i].rc, PMAP_ECANCELED);
    }
    close(release_[1]);     /* nothing waits on it any more */
    int xs[1] = {4}, out[1];
    ASSERT_OK(pool_map(pool, thr_work, 1, out, xs));   /* usable */
    ASSERT_EQ(out[0], 13);
    pool_destroy(pool);
    close(started[0]);
    close(started[1]);
    close(release_[0]);
    alarm(0);
}

/* ---- a callback calling back into its pool ------------------------------ */

static int nested_on_result(void *ctx, size_t index, void *result,
                            const pmap_failure_t *failure)
{
    (void)result, (void)failure, (void)index;
    struct delivery *d = ctx;
    int xs[1] = {1}, out[1];
    ASSERT_EQ(pool_map(d->pool, thr_work, 1, out, xs), PMAP_EBUSY);
    ASSERT_EQ(pool_poll(d->pool, NULL), PMAP_EBUSY);
    d->next++;
    return 0;
}

TEST(threads_callback_into_its_own_pool_is_busy)
{
    test_arm(20);
    struct delivery d = {.pool = pool_create(2), .n = 3};
    ASSERT(d.pool != NULL);
    pool_map_options_t o = {.on_result = nested_on_result, .ctx = &d};
    int xs[3] = {1, 2, 4};
    ASSERT_OK(pool_map_with(d.pool, &o, thr_work, 3, NULL, xs));
    ASSERT_EQ(d.next, 3);
    /* And the pool is usable afterwards, from this thread. */
    int out[3];
    ASSERT_OK(pool_map(d.pool, thr_work, 3, out, xs));
    check_results(out, xs, 3);
    pool_destroy(d.pool);
    alarm(0);
}
