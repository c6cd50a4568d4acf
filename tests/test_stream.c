/* SPDX-License-Identifier: MIT */
/*
 * test_stream.c - the ways of running a map beyond pool_map: results to a
 * callback (in order, or as they arrive), items from a producer, maps in
 * the background (wait, poll, pool_fd), single calls, progress, cancelling,
 * worker hooks and recycling, reduction, statistics.  And every fault
 * still isolated on those paths.
 */
#include "test.h"

#include "pmap_internal.h"

#include <poll.h>
#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(int ms)
{
    struct timespec d = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&d, NULL);
}

/* Squares; item 3 of every 10 sleeps, so that results arrive unordered;
 * -1 crashes the worker, -2 fails on purpose. */
static long square(long x)
{
    if (x == -1)
        abort();
    if (x == -2) {
        pmap_fail(7, "refused");
        return 0;
    }
    if (x % 10 == 3)
        sleep_ms(2);
    return x * x;
}
PMAP_EXPORT(square, long, long);

/* What a result callback saw. */
struct seen {
    size_t calls, failures, last, out_of_order, limit;
    long sum;
    size_t made;            /* items the producer made */
    size_t most_alive;      /* made - delivered, at most */
    long *values;
};

static int collect(void *ctx, size_t index, void *result,
                   const pmap_failure_t *failure)
{
    struct seen *s = ctx;
    if (s->calls > 0 && index < s->last)
        s->out_of_order++;
    s->last = index;
    s->calls++;
    if (s->made - s->calls + 1 > s->most_alive)
        s->most_alive = s->made - s->calls + 1;
    if (failure != NULL) {
        ASSERT(result == NULL);
        ASSERT_EQ(failure->index, index);
        s->failures++;
        return 0;
    }
    long v = *(long *)result;
    if (s->values)
        s->values[index] = v;
    s->sum += v;
    return s->limit && s->calls >= s->limit;
}

TEST(stream_results_in_order_to_a_callback)
{
    enum { N = 500 };
    long xs[N], values[N];
    for (long i = 0; i < N; i++)
        xs[i] = i;
    struct seen s = {.values = values};
    pool_map_options_t o = {.on_result = collect, .ctx = &s, .chunk = 1};
    pool_t *pool = pool_create(3);
    ASSERT_OK(pool_map_with(pool, &o, square, N, (long *)NULL, xs));
    ASSERT_EQ(s.calls, N);
    ASSERT_EQ(s.out_of_order, 0);
    for (long i = 0; i < N; i++)
        ASSERT_EQ(values[i], i * i);
    /* An output array and a callback at once is refused. */
    long out[N];
    ASSERT_EQ(pool_map_with(pool, &o, square, N, out, xs), PMAP_EINVAL);
    pool_destroy(pool);
}

TEST(stream_results_unordered_as_they_arrive)
{
    NEEDS_PROCESSES("several workers finishing out of order");
    enum { N = 500 };
    long xs[N], values[N];
    for (long i = 0; i < N; i++)
        xs[i] = i;
    struct seen s = {.values = values};
    pool_map_options_t o = {.on_result = collect, .ctx = &s, .unordered = 1,
                            .chunk = 1};
    pool_t *pool = pool_create(3);
    ASSERT_OK(pool_map_with(pool, &o, square, N, (long *)NULL, xs));
    ASSERT_EQ(s.calls, N);
    ASSERT(s.out_of_order > 0);     /* handed over as they came */
    for (long i = 0; i < N; i++)
        ASSERT_EQ(values[i], i * i);
    pool_destroy(pool);
}

/* A producer of the numbers 0..limit-1, counting what it made. */
struct numbers {
    long next, limit;
    struct seen *seen;
};

static int make_number(void *ctx, long *x)
{
    struct numbers *n = ctx;
    if (n->next == n->limit)
        return 0;
    *x = n->next++;
    n->seen->made++;
    return 1;
}

