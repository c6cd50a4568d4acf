/* SPDX-License-Identifier: MIT */
/*
 * test_mpi.c - the map semantics over MPI (make mpi-test): run by
 * `mpirun -n 3` with PMAP_WORKERS=1, so rank 0's pool has one slot per
 * other rank.  Results in order (arrays, constants, method objects,
 * strings), a crash, an exit and a timeout on a remote worker failing
 * their items alone with the causes a local worker gives, cancellation, a
 * stream map, single calls, statistics; worker_init and worker_exit on
 * remote workers (their places translated), worker_arg as a string
 * literal, and what cannot travel refused.  Prints "N passed, N failed".
 *
 * With --here, it is run on 2 ranks and rank 0 serves too
 * (pmap_mpi_init_with, workers = PMAP_MPI_NODE): the same checks, with
 * items on rank 0's own workers and on rank 1's.
 *
 * With --lose (tests/mpi/lost_rank.sh), a callback kills the rank serving
 * it during a map: Open MPI's mpirun ends the whole job, which the script
 * checks; if the map ever returns, this says so and exits 0.
 *
 * With --refused, rank 0 is started beside another build of this program
 * (test_mpi_other, built with OTHER_BUILD: one more exported function),
 * and pmap_mpi_init must refuse it.
 */
#define _DEFAULT_SOURCE     /* MAP_ANONYMOUS */
#include "pmap_mpi.h"
#include "pmap_internal.h"  /* PMAP__ARENA_SIZE */

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int passed, failed;

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (cond) {                                                           \
            passed++;                                                         \
        } else {                                                              \
            failed++;                                                         \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
        }                                                                     \
    } while (0)

static int add(int x, int y)
{
    return x + y;
}
PMAP_EXPORT(add, int, int, int);

struct model {
    long scale, offset;
};

static long apply(const struct model *m, int x)
{
    return m->scale * x + m->offset;
}
PMAP_EXPORT_METHOD(apply, long, struct model, int);

static size_t length(const char *s)
{
    return s ? strlen(s) : 0;
}
PMAP_EXPORT(length, size_t, const char *);

static char *twice(const char *s)
{
    size_t n = strlen(s);
    char *r = malloc(2 * n + 1);
    if (r != NULL) {
        memcpy(r, s, n);
        memcpy(r + n, s, n + 1);
    }
    return r;
}
PMAP_EXPORT(twice, char *, const char *);

/* Item `bad` dies as `how` says; the others return their square. */
enum { SEGV = 1, EXIT3, HANG, FAIL, SLOW };

static long faulty(long x, int how, long bad)
{
    if (x == bad) {
        switch (how) {
        case SEGV:
            raise(SIGSEGV);
            break;
        case EXIT3:
            exit(3);
        case HANG:
            for (;;)
                pause();
        case FAIL:
            pmap_fail(42, "item %ld refused", x);
            return 0;
        default:
            break;
        }
    }
    if (how == SLOW) {
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    return x * x;
}
PMAP_EXPORT(faulty, long, long, int, long);

static long where(int x)
{
    return (long)x * 1000000 + (long)getpid() % 1000000;
}
PMAP_EXPORT(where, long, int);

/* The arenas this worker holds (writable shared mappings of an arena's
 * size; its own alone, on whichever rank), 9 without /proc, plus 10 times
 * its slot's index. */
static long arenas_held(int x)
{
    (void)x;
    long n = 0, slot = 10L * pmap_worker_index();
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL)
        return slot + 9;
    char line[4096], perms[8];
    unsigned long lo, hi;
    while (fgets(line, sizeof line, f) != NULL)
        n += sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 &&
             strcmp(perms, "rw-s") == 0 && hi - lo == PMAP__ARENA_SIZE;
    fclose(f);
    return slot + n;
}
PMAP_EXPORT(arenas_held, long, int);

/* Item 5 kills the rank running it (its worker's parent, the serving
 * rank's process), with SIGKILL. */
