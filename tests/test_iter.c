/* SPDX-License-Identifier: MIT */
/*
 * test_iter.c - an empty map is a map; pmap_item_index in every kind of
 * map; pmap_job_next over a background map's results, in order and as
 * they finish; pool_call_async with options.  The map_ tests run again
 * with in-process pools (runner --in-process), and some make one here.
 */
#include "test.h"

#include "pmap_internal.h"

#include <fcntl.h>
#include <math.h>
#include <unistd.h>

/* The index of the item being run; x < 0 fails it on purpose (code -x,
 * the index in the message); x == 1000000 crashes its worker. */
static long whoami(int x)
{
    if (x == 1000000)
        abort();
    if (x < 0)
        pmap_fail(-x, "item %ld", pmap_item_index());
    return pmap_item_index();
}
PMAP_EXPORT(whoami, long, int);

/* Same, for a stream (a producer's items). */
static long whoami_streamed(long x)
{
    (void)x;
    return pmap_item_index();
}
PMAP_EXPORT(whoami_streamed, long, long);

/* Outside any item, in a worker, there is no index. */
static int refuse_if_indexed(int worker, void *arg)
{
    (void)worker;
    (void)arg;
    return pmap_item_index() != -1;
}

static pool_t *make_pool(int workers, int start)
{
    pool_options_t o = {.workers = workers, .start = start,
                        .worker_init = refuse_if_indexed};
    pool_t *pool = NULL;
    ASSERT_OK(pool_create_with(&pool, &o));
    return pool;
}

/* ---- an empty map ------------------------------------------------------ */

struct calls {
    int results, progress;
    pmap_progress_t last;
};

static int count_result(void *ctx, size_t index, void *result,
                        const pmap_failure_t *failure)
{
    (void)index;
    (void)result;
    (void)failure;
    ((struct calls *)ctx)->results++;
    return 0;
}

static int count_progress(void *ctx, const pmap_progress_t *p)
{
    struct calls *c = ctx;
    c->progress++;
    c->last = *p;
    return 0;
}

static void assert_empty_maps(pool_t *pool)
{
    int xs[1] = {-3};
    long out[1] = {42};
    int *no_xs = NULL;
    long *no_out = NULL;
    /* A map that fails leaves failures; an empty map after it has none. */
    ASSERT_EQ(pool_map(pool, whoami, 1, out, xs), 1);
    ASSERT_EQ(pool_failures(pool, NULL), 1);
    out[0] = 42;
    ASSERT_OK(pool_map(pool, whoami, 0, out, xs));
    ASSERT_EQ(out[0], 42);          /* nothing written */
    ASSERT_EQ(pool_failures(pool, NULL), 0);
    ASSERT_OK(pool_map(pool, whoami, 0, no_out, no_xs));
    ASSERT_OK(pool_map(pool, whoami, 0, no_out, PMAP_CONST(1)));
    pmap_stats_t last;
    ASSERT_OK(pool_stats(pool, &last, NULL));
    ASSERT_EQ(last.maps, 1);
    ASSERT_EQ(last.items, 0);
    ASSERT_EQ(last.batches, 0);     /* no worker was sent anything */
    ASSERT_EQ(last.bytes_sent, 0);

    /* Callbacks: no result, one final progress call, 0 of 0. */
    struct calls c = {0, 0, {9, 9, 9, 0}};
    pool_map_options_t o = {.on_result = count_result,
                            .on_progress = count_progress, .ctx = &c};
    ASSERT_OK(pool_map_with(pool, &o, whoami, 0, no_out, no_xs));
    ASSERT_EQ(c.results, 0);
    ASSERT_EQ(c.progress, 1);
    ASSERT_EQ(c.last.done, 0);
    ASSERT_EQ(c.last.failed, 0);
    ASSERT_EQ(c.last.total, 0);
    /* out with on_result is still a contradiction. */
    ASSERT_EQ(pool_map_with(pool, &o, whoami, 0, out, xs), PMAP_EINVAL);

    /* In the background: started, finished, nothing to hand out. */
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, NULL, &job, whoami, 0, no_out, no_xs));
    ASSERT_OK(pmap_job_wait(job, -1));
    size_t i = 7;
    ASSERT_EQ(pmap_job_next(job, &i, NULL, -1), 0);
    ASSERT_EQ(i, 7);
    ASSERT_EQ(pmap_job_failures(job, NULL), 0);
    pmap_job_free(job);
    c.progress = 0;
    ASSERT_OK(pool_map_async(pool, &o, &job, whoami, 0, no_out, xs));
    ASSERT_OK(pmap_job_wait(job, -1));
    ASSERT_EQ(c.progress, 1);
    ASSERT_EQ(c.results, 0);
    pmap_job_free(job);
}

