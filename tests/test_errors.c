/* SPDX-License-Identifier: MIT */
/*
 * test_errors.c - bad input and misuse get a clear code and leave the pool
 * usable: NULL pool, output or arrays, absurd worker counts,
 * callbacks that cannot be identified, a forked child, a call
 * from inside a worker.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE     /* syscall */
#endif

#include "test.h"

#include <pmap.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

static int twice(int x)
{
    return 2 * x;
}
PMAP_EXPORT(twice, int, int);

/* The pool still maps correctly. */
static void assert_usable(pool_t *pool)
{
    int xs[5] = {1, 2, 3, 4, 5}, out[5];
    ASSERT_OK(pool_map(pool, twice, 5, out, xs));
    for (int i = 0; i < 5; i++)
        ASSERT_EQ(out[i], 2 * xs[i]);
}

TEST(error_bad_arguments)
{
    int xs[5] = {0}, out[5];
    int *none = NULL;
    pool_t *pool = pool_create(2);
    ASSERT_EQ(pool_map(NULL, twice, 5, out, xs), PMAP_EINVAL);
    ASSERT_EQ(pool_map(pool, twice, 5, (int *)NULL, xs), PMAP_EINVAL);
    ASSERT_EQ(pool_map(pool, twice, 5, out, none), PMAP_EINVAL);
    ASSERT_OK(pool_map(pool, twice, 0, out, xs));  /* an empty map */
    ASSERT_EQ(pool_map(NULL, twice, 0, out, xs), PMAP_EINVAL);
    assert_usable(pool);
    pool_destroy(pool);
}

TEST(error_absurd_worker_counts)
{
    pool_t *pool = (pool_t *)&pool;
    ASSERT(pool_create(-1) == NULL);
    ASSERT(pool_create(PMAP_MAX_WORKERS + 1) == NULL);
    pool_options_t opts = {.workers = -5};
    ASSERT_EQ(pool_create_with(&pool, &opts), PMAP_EINVAL);
    ASSERT(pool == NULL);
    ASSERT_EQ(pool_create_with(NULL, NULL), PMAP_EINVAL);
    ASSERT_EQ(pool_size(NULL), PMAP_EINVAL);
    pool_destroy(NULL);
}

/* Every option pmap.h says is refused: a NaN or negative timeout or
 * start_timeout, a NaN cancel_grace, an unknown start, for the pool and
 * for a map; nothing is made, and the pool at hand still maps. */
TEST(error_bad_options_refused)
{
    double nan = strtod("nan", NULL);
    pool_options_t bad_pool[] = {
        {.timeout = nan},       {.timeout = -1},
        {.start_timeout = nan}, {.start_timeout = -1},
        {.cancel_grace = nan},  {.start = 99},
        {.start = -1}};
    for (size_t k = 0; k < sizeof bad_pool / sizeof *bad_pool; k++) {
        pool_t *none = (pool_t *)&none;
        ASSERT_EQ(pool_create_with(&none, &bad_pool[k]), PMAP_EINVAL);
        ASSERT(none == NULL);
    }
    pool_t *pool = pool_create(2);
    int xs[5] = {1, 2, 3, 4, 5}, out[5];
    pool_map_options_t bad_map[] = {{.timeout = nan}, {.cancel_grace = nan}};
    for (size_t k = 0; k < sizeof bad_map / sizeof *bad_map; k++)
        ASSERT_EQ(pool_map_with(pool, &bad_map[k], twice, 5, out, xs),
                  PMAP_EINVAL);
    assert_usable(pool);
    pool_destroy(pool);
}

static void fake_call(void *result, void *const *argv)
{
    *(int *)result = *(int *)argv[0];
}

/* A descriptor of int f(int), made by hand as PMAP_EXPORT would. */
static pmap__fn_t describe(const char *name, int line,
                           void (*call)(void *, void *const *))
{
    const pmap__type_t integer = {.kind = PMAP__VALUE, .size = sizeof(int)};
    return (pmap__fn_t){.name = name, .file = __FILE__, .line = line,
                        .nparams = 1, .result = integer,
                        .params = {integer}, .call = call};
}

/* A descriptor that no constructor registered. */
TEST(error_function_not_registered)
{
    pool_t *pool = pool_create(2);
    pmap__fn_t fake = describe("fake", __LINE__, NULL);
    int xs[3] = {0}, out[3];
    pmap__arg_t arg = {xs, NULL, 1, 0};
    ASSERT_EQ(pmap__map(pool, &(pmap__call_t){.count = 3}, &fake, out, 1, &arg), PMAP_ENOFUNC);
    assert_usable(pool);
    pool_destroy(pool);
}

/* Two exports with one identifier (name, file and line) are refused. */
TEST(error_ambiguous_identifier)
{
    pool_t *pool = pool_create(2);
    pmap__fn_t twin = describe("twice", 0, fake_call);
    int xs[3] = {1, 2, 3}, out[3];
    pmap__arg_t arg = {xs, NULL, 1, 0};
    pmap__register(&twin);
    pmap__fn_t other = twin;
    pmap__register(&other);     /* same name, file, line: same identifier */
    ASSERT_EQ(pmap__map(pool, &(pmap__call_t){.count = 3}, &twin, out, 1, &arg), PMAP_EAMBIGUOUS);
    pmap__unregister(&other);
    assert_usable(pool);
    pmap__unregister(&twin);
    pool_destroy(pool);
}

/* Registered in the caller after the workers were forked (as with dlopen):
 * the workers cannot find it, and say so. */