static long lose_rank(long x)
{
    if (x == 5)
        kill(getppid(), SIGKILL);
    struct timespec ts = {0, 20000000};
    nanosleep(&ts, NULL);
    return x;
}
PMAP_EXPORT(lose_rank, long, long);

static int lose(void)
{
    pool_t *pool = NULL;
    pool_options_t po = {.start = PMAP_START_MPI};
    if (pool_create_with(&pool, &po) != 0)
        return 1;
    enum { N = 200 };
    static long xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_map_options_t one = {.chunk = 1};
    printf("mpi-test --lose: a map whose item 5 kills its rank\n");
    fflush(stdout);
    int rc = pool_map_with(pool, &one, lose_rank, N, out, xs);
    printf("mpi-test --lose: the map returned %d (%s): the job survived\n", rc,
           pmap_err_name(rc));
    pool_destroy(pool);
    return 0;
}

/* ---- worker hooks ---- */

static const char HOOK_ARG[] = "hooked";    /* read-only: it travels */
static long inited = -1;    /* worker_init's mark, in each worker */

static int init_mark(int worker, void *arg)
{
    if (arg == NULL || strcmp(arg, HOOK_ARG) != 0)
        return 1;
    inited = 1000 + worker;
    return 0;
}

static int init_fail(int worker, void *arg)
{
    (void)worker, (void)arg;
    return 7;
}

/* Leaves a file naming the worker's pid: rank 0 looks for it (the ranks
 * of the test share a host). */
static void exit_mark(int worker, void *arg)
{
    (void)worker, (void)arg;
    char path[64];
    snprintf(path, sizeof path, "/tmp/pmap-mpi-test-exit.%ld", (long)getpid());
    FILE *f = fopen(path, "w");
    if (f != NULL)
        fclose(f);
}

/* 1 if worker_init marked this worker with its index in the pool. */
static long hooked_mark(int x)
{
    (void)x;
    return inited == 1000 + pmap_worker_index() ? 1 : inited;
}
PMAP_EXPORT(hooked_mark, long, int);

static long hooked_parent(int x)
{
    (void)x;
    return (long)getppid();
}
PMAP_EXPORT(hooked_parent, long, int);

#ifdef OTHER_BUILD
static int other(int x)
{
    return x;
}
PMAP_EXPORT(other, int, int);
#endif