TEST(stream_items_from_a_producer_in_bounded_memory)
{
    NEEDS_PROCESSES("several workers finishing out of order");
    enum { WINDOW = 256 };
    /* 39 windows: one item in ten sleeps 2 ms (square), so more took 20 s
     * and showed no more. */
    const long N = (long)test_scaled(10000);
    for (int unordered = 0; unordered < 2; unordered++) {
        struct seen s = {0};
        struct numbers n = {0, N, &s};
        pool_map_options_t o = {.on_result = collect, .ctx = &s,
                                .unordered = unordered, .window = WINDOW};
        pool_t *pool = pool_create(2);
        ASSERT_OK(pool_map_stream(pool, &o, square, make_number, &n));
        ASSERT_EQ(s.calls, N);
        ASSERT_EQ(s.sum, N * (N - 1) * (2 * N - 1) / 6);
        ASSERT_EQ(s.out_of_order > 0, unordered);
        /* Never more items alive than the window holds. */
        ASSERT(s.most_alive <= WINDOW);
        pmap_stats_t st;
        ASSERT_OK(pool_stats(pool, &st, NULL));
        ASSERT_EQ(st.items, N);
        pool_destroy(pool);
    }
}

/* Lines of text, as the grep example streams a file. */
struct lines {
    int next, count;
    char buf[64];
};

static int make_line(void *ctx, const char **line)
{
    struct lines *l = ctx;
    if (l->next == l->count)
        return 0;
    /* The same buffer every time: the pool must copy it. */
    snprintf(l->buf, sizeof l->buf, "line %d %s", l->next,
             l->next % 3 ? "keep" : "drop");
    *line = l->buf;
    l->next++;
    return 1;
}

static char *keep_line(const char *line)
{
    return strstr(line, "keep") ? strdup(line) : NULL;
}
PMAP_EXPORT(keep_line, char *, const char *);

struct kept {
    int count, wrong;
};

static int print_kept(void *ctx, size_t index, void *result,
                      const pmap_failure_t *failure)
{
    struct kept *k = ctx;
    char *line = *(char **)result, want[64];
    ASSERT(failure == NULL);
    snprintf(want, sizeof want, "line %zu keep", index);
    if (index % 3) {
        k->wrong += line == NULL || strcmp(line, want) != 0;
        k->count++;
    } else {
        k->wrong += line != NULL;
    }
    free(line);     /* results handed over are the caller's */
    return 0;
}

TEST(stream_strings_from_a_producer_that_reuses_its_buffer)
{
    struct lines l = {0, 3000, ""};
    struct kept k = {0, 0};
    pool_map_options_t o = {.on_result = print_kept, .ctx = &k, .window = 64};
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map_stream(pool, &o, keep_line, make_line, &l));
    ASSERT_EQ(k.count, 2000);
    ASSERT_EQ(k.wrong, 0);
    pool_destroy(pool);
}

static int failing_producer(void *ctx, long *x)
{
    struct numbers *n = ctx;
    if (n->next == 50)
        return -EIO;
    *x = n->next++;
    n->seen->made++;
    return 1;
}

TEST(stream_producer_error_stops_the_map)
{
    struct seen s = {0};
    struct numbers n = {0, 1000, &s};
    pool_map_options_t o = {.on_result = collect, .ctx = &s};
    pool_t *pool = pool_create(2);
    ASSERT_EQ(pool_map_stream(pool, &o, square, failing_producer, &n),
              -EIO);
    ASSERT(s.calls <= 50);
    long x = 4, y;
    ASSERT_OK(pool_call(pool, square, &y, x));
    ASSERT_EQ(y, 16);
    pool_destroy(pool);
}

