/* SPDX-License-Identifier: MIT */
/*
 * test_inline.c - the in-process start method and the environment: the
 * callbacks run in the caller with the semantics of a map (runner
 * --in-process runs the map tests that way too), and PMAP_WORKERS,
 * PMAP_START and PMAP_CHUNK steer a program that passes no options, never
 * one that does.
 */
#include "test.h"

#include "pmap_internal.h"

#include <stdbool.h>
#include <unistd.h>

static int inits, exits;

static int count_init(int worker, void *arg)
{
    inits += worker == 0 && arg == &inits;
    return 0;
}

static void count_exit(int worker, void *arg)
{
    exits += worker == 0 && arg == &inits;
}

/* The process and worker index it runs in; fails item 3 on purpose. */
static long where(long x)
{
    if (x == 3)
        pmap_fail(33, "three is %s", "refused");
    return (long)getpid() * 100 + pmap_worker_index();
}
PMAP_EXPORT(where, long, long);

struct seen {
    size_t results, progress, last;
    bool in_order;
};

static int on_result(void *ctx, size_t index, void *result,
                     const pmap_failure_t *failure)
{
    struct seen *s = ctx;
    (void)result;
    (void)failure;
    s->in_order &= index == s->results;
    s->results++;
    return index == 40;     /* cancel the map there */
}

static int on_progress(void *ctx, const pmap_progress_t *p)
{
    struct seen *s = ctx;
    s->progress++;
    s->last = p->done;
    return 0;
}

TEST(inline_callbacks_run_in_the_callers_process)
{
    pool_options_t po = {.workers = 4, .start = PMAP_START_INLINE,
                         .worker_init = count_init,
                         .worker_exit = count_exit, .worker_arg = &inits};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT_EQ(inits, 1);    /* here, once */
    ASSERT_EQ(pool_size(pool), 1);
    long xs[10], out[10];
    for (long i = 0; i < 10; i++)
        xs[i] = i;
    ASSERT_EQ(pool_map(pool, where, 10, out, xs), 1);
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(out[i], i == 3 ? 0 : (long)getpid() * 100);
    const pmap_failure_t *f;
    ASSERT_EQ(pool_failures(pool, &f), 1);
    ASSERT_EQ(f[0].index, 3);
    ASSERT_EQ(f[0].error, PMAP_EFAIL);
    ASSERT_EQ(f[0].code, 33);
    ASSERT_STR_EQ(f[0].message, "three is refused");
    ASSERT_EQ(pmap_worker_index(), -1);     /* outside a callback */
    pool_destroy(pool);
    ASSERT_EQ(exits, 1);
}

TEST(inline_progress_cancellation_and_statistics)
{
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &(pool_options_t){
                                          .start = PMAP_START_INLINE}));
    long xs[1000];
    for (long i = 0; i < 1000; i++)
        xs[i] = i;
    struct seen s = {0, 0, 0, true};
    pool_map_options_t o = {.on_result = on_result,
                            .on_progress = on_progress,
                            .progress_interval = 1e-6, .ctx = &s,
                            .chunk = 10};
    ASSERT_EQ(pool_map_with(pool, &o, where, 1000, (long *)NULL, xs),
              PMAP_ECANCELED);
    ASSERT(s.in_order);
    ASSERT_EQ(s.results, 1000);     /* the rest handed over as cancelled */
    ASSERT(s.progress >= 2);
    ASSERT_EQ(s.last, 1000);
    pmap_stats_t last;
    ASSERT_OK(pool_stats(pool, &last, NULL));
    ASSERT(last.batches >= 5 && last.batches < 10);     /* stopped early */
    ASSERT(last.failed > 900);
    pool_destroy(pool);
}

/* A program that passes nothing is steered by the environment; malformed
 * values are ignored, and pool_config says which won. */