static void arrays(pool_t *pool)
{
    enum { N = 10000 };
    static int xs[N], ys[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i, ys[i] = 2 * i;
    CHECK(pool_map(pool, add, N, out, xs, ys) == 0);
    int bad = 0;
    for (int i = 0; i < N; i++)
        bad += out[i] != 3 * i;
    CHECK(bad == 0);
    CHECK(pool_map(pool, add, N, out, xs, PMAP_CONST(7)) == 0);
    bad = 0;
    for (int i = 0; i < N; i++)
        bad += out[i] != i + 7;
    CHECK(bad == 0);

    struct model m = {3, 1};
    static long lout[N];
    CHECK(pool_map(pool, apply, N, lout, &m, xs) == 0);
    bad = 0;
    for (int i = 0; i < N; i++)
        bad += lout[i] != 3L * i + 1;
    CHECK(bad == 0);

    /* Both ranks worked: their pids differ. */
    static long pids[64];
    int is[64];
    for (int i = 0; i < 64; i++)
        is[i] = i;
    pool_map_options_t one = {.chunk = 1};
    CHECK(pool_map_with(pool, &one, where, 64, pids, is) == 0);
    int distinct = 0;
    for (int i = 1; i < 64; i++)
        distinct += pids[i] % 1000000 != pids[0] % 1000000;
    CHECK(distinct > 0 || pool_size(pool) == 1);
}

static void strings(pool_t *pool)
{
    const char *in[5] = {"a", "bb", NULL, "", "hello, world"};
    size_t lens[5];
    CHECK(pool_map(pool, length, 5, lens, in) == 0);
    CHECK(lens[0] == 1 && lens[1] == 2 && lens[2] == 0 && lens[3] == 0 &&
          lens[4] == 12);
    /* Big strings, an item a batch, so every worker has some: they travel
     * in frames to another rank, through shared memory to rank 0's own
     * workers (--here). */
    size_t big = 1 << 20;
    char *s = malloc(big + 1);
    memset(s, 'x', big);
    s[big] = '\0';
    const char *bigs[6] = {s, "yz", s, s, s, s};
    char *out[6] = {NULL};
    pool_map_options_t one = {.chunk = 1};
    CHECK(pool_map_with(pool, &one, twice, 6, out, bigs) == 0);
    for (int i = 0; i < 6; i++) {
        CHECK(i == 1 ? out[i] != NULL && strcmp(out[i], "yzyz") == 0
                     : out[i] != NULL && strlen(out[i]) == 2 * big);
        free(out[i]);
    }
    free(s);
}

/* A map of 40 items where item 17 dies as `how` says: only it fails. */
static void fault(pool_t *pool, int how, int error, int code)
{
    enum { N = 40 };
    long xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pool_map_options_t o = {.chunk = 4, .timeout = how == HANG ? 0.5 : 0};
    int rc = pool_map_with(pool, &o, faulty, N, out, xs, PMAP_CONST(how),
                           PMAP_CONST(17L));
    CHECK(rc == 1);
    const pmap_failure_t *f = NULL;
    size_t nf = pool_failures(pool, &f);
    CHECK(nf == 1);
    if (nf == 1) {
        CHECK(f[0].index == 17);
        CHECK(f[0].error == error);
        CHECK(f[0].code == code);
        if (f[0].error != error || f[0].code != code)
            printf("  got %s (%d), code %d: %s\n", pmap_err_name(f[0].error),
                   f[0].error, f[0].code, f[0].message);
        if (how == FAIL)
            CHECK(strcmp(f[0].message, "item 17 refused") == 0);
    }
    int bad = 0;
    for (int i = 0; i < N; i++)
        bad += i != 17 && out[i] != (long)i * i;
    CHECK(bad == 0);
    CHECK(pool_size(pool) == pmap_mpi_workers());
}

static void cancel(pool_t *pool)
{
    enum { N = 400 };
    static long xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    pmap_job_t *job = NULL;
    pool_map_options_t o = {.chunk = 1, .kill_on_cancel = 1};
    CHECK(pool_map_async(pool, &o, &job, faulty, N, out, xs,
                         PMAP_CONST(SLOW), PMAP_CONST(-1L)) == 0);
    struct timespec ts = {0, 100000000};
    nanosleep(&ts, NULL);
    pmap_job_cancel(job);
    int rc = pmap_job_wait(job, -1);
    CHECK(rc == PMAP_ECANCELED);
    pmap_stats_t st;
    pmap_job_stats(job, &st);
    CHECK(st.failed > 0 && st.items == N);   /* the rest: PMAP_ECANCELED */
    pmap_job_free(job);
    /* The pool works afterwards. */
    long r = 0;
    CHECK(pool_call(pool, faulty, &r, 12L, 0, -1L) == 0 && r == 144);
}

struct numbers {
    long next, limit, sum, calls;
};

static int make_number(void *ctx, long *x)
{
    struct numbers *n = ctx;
    if (n->next == n->limit)
        return 0;
    *x = n->next++;
    return 1;
}

static int collect(void *ctx, size_t index, void *result,
                   const pmap_failure_t *failure)
{
    struct numbers *n = ctx;
    (void)index;
    if (failure == NULL)
        n->sum += *(long *)result;
    n->calls++;
    return 0;
}

static long square(long x)
{
    return x * x;
}
PMAP_EXPORT(square, long, long);

static void stream_square(pool_t *pool)
{
    struct numbers n = {0, 5000, 0, 0};
    pool_map_options_t o = {.on_result = collect, .ctx = &n, .window = 256};
    CHECK(pool_map_stream(pool, &o, square, make_number, &n) == 0);
    CHECK(n.calls == 5000);
    CHECK(n.sum == 4999L * 5000 * 9999 / 6);
}

static void stats(pool_t *pool)
{
    enum { N = 1000 };
    static int xs[N], out[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    CHECK(pool_map(pool, add, N, out, xs, xs) == 0);
    pmap_stats_t last, total;
    CHECK(pool_stats(pool, &last, &total) == 0);
    CHECK(last.items == N && last.failed == 0 && last.batches > 0);
    CHECK(last.bytes_sent > N * sizeof(int));
    CHECK(total.maps >= 5 && total.restarts >= 3);
    pmap_config_t c;
    CHECK(pool_config(pool, &c) == 0 && c.start == PMAP_START_MPI);
    pmap_worker_stats_t ws;
    CHECK(pool_worker_stats(pool, 0, &ws) == 0 && ws.pid > 0);
}

/* worker_init ran in every worker, remote or not, with the pool's
 * worker_arg, before its items; worker_exit at pool_destroy. */
static void hooks(bool here)
{
    enum { N = 64 };
    pool_t *pool = NULL;
    pool_options_t o = {.start = PMAP_START_MPI, .worker_init = init_mark,
                        .worker_exit = exit_mark,
                        .worker_arg = (void *)HOOK_ARG};
    CHECK(pool_create_with(&pool, &o) == 0);
    if (pool == NULL)
        return;
    int is[N];
    long marks[N], pids[N], parents[N];
    for (int i = 0; i < N; i++)
        is[i] = i;
    pool_map_options_t one = {.chunk = 1};
    CHECK(pool_map_with(pool, &one, hooked_mark, N, marks, is) == 0);
    CHECK(pool_map_with(pool, &one, hooked_parent, N, parents, is) == 0);
    CHECK(pool_map_with(pool, &one, where, N, pids, is) == 0);
    int bad = 0, remote = 0, local = 0;
    for (int i = 0; i < N; i++) {
        bad += marks[i] != 1;
        if (parents[i] == (long)getpid())
            local++;
        else
            remote++;
    }
    CHECK(bad == 0);
    CHECK(remote > 0);
    CHECK(here ? local > 0 : local == 0);
    pool_destroy(pool);
    /* worker_exit ran in each worker that served (files by their pids). */
    int missing = 0;
    for (int i = 0; i < N; i++) {
        char path[64];
        snprintf(path, sizeof path, "/tmp/pmap-mpi-test-exit.%ld",
                 pids[i] % 1000000);
        if (access(path, F_OK) != 0)
            missing++;
    }
    for (int i = 0; i < N; i++) {
        char path[64];
        snprintf(path, sizeof path, "/tmp/pmap-mpi-test-exit.%ld",
                 pids[i] % 1000000);
        unlink(path);
    }
    CHECK(missing == 0);

    /* A worker_init that refuses: the pool cannot start, as locally. */
    pool_t *p = NULL;
    pool_options_t f = {.start = PMAP_START_MPI, .worker_init = init_fail};
    CHECK(pool_create_with(&p, &f) == PMAP_ESTART && p == NULL);

    /* What other ranks cannot find is refused, and said why: a pointer
     * to writable memory, and code made at run time. */
    long local_var = 0;
    pool_options_t w = {.start = PMAP_START_MPI, .worker_init = init_mark,
                        .worker_arg = &local_var};
    CHECK(pool_create_with(&p, &w) == PMAP_EINVAL && p == NULL);
    CHECK(strstr(pmap_mpi_message(), "worker_arg") != NULL);
    void *page = mmap(NULL, 4096, PROT_READ | PROT_EXEC,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page != MAP_FAILED) {
        pool_options_t j = {.start = PMAP_START_MPI};
        memcpy(&j.worker_init, &page, sizeof page);
        CHECK(pool_create_with(&p, &j) == PMAP_EINVAL && p == NULL);
        CHECK(strstr(pmap_mpi_message(), "worker_init") != NULL);
        munmap(page, 4096);
    }
}

int main(int argc, char **argv)
{
    bool refused = argc > 1 && strcmp(argv[1], "--refused") == 0;
    bool here = argc > 1 && strcmp(argv[1], "--here") == 0;
    pmap_mpi_options_t mo = {.workers = here ? PMAP_MPI_NODE : 0};
    int rc = pmap_mpi_init_with(&argc, &argv, &mo);
    /* Only rank 0 is here. */
    if (refused) {
        CHECK(rc == PMAP_EPROTO);
        CHECK(strstr(pmap_mpi_message(), "another build") != NULL);
        pool_t *pool = NULL;
        pool_options_t po = {.start = PMAP_START_MPI};
        CHECK(pool_create_with(&pool, &po) == PMAP_EINVAL);
        printf("mpi-test (a rank of another build): %s\n", pmap_mpi_message());
        printf("mpi-test refused: %d passed, %d failed\n", passed, failed);
        return failed != 0;
    }
    CHECK(rc == 0);
    if (rc != 0) {
        printf("pmap_mpi_init: %s %s\n", pmap_err_name(rc), pmap_mpi_message());
        return 1;
    }
    if (argc > 1 && strcmp(argv[1], "--lose") == 0)
        return lose();
    CHECK(pmap_mpi_size() == (here ? 2 : 3));
    CHECK(pmap_mpi_workers() == (here ? 2 : 2));   /* PMAP_WORKERS=1 */
    pool_t *pool = NULL;
    pool_options_t po = {.start = PMAP_START_MPI};
    CHECK(pool_create_with(&pool, &po) == 0);
    if (pool == NULL)
        return 1;
    CHECK(pool_size(pool) == pmap_mpi_workers());
    arrays(pool);
    strings(pool);
    fault(pool, FAIL, PMAP_EFAIL, 42);
    fault(pool, SEGV, PMAP_ECRASH, SIGSEGV);
    fault(pool, EXIT3, PMAP_EEXIT, 3);
    fault(pool, HANG, PMAP_ETIMEDOUT, 0);
    cancel(pool);
    stream_square(pool);
    stats(pool);
    pool_destroy(pool);
    /* Two pools at once, then the environment's start method. */
    pool_t *a = NULL, *b = NULL;
    CHECK(pool_create_with(&a, &po) == 0);
    setenv("PMAP_START", "mpi", 1);
    CHECK(pool_create_with(&b, NULL) == 0);
    pmap_config_t c;
    CHECK(b != NULL && pool_config(b, &c) == 0 && c.start == PMAP_START_MPI);
    int x[3] = {1, 2, 3}, y[3];
    CHECK(a != NULL && pool_map(a, add, 3, y, x, x) == 0 && y[2] == 6);
    CHECK(b != NULL && pool_map(b, add, 3, y, x, x) == 0 && y[2] == 6);
    /* Each rank now runs a worker of each pool: each holds its own arena
     * only, not the one of the worker forked before it. */
    long held[8];
    int some[8] = {0}, others = 0, unseen = 0;
    pool_map_options_t each = {.chunk = 1};
    for (int k = 0; k < 2; k++) {
        pool_t *p = k == 0 ? a : b;
        unsigned seen = 0;  /* slots that answered; until each has */
        for (int tries = 0; p != NULL && tries < 50 &&
                            seen + 1 != 1u << pool_size(p);
             tries++) {
            CHECK(pool_map_with(p, &each, arenas_held, 8, held, some) == 0);
            for (int i = 0; i < 8; i++) {
                others += held[i] % 10 != 1 && held[i] % 10 != 9;
                seen |= 1u << (held[i] / 10);
            }
        }
        unseen += p == NULL || seen + 1 != 1u << pool_size(p);
    }
    CHECK(others == 0);
    CHECK(unseen == 0);
    pool_destroy(a);
    pool_destroy(b);
    hooks(here);
    pool_t *h = NULL;
    /* Fewer workers than the ranks serve: one on each rank first. */
    pool_options_t one = {.start = PMAP_START_MPI, .workers = 1};
    CHECK(pool_create_with(&h, &one) == 0 && pool_size(h) == 1);
    CHECK(h != NULL && pool_map(h, add, 3, y, x, x) == 0 && y[1] == 4);
    pool_destroy(h);
    printf("mpi-test%s: %d passed, %d failed\n",
           here ? " (rank 0 serving too)" : "", passed, failed);
    return failed != 0;
}