/* A crash, a failure on purpose: handed over as failures, in place. */
TEST(stream_faults_are_isolated_in_streamed_and_callback_maps)
{
    NEEDS_PROCESSES("crashing items");
    enum { N = 400 };
    long xs[N], values[N];
    for (long i = 0; i < N; i++)
        xs[i] = i == 100 ? -1 : i == 200 ? -2 : i;
    for (int unordered = 0; unordered < 2; unordered++) {
        struct seen s = {.values = values};
        pool_map_options_t o = {.on_result = collect, .ctx = &s,
                                .unordered = unordered, .chunk = 7};
        pool_t *pool = pool_create(2);
        ASSERT_EQ(pool_map_with(pool, &o, square, N, (long *)NULL, xs), 2);
        ASSERT_EQ(s.calls, N);
        ASSERT_EQ(s.failures, 2);
        const pmap_failure_t *f;
        ASSERT_EQ(pool_failures(pool, &f), 2);
        ASSERT_EQ(f[0].error, PMAP_ECRASH);
        ASSERT_EQ(f[1].error, PMAP_EFAIL);
        ASSERT_EQ(f[1].code, 7);
        ASSERT_EQ(values[399], 399 * 399);
        pool_destroy(pool);
    }
}

TEST(stream_single_call)
{
    NEEDS_PROCESSES("a crashing item");
    pool_t *pool = pool_create(2);
    long r = 0;
    ASSERT_OK(pool_call(pool, square, &r, 12));
    ASSERT_EQ(r, 144);
    ASSERT_EQ(pool_call(pool, square, &r, -1), 1);  /* it crashed */
    ASSERT_EQ(r, 0);
    pmap_job_t *job;
    ASSERT_OK(pool_call_async(pool, NULL, &job, square, &r, 9));
    ASSERT_OK(pmap_job_wait(job, -1));
    ASSERT_EQ(r, 81);
    pmap_job_free(job);
    pool_destroy(pool);
}

static long slow_square(long x)
{
    sleep_ms(20);
    return square(x);
}
PMAP_EXPORT(slow_square, long, long);

TEST(stream_several_async_maps_on_one_pool)
{
    enum { N = 40 };
    long xs[N], a[N], b[N], c[N];
    for (long i = 0; i < N; i++)
        xs[i] = i;
    pool_t *pool = pool_create(2);
    pmap_job_t *ja, *jb, *jc;
    ASSERT_OK(pool_map_async(pool, NULL, &ja, slow_square, N, a, xs));
    ASSERT_OK(pool_map_async(pool, NULL, &jb, square, N, b, xs));
    ASSERT_OK(pool_map_async(pool, NULL, &jc, slow_square, N, c, xs));
    /* The caller is free meanwhile; a quick look says "not yet". */
    ASSERT_EQ(pmap_job_wait(jc, 0), PMAP_ETIMEDOUT);
    ASSERT_EQ(pmap_job_wait(jc, 0.01), PMAP_ETIMEDOUT);
    /* A synchronous map meanwhile shares the workers. */
    long d[N];
    ASSERT_OK(pool_map(pool, square, N, d, xs));
    ASSERT_OK(pmap_job_wait(jc, -1));
    ASSERT_OK(pmap_job_wait(ja, 5));
    ASSERT_OK(pmap_job_wait(jb, 5));
    for (long i = 0; i < N; i++) {
        ASSERT_EQ(a[i], i * i);
        ASSERT_EQ(b[i], i * i);
        ASSERT_EQ(c[i], i * i);
        ASSERT_EQ(d[i], i * i);
    }
    pmap_stats_t st;
    ASSERT_OK(pmap_job_stats(ja, &st));
    ASSERT_EQ(st.items, N);
    pmap_job_free(ja);
    pmap_job_free(jb);
    pmap_job_free(jc);
    pool_destroy(pool);
}