TEST(error_function_unknown_to_workers)
{
    pool_t *pool = pool_create(2);
    pmap__fn_t late = describe("late", __LINE__, fake_call);
    pmap__register(&late);
    int xs[40] = {0}, out[40];
    pmap__arg_t arg = {xs, NULL, 1, 0};
    ASSERT_EQ(pmap__map(pool, &(pmap__call_t){.count = 40}, &late, out, 1, &arg), PMAP_ENOFUNC);
    pmap__unregister(&late);
    assert_usable(pool);
    pool_destroy(pool);
}

/* The pool comes as an argument: its workers were forked before
 * pool_create returned it, so a global would be NULL in them. */
static int nested(int x, long pool)
{
    int out;
    return pool_map((pool_t *)(intptr_t)pool, twice, 1, &out, &x);
}
PMAP_EXPORT(nested, int, int, long);

/* A callback mapping on its worker's copy of the pool is refused, and
 * the caller's pool is intact. */
TEST(error_pool_map_inside_a_worker)
{
    pool_t *pool = pool_create(2);
    int xs[4] = {1, 2, 3, 4}, out[4];
    ASSERT_OK(pool_map(pool, nested, 4, out, xs,
                       PMAP_CONST((long)(intptr_t)pool)));
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(out[i], PMAP_ENESTED);
    assert_usable(pool);
    pool_destroy(pool);
}

static int nested_create(int x)
{
    pool_t *p;
    (void)x;
    return pool_create_with(&p, NULL);
}
PMAP_EXPORT(nested_create, int, int);

TEST(error_pool_create_inside_a_worker)
{
    pool_t *pool = pool_create(1);
    int xs[2] = {0, 1}, out[2];
    ASSERT_OK(pool_map(pool, nested_create, 2, out, xs));
    ASSERT_EQ(out[0], PMAP_ENESTED);
    pool_destroy(pool);
}

static int destroyed_here;  /* in each worker: its copy was destroyed */

/* The pool comes as an argument: its workers were forked before
 * pool_create returned it. */
static int destroy_own_copy(int x, long pool)
{
    (void)x;
    if (!destroyed_here) {
        destroyed_here = 1;
        pool_destroy((pool_t *)(intptr_t)pool);    /* the worker's copy */
    }
    return (int)getpid();
}
PMAP_EXPORT(destroy_own_copy, int, int, long);

/* A callback that destroys its worker's copy of the pool, in the middle
 * of a map: the same worker goes on serving with its channel's buffers
 * (which may lie in memory the pool lent them: no worker is replaced),
 * and the caller's pool is intact. */
TEST(error_pool_destroy_inside_a_worker)
{
    pool_t *pool = pool_create(2);
    pmap_worker_stats_t before[2], after[2];
    for (int w = 0; w < 2; w++)
        ASSERT_OK(pool_worker_stats(pool, w, &before[w]));
    int xs[64] = {0}, out[64];
    pool_map_options_t one = {.chunk = 1};
    for (int round = 0; round < 2; round++) {
        ASSERT_OK(pool_map_with(pool, &one, destroy_own_copy, 64,
                                out, xs,
                                PMAP_CONST((long)(intptr_t)pool)));
        for (int i = 0; i < 64; i++)
            ASSERT(out[i] == before[0].pid || out[i] == before[1].pid);
    }
    assert_usable(pool);
    for (int w = 0; w < 2; w++) {
        ASSERT_OK(pool_worker_stats(pool, w, &after[w]));
        ASSERT_EQ(after[w].pid, before[w].pid);     /* none replaced */
    }
    pool_destroy(pool);
}

/* In a child of the pool's process (forked by fork, or when raw, by the
 * system call alone: no pthread_atfork handler runs, as with _Fork or
 * clone), the pool is refused and our workers are left alone. */
static void map_in_a_child(bool raw)
{
    pool_t *pool = pool_create(2);
    assert_usable(pool);    /* this process has used it before */
    pid_t pid = -1;
#ifdef __linux__
    if (raw)
        pid = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
#endif
    if (!raw)
        pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        int xs[2] = {1, 2}, out[2];
        int rc = pool_map(pool, twice, 2, out, xs);
        if (!raw)   /* frees the copy; the workers are not ours */
            pool_destroy(pool);
        _exit(rc == PMAP_EFORKED ? 0 : 1);
    }
    int status;
    ASSERT(waitpid(pid, &status, 0) == pid);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_usable(pool);    /* the child did not stop our workers */
    pool_destroy(pool);
}

TEST(error_pool_map_in_a_forked_child)
{
    map_in_a_child(false);
}

TEST(error_pool_map_in_a_child_of_a_raw_fork)
{
#ifndef __linux__
    SKIP("a fork without pthread_atfork handlers is a Linux system call");
#endif
    map_in_a_child(true);
}

TEST(error_strings_for_every_code)
{
    int codes[] = {
#define CODE(name, value, text) PMAP_##name,
        PMAP_ERROR_MAP(CODE)
#undef CODE
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        ASSERT(strcmp(pmap_strerror(codes[i]), "unknown error") != 0);
        ASSERT(strcmp(pmap_err_name(codes[i]), "EUNKNOWN") != 0);
        for (size_t j = 0; j < i; j++)
            ASSERT(codes[i] != codes[j]);
    }
    ASSERT_STR_EQ(pmap_err_name(PMAP_ECRASH), "ECRASH");
    ASSERT_STR_EQ(pmap_strerror(0), "success");
    ASSERT_STR_EQ(pmap_strerror(-3999), "unknown error");
    ASSERT_EQ(pmap_fail(1, "not in a worker"), PMAP_EINVAL);
}