TEST(map_empty_map_is_a_map)
{
    pool_t *pool = make_pool(2, PMAP_START_AUTO);
    assert_empty_maps(pool);
    pool_destroy(pool);
    pool = make_pool(1, PMAP_START_INLINE);
    assert_empty_maps(pool);
    pool_destroy(pool);
}

/* ---- pmap_item_index --------------------------------------------------- */

struct stream {
    long next, n, wrong, seen;
};

static int produce(void *ctx, long *x)
{
    struct stream *s = ctx;
    if (s->next == s->n)
        return 0;
    *x = s->next++;
    return 1;
}

static int check_index(void *ctx, size_t index, void *result,
                       const pmap_failure_t *failure)
{
    struct stream *s = ctx;
    s->seen++;
    if (failure != NULL || *(long *)result != (long)index)
        s->wrong++;
    return 0;
}

static void assert_item_indices(pool_t *pool)
{
    enum { N = 500 };
    int xs[N];
    long out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i % 50 == 7 ? -5 : i;
    ASSERT_EQ(pool_map(pool, whoami, N, out, xs), N / 50);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), N / 50);
    for (int k = 0; k < N / 50; k++) {
        char want[32];
        snprintf(want, sizeof want, "item %zu", f[k].index);
        ASSERT_EQ(f[k].index, 50 * k + 7);
        ASSERT_STR_EQ(f[k].message, want);
    }
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], i % 50 == 7 ? 0 : i);

    /* Small batches, out of order. */
    pool_map_options_t o = {.chunk = 3};
    for (int i = 0; i < N; i++)
        xs[i] = i;
    ASSERT_OK(pool_map_with(pool, &o, whoami, N, out, xs));
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], i);

    /* A stream's items are numbered as the producer made them. */
    struct stream s = {0, 3000, 0, 0};
    pool_map_options_t so = {.on_result = check_index, .ctx = &s,
                             .window = 64, .unordered = 1};
    ASSERT_OK(pool_map_stream(pool, &so, whoami_streamed, produce, &s));
    ASSERT_EQ(s.seen, 3000);
    ASSERT_EQ(s.wrong, 0);

    long r = 99;
    ASSERT_OK(pool_call(pool, whoami, &r, 12));
    ASSERT_EQ(r, 0);
    ASSERT_EQ(pmap_item_index(), -1);   /* the caller runs no item */
}

TEST(map_item_index_in_every_kind_of_map)
{
    ASSERT_EQ(pmap_item_index(), -1);
    pool_t *pool = make_pool(3, PMAP_START_AUTO);
    assert_item_indices(pool);
    pool_destroy(pool);
    pool = make_pool(1, PMAP_START_INLINE);
    assert_item_indices(pool);
    pool_destroy(pool);
}

/* The items of a batch whose worker crashed are sent again: they keep
 * their indices. */
TEST(map_item_index_of_items_sent_again)
{
    NEEDS_PROCESSES("a crashing item");
    enum { N = 200 };
    int xs[N];
    long out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i == 40 || i == 123 ? 1000000 : i;
    pool_t *pool = make_pool(2, PMAP_START_AUTO);
    pool_map_options_t o = {.chunk = 16};
    ASSERT_EQ(pool_map_with(pool, &o, whoami, N, out, xs), 2);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 2);
    ASSERT_EQ(f[0].index, 40);
    ASSERT_EQ(f[0].error, PMAP_ECRASH);
    ASSERT_EQ(f[1].index, 123);
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], i == 40 || i == 123 ? 0 : i);
    pool_destroy(pool);
}

/* ---- pmap_job_next ----------------------------------------------------- */

/* Iterates a background map of n items (every 37th fails with code 4)
 * and checks each item is handed out once, in order unless unordered. */