/* The caller's own poll loop: pool_fd tells when pool_poll has work. */
TEST(stream_async_maps_in_the_callers_poll_loop)
{
    NEEDS_PROCESSES("a crashing item");
    enum { N = 60 };
    long xs[N], out[3][N];
    for (long i = 0; i < N; i++)
        xs[i] = i == 30 ? -1 : i;   /* a crash, too */
    pool_t *pool = pool_create(2);
    int fd = pool_fd(pool);
    if (fd == PMAP_ENOSYS) {
        pool_destroy(pool);
        SKIP("no epoll here");
    }
    ASSERT(fd >= 0);
    pmap_job_t *job[3];
    for (int j = 0; j < 3; j++)
        ASSERT_OK(pool_map_async(pool, NULL, &job[j], slow_square, N, out[j],
                                 xs));
    int finished = 0, rounds = 0;
    while (finished < 3) {
        double wake;
        int n = pool_poll(pool, &wake);
        ASSERT(n >= 0);
        finished += n;
        if (finished == 3)
            break;
        struct pollfd p = {fd, POLLIN, 0};
        int ms = wake < 0 ? 5000 : (int)(wake * 1000) + 1;
        ASSERT(poll(&p, 1, ms) >= 0);
        ASSERT(rounds++ < 100000);
    }
    for (int j = 0; j < 3; j++) {
        ASSERT_EQ(pmap_job_wait(job[j], 0), 1);     /* the crash */
        ASSERT_EQ(out[j][N - 1], (N - 1) * (N - 1));
        const pmap_failure_t *f;
        ASSERT_EQ(pmap_job_failures(job[j], &f), 1);
        ASSERT_EQ(f[0].index, 30);
        pmap_job_free(job[j]);
    }
    pool_destroy(pool);
}

struct progress_seen {
    int calls, cancel_at;
    size_t last_done, total;
    int decreasing;
};

static int watch_progress(void *ctx, const pmap_progress_t *p)
{
    struct progress_seen *s = ctx;
    s->decreasing += p->done < s->last_done;
    s->last_done = p->done;
    s->total = p->total;
    s->calls++;
    return s->cancel_at && p->done >= (size_t)s->cancel_at;
}