TEST(environment_steers_only_what_the_program_leaves_open)
{
    pool_t *pool;
    pmap_config_t c;
    setenv("PMAP_WORKERS", "3", 1);
    setenv("PMAP_CHUNK", "7", 1);
    ASSERT_OK(pool_create_with(&pool, NULL));
    ASSERT_OK(pool_config(pool, &c));
    ASSERT_EQ(pool_size(pool), 3);
    ASSERT_EQ(c.workers, 3);
    ASSERT_EQ(c.workers_from, PMAP_FROM_ENV);
    ASSERT_EQ(c.chunk, 7);
    ASSERT_EQ(c.chunk_from, PMAP_FROM_ENV);
    ASSERT_EQ(c.start, PMAP_START_FORK);
    ASSERT_EQ(c.start_from, PMAP_FROM_AUTO);
    long xs[21], out[21];
    for (long i = 0; i < 21; i++)
        xs[i] = i;
    ASSERT_OK(pool_map(pool, where, 21, out, xs) == 1 ? 0 : -1);
    pmap_stats_t last;
    ASSERT_OK(pool_stats(pool, &last, NULL));
    ASSERT_EQ(last.batches, 3);     /* 21 items, 7 a batch */
    pool_destroy(pool);

    ASSERT_OK(pool_create_with(&pool, &(pool_options_t){.workers = 2,
                                                          .chunk = 4}));
    ASSERT_OK(pool_config(pool, &c));
    ASSERT_EQ(c.workers, 2);
    ASSERT_EQ(c.workers_from, PMAP_FROM_OPTION);
    ASSERT_EQ(c.chunk, 4);
    ASSERT_EQ(c.chunk_from, PMAP_FROM_OPTION);
    pool_destroy(pool);

    setenv("PMAP_WORKERS", "many", 1);
    setenv("PMAP_CHUNK", "-2", 1);
    setenv("PMAP_START", "server", 1);  /* no pmap_init: unusable */
    ASSERT_OK(pool_create_with(&pool, NULL));
    ASSERT_OK(pool_config(pool, &c));
    ASSERT_EQ(c.workers_from, PMAP_FROM_ENV_IGNORED);
    ASSERT_EQ(c.chunk, 0);
    ASSERT_EQ(c.chunk_from, PMAP_FROM_ENV_IGNORED);
    ASSERT_EQ(c.start, PMAP_START_FORK);
    ASSERT_EQ(c.start_from, PMAP_FROM_ENV_IGNORED);
    pool_destroy(pool);
    unsetenv("PMAP_WORKERS");
    unsetenv("PMAP_CHUNK");
    unsetenv("PMAP_START");
}

/* PMAP_START=inline runs an unchanged program in process... */
TEST(environment_runs_a_program_in_process)
{
    setenv("PMAP_START", "inline", 1);
    pool_t *pool = pool_create(0);
    ASSERT(pool != NULL);
    pmap_config_t c;
    ASSERT_OK(pool_config(pool, &c));
    ASSERT_EQ(c.start, PMAP_START_INLINE);
    ASSERT_EQ(c.start_from, PMAP_FROM_ENV);
    long x = 5, r = 0;
    ASSERT_OK(pool_call(pool, where, &r, x));
    ASSERT_EQ(r, (long)getpid() * 100);
    pool_destroy(pool);
    /* ...unless the program chose its start method itself. */
    pool_options_t po = {.workers = 1, .start = PMAP_START_FORK};
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT_OK(pool_call(pool, where, &r, x));
    ASSERT(r / 100 != (long)getpid());
    pool_destroy(pool);
    unsetenv("PMAP_START");
}

static pool_t *other;

/* Tries to use a pool from inside a callback run in process. */
static long nest(long x)
{
    if (x == 0) {
        pool_t *p;
        return pool_create_with(&p, NULL);
    }
    long r;
    return pool_call(other, where, &r, x);
}
PMAP_EXPORT(nest, long, long);

/* Inside a callback run in process, the caller is a worker: pools are
 * refused there as in any worker, instead of clobbering its state. */
TEST(inline_callbacks_may_not_use_pools)
{
    pool_options_t po = {.start = PMAP_START_INLINE};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    ASSERT_OK(pool_create_with(&other, &po));
    long xs[2] = {0, 1}, out[2];
    ASSERT_OK(pool_map(pool, nest, 2, out, xs));
    ASSERT_EQ(out[0], PMAP_ENESTED);
    ASSERT_EQ(out[1], PMAP_ENESTED);
    long r;
    ASSERT_OK(pool_call(other, where, &r, 5));  /* both still usable */
    ASSERT_OK(pool_map(pool, where, 2, out, xs));
    pool_destroy(other);
    pool_destroy(pool);
}

static char *megabyte(long x)
{
    char *s = malloc(1 << 20);
    if (s != NULL) {
        memset(s, 'a' + (int)(x % 26), (1 << 20) - 1);
        s[(1 << 20) - 1] = '\0';
    }
    return s;
}
PMAP_EXPORT(megabyte, char *, long);

/* The answers read back in process are dropped once taken: memory does
 * not grow with the number of maps. */
TEST(inline_memory_stays_flat_over_many_maps)
{
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &(pool_options_t){
                                          .start = PMAP_START_INLINE}));
    long xs[4] = {0, 1, 2, 3};
    char *out[4];
    size_t first = 0;
    for (int round = 0; round < 30; round++) {
        ASSERT_OK(pool_map(pool, megabyte, 4, out, xs));
        for (int i = 0; i < 4; i++) {
            ASSERT_EQ(strlen(out[i]), (1 << 20) - 1);
            free(out[i]);
        }
        size_t cap = pool->workers[0].in.buf.cap;
        if (round == 0)
            first = cap;
        ASSERT(cap <= 2 * first);   /* 30 maps: 120 MiB if kept */
    }
    pool_destroy(pool);
}