static void assert_iteration(pool_t *pool, size_t n, int unordered)
{
    int *xs = malloc(n * sizeof *xs);
    long *out = malloc(n * sizeof *out);
    unsigned char *seen = calloc(n, 1);
    ASSERT(xs && out && seen);
    for (size_t i = 0; i < n; i++)
        xs[i] = i % 37 == 5 ? -4 : (int)i;
    pool_map_options_t o = {.unordered = unordered, .chunk = unordered};
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &o, &job, whoami, n, out, xs));
    size_t i, count = 0, failed = 0, last = 0;
    const pmap_failure_t *f;
    int rc;
    while ((rc = pmap_job_next(job, &i, &f, -1)) > 0) {
        ASSERT(i < n);
        ASSERT(!seen[i]);
        seen[i] = 1;
        if (!unordered)
            ASSERT_EQ(i, count);
        if (xs[i] < 0) {
            ASSERT(f != NULL);
            ASSERT_EQ(f->index, i);
            ASSERT_EQ(f->error, PMAP_EFAIL);
            ASSERT_EQ(f->code, 4);
            char want[32];
            snprintf(want, sizeof want, "item %zu", i);
            ASSERT_STR_EQ(f->message, want);
            failed++;
        } else {
            ASSERT(f == NULL);
            ASSERT_EQ(out[i], (long)i);
        }
        last = i;
        count++;
    }
    (void)last;
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(count, n);
    ASSERT_EQ(pmap_job_next(job, &i, &f, 0), 0);    /* still the end */
    ASSERT_EQ(pmap_job_wait(job, -1), (int)failed);
    ASSERT_EQ(pmap_job_failures(job, NULL), failed);
    pmap_job_free(job);
    free(xs);
    free(out);
    free(seen);
}

TEST(map_job_next_in_input_order)
{
    pool_t *pool = make_pool(3, PMAP_START_AUTO);
    assert_iteration(pool, 5000, 0);
    assert_iteration(pool, 1, 0);
    pool_destroy(pool);
    pool = make_pool(1, PMAP_START_INLINE);
    assert_iteration(pool, 300, 0);
    pool_destroy(pool);
}

/* Appends the index of the item it runs to the file at path. */
static int log_start(int x, const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    long i = pmap_item_index();
    if (fd < 0 || write(fd, &i, sizeof i) != sizeof i)
        pmap_fail(1, "cannot log item %ld", i);
    if (fd >= 0)
        close(fd);
    return x;
}
PMAP_EXPORT(log_start, int, int, const char *);

/*
 * Iterated in order, a map sends its items in input order (README, "Which
 * items a worker gets"): the results are handed out as the front of the
 * map finishes, with every worker on it, not as one worker gets through a
 * share of its own.  Whatever the timing, an item then starts after all
 * but the few in flight on the other worker (each holds PMAP__DEPTH
 * batches of 1): the start of item i comes at place i - 2 or later.
 * (With one share a worker, the second worker starts with item N / 2.)
 */
TEST(map_job_next_in_order_sends_items_in_order)
{
    NEEDS_PROCESSES("each item's start, logged by its worker");
    enum { N = 64, W = 2 };
    char path[] = "/tmp/pmap-iter-XXXXXX";
    int log = mkstemp(path);
    ASSERT(log >= 0);
    pool_t *pool = make_pool(W, PMAP_START_FORK);
    int xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_map_options_t o = {.chunk = 1};
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &o, &job, log_start, N, out, xs,
                             PMAP_CONST((const char *)path)));
    size_t i, count = 0;
    while (pmap_job_next(job, &i, NULL, -1) > 0)
        ASSERT_EQ(i, count++);
    ASSERT_EQ(count, N);
    ASSERT_OK(pmap_job_wait(job, -1));
    pmap_job_free(job);
    long started[N];
    ASSERT_EQ(read(log, started, sizeof started), (ssize_t)sizeof started);
    for (int place = 0; place < N; place++) {
        if (started[place] > place + (W - 1) * PMAP__DEPTH)
            test_fail(__FILE__, __LINE__, "item %ld started at place %d",
                      started[place], place);
    }
    close(log);
    unlink(path);
    pool_destroy(pool);
}

TEST(map_job_next_unordered_hands_every_item_once)
{
    pool_t *pool = make_pool(3, PMAP_START_AUTO);
    assert_iteration(pool, 3000, 1);
    assert_iteration(pool, 130, 1);
    pool_destroy(pool);
    pool = make_pool(1, PMAP_START_INLINE);
    assert_iteration(pool, 300, 1);
    pool_destroy(pool);
}