TEST(stream_progress_callback)
{
    enum { N = 300 };
    long xs[N], out[N];
    for (long i = 0; i < N; i++)
        xs[i] = i;
    struct progress_seen s = {0};
    pool_map_options_t o = {.on_progress = watch_progress, .ctx = &s,
                            .progress_interval = 0.01, .chunk = 1};
    pool_t *pool = pool_create(2);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ASSERT_OK(pool_map_with(pool, &o, square, N, out, xs));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double elapsed = (double)(t1.tv_sec - t0.tv_sec) +
                     (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    ASSERT_EQ(s.last_done, N);      /* the last call sees the end */
    ASSERT_EQ(s.total, N);
    ASSERT_EQ(s.decreasing, 0);
    ASSERT(s.calls >= 1);
    ASSERT(s.calls <= 2 + elapsed / 0.01);  /* rate-limited */
    pool_destroy(pool);
}

TEST(stream_cancel_from_the_progress_callback)
{
    enum { N = 2000 };
    long xs[N], out[N];
    for (long i = 0; i < N; i++)
        xs[i] = i;
    struct progress_seen s = {.cancel_at = 100};
    pool_map_options_t o = {.on_progress = watch_progress, .ctx = &s,
                            .progress_interval = 0.001, .chunk = 1};
    pool_t *pool = pool_create(2);
    ASSERT_EQ(pool_map_with(pool, &o, slow_square, N, out, xs),
              PMAP_ECANCELED);
    const pmap_failure_t *f;
    size_t nf = pool_failures(pool, &f);
    ASSERT(nf > 1000);          /* the items never started */
    size_t done = 0;
    for (size_t i = 0, j = 0; i < N; i++) {
        if (j < nf && f[j].index == i) {
            ASSERT_EQ(f[j].error, PMAP_ECANCELED);
            ASSERT_EQ(out[i], 0);
            j++;
        } else {
            ASSERT_EQ(out[i], (long)(i * i));   /* finished before */
            done++;
        }
    }
    ASSERT(done >= 100);
    /* The pool is whole. */
    ASSERT_OK(pool_map(pool, square, N, out, xs));
    ASSERT_EQ(out[N - 1], (long)(N - 1) * (N - 1));
    pool_destroy(pool);
}

static long forever(long x)
{
    if (x == 0)
        for (;;)
            pause();
    return x;
}
PMAP_EXPORT(forever, long, long);

TEST(stream_cancel_kills_running_items_if_asked)
{
    NEEDS_PROCESSES("a callback that never returns, killed");
    long xs[4] = {0, 1, 2, 3}, out[4];
    pool_map_options_t o = {.kill_on_cancel = 1, .chunk = 1};
    pool_t *pool = pool_create(2);
    pmap_job_t *job;
    ASSERT_OK(pool_map_async(pool, &o, &job, forever, 4, out, xs));
    ASSERT_EQ(pmap_job_wait(job, 0.05), PMAP_ETIMEDOUT);
    pmap_job_cancel(job);
    ASSERT_EQ(pmap_job_wait(job, -1), PMAP_ECANCELED);
    const pmap_failure_t *f;
    ASSERT(pmap_job_failures(job, &f) >= 1);
    ASSERT_EQ(f[0].index, 0);
    ASSERT_EQ(f[0].error, PMAP_ECANCELED);
    pmap_job_free(job);
    long r;
    ASSERT_OK(pool_call(pool, square, &r, 5));      /* usable, full size */
    ASSERT_EQ(r, 25);
    ASSERT(pool->workers[0].pid > 0 && pool->workers[1].pid > 0);
    pool_destroy(pool);
}

static pool_t *alarm_pool;

static void cancel_on_alarm(int sig)
{
    (void)sig;
    pool_cancel(alarm_pool);    /* async-signal-safe */
}

TEST(stream_cancel_from_a_signal_handler)
{
    enum { N = 4000 };
    long xs[N], out[N];
    for (long i = 0; i < N; i++)
        xs[i] = i;
    alarm_pool = pool_create(2);
    struct sigaction sa = {0};
    sa.sa_handler = cancel_on_alarm;
    sigemptyset(&sa.sa_mask);
    ASSERT(sigaction(SIGALRM, &sa, NULL) == 0);
    struct itimerval it = {{0, 0}, {0, 100000}};    /* in 0.1 s */
    ASSERT(setitimer(ITIMER_REAL, &it, NULL) == 0);
    /* 4000 items of 20 ms on 2 workers would take 40 s. */
    ASSERT_EQ(pool_map(alarm_pool, slow_square, N, out, xs), PMAP_ECANCELED);
    ASSERT_OK(pool_map(alarm_pool, square, 10, out, xs));
    pool_destroy(alarm_pool);
}

/* Worker hooks: each worker opens its "database" once. */
static int hook_pipe[2];

struct db {
    int worker, queries;
};

static int open_db(int worker, void *arg)
{
    struct db *db = malloc(sizeof *db);
    db->worker = worker;
    db->queries = 0;
    pmap_set_worker_state(db);
    char c = 'i';
    return write(*(int *)arg, &c, 1) == 1 ? 0 : -1;
}

static void close_db(int worker, void *arg)
{
    (void)worker;
    free(pmap_worker_state());
    char c = 'x';
    if (write(*(int *)arg, &c, 1) != 1)
        _exit(3);
}

/* Returns worker index * 1000 + queries so far on that worker. */
static long query(long x)
{
    (void)x;
    struct db *db = pmap_worker_state();
    ASSERT(db != NULL && db->worker == pmap_worker_index());
    return db->worker * 1000L + ++db->queries;
}
PMAP_EXPORT(query, long, long);

TEST(stream_worker_init_and_exit_hooks_once_per_worker)
{
    NEEDS_PROCESSES("three workers");
    ASSERT(pipe(hook_pipe) == 0);
    pool_options_t po = {.workers = 3, .worker_init = open_db,
                         .worker_exit = close_db,
                         .worker_arg = &hook_pipe[1]};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    long xs[300], out[300];
    for (int i = 0; i < 300; i++)
        xs[i] = i;
    ASSERT_OK(pool_map(pool, query, 300, out, xs));
    ASSERT_OK(pool_map(pool, query, 300, out, xs));
    int per_worker[3] = {0};
    for (int i = 0; i < 300; i++) {
        ASSERT(out[i] / 1000 >= 0 && out[i] / 1000 < 3);
        per_worker[out[i] / 1000]++;
    }
    ASSERT_EQ(pmap_worker_index(), -1);     /* not in a worker here */
    pool_destroy(pool);
    close(hook_pipe[1]);
    char all[64];
    ssize_t got = read(hook_pipe[0], all, sizeof all);
    close(hook_pipe[0]);
    int inits = 0, exits = 0;
    for (ssize_t i = 0; i < got; i++) {
        inits += all[i] == 'i';
        exits += all[i] == 'x';
    }
    ASSERT_EQ(inits, 3);
    ASSERT_EQ(exits, 3);
}

static int refuse(int worker, void *arg)
{
    (void)arg;
    return worker == 1;     /* the second worker cannot start */
}

TEST(stream_worker_init_failure_fails_pool_create)
{
    NEEDS_PROCESSES("a second worker");
    pool_options_t po = {.workers = 2, .worker_init = refuse};
    pool_t *pool = (pool_t *)&po;
    ASSERT_EQ(pool_create_with(&pool, &po), PMAP_ESTART);
    ASSERT(pool == NULL);
}

static long whose(long x)
{
    (void)x;
    return (long)getpid();
}
PMAP_EXPORT(whose, long, long);

TEST(stream_workers_recycled_after_exactly_n_items)
{
    NEEDS_PROCESSES("recycled workers");
    enum { N = 200, MAX = 15 };
    ASSERT(pipe(hook_pipe) == 0);
    pool_options_t po = {.workers = 2, .max_items_per_worker = MAX,
                         .worker_init = open_db, .worker_exit = close_db,
                         .worker_arg = &hook_pipe[1]};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    long xs[N], pids[N];
    for (int i = 0; i < N; i++)
        xs[i] = i;
    ASSERT_OK(pool_map(pool, whose, N, pids, xs));
    /* Every process ran MAX items, but the last of each slot. */
    int short_ones = 0, processes = 0;
    for (int i = 0; i < N; i++) {
        int count = 0, first = 1;
        for (int j = 0; j < N; j++) {
            count += pids[j] == pids[i];
            first &= !(j < i && pids[j] == pids[i]);
        }
        if (!first)
            continue;
        processes++;
        ASSERT(count <= MAX);
        short_ones += count < MAX;
    }
    ASSERT(short_ones <= 2);
    ASSERT(processes >= N / MAX);
    pmap_stats_t total;
    ASSERT_OK(pool_stats(pool, NULL, &total));
    ASSERT(total.restarts >= (uint64_t)(N / MAX - 2));
    pool_destroy(pool);
    close(hook_pipe[1]);
    char all[256];
    ssize_t got = read(hook_pipe[0], all, sizeof all);
    close(hook_pipe[0]);
    int inits = 0, exits = 0;
    for (ssize_t i = 0; i < got; i++) {
        inits += all[i] == 'i';
        exits += all[i] == 'x';
    }
    ASSERT_EQ(inits, exits);    /* each recycled worker closed its db */
    ASSERT(inits >= processes);
}

static long identity(long x)
{
    return x;
}
PMAP_EXPORT(identity, long, long);

static int add_up(void *ctx, size_t index, void *result,
                  const pmap_failure_t *failure)
{
    (void)index;
    if (failure == NULL)
        *(long *)ctx += *(long *)result;
    return 0;
}

TEST(stream_reduction_without_storing_results)
{
    enum { N = 10000000 };
    struct seen s = {0};
    struct numbers n = {0, (long)test_scaled(N), &s};
    long total = 0;
    pool_map_options_t o = {.on_result = add_up, .ctx = &total,
                            .unordered = 1};
    pool_t *pool = pool_create(2);
    ASSERT_OK(pool_map_stream(pool, &o, identity, make_number, &n));
    ASSERT_EQ(total, n.limit * (n.limit - 1) / 2);
    pool_destroy(pool);
}

TEST(stream_statistics_per_map_and_per_worker)
{
    NEEDS_PROCESSES("a crashing item, several workers");
    enum { N = 1000 };
    long xs[N], out[N];
    for (long i = 0; i < N; i++)
        xs[i] = i == 500 ? -1 : i;
    pool_t *pool = pool_create(2);
    ASSERT_EQ(pool_map(pool, square, N, out, xs), 1);
    pmap_stats_t last, total;
    ASSERT_OK(pool_stats(pool, &last, &total));
    ASSERT_EQ(last.items, N);
    ASSERT_EQ(last.failed, 1);
    ASSERT_EQ(last.restarts, 1);
    ASSERT(last.batches >= 2);
    ASSERT(last.bytes_sent >= N * sizeof(long));
    ASSERT(last.busy_ns > 0 && last.wall_ns > 0);
    uint64_t items = 0, batches = 0, restarts = 0;
    for (int w = 0; w < 2; w++) {
        pmap_worker_stats_t ws;
        ASSERT_OK(pool_worker_stats(pool, w, &ws));
        ASSERT(ws.pid > 0);
        items += ws.work.items;
        batches += ws.work.batches;
        restarts += ws.work.restarts;
    }
    ASSERT(items >= N - 1 - 100);   /* a dead worker's items ran again */
    ASSERT(batches >= last.batches);
    ASSERT_EQ(restarts, 1);
    ASSERT_EQ(pool_worker_stats(pool, 2, NULL), PMAP_EINVAL);
    pool_destroy(pool);
}

/* ---- regressions ------------------------------------------------------- */

struct exactly_once {
    unsigned char *seen;
    size_t calls, twice, last, disorder, cancelled, wrong;
    int unordered;
};

static int once_each(void *ctx, size_t index, void *result,
                     const pmap_failure_t *failure)
{
    struct exactly_once *e = ctx;
    e->twice += e->seen[index]++;
    e->disorder += !e->unordered && e->calls > 0 && index < e->last;
    e->last = index;
    e->calls++;
    if (failure != NULL)
        e->cancelled += failure->error == PMAP_ECANCELED;
    else
        e->wrong += *(long *)result != (long)(index * index);
    return e->calls == 100;     /* cancel the map */
}

/* Cancelling a map from arrays to a callback, with far more items than
 * its window: every item is handed over once, in order. */
TEST(stream_cancel_hands_every_item_over_once)
{
    enum { N = 5000 };
    static long xs[N];
    for (long i = 0; i < N; i++)
        xs[i] = i;
    for (int unordered = 0; unordered < 2; unordered++) {
        struct exactly_once e = {calloc(N, 1), 0, 0, 0, 0, 0, 0, unordered};
        pool_map_options_t o = {.on_result = once_each, .ctx = &e,
                                .unordered = unordered, .window = 64,
                                .chunk = 3};
        pool_t *pool = pool_create(2);
        ASSERT_EQ(pool_map_with(pool, &o, square, N, (long *)NULL, xs),
                  PMAP_ECANCELED);
        ASSERT_EQ(e.calls, N);
        ASSERT_EQ(e.twice, 0);
        ASSERT_EQ(e.disorder, 0);
        ASSERT_EQ(e.wrong, 0);
        ASSERT(e.cancelled > N - 200);
        free(e.seen);
        pool_destroy(pool);
    }
}

static size_t checksum(const char *s)
{
    size_t h = 0;
    for (; *s; s++)
        h = h * 31 + (unsigned char)*s;
    return h;
}
PMAP_EXPORT(checksum, size_t, const char *);

/* Starts a call whose constant lives in this frame, and returns. */
static pmap_job_t *call_with_a_local_string(pool_t *pool, size_t *out,
                                            size_t *want)
{
    char text[10000];
    for (size_t i = 0; i < sizeof text - 1; i++)
        text[i] = (char)('a' + i % 26);
    text[sizeof text - 1] = '\0';
    *want = checksum(text);
    pmap_job_t *job;
    if (pool_call_async(pool, NULL, &job, checksum, out, text) != 0)
        return NULL;
    return job;
}

static void scribble(void)
{
    volatile char junk[20000];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = 'Z';
}

/* A background call's constants are copied when it starts: the caller's
 * string may be gone before a worker is free to take it. */
TEST(stream_async_constants_are_copied_at_start)
{
    pool_t *pool = pool_create(1);
    long busy[3] = {1, 2, 3}, out[3];
    pmap_job_t *first;
    ASSERT_OK(pool_map_async(pool, NULL, &first, slow_square, 3, out, busy));
    size_t got = 0, want = 0;
    pmap_job_t *job = call_with_a_local_string(pool, &got, &want);
    ASSERT(job != NULL);
    scribble();     /* the string's stack frame is reused */
    ASSERT_OK(pmap_job_wait(job, -1));
    ASSERT(got == want);
    ASSERT_OK(pmap_job_wait(first, -1));
    pmap_job_free(job);
    pmap_job_free(first);
    pool_destroy(pool);
}

struct freeing {
    pmap_job_t *other;
};

static int free_the_other(void *ctx, size_t index, void *result,
                          const pmap_failure_t *failure)
{
    (void)result;
    (void)failure;
    struct freeing *f = ctx;
    if (index == 5 && f->other != NULL) {
        pmap_job_free(f->other);    /* inside the loop: freed later */
        f->other = NULL;
    }
    return 0;
}

TEST(stream_job_freed_from_a_callback)
{
    pool_t *pool = pool_create(2);
    long xs[50], out[50];
    for (long i = 0; i < 50; i++)
        xs[i] = i;
    struct freeing f;
    ASSERT_OK(pool_map_async(pool, NULL, &f.other, slow_square, 50, out, xs));
    pool_map_options_t o = {.on_result = free_the_other, .ctx = &f};
    ASSERT_OK(pool_map_with(pool, &o, square, 50, (long *)NULL, xs));
    ASSERT(f.other == NULL);
    ASSERT_OK(pool_map(pool, square, 50, out, xs));
    ASSERT_EQ(out[49], 49 * 49);
    pool_destroy(pool);
}

/* Every worker reaches its quota at the very end of a map. */
TEST(stream_recycled_workers_run_their_exit_hook)
{
    NEEDS_PROCESSES("recycled workers");
    ASSERT(pipe(hook_pipe) == 0);
    pool_options_t po = {.workers = 2, .max_items_per_worker = 15,
                         .worker_init = open_db, .worker_exit = close_db,
                         .worker_arg = &hook_pipe[1]};
    pool_t *pool;
    ASSERT_OK(pool_create_with(&pool, &po));
    long xs[30], pids[30];
    for (int i = 0; i < 30; i++)
        xs[i] = i;
    pool_map_options_t o = {.chunk = 15};
    ASSERT_OK(pool_map_with(pool, &o, whose, 30, pids, xs));
    ASSERT_OK(pool_map_with(pool, &o, whose, 30, pids, xs));
    pool_destroy(pool);
    close(hook_pipe[1]);
    char all[64];
    ssize_t got = read(hook_pipe[0], all, sizeof all);
    close(hook_pipe[0]);
    int inits = 0, exits = 0;
    for (ssize_t i = 0; i < got; i++) {
        inits += all[i] == 'i';
        exits += all[i] == 'x';
    }
    /* 2, 2 replacing them after map one, perhaps 2 more after map two
     * (recycled as it ends, or only when the pool is used again). */
    ASSERT(inits >= 4 && inits <= 6);
    ASSERT_EQ(exits, inits);    /* none was killed before its exit hook */
}

static char shared_line[] = "not the pool's to free";

static int store_then_stop(void *ctx, const char **line)
{
    int *calls = ctx;
    *line = shared_line;    /* then says "no more": not an item */
    return (*calls)++ < 3;
}

TEST(stream_producer_memory_is_never_freed_by_the_pool)
{
    int calls = 0;
    struct kept k = {0, 0};
    pool_map_options_t o = {.on_result = print_kept, .ctx = &k};
    pool_t *pool = pool_create(1);
    ASSERT_OK(pool_map_stream(pool, &o, keep_line, store_then_stop, &calls));
    ASSERT_EQ(calls, 4);
    ASSERT_STR_EQ(shared_line, "not the pool's to free");
    pool_destroy(pool);
}