/* Results that were waited for are handed out all the same. */
TEST(map_job_next_after_wait_and_with_two_maps)
{
    enum { N = 400 };
    int xs[N];
    long a[N], b[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_t *pool = make_pool(2, PMAP_START_AUTO);
    pmap_job_t *first, *second;
    pool_map_options_t o = {.unordered = 1};
    ASSERT_OK(pool_map_async(pool, NULL, &first, whoami, N, a, xs));
    ASSERT_OK(pool_map_async(pool, &o, &second, whoami, N, b, xs));
    ASSERT_OK(pmap_job_wait(first, -1));
    size_t i, k = 0, from_second = 0;
    const pmap_failure_t *f;
    /* Alternate between the two: each keeps its own place. */
    for (;;) {
        int r1 = pmap_job_next(first, &i, &f, -1);
        if (r1 > 0) {
            ASSERT_EQ(i, k);
            ASSERT_EQ(a[i], (long)i);
            k++;
        }
        int r2 = pmap_job_next(second, &i, &f, -1);
        if (r2 > 0) {
            ASSERT_EQ(b[i], (long)i);
            from_second++;
        }
        ASSERT(r1 >= 0 && r2 >= 0);
        if (r1 == 0 && r2 == 0)
            break;
    }
    ASSERT_EQ(k, N);
    ASSERT_EQ(from_second, N);
    pmap_job_free(first);
    pmap_job_free(second);
    pool_destroy(pool);
}

static int ignore_result(void *ctx, size_t index, void *result,
                         const pmap_failure_t *failure)
{
    (void)ctx;
    (void)index;
    (void)result;
    (void)failure;
    return 0;
}

TEST(map_job_next_refuses_what_it_cannot_iterate)
{
    int xs[4] = {1, 2, 3, 4};
    long out[4];
    size_t i;
    const pmap_failure_t *f;
    pool_t *pool = make_pool(2, PMAP_START_AUTO);
    pmap_job_t *job;
    ASSERT_EQ(pmap_job_next(NULL, &i, &f, -1), PMAP_EINVAL);
    ASSERT_OK(pool_map_async(pool, NULL, &job, whoami, 4, out, xs));
    ASSERT_EQ(pmap_job_next(job, NULL, &f, -1), PMAP_EINVAL);
    ASSERT_EQ(pmap_job_next(job, &i, &f, NAN), PMAP_EINVAL);
    ASSERT_OK(pmap_job_wait(job, -1));
    pmap_job_free(job);

    /* Results that go to on_result are that callback's. */
    pool_map_options_t o = {.on_result = ignore_result};
    ASSERT_OK(pool_map_async(pool, &o, &job, whoami, 4, (long *)NULL, xs));
    ASSERT_EQ(pmap_job_next(job, &i, &f, -1), PMAP_EINVAL);
    ASSERT_OK(pmap_job_wait(job, -1));
    pmap_job_free(job);
    struct stream s = {0, 10, 0, 0};
    ASSERT_OK(pool_map_stream_async(pool, &o, &job, whoami_streamed, produce,
                                    &s));
    ASSERT_EQ(pmap_job_next(job, &i, &f, -1), PMAP_EINVAL);
    ASSERT_OK(pmap_job_wait(job, -1));
    pmap_job_free(job);
    pool_destroy(pool);
}

/* Blocks until a byte can be read from the pipe the pool inherited. */
static int gate = -1;
static long wait_for_gate(int x)
{
    char c;
    if (read(gate, &c, 1) != 1)
        return -1;
    return x + pmap_item_index();
}
PMAP_EXPORT(wait_for_gate, long, int);

/* A map that has nothing to hand out yet: the wait times out, the map
 * goes on; pool_call_async's single item is item 0. */
TEST(map_job_next_times_out_and_goes_on)
{
    NEEDS_PROCESSES("an item blocked until the test lets it go");
    int fds[2];
    ASSERT_OK(pipe(fds));
    gate = fds[0];
    pool_t *pool = make_pool(1, PMAP_START_AUTO);
    long r = 0;
    pmap_job_t *job;
    ASSERT_OK(pool_call_async(pool, NULL, &job, wait_for_gate, &r, 41));
    size_t i = 9;
    const pmap_failure_t *f;
    ASSERT_EQ(pmap_job_next(job, &i, &f, 0), PMAP_ETIMEDOUT);
    ASSERT_EQ(pmap_job_next(job, &i, &f, 0.01), PMAP_ETIMEDOUT);
    ASSERT_EQ(i, 9);
    ASSERT_EQ(write(fds[1], "x", 1), 1);
    ASSERT_EQ(pmap_job_next(job, &i, &f, -1), 1);
    ASSERT_EQ(i, 0);
    ASSERT(f == NULL);
    ASSERT_EQ(r, 41);
    ASSERT_EQ(pmap_job_next(job, &i, &f, 0), 0);
    pmap_job_free(job);
    pool_destroy(pool);
    close(fds[0]);
    close(fds[1]);
}

/* A cancelled map hands out every item: run, or failed as cancelled. */
TEST(map_job_next_of_a_cancelled_map)
{
    enum { N = 2000 };
    static int xs[N];
    static long out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_t *pool = make_pool(2, PMAP_START_AUTO);
    pmap_job_t *job;
    pool_map_options_t o = {.chunk = 1};
    ASSERT_OK(pool_map_async(pool, &o, &job, whoami, N, out, xs));
    pmap_job_cancel(job);
    size_t i, count = 0;
    const pmap_failure_t *f;
    int rc;
    while ((rc = pmap_job_next(job, &i, &f, -1)) > 0) {
        ASSERT_EQ(i, count);
        if (f != NULL)
            ASSERT_EQ(f->error, PMAP_ECANCELED);
        else
            ASSERT_EQ(out[i], (long)i);
        count++;
    }
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(count, N);
    rc = pmap_job_wait(job, -1);
    ASSERT(rc == PMAP_ECANCELED || rc == 0);
    pmap_job_free(job);
    pool_destroy(pool);
}

static void copy_int(void *result, void *const *argv)
{
    *(int *)result = *(int *)argv[0];
}

/* A map that cannot run at all: pmap_job_next says why, every time. */
TEST(error_job_next_of_a_map_that_cannot_run)
{
    NEEDS_PROCESSES("a function the workers do not know");
    pool_t *pool = make_pool(2, PMAP_START_AUTO);
    /* Registered after the workers were forked: unknown to them. */
    pmap__fn_t late = {.name = "late", .file = __FILE__, .line = __LINE__,
                       .nparams = 1,
                       .result = {.kind = PMAP__VALUE, .size = sizeof(int)},
                       .params = {{.kind = PMAP__VALUE, .size = sizeof(int)}},
                       .call = copy_int};
    pmap__register(&late);
    int xs[40] = {0}, out[40];
    pmap__arg_t arg = {xs, NULL, 1, 0};
    pmap_job_t *job = NULL;
    ASSERT_OK(pmap__map(pool, &(pmap__call_t){.count = 40, .handle = &job},
                        &late, out, 1, &arg));
    size_t i;
    const pmap_failure_t *f;
    ASSERT_EQ(pmap_job_next(job, &i, &f, -1), PMAP_ENOFUNC);
    ASSERT_EQ(pmap_job_next(job, &i, &f, 0), PMAP_ENOFUNC);
    ASSERT_EQ(pmap_job_wait(job, -1), PMAP_ENOFUNC);
    pmap_job_free(job);
    pmap__unregister(&late);
    pool_destroy(pool);
}

/* ---- pool_call_async with options --------------------------------------- */

struct one {
    int calls, progress;
    size_t index;
    long value;
};

static int take_one(void *ctx, size_t index, void *result,
                    const pmap_failure_t *failure)
{
    struct one *o = ctx;
    o->calls++;
    o->index = index;
    o->value = failure == NULL ? *(long *)result : -1;
    return 0;
}

static int one_progress(void *ctx, const pmap_progress_t *p)
{
    struct one *o = ctx;
    if (p->total == 1)
        o->progress++;
    return 0;
}

TEST(map_call_async_takes_options)
{
    pool_t *pool = make_pool(2, PMAP_START_AUTO);
    struct one seen = {0, 0, 99, 0};
    pool_map_options_t o = {.on_result = take_one,
                            .on_progress = one_progress, .ctx = &seen};
    pmap_job_t *job;
    ASSERT_OK(pool_call_async(pool, &o, &job, whoami, (long *)NULL, 5));
    ASSERT_OK(pmap_job_wait(job, -1));
    pmap_job_free(job);
    ASSERT_EQ(seen.calls, 1);
    ASSERT_EQ(seen.index, 0);
    ASSERT_EQ(seen.value, 0);       /* whoami: its index */
    ASSERT(seen.progress >= 1);
    /* A failure is recorded as in a map of one item. */
    long r = 7;
    ASSERT_OK(pool_call_async(pool, NULL, &job, whoami, &r, -6));
    ASSERT_EQ(pmap_job_wait(job, -1), 1);
    const pmap_failure_t *f;
    ASSERT_EQ(pmap_job_failures(job, &f), 1);
    ASSERT_EQ(f[0].index, 0);
    ASSERT_EQ(f[0].code, 6);
    ASSERT_STR_EQ(f[0].message, "item 0");
    ASSERT_EQ(r, 0);
    pmap_job_free(job);
    pool_destroy(pool);
}
